//! The owner's view of NetworkPolicy: the shared model its source writes,
//! read for `policy list` (this node's pods, the policies isolating each)
//! and `policy explain` (the verdict on one connection). Nothing is
//! enforced from it yet: the programs' verdict comes with the policy maps.

use std::{net::IpAddr, sync::PoisonError};

use super::Owner;
use crate::{
    api::{PodPolicies, PolicyReport},
    interfaces::HostLinks,
    model::policy::{Connection, Direction, PolicySpec, Verdict},
};

/// "namespace/name" of each policy, and their rules in `direction` counted.
fn named(policies: &[&PolicySpec], direction: Direction) -> (Vec<String>, usize) {
    let names = policies
        .iter()
        .map(|policy| format!("{}/{}", policy.namespace, policy.name))
        .collect();
    let rules = policies
        .iter()
        .map(|policy| policy.rules(direction).len())
        .sum();
    (names, rules)
}

impl<L: HostLinks> Owner<L> {
    pub(super) fn policy_report(&self) -> PolicyReport {
        let model = self.policies.read().unwrap_or_else(PoisonError::into_inner);
        let pods = self
            .dataplane
            .programmed_endpoints()
            .map(|(ip, _)| {
                let ip = IpAddr::V4(ip);
                let Some(pod) = model.world.pod(ip) else {
                    return PodPolicies {
                        ip,
                        pod: None,
                        ingress: Vec::new(),
                        ingress_rules: 0,
                        egress: Vec::new(),
                        egress_rules: 0,
                    };
                };
                let (ingress, ingress_rules) = named(
                    &model.world.isolating(pod, Direction::Ingress),
                    Direction::Ingress,
                );
                let (egress, egress_rules) = named(
                    &model.world.isolating(pod, Direction::Egress),
                    Direction::Egress,
                );
                PodPolicies {
                    ip,
                    pod: Some(format!("{}/{}", pod.namespace, pod.name)),
                    ingress,
                    ingress_rules,
                    egress,
                    egress_rules,
                }
            })
            .collect();
        let refused = model
            .refused
            .iter()
            .map(|((namespace, name), reason)| (format!("{namespace}/{name}"), reason.clone()))
            .collect();
        PolicyReport {
            pods,
            refused,
            enforced: false,
        }
    }

    pub(super) fn explain_policy(&self, connection: &Connection) -> Verdict {
        let model = self.policies.read().unwrap_or_else(PoisonError::into_inner);
        model.world.verdict(connection)
    }
}
