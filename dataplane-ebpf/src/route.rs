//! Where a destination address lives, from the maps.

use dataplane_common::{Endpoint, Ipv4Octets, NodeConfig, NodeRoute};

use crate::maps::{endpoint, is_host_address, node_route};

pub enum Destination {
    /// A pod on this node.
    LocalPod(Endpoint),
    /// A pod of another node: that node's IP and how it is reached.
    RemotePod(NodeRoute),
    /// An address of this node itself (e.g. a gateway address in the pod CIDR).
    Host,
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
        return if is_host_address(&dst, config) {
            Destination::Host
        } else {
            Destination::UnknownLocalPod
        };
    }
    // Pod-to-pod across nodes pays for no host address lookup.
    if config.tunnel_enabled()
        && let Some(route) = node_route(dst)
    {
        return Destination::RemotePod(route);
    }
    if is_host_address(&dst, config) {
        return Destination::Host;
    }
    if config.cluster_cidr.contains(dst) {
        return Destination::UnknownNode;
    }
    Destination::Outside
}
