//! Remote nodes: their specs, how each is reached, the set whose pod CIDRs
//! never overlap, and the merge of what every source lists.

use std::{collections::BTreeMap, net::Ipv4Addr};

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};
use serde_with::serde_as;

use super::{Source, Violation, family::AnyFamily, host_bits_problem};

/// Another node of the cluster: where its pods are reached.
#[serde_as]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// The node's underlay IP (outer destination of the tunnel).
    #[serde_as(as = "AnyFamily")]
    pub ip: Ipv4Addr,
    /// The node's pod CIDR (`Node.spec.podCIDR`).
    #[serde_as(as = "AnyFamily")]
    pub pod_cidr: Ipv4Network,
}

/// How this node sends pod packets to other nodes (`[node] routing`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Routing {
    /// VXLAN to every node.
    #[default]
    Tunnel,
    /// Unencapsulated to every node; they must be on the uplink's network.
    Direct,
    /// Unencapsulated to nodes on the uplink's network, VXLAN to the others.
    Auto,
}

impl std::fmt::Display for Routing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Routing::Tunnel => "tunnel",
            Routing::Direct => "direct",
            Routing::Auto => "auto",
        })
    }
}

/// What a MAC change of a node reached directly does (`[node] peer_macs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerMacs {
    /// The neighbour table's MAC is taken, as ARP changes it (a change is
    /// warned about and counted).
    #[default]
    Follow,
    /// The first MAC learned stays, in a permanent neighbour entry ARP
    /// cannot change, until the node is removed.
    Pinned,
}

/// How one remote node's pods (and the node itself) are reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodePath {
    Tunnel,
    Direct,
}

impl std::fmt::Display for NodePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NodePath::Tunnel => "tunnel",
            NodePath::Direct => "direct",
        })
    }
}

/// What a remote node is checked against: this node's own facts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalFacts {
    /// Whether the node has a tunnel (an uplink): remote nodes need one.
    pub tunnel: bool,
    pub node_ip: Option<Ipv4Addr>,
    pub pod_cidr: Option<Ipv4Network>,
    pub cluster_cidr: Option<Ipv4Network>,
    pub routing: Routing,
    /// The networks of the uplink's addresses: nodes there are reached
    /// without a router (empty: not known yet, e.g. a config file on its own).
    pub uplink_networks: Vec<Ipv4Network>,
}

impl LocalFacts {
    /// How the node at `ip` is reached.
    pub fn path_to(&self, ip: Ipv4Addr) -> NodePath {
        match self.routing {
            Routing::Tunnel => NodePath::Tunnel,
            Routing::Direct => NodePath::Direct,
            Routing::Auto if self.on_uplink_network(ip) => NodePath::Direct,
            Routing::Auto => NodePath::Tunnel,
        }
    }

    /// Whether `ip` is on one of the uplink's networks (no router between).
    pub fn on_uplink_network(&self, ip: Ipv4Addr) -> bool {
        self.uplink_networks
            .iter()
            .any(|network| network.contains(ip))
    }
}

/// A set of remote nodes whose pod CIDRs never overlap, indexed by CIDR so
/// that checking one more node costs O(log n), not a scan of all of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeSet {
    by_ip: BTreeMap<Ipv4Addr, Ipv4Network>,
    /// First address of each pod CIDR -> the node owning it.
    by_cidr_start: BTreeMap<u32, Ipv4Addr>,
}

fn span(cidr: Ipv4Network) -> (u32, u32) {
    (u32::from(cidr.network()), u32::from(cidr.broadcast()))
}

impl NodeSet {
    pub fn get(&self, ip: Ipv4Addr) -> Option<Ipv4Network> {
        self.by_ip.get(&ip).copied()
    }

    pub fn len(&self) -> usize {
        self.by_ip.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ip.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = NodeSpec> + '_ {
        self.by_ip
            .iter()
            .map(|(&ip, &pod_cidr)| NodeSpec { ip, pod_cidr })
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
        // The CIDRs held are disjoint, so only the last one starting at or
        // before this one's end can overlap it.
        let (start, end) = span(node.pod_cidr);
        let nearest = self
            .by_cidr_start
            .range(..=end)
            .rev()
            .map(|(_, ip)| *ip)
            .find(|ip| *ip != node.ip);
        if let Some(other) = nearest {
            let other_cidr = self.by_ip[&other];
            if span(other_cidr).1 >= start {
                return Err((
                    "pod_cidr",
                    format!("{} overlaps {other_cidr} of node {other}", node.pod_cidr),
                ));
            }
        }
        Ok(())
    }

    /// Adds or replaces `node` after checking it; returns whether anything changed.
    pub fn insert(&mut self, node: NodeSpec, local: &LocalFacts) -> Result<bool, Violation> {
        if self.get(node.ip) == Some(node.pod_cidr) {
            return Ok(false);
        }
        self.check(&node, local)?;
        self.remove(node.ip);
        self.put_back(node);
        Ok(true)
    }

    /// Re-inserts a node that was in the set, unchecked (it was checked then).
    fn put_back(&mut self, node: NodeSpec) {
        self.by_ip.insert(node.ip, node.pod_cidr);
        self.by_cidr_start.insert(span(node.pod_cidr).0, node.ip);
    }

    pub fn remove(&mut self, ip: Ipv4Addr) -> bool {
        let Some(cidr) = self.by_ip.remove(&ip) else {
            return false;
        };
        self.by_cidr_start.remove(&span(cidr).0);
        true
    }
}

/// The remote nodes each source contributed, and the effective set they
/// make together.
#[derive(Debug, Clone, Default)]
pub struct RemoteNodes {
    contributed: BTreeMap<Source, BTreeMap<Ipv4Addr, Ipv4Network>>,
    effective: NodeSet,
}

impl RemoteNodes {
    pub fn effective(&self) -> &NodeSet {
        &self.effective
    }

    /// The node `ip` as its highest-ranking source says.
    fn winner(&self, ip: Ipv4Addr) -> Option<NodeSpec> {
        Source::ALL.iter().find_map(|source| {
            let pod_cidr = *self.contributed.get(source)?.get(&ip)?;
            Some(NodeSpec { ip, pod_cidr })
        })
    }

    /// Recomputes the effective entry of `ips` after their contributions
    /// changed; all or nothing, in O(changes * log n). Returns the IPs whose
    /// effective entry changed.
    fn settle(
        &mut self,
        ips: &[Ipv4Addr],
        local: &LocalFacts,
    ) -> Result<Vec<Ipv4Addr>, (Ipv4Addr, Violation)> {
        let mut changed = Vec::new();
        let mut taken_out = Vec::new();
        // Out first, so that two nodes trading CIDRs are not in each other's way.
        for &ip in ips {
            let current = self.effective.get(ip);
            if current != self.winner(ip).map(|node| node.pod_cidr) {
                if let Some(pod_cidr) = current {
                    self.effective.remove(ip);
                    taken_out.push(NodeSpec { ip, pod_cidr });
                }
                changed.push(ip);
            }
        }
        for (index, &ip) in changed.iter().enumerate() {
            let Some(node) = self.winner(ip) else {
                continue;
            };
            if let Err(violation) = self.effective.insert(node, local) {
                for &put_in in &changed[..index] {
                    self.effective.remove(put_in);
                }
                for node in taken_out {
                    self.effective.put_back(node);
                }
                return Err((ip, violation));
            }
        }
        Ok(changed)
    }

    /// `source` now lists exactly `nodes`: its earlier nodes that are not
    /// among them are withdrawn. All or nothing: if any resulting node breaks
    /// a rule, nothing changes.
    pub fn replace(
        &mut self,
        source: Source,
        nodes: &[NodeSpec],
        local: &LocalFacts,
    ) -> Result<Vec<Ipv4Addr>, (Ipv4Addr, Violation)> {
        let listed: BTreeMap<Ipv4Addr, Ipv4Network> =
            nodes.iter().map(|node| (node.ip, node.pod_cidr)).collect();
        let before = self.contributed.insert(source, listed.clone());
        let mut touched: Vec<Ipv4Addr> = listed.keys().copied().collect();
        touched.extend(before.iter().flat_map(|old| old.keys().copied()));
        touched.sort_unstable();
        touched.dedup();
        let settled = self.settle(&touched, local);
        if settled.is_err() {
            self.restore(source, before);
        }
        settled
    }

    /// `source` lists `node` (too).
    pub fn upsert(
        &mut self,
        source: Source,
        node: NodeSpec,
        local: &LocalFacts,
    ) -> Result<Vec<Ipv4Addr>, (Ipv4Addr, Violation)> {
        // Only this node's earlier entry is kept for the undo: copying the
        // source's whole set would make every event cost O(nodes).
        let listed = self.contributed.entry(source).or_default();
        let before = listed.insert(node.ip, node.pod_cidr);
        let settled = self.settle(&[node.ip], local);
        if settled.is_err() {
            let listed = self.contributed.entry(source).or_default();
            match before {
                Some(pod_cidr) => listed.insert(node.ip, pod_cidr),
                None => listed.remove(&node.ip),
            };
        }
        settled
    }

    /// `source` no longer lists `ip` (`None`: no source does, an operator's
    /// removal). Returns the IPs whose effective entry changed.
    pub fn withdraw(
        &mut self,
        source: Option<Source>,
        ip: Ipv4Addr,
        local: &LocalFacts,
    ) -> Vec<Ipv4Addr> {
        for (from, nodes) in &mut self.contributed {
            if source.is_none_or(|source| source == *from) {
                nodes.remove(&ip);
            }
        }
        // Falling back to a lower-ranking source's entry can break a rule
        // (its CIDR overlaps another node's); then the node goes altogether.
        self.settle(&[ip], local).unwrap_or_else(|_| {
            self.effective.remove(ip);
            vec![ip]
        })
    }

    fn restore(&mut self, source: Source, before: Option<BTreeMap<Ipv4Addr, Ipv4Network>>) {
        match before {
            Some(nodes) => self.contributed.insert(source, nodes),
            None => self.contributed.remove(&source),
        };
    }
}
