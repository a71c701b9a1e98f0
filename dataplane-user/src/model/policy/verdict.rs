//! The verdict on one connection: the source's egress policies and the
//! destination's ingress policies must both allow it (policies are a union:
//! any rule of any policy isolating that side allows), judged on the
//! backend after Service translation. Replies are not judged here: the
//! programs pass them on the connection's state.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{
    Direction, Labels, Peer, PodFacts, PolicyProtocol, PolicySpec, PolicyWorld, PortMatch, PortRef,
    Rule,
};

/// A new connection as policy judges it: from the client's address to the
/// backend's address and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connection {
    pub from: IpAddr,
    pub to: IpAddr,
    pub protocol: PolicyProtocol,
    pub port: u16,
}

/// What one side's policies say.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// No policy isolates that side in this direction (or it is no pod).
    NotIsolated,
    /// Allowed by rule `rule` (counted from 0) of `policy`
    /// ("namespace/name"), the first that does.
    Allowed { policy: String, rule: usize },
    /// Isolated by these policies, none of which allows it.
    Denied { policies: Vec<String> },
}

/// Both sides' decisions.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Verdict {
    pub egress: Decision,
    pub ingress: Decision,
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        !matches!(self.egress, Decision::Denied { .. })
            && !matches!(self.ingress, Decision::Denied { .. })
    }
}

impl PolicyWorld {
    /// The verdict on `connection`. The node's own addresses reach its
    /// pods whatever their ingress policies say (kubelet probes).
    pub fn verdict(&self, connection: &Connection) -> Verdict {
        let egress = match self.pod(connection.from) {
            Some(pod) => self.decide(pod, Direction::Egress, connection.to, connection),
            None => Decision::NotIsolated,
        };
        let ingress = match self.pod(connection.to) {
            Some(pod) if !self.node_addresses.contains(&connection.from) => {
                self.decide(pod, Direction::Ingress, connection.from, connection)
            }
            _ => Decision::NotIsolated,
        };
        Verdict { egress, ingress }
    }

    /// What `pod`'s policies of `direction` say of `connection`, whose
    /// other end is `peer`.
    fn decide(
        &self,
        pod: &PodFacts,
        direction: Direction,
        peer: IpAddr,
        connection: &Connection,
    ) -> Decision {
        let policies = self.isolating(pod, direction);
        if policies.is_empty() {
            return Decision::NotIsolated;
        }
        // Named ports are the destination pod's.
        let destination = match direction {
            Direction::Ingress => Some(pod),
            Direction::Egress => self.pod(connection.to),
        };
        for policy in &policies {
            for (index, rule) in policy.rules(direction).iter().enumerate() {
                if self.admits(policy, rule, peer, destination, connection) {
                    return Decision::Allowed {
                        policy: format!("{}/{}", policy.namespace, policy.name),
                        rule: index,
                    };
                }
            }
        }
        Decision::Denied {
            policies: policies
                .iter()
                .map(|policy| format!("{}/{}", policy.namespace, policy.name))
                .collect(),
        }
    }

    fn admits(
        &self,
        policy: &PolicySpec,
        rule: &Rule,
        peer: IpAddr,
        destination: Option<&PodFacts>,
        connection: &Connection,
    ) -> bool {
        (rule.peers.is_empty() || rule.peers.iter().any(|one| self.is(peer, one, policy)))
            && (rule.ports.is_empty()
                || rule
                    .ports
                    .iter()
                    .any(|port| port_matches(port, destination, connection)))
    }

    /// Whether the address `ip` is `peer` of `policy`.
    pub(super) fn is(&self, ip: IpAddr, peer: &Peer, policy: &PolicySpec) -> bool {
        match peer {
            Peer::Block { cidr, except } => {
                cidr.contains(ip) && !except.iter().any(|except| except.contains(ip))
            }
            Peer::Pods { .. } => self.pod(ip).is_some_and(|pod| {
                selects(
                    peer,
                    &policy.namespace,
                    pod,
                    &self.namespace_labels(&pod.namespace),
                )
            }),
        }
    }
}

/// Whether the pod selectors of `peer`, of a policy of namespace
/// `namespace`, select `pod` (its namespace labelled `namespace_labels`).
pub(super) fn selects(
    peer: &Peer,
    namespace: &str,
    pod: &PodFacts,
    namespace_labels: &Labels,
) -> bool {
    let Peer::Pods {
        namespace_selector,
        pod_selector,
    } = peer
    else {
        return false;
    };
    let in_namespace = match namespace_selector {
        None => pod.namespace == namespace,
        Some(selector) => selector.matches(namespace_labels),
    };
    in_namespace
        && pod_selector
            .as_ref()
            .is_none_or(|selector| selector.matches(&pod.labels))
}

/// Whether `connection` is on `port`: its protocol, and its number, in the
/// range, or the destination pod's container port of that name.
fn port_matches(port: &PortMatch, destination: Option<&PodFacts>, connection: &Connection) -> bool {
    if port.protocol != connection.protocol {
        return false;
    }
    match &port.port {
        None => true,
        Some(PortRef::Number(start)) => {
            (*start..=port.end_port.unwrap_or(*start)).contains(&connection.port)
        }
        Some(PortRef::Name(name)) => destination.is_some_and(|pod| {
            pod.ports.iter().any(|(named, protocol, number)| {
                named == name && *protocol == connection.protocol && *number == connection.port
            })
        }),
    }
}
