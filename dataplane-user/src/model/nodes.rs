//! Remote nodes: their specs, how each is reached, the set whose pod CIDRs
//! never overlap, and the merge of what every source lists.

use std::{collections::BTreeMap, net::Ipv4Addr};

use ipnetwork::{Ipv4Network, Ipv6Network};
use serde::{Deserialize, Serialize};
use serde_with::serde_as;

use super::{NodeSet, Source, Violation, family::AnyFamily};

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
    /// Its IPv6 pod CIDR, on a dual-stack cluster (`Node.spec.podCIDRs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr_ipv6: Option<Ipv6Network>,
}

impl NodeSpec {
    /// A node of an IPv4 cluster.
    pub fn ipv4(ip: Ipv4Addr, pod_cidr: Ipv4Network) -> Self {
        Self {
            ip,
            pod_cidr,
            pod_cidr_ipv6: None,
        }
    }
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
    pub pod_cidr_ipv6: Option<Ipv6Network>,
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

/// The remote nodes each source contributed, and the effective set they
/// make together.
#[derive(Debug, Clone, Default)]
pub struct RemoteNodes {
    contributed: BTreeMap<Source, BTreeMap<Ipv4Addr, NodeSpec>>,
    effective: NodeSet,
}

impl RemoteNodes {
    pub fn effective(&self) -> &NodeSet {
        &self.effective
    }

    /// The node `ip` as its highest-ranking source says.
    fn winner(&self, ip: Ipv4Addr) -> Option<NodeSpec> {
        Source::ALL
            .iter()
            .find_map(|source| self.contributed.get(source)?.get(&ip).copied())
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
            if current != self.winner(ip) {
                if let Some(node) = current {
                    self.effective.remove(ip);
                    taken_out.push(node);
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
        let listed: BTreeMap<Ipv4Addr, NodeSpec> =
            nodes.iter().map(|node| (node.ip, *node)).collect();
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
        let before = listed.insert(node.ip, node);
        let settled = self.settle(&[node.ip], local);
        if settled.is_err() {
            let listed = self.contributed.entry(source).or_default();
            match before {
                Some(before) => listed.insert(node.ip, before),
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

    fn restore(&mut self, source: Source, before: Option<BTreeMap<Ipv4Addr, NodeSpec>>) {
        match before {
            Some(nodes) => self.contributed.insert(source, nodes),
            None => self.contributed.remove(&source),
        };
    }
}
