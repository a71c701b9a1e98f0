//! What NetworkPolicy reads of Kubernetes objects: a `NetworkPolicy` as a
//! [`PolicySpec`], a `Pod` as [`PodFacts`] (labels, addresses,
//! hostNetwork, named container ports) and a `Namespace`'s labels. Only
//! these are kept: the objects are dropped as they arrive, as the Services
//! source does. A policy the API server would have refused (or one this
//! dataplane cannot read: an unknown protocol, a malformed CIDR) is refused
//! on its own with the reason.

use std::net::IpAddr;

use k8s_openapi::{
    api::{
        core::v1::{Namespace, Pod},
        networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort},
    },
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};

use crate::model::policy::{
    Direction, Labels, Operator, Peer, PodFacts, PolicyProtocol, PolicySpec, PortMatch, PortRef,
    Requirement, Rule, Selector,
};

/// The policy, or why it cannot be enforced as written.
pub fn policy_spec(policy: &NetworkPolicy) -> Result<PolicySpec, String> {
    let metadata = &policy.metadata;
    let spec = policy.spec.clone().unwrap_or_default();
    let policy_types = spec
        .policy_types
        .unwrap_or_default()
        .iter()
        .map(|kind| match kind.as_str() {
            "Ingress" => Ok(Direction::Ingress),
            "Egress" => Ok(Direction::Egress),
            other => Err(format!("policyTypes: unknown type {other:?}")),
        })
        .collect::<Result<_, _>>()?;
    let rules = |peers: Option<Vec<NetworkPolicyPeer>>, ports: Option<Vec<NetworkPolicyPort>>| {
        Ok::<_, String>(Rule {
            peers: peers
                .unwrap_or_default()
                .iter()
                .map(peer)
                .collect::<Result<_, _>>()?,
            ports: ports
                .unwrap_or_default()
                .iter()
                .map(port)
                .collect::<Result<_, _>>()?,
        })
    };
    let spec = PolicySpec {
        namespace: metadata.namespace.clone().unwrap_or_default(),
        name: metadata.name.clone().unwrap_or_default(),
        pod_selector: selector(spec.pod_selector.as_ref())?,
        policy_types,
        ingress: spec
            .ingress
            .unwrap_or_default()
            .into_iter()
            .map(|rule| rules(rule.from, rule.ports))
            .collect::<Result<_, _>>()?,
        egress: spec
            .egress
            .unwrap_or_default()
            .into_iter()
            .map(|rule| rules(rule.to, rule.ports))
            .collect::<Result<_, _>>()?,
    };
    match spec.problem() {
        Some(problem) => Err(problem),
        None => Ok(spec),
    }
}

fn peer(peer: &NetworkPolicyPeer) -> Result<Peer, String> {
    if let Some(block) = &peer.ip_block {
        if peer.pod_selector.is_some() || peer.namespace_selector.is_some() {
            return Err("a peer with ipBlock takes no selectors".into());
        }
        let network = |text: &str| {
            text.parse()
                .map_err(|error| format!("ipBlock {text:?}: {error}"))
        };
        return Ok(Peer::Block {
            cidr: network(&block.cidr)?,
            except: block
                .except
                .iter()
                .flatten()
                .map(|except| network(except))
                .collect::<Result<_, _>>()?,
        });
    }
    if peer.pod_selector.is_none() && peer.namespace_selector.is_none() {
        return Err("a peer needs ipBlock, podSelector or namespaceSelector".into());
    }
    Ok(Peer::Pods {
        namespace_selector: peer
            .namespace_selector
            .as_ref()
            .map(|found| selector(Some(found)))
            .transpose()?,
        pod_selector: peer
            .pod_selector
            .as_ref()
            .map(|found| selector(Some(found)))
            .transpose()?,
    })
}

fn protocol(name: Option<&str>) -> Result<PolicyProtocol, String> {
    match name.unwrap_or("TCP") {
        "TCP" => Ok(PolicyProtocol::Tcp),
        "UDP" => Ok(PolicyProtocol::Udp),
        "SCTP" => Ok(PolicyProtocol::Sctp),
        other => Err(format!("unknown protocol {other:?}")),
    }
}

fn port_number(value: i32, field: &str) -> Result<u16, String> {
    u16::try_from(value)
        .ok()
        .filter(|port| *port != 0)
        .ok_or_else(|| format!("{field} {value} is not a port (1-65535)"))
}

fn port(port: &NetworkPolicyPort) -> Result<PortMatch, String> {
    Ok(PortMatch {
        protocol: protocol(port.protocol.as_deref())?,
        port: match &port.port {
            None => None,
            Some(IntOrString::Int(number)) => Some(PortRef::Number(port_number(*number, "port")?)),
            Some(IntOrString::String(name)) => Some(PortRef::Name(name.clone())),
        },
        end_port: port
            .end_port
            .map(|end| port_number(end, "endPort"))
            .transpose()?,
    })
}

/// A label selector (none: the empty one, selecting everything).
fn selector(selector: Option<&LabelSelector>) -> Result<Selector, String> {
    let Some(selector) = selector else {
        return Ok(Selector::default());
    };
    let match_expressions = selector
        .match_expressions
        .iter()
        .flatten()
        .map(|requirement| {
            let operator = match requirement.operator.as_str() {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => return Err(format!("unknown selector operator {other:?}")),
            };
            Ok(Requirement {
                key: requirement.key.clone(),
                operator,
                values: requirement.values.clone().unwrap_or_default(),
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(Selector {
        match_labels: selector.match_labels.clone().unwrap_or_default(),
        match_expressions,
    })
}

/// What policy reads of a pod. Addresses it cannot parse are left out;
/// container ports with a name are kept (named ports resolve on them).
pub fn pod_facts(pod: &Pod) -> PodFacts {
    let spec = pod.spec.as_ref();
    let ports = spec
        .into_iter()
        .flat_map(|spec| &spec.containers)
        .flat_map(|container| container.ports.iter().flatten())
        .filter_map(|port| {
            let name = port.name.clone()?;
            let number = u16::try_from(port.container_port).ok()?;
            let protocol = protocol(port.protocol.as_deref()).ok()?;
            Some((name, protocol, number))
        })
        .collect();
    PodFacts {
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        name: pod.metadata.name.clone().unwrap_or_default(),
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        ips: pod
            .status
            .as_ref()
            .and_then(|status| status.pod_ips.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|ip| ip.ip.parse::<IpAddr>().ok())
            .collect(),
        host_network: spec.and_then(|spec| spec.host_network).unwrap_or(false),
        ports,
    }
}

/// A namespace's name and labels.
pub fn namespace_labels(namespace: &Namespace) -> (String, Labels) {
    (
        namespace.metadata.name.clone().unwrap_or_default(),
        namespace.metadata.labels.clone().unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests;
