//! Remote nodes in the maps: each node's entry (`REMOTE_NODES`) and the
//! routes to its pod CIDRs (`NODE_ROUTES`, `NODE_ROUTES6`), written and
//! removed together.

use super::*;

/// A remote node as the maps hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgrammedNode {
    pub pod_cidr: Ipv4Network,
    /// Its IPv6 pod CIDR (dual stack).
    pub pod_cidr_ipv6: Option<Ipv6Network>,
    pub path: NodePath,
    /// Its MAC on the uplink, once learned (nodes on the uplink's network).
    pub mac: Option<[u8; 6]>,
}

/// The prefix of `cidr` in the map layout.
pub fn ipv4_cidr(cidr: Ipv4Network) -> Ipv4Cidr {
    Ipv4Cidr::new(cidr.network().octets(), cidr.prefix())
}

/// An IPv6 network as the programs read it.
pub fn ipv6_cidr(cidr: Ipv6Network) -> Ipv6Cidr {
    Ipv6Cidr::new(cidr.network().octets(), cidr.prefix())
}

fn path_value(path: NodePath) -> u8 {
    match path {
        NodePath::Tunnel => node_path::TUNNEL,
        NodePath::Direct => node_path::DIRECT,
    }
}

impl Maps {
    /// Makes `node.pod_cidr` reachable at `node_ip` by `node.path`. The node
    /// entry goes first: tunnel traffic from a node is accepted before any of
    /// ours is sent to it. On failure nothing is left half-inserted.
    pub fn insert_remote_node(
        &mut self,
        node_ip: Ipv4Addr,
        node: ProgrammedNode,
    ) -> Result<(), MapsError> {
        let ProgrammedNode {
            pod_cidr,
            pod_cidr_ipv6,
            path,
            mac,
        } = node;
        let full = |name: &'static str| {
            move |source: MapError| {
                if is_errno(&source, nix::libc::E2BIG) || is_errno(&source, nix::libc::ENOSPC) {
                    MapsError::NodesFull
                } else {
                    access(name)(source)
                }
            }
        };
        let node = RemoteNode {
            pod_cidr: ipv4_cidr(pod_cidr),
            mac: mac.unwrap_or_default(),
            path: path_value(path),
            mac_known: u8::from(mac.is_some()),
        };
        self.remote_nodes
            .insert(&node_ip.octets(), &node)
            .map_err(full(names::REMOTE_NODES_MAP))?;
        let route = NodeRoute {
            node_ip: node_ip.octets(),
            path: path_value(path),
            _pad: [0; 3],
        };
        let routed = self
            .node_routes
            .insert(&route_key(pod_cidr), &route)
            .map_err(full(names::NODE_ROUTES_MAP));
        let routed6 = routed.and_then(|()| match pod_cidr_ipv6 {
            Some(cidr) => self
                .node_routes6
                .insert(&route_key6(cidr), &route)
                .map_err(full(names::NODE_ROUTES6_MAP))
                .inspect_err(|_| {
                    let _ = self.node_routes.remove(&route_key(pod_cidr));
                }),
            None => Ok(()),
        });
        if let Err(error) = routed6 {
            let _ = self.remote_nodes.remove(&node_ip.octets());
            return Err(error);
        }
        Ok(())
    }

    /// Removes a node's route, then the node itself (so replies still
    /// in flight from it are accepted until the last moment).
    pub fn remove_remote_node(
        &mut self,
        node_ip: Ipv4Addr,
        node: &ProgrammedNode,
    ) -> Result<bool, MapsError> {
        if let Some(cidr) = node.pod_cidr_ipv6 {
            removed(
                self.node_routes6.remove(&route_key6(cidr)),
                names::NODE_ROUTES6_MAP,
            )?;
        }
        removed(
            self.node_routes.remove(&route_key(node.pod_cidr)),
            names::NODE_ROUTES_MAP,
        )?;
        removed(
            self.remote_nodes.remove(&node_ip.octets()),
            names::REMOTE_NODES_MAP,
        )
    }

    /// The nodes as the maps hold them, their IPv6 pod CIDRs found by the
    /// routes to them.
    pub fn remote_nodes(&self) -> Result<Vec<(Ipv4Addr, ProgrammedNode)>, MapsError> {
        let ipv6: std::collections::BTreeMap<Ipv4Octets, Ipv6Network> = self
            .node_routes6
            .entries()
            .map_err(access(names::NODE_ROUTES6_MAP))?
            .into_iter()
            .filter_map(|(key, route)| {
                let cidr = Ipv6Network::new(key.data().into(), key.prefix_len() as u8).ok()?;
                Some((route.node_ip, cidr))
            })
            .collect();
        self.remote_nodes
            .entries()
            .map_err(access(names::REMOTE_NODES_MAP))?
            .into_iter()
            .map(|(ip, node)| {
                let cidr = Ipv4Network::new(node.pod_cidr.addr.into(), node.pod_cidr.prefix_len)
                    .map_err(|_| MapsError::Corrupt {
                        name: names::REMOTE_NODES_MAP,
                        detail: format!(
                            "prefix length {} for node {ip:?}",
                            node.pod_cidr.prefix_len
                        ),
                    })?;
                let path = if node.path == node_path::DIRECT {
                    NodePath::Direct
                } else {
                    NodePath::Tunnel
                };
                let node = ProgrammedNode {
                    pod_cidr: cidr,
                    pod_cidr_ipv6: ipv6.get(&ip).copied(),
                    path,
                    mac: (node.mac_known != 0).then_some(node.mac),
                };
                Ok((Ipv4Addr::from(ip), node))
            })
            .collect()
    }
}
