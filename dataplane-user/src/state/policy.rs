//! The owner's NetworkPolicy: the shared model its source writes, compiled
//! for this node's pods into the policy maps (the idle table written, then
//! the programs switched to it), read for `policy list` (this node's pods,
//! the policies isolating each, programmed whole or not) and `policy
//! explain` (the verdict on one connection).

use std::{collections::BTreeSet, net::IpAddr, sync::PoisonError};

use dataplane_common::{PolicyDrops, policy_table};
use tracing::{info, warn};

use super::Owner;
use crate::{
    api::{PodPolicies, PolicyReport},
    interfaces::HostLinks,
    maps::PolicyTable,
    model::{
        PodName,
        policy::{Connection, Direction, PolicySpec, Verdict},
    },
};

/// How this node's policy stands in the maps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyHealth {
    /// A change not programmed yet (retried).
    pub pending: bool,
    /// Pods whose policy is not in the maps whole (they allow less), and why.
    pub partial: BTreeSet<IpAddr>,
    pub problem: Option<String>,
}

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
    /// Binds the pod at `ip` to its Kubernetes name (its policy applies
    /// before the API server has its address), or forgets its binding.
    pub(super) fn bind_pod(&mut self, ip: IpAddr, pod: Option<&PodName>) {
        let mut model = self
            .policies
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        match pod {
            Some(pod) => model
                .world
                .bind(ip, (pod.namespace.clone(), pod.name.clone())),
            None => model.world.unbind(ip),
        }
    }

    /// Programs the policy of this node's pods (and `joining`, a pod about
    /// to be registered) when it changed: the idle table written, then the
    /// programs switched to it. Until the sources have given everything
    /// once, the maps keep what they hold.
    pub(super) fn program_policies(&mut self, joining: Option<IpAddr>) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        let compiled = {
            let model = self.policies.read().unwrap_or_else(PoisonError::into_inner);
            if !model.synced {
                return Ok(());
            }
            // No policy anywhere and none programmed: nothing to compile (a
            // pod's registration on a node of 50,000 costs no walk of them).
            if !model.world.has_policies()
                && *self.dataplane.active_policy() == PolicyTable::default()
            {
                self.policy_health.pending = false;
                return Ok(());
            }
            let local: Vec<IpAddr> = self
                .dataplane
                .programmed_endpoints()
                .map(|(ip, _)| ip)
                .chain(joining)
                .collect();
            model.world.compile(&local)
        };
        let switch = self.dataplane.policy_switch();
        let active = policy_table(switch.generation);
        if PolicyTable::of(&compiled, active) == *self.dataplane.active_policy() {
            self.policy_health.pending = false;
            return Ok(());
        }
        let wanted = PolicyTable::of(&compiled, active ^ 1);
        let compiled_in = started.elapsed();
        let written = self.dataplane.write_idle_policy(&wanted);
        let next = switch.next(&wanted);
        self.write_node_config_with(next)?;
        self.policy_health = match written {
            Ok(()) => PolicyHealth::default(),
            Err(partial) => {
                warn!(pods = ?partial.pods, "NetworkPolicy not programmed whole: {}; these pods \
                      allow less than their policies until it is", partial.error);
                PolicyHealth {
                    pending: true,
                    partial: partial.pods.into_iter().collect(),
                    problem: Some(partial.error.to_string()),
                }
            }
        };
        info!(
            isolated = wanted.subjects.len(),
            entries = wanted.rules.len(),
            classes = wanted.classes.len(),
            generation = next.generation,
            compiled_ms = compiled_in.as_secs_f64() * 1e3,
            total_ms = started.elapsed().as_secs_f64() * 1e3,
            "NetworkPolicy programmed"
        );
        Ok(())
    }

    /// Each pod's policy drops, named as `TableSizes::policy_drops` says.
    pub(super) fn policy_drops(&self) -> Vec<(String, PolicyDrops)> {
        let rows = match self.dataplane.policy_drops() {
            Ok(rows) => rows,
            Err(error) => {
                warn!("reading the policy drops: {error}");
                return Vec::new();
            }
        };
        let model = self.policies.read().unwrap_or_else(PoisonError::into_inner);
        rows.into_iter()
            .map(|(ip, drops)| {
                let pod = model.world.pod(IpAddr::V4(ip)).map_or_else(
                    || ip.to_string(),
                    |pod| format!("{}/{}", pod.namespace, pod.name),
                );
                (pod, drops)
            })
            .collect()
    }

    /// One line for `status`: how NetworkPolicy stands (none while no
    /// source has given any and no pod is isolated).
    pub(super) fn policy_status(&self) -> Option<String> {
        let synced = self
            .policies
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .synced;
        let switch = self.dataplane.policy_switch();
        let isolated = self.dataplane.active_policy().subjects.len();
        let health = &self.policy_health;
        Some(match (&health.problem, synced) {
            (Some(problem), _) => format!(
                "NOT PROGRAMMED WHOLE: {} pods allow less than their policies ({problem}); retried",
                health.partial.len()
            ),
            (None, true) => format!(
                "enforced: {isolated} pods isolated (table generation {})",
                switch.generation
            ),
            (None, false) if switch.isolating => format!(
                "as pinned: {isolated} pods isolated until the policy source has listed \
                 everything"
            ),
            (None, false) => return None,
        })
    }

    /// `program_policies`, its failure logged and retried.
    pub(super) fn program_policies_or_retry(&mut self) {
        if let Err(error) = self.program_policies(None) {
            self.policy_health.pending = true;
            warn!("programming NetworkPolicy (retried): {error:#}");
        }
    }

    pub(super) fn policy_report(&self) -> PolicyReport {
        let model = self.policies.read().unwrap_or_else(PoisonError::into_inner);
        // The pods the programs isolate now.
        let isolated: BTreeSet<IpAddr> = self
            .dataplane
            .active_policy()
            .subjects
            .keys()
            .map(|key| IpAddr::from(key.address))
            .collect();
        let pods = self
            .dataplane
            .programmed_endpoints()
            .map(|(ip, _)| {
                let Some(pod) = model.world.pod(ip) else {
                    return PodPolicies {
                        ip,
                        pod: None,
                        ingress: Vec::new(),
                        ingress_rules: 0,
                        egress: Vec::new(),
                        egress_rules: 0,
                        programmed: isolated.contains(&ip),
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
                    programmed: isolated.contains(&ip),
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
            enforced: model.synced,
            generation: self.dataplane.policy_switch().generation,
            partial: self.policy_health.partial.iter().copied().collect(),
            problem: self.policy_health.problem.clone(),
        }
    }

    pub(super) fn explain_policy(&self, connection: &Connection) -> Verdict {
        let model = self.policies.read().unwrap_or_else(PoisonError::into_inner);
        model.world.verdict(connection)
    }
}
