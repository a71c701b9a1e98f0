//! NetworkPolicy (`networking.k8s.io/v1`) as desired state: the policies,
//! the pods and namespaces they select by label, and the verdict on one
//! connection with the policy and rule that decide it (`verdict.rs`). Pure
//! data: the maps the programs judge packets by are compiled from this, and
//! `policy explain` reads it. Either address family.

mod compile;
mod lookup;
mod selector;
mod verdict;

use std::{
    borrow::Cow,
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::{Arc, RwLock},
};

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

pub use compile::{ANY_PEER, ANY_PROTOCOL, Allowed, CompiledPolicy, Subject, WORLD};
pub use selector::{Labels, Operator, Requirement, Selector};
pub use verdict::{Connection, Decision, Verdict};

/// The label every namespace carries with its own name (the API server
/// sets it; it is added here when a source leaves it out).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Which traffic of a selected pod a policy isolates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
pub enum Direction {
    Ingress,
    Egress,
}

/// One NetworkPolicy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    pub namespace: String,
    pub name: String,
    /// The pods of `namespace` it applies to (empty: all of them).
    #[serde(default)]
    pub pod_selector: Selector,
    /// `policyTypes`; empty, as Kubernetes defaults it: Ingress, and Egress
    /// when there are egress rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy_types: Vec<Direction>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<Rule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<Rule>,
}

/// One ingress (`from`) or egress (`to`) rule: traffic with any of the
/// peers (none listed: everyone) on any of the ports (none: every port)
/// is allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<Peer>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortMatch>,
}

/// Who a rule allows.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Peer {
    /// Pods by label: `pod_selector` alone, in the policy's namespace;
    /// `namespace_selector` alone, every pod of those namespaces; both, the
    /// pods matching one in the namespaces matching the other.
    Pods {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        namespace_selector: Option<Selector>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pod_selector: Option<Selector>,
    },
    /// Addresses in `cidr` but in none of `except` (pods' addresses too).
    Block {
        cidr: IpNetwork,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        except: Vec<IpNetwork>,
    },
}

/// The transport protocols a policy port names.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum PolicyProtocol {
    #[default]
    Tcp,
    Udp,
    Sctp,
}

/// One `ports` entry: a protocol, and a port (with `end_port`, a range),
/// by number or by the name of a container port of the pod it reaches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PortMatch {
    #[serde(default)]
    pub protocol: PolicyProtocol,
    /// None: every port of the protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

/// A pod as policy sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodFacts {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub ips: Vec<IpAddr>,
    /// Pods on the node's own network: never selected as pods (neither
    /// isolated nor matched by a pod or namespace selector; an ipBlock
    /// holding the node's address matches them), as the upstream docs leave
    /// it to the implementation.
    pub host_network: bool,
    /// Named container ports: (name, protocol, number).
    pub ports: Vec<(String, PolicyProtocol, u16)>,
}

/// A namespaced object's namespace and name.
pub type ObjectName = (String, String);

/// The policy model as its sources left it, and the policies they could not
/// give it (with the reason).
#[derive(Debug, Default)]
pub struct Policies {
    pub world: PolicyWorld,
    pub refused: BTreeMap<ObjectName, String>,
    /// Whether the sources have given everything once (until then the
    /// maps keep what they hold: an agent's restart never opens a pod).
    pub synced: bool,
}

/// Written by the Kubernetes source, read by the owner.
pub type SharedPolicies = Arc<RwLock<Policies>>;

/// The policies, pods and namespaces of the cluster, and the node
/// addresses whose traffic to pods is always allowed (kubelet probes).
/// Every change costs its object only (a cluster's pods relisted one by
/// one stay linear).
#[derive(Debug, Clone, Default)]
pub struct PolicyWorld {
    namespaces: BTreeMap<String, Labels>,
    pods: BTreeMap<ObjectName, PodFacts>,
    /// Pods not on the host network, by address.
    pod_at: BTreeMap<IpAddr, ObjectName>,
    policies: BTreeMap<ObjectName, PolicySpec>,
    node_addresses: Vec<IpAddr>,
    /// This node's pods by the name the CNI plugin gave with their address:
    /// known (and isolated) before the API server has their address.
    bound: BTreeMap<ObjectName, BTreeSet<IpAddr>>,
}

impl PolicyWorld {
    /// Sets a namespace's labels (its name label added).
    pub fn set_namespace(&mut self, name: &str, mut labels: Labels) {
        labels.insert(NAMESPACE_NAME_LABEL.into(), name.into());
        self.namespaces.insert(name.into(), labels);
    }

    pub fn remove_namespace(&mut self, name: &str) {
        self.namespaces.remove(name);
    }

    /// Adds a pod, or replaces the one of that namespace and name (with
    /// the addresses bound to its name).
    pub fn set_pod(&mut self, mut pod: PodFacts) {
        let key = (pod.namespace.clone(), pod.name.clone());
        self.remove_pod(&key.0, &key.1);
        for ip in self.bound.get(&key).into_iter().flatten() {
            if !pod.ips.contains(ip) {
                pod.ips.push(*ip);
            }
        }
        if !pod.host_network {
            for ip in &pod.ips {
                self.pod_at.insert(*ip, key.clone());
            }
        }
        self.pods.insert(key, pod);
    }

    pub fn remove_pod(&mut self, namespace: &str, name: &str) {
        let key = (namespace.to_string(), name.to_string());
        if let Some(gone) = self.pods.remove(&key) {
            for ip in &gone.ips {
                // A new pod may hold the address already.
                if self.pod_at.get(ip) == Some(&key) {
                    self.pod_at.remove(ip);
                }
            }
        }
    }

    /// Binds this node's pod at `ip` to its name, as its CNI ADD gave it.
    pub fn bind(&mut self, ip: IpAddr, name: ObjectName) {
        self.unbind(ip);
        self.bound.entry(name.clone()).or_default().insert(ip);
        if let Some(pod) = self.pods.get_mut(&name) {
            if !pod.ips.contains(&ip) {
                pod.ips.push(ip);
            }
            if !pod.host_network {
                self.pod_at.insert(ip, name);
            }
        }
    }

    /// Forgets the binding of `ip` (its endpoint is gone).
    pub fn unbind(&mut self, ip: IpAddr) {
        self.bound.retain(|_, ips| {
            ips.remove(&ip);
            !ips.is_empty()
        });
    }

    /// The name `ip` is bound to while no pod of that name is known: a pod
    /// of this node the API server has not told about yet.
    pub fn awaited(&self, ip: IpAddr) -> Option<&ObjectName> {
        self.bound
            .iter()
            .find(|(name, ips)| ips.contains(&ip) && !self.pods.contains_key(*name))
            .map(|(name, _)| name)
    }

    /// Whether any policy exists.
    pub fn has_policies(&self) -> bool {
        !self.policies.is_empty()
    }

    /// Whether a policy of `namespace` exists (one may select any pod of it).
    pub fn has_policies_in(&self, namespace: &str) -> bool {
        self.policies
            .range((namespace.to_string(), String::new())..)
            .next()
            .is_some_and(|((of, _), _)| of == namespace)
    }

    /// Adds a policy, or replaces the one of that namespace and name.
    pub fn set_policy(&mut self, policy: PolicySpec) {
        let key = (policy.namespace.clone(), policy.name.clone());
        self.policies.insert(key, policy);
    }

    pub fn remove_policy(&mut self, namespace: &str, name: &str) {
        self.policies
            .remove(&(namespace.to_string(), name.to_string()));
    }

    pub fn set_node_addresses(&mut self, addresses: Vec<IpAddr>) {
        self.node_addresses = addresses;
    }

    /// The names of the namespaces, pods and policies known.
    pub fn namespace_names(&self) -> impl Iterator<Item = &String> {
        self.namespaces.keys()
    }

    pub fn pod_names(&self) -> impl Iterator<Item = &ObjectName> {
        self.pods.keys()
    }

    pub fn policy_names(&self) -> impl Iterator<Item = &ObjectName> {
        self.policies.keys()
    }

    /// Every pod, host network ones included.
    pub fn pods(&self) -> impl Iterator<Item = &PodFacts> {
        self.pods.values()
    }

    /// The pod (not on the host network) with address `ip`.
    pub fn pod(&self, ip: IpAddr) -> Option<&PodFacts> {
        self.pods.get(self.pod_at.get(&ip)?)
    }

    /// The labels of namespace `name` (only its name label when unknown).
    fn namespace_labels(&self, name: &str) -> Cow<'_, Labels> {
        match self.namespaces.get(name) {
            Some(labels) => Cow::Borrowed(labels),
            None => Cow::Owned(Labels::from([(
                NAMESPACE_NAME_LABEL.to_string(),
                name.to_string(),
            )])),
        }
    }

    /// The pod at `ip` ("namespace/name") and the policies isolating it in
    /// `direction` ("namespace/name" each), for a drop the programs report.
    pub fn isolation_of(&self, ip: IpAddr, direction: Direction) -> Option<(String, Vec<String>)> {
        let pod = self.pod(ip)?;
        let policies = self
            .isolating(pod, direction)
            .iter()
            .map(|policy| format!("{}/{}", policy.namespace, policy.name))
            .collect();
        Some((format!("{}/{}", pod.namespace, pod.name), policies))
    }

    /// The policies selecting `pod` that isolate it in `direction`.
    pub fn isolating(&self, pod: &PodFacts, direction: Direction) -> Vec<&PolicySpec> {
        if pod.host_network {
            return Vec::new();
        }
        self.policies
            .values()
            .filter(|policy| {
                policy.namespace == pod.namespace
                    && policy.pod_selector.matches(&pod.labels)
                    && policy.isolates(direction)
            })
            .collect()
    }
}

impl PolicySpec {
    /// Whether it isolates the pods it selects in `direction`.
    pub fn isolates(&self, direction: Direction) -> bool {
        if self.policy_types.is_empty() {
            direction == Direction::Ingress || !self.egress.is_empty()
        } else {
            self.policy_types.contains(&direction)
        }
    }

    pub fn rules(&self, direction: Direction) -> &[Rule] {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// What is wrong with it, as the API server would refuse it.
    pub fn problem(&self) -> Option<String> {
        let selectors = std::iter::once(&self.pod_selector).chain(
            self.ingress
                .iter()
                .chain(&self.egress)
                .flat_map(|rule| &rule.peers)
                .flat_map(|peer| match peer {
                    Peer::Pods {
                        namespace_selector,
                        pod_selector,
                    } => [namespace_selector.as_ref(), pod_selector.as_ref()],
                    Peer::Block { .. } => [None, None],
                })
                .flatten(),
        );
        if let Some(problem) = selectors.filter_map(Selector::problem).next() {
            return Some(problem);
        }
        for rule in self.ingress.iter().chain(&self.egress) {
            for peer in &rule.peers {
                if let Peer::Block { cidr, except } = peer
                    && let Some(outside) = except.iter().find(|except| {
                        !cidr.contains(except.network()) || except.prefix() < cidr.prefix()
                    })
                {
                    return Some(format!("except {outside} is not within cidr {cidr}"));
                }
            }
            for port in &rule.ports {
                match (&port.port, port.end_port) {
                    (Some(PortRef::Number(start)), Some(end)) if end < *start => {
                        return Some(format!("endPort {end} is below port {start}"));
                    }
                    (Some(PortRef::Name(_)) | None, Some(_)) => {
                        return Some("endPort needs a numeric port".into());
                    }
                    _ => {}
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests;
