//! Where a destination address lives, from the maps.

use dataplane_common::{Endpoint, Ipv4Octets, NodeConfig};

use crate::maps::{endpoint, tunnel_route};

pub enum Destination {
    /// A pod on this node.
    LocalPod(Endpoint),
    /// A pod behind the tunnel, on the node with this IP.
    RemotePod(Ipv4Octets),
    /// In this node's pod CIDR, but no such pod.
    UnknownLocalPod,
    /// In the cluster CIDR, but on no known node.
    UnknownNode,
    /// Not a pod address.
    Outside,
}

#[inline(always)]
pub fn lookup(dst: Ipv4Octets, config: &NodeConfig) -> Destination {
    if let Some(destination) = endpoint(&dst) {
        return Destination::LocalPod(destination);
    }
    if config.pod_cidr.contains(dst) {
        return Destination::UnknownLocalPod;
    }
    if config.tunnel_enabled()
        && let Some(route) = tunnel_route(dst)
    {
        return Destination::RemotePod(route.node_ip);
    }
    if config.cluster_cidr.contains(dst) {
        return Destination::UnknownNode;
    }
    Destination::Outside
}
