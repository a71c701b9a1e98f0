//! A set of remote nodes whose pod CIDRs (of both families) never overlap,
//! checked against this node's own facts.

use std::{collections::BTreeMap, net::Ipv4Addr};

use ipnetwork::{Ipv4Network, Ipv6Network};

use super::{
    Violation, host_bits_problem,
    nodes::{LocalFacts, NodeSpec, Routing},
};

/// A set of remote nodes whose pod CIDRs never overlap, indexed by CIDR so
/// that checking one more node costs O(log n), not a scan of all of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeSet {
    by_ip: BTreeMap<Ipv4Addr, NodeSpec>,
    /// First address of each pod CIDR -> the node owning it.
    by_cidr_start: BTreeMap<u32, Ipv4Addr>,
    /// The same for IPv6 pod CIDRs.
    by_cidr6_start: BTreeMap<u128, Ipv4Addr>,
}

fn span(cidr: Ipv4Network) -> (u32, u32) {
    (u32::from(cidr.network()), u32::from(cidr.broadcast()))
}

fn span6(cidr: Ipv6Network) -> (u128, u128) {
    let start = u128::from(cidr.network());
    let host_bits = 128 - u32::from(cidr.prefix());
    let size = if host_bits == 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    };
    (start, start | size)
}

/// The node among `starts` (other than `ip`) whose span, by `span_of`,
/// overlaps `[start, end]`: the CIDRs held are disjoint, so only the last
/// one starting at or before `end` can.
fn overlapping<T: Ord + Copy>(
    starts: &BTreeMap<T, Ipv4Addr>,
    (start, end): (T, T),
    ip: Ipv4Addr,
    end_of: impl Fn(Ipv4Addr) -> Option<T>,
) -> Option<Ipv4Addr> {
    let nearest = starts
        .range(..=end)
        .rev()
        .map(|(_, other)| *other)
        .find(|other| *other != ip)?;
    end_of(nearest)
        .is_some_and(|other_end| other_end >= start)
        .then_some(nearest)
}

impl NodeSet {
    pub fn get(&self, ip: Ipv4Addr) -> Option<NodeSpec> {
        self.by_ip.get(&ip).copied()
    }

    pub fn len(&self) -> usize {
        self.by_ip.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ip.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = NodeSpec> + '_ {
        self.by_ip.values().copied()
    }

    /// Checks `node` against this node and the others (its own current
    /// entry, being replaced, excepted).
    pub fn check(&self, node: &NodeSpec, local: &LocalFacts) -> Result<(), Violation> {
        if !local.tunnel {
            return Err((
                "ip",
                "remote nodes are reached through the VXLAN tunnel: set node.uplink".into(),
            ));
        }
        if local.node_ip == Some(node.ip) {
            return Err(("ip", format!("{} is this node's own IP", node.ip)));
        }
        let ip = node.ip;
        if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast() {
            return Err((
                "ip",
                format!("{ip} is not a unicast address a node can have"),
            ));
        }
        if let Some(problem) = host_bits_problem(node.pod_cidr) {
            return Err(("pod_cidr", problem));
        }
        if local.routing == Routing::Direct
            && !local.uplink_networks.is_empty()
            && !local.on_uplink_network(node.ip)
        {
            let networks: Vec<String> = local
                .uplink_networks
                .iter()
                .map(|n| n.to_string())
                .collect();
            return Err((
                "ip",
                format!(
                    "{} is not on the uplink's network ({}): routing = \"direct\" reaches only \
                     nodes there; routing = \"auto\" tunnels to the others",
                    node.ip,
                    networks.join(", ")
                ),
            ));
        }
        if let Some(cluster_cidr) = local.cluster_cidr
            && !node.pod_cidr.is_subnet_of(cluster_cidr)
        {
            return Err((
                "pod_cidr",
                format!(
                    "{} is not inside cluster_cidr {cluster_cidr}",
                    node.pod_cidr
                ),
            ));
        }
        if let Some(pod_cidr) = local.pod_cidr
            && node.pod_cidr.overlaps(pod_cidr)
        {
            return Err((
                "pod_cidr",
                format!("{} overlaps this node's pod CIDR {pod_cidr}", node.pod_cidr),
            ));
        }
        let end_of = |other: Ipv4Addr| Some(span(self.by_ip[&other].pod_cidr).1);
        if let Some(other) = overlapping(&self.by_cidr_start, span(node.pod_cidr), node.ip, end_of)
        {
            return Err((
                "pod_cidr",
                format!(
                    "{} overlaps {} of node {other}",
                    node.pod_cidr, self.by_ip[&other].pod_cidr
                ),
            ));
        }
        if let Some(cidr) = node.pod_cidr_ipv6 {
            if let Some(problem) = host_bits_problem(cidr) {
                return Err(("pod_cidr_ipv6", problem));
            }
            if let Some(own) = local.pod_cidr_ipv6
                && cidr.overlaps(own)
            {
                return Err((
                    "pod_cidr_ipv6",
                    format!("{cidr} overlaps this node's IPv6 pod CIDR {own}"),
                ));
            }
            let end_of =
                |other: Ipv4Addr| self.by_ip[&other].pod_cidr_ipv6.map(|cidr| span6(cidr).1);
            if let Some(other) = overlapping(&self.by_cidr6_start, span6(cidr), node.ip, end_of) {
                return Err((
                    "pod_cidr_ipv6",
                    format!(
                        "{cidr} overlaps {} of node {other}",
                        self.by_ip[&other].pod_cidr_ipv6.unwrap_or(cidr)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Adds or replaces `node` after checking it; returns whether anything changed.
    pub fn insert(&mut self, node: NodeSpec, local: &LocalFacts) -> Result<bool, Violation> {
        if self.get(node.ip) == Some(node) {
            return Ok(false);
        }
        self.check(&node, local)?;
        self.remove(node.ip);
        self.put_back(node);
        Ok(true)
    }

    /// Re-inserts a node that was in the set, unchecked (it was checked then).
    pub(super) fn put_back(&mut self, node: NodeSpec) {
        self.by_ip.insert(node.ip, node);
        self.by_cidr_start.insert(span(node.pod_cidr).0, node.ip);
        if let Some(cidr) = node.pod_cidr_ipv6 {
            self.by_cidr6_start.insert(span6(cidr).0, node.ip);
        }
    }

    pub fn remove(&mut self, ip: Ipv4Addr) -> bool {
        let Some(node) = self.by_ip.remove(&ip) else {
            return false;
        };
        self.by_cidr_start.remove(&span(node.pod_cidr).0);
        if let Some(cidr) = node.pod_cidr_ipv6 {
            self.by_cidr6_start.remove(&span6(cidr).0);
        }
        true
    }
}
