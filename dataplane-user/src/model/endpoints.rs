//! Pods on this node: their specs, the rules an endpoint keeps, and which
//! sources list each.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv6Addr},
};

use ipnetwork::{Ipv4Network, Ipv6Network};
use macaddr::MacAddr6;
use serde::{Deserialize, Serialize};
use serde_with::{DisplayFromStr, serde_as};

use super::{Source, Violation};

/// A pod attached to this node: what the CNI plugin or the config file says.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    /// One of the pod's addresses (a dual-stack pod has one endpoint per
    /// family).
    pub ip: IpAddr,
    /// The host side of the pod's veth, in the node's namespace.
    pub interface: HostInterface,
    /// MAC address of the pod's own interface.
    #[serde_as(as = "DisplayFromStr")]
    pub mac: MacAddr6,
    /// The Kubernetes pod it is (the CNI plugin has it from the runtime):
    /// its NetworkPolicy applies from its first packet, before the API
    /// server has its address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodName>,
}

/// A Kubernetes pod's namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PodName {
    pub namespace: String,
    pub name: String,
}

/// A host veth: by name (config file, CLI: what people type) or by index
/// (the CNI plugin, which has it; names can be reused, indexes are not
/// until the counter wraps).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum HostInterface {
    Index(u32),
    Name(String),
}

impl std::fmt::Display for HostInterface {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostInterface::Index(index) => write!(f, "ifindex {index}"),
            HostInterface::Name(name) => f.write_str(name),
        }
    }
}

/// This node's pod CIDRs, per family (each optional).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PodCidrs {
    pub ipv4: Option<Ipv4Network>,
    pub ipv6: Option<Ipv6Network>,
}

/// Checks one endpoint on its own, against the node's pod CIDR of its family.
pub fn validate_endpoint(endpoint: &EndpointSpec, pod_cidrs: &PodCidrs) -> Result<(), Violation> {
    match endpoint.ip {
        IpAddr::V4(ip) => {
            if let Some(cidr) = pod_cidrs.ipv4 {
                if !cidr.contains(ip) {
                    return Err(("ip", format!("{ip} is outside the node's pod CIDR {cidr}")));
                }
                // Static IPAM or another network's IPAM can hand these out.
                let role = if ip == cidr.network() {
                    "network"
                } else {
                    "broadcast"
                };
                if cidr.prefix() < 31 && (ip == cidr.network() || ip == cidr.broadcast()) {
                    return Err((
                        "ip",
                        format!("{ip} is the {role} address of the pod CIDR {cidr}"),
                    ));
                }
            }
        }
        IpAddr::V6(ip) => {
            if let Some(kind) = not_a_unicast_address(ip) {
                return Err((
                    "ip",
                    format!(
                        "{ip} is {kind}: a pod's IPv6 address is a unicast address of scope global"
                    ),
                ));
            }
            if let Some(cidr) = pod_cidrs.ipv6
                && !cidr.contains(ip)
            {
                return Err((
                    "ip",
                    format!("{ip} is outside the node's IPv6 pod CIDR {cidr}"),
                ));
            }
        }
    }
    match &endpoint.interface {
        HostInterface::Name(name) if name.is_empty() || name.len() > 15 => {
            return Err((
                "interface",
                format!("{name:?} is not a valid interface name (1 to 15 characters)"),
            ));
        }
        HostInterface::Index(0) => {
            return Err(("interface", "0 is not an interface index".into()));
        }
        _ => {}
    }
    let mac = endpoint.mac.as_bytes();
    if mac[0] & 1 == 1 || mac.iter().all(|byte| *byte == 0) {
        return Err((
            "mac",
            format!("{} is not a unicast MAC address", endpoint.mac),
        ));
    }
    Ok(())
}

/// What kind of IPv6 address `ip` is when it is no global unicast one (no
/// pod, nor the node as a router, can have it).
pub fn not_a_unicast_address(ip: Ipv6Addr) -> Option<&'static str> {
    let [first, second, ..] = ip.octets();
    if ip.is_unspecified() {
        Some("the unspecified address")
    } else if ip.is_loopback() {
        Some("the loopback address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if first == 0xfe && second & 0xc0 == 0x80 {
        Some("a link-local address")
    } else if ip.to_ipv4_mapped().is_some() {
        Some("an IPv4-mapped address")
    } else {
        None
    }
}

/// Which sources list each endpoint: an endpoint stays while any of them
/// does. (Its value is the latest registration's: a pod has one veth.)
#[derive(Debug, Default)]
pub struct EndpointSources(BTreeMap<IpAddr, BTreeSet<Source>>);

impl EndpointSources {
    /// `source` lists `ip`.
    pub fn list(&mut self, ip: IpAddr, source: Source) {
        self.0.entry(ip).or_default().insert(source);
    }

    /// The endpoint is gone, whoever listed it.
    pub fn forget(&mut self, ip: IpAddr) {
        self.0.remove(&ip);
    }

    /// `source` lists exactly `listed` now; returns the endpoints no source
    /// lists any more (forgotten here, to be removed from the maps).
    pub fn withdraw(&mut self, source: Source, listed: &BTreeSet<IpAddr>) -> Vec<IpAddr> {
        let mut unlisted = Vec::new();
        self.0.retain(|ip, sources| {
            if !listed.contains(ip) {
                sources.remove(&source);
            }
            let keep = !sources.is_empty();
            if !keep {
                unlisted.push(*ip);
            }
            keep
        });
        unlisted
    }
}
