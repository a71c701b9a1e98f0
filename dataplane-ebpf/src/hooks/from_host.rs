//! from-host: TC egress on the node's uplink. The node has no route to any
//! pod: its packets for pod addresses leave by the default route and are
//! taken here, into a local pod or on to the pod's node. Everything else
//! passes, and so does every packet the node did not make itself (one the
//! programs sent on to a node directly comes through here as it is).

use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use dataplane_common::Counter;

use crate::{
    counters::{Outcome, finish},
    direct,
    ipv4::checked_header,
    local::{Redirect, deliver},
    maps::node_config,
    packet::{is_ipv4, made_by_the_node},
    route::{Destination, lookup},
};

pub fn handle(ctx: &TcContext) -> i32 {
    finish(ctx, to_pods(ctx))
}

#[inline(always)]
fn to_pods(ctx: &TcContext) -> Outcome {
    if !made_by_the_node(ctx) {
        return Ok(TC_ACT_OK);
    }
    let is_ipv4 = is_ipv4(ctx);
    let Some((src, dst)) = checked_header(ctx)
        .map(|ip| (ip.src_addr, ip.dst_addr))
        .filter(|_| is_ipv4)
    else {
        return Ok(TC_ACT_OK);
    };
    let config = node_config();
    match lookup(dst, config) {
        Destination::LocalPod(destination) => {
            deliver(ctx, &destination, Redirect::Egress, Counter::HostToPod)
        }
        // The remote node accepts (and answers the same way) only sources
        // this node speaks for: its IP and its pod CIDR.
        Destination::RemotePod(route) if src == config.node_ip || config.pod_cidr.contains(src) => {
            Ok(direct::from_host_to_node(ctx, config, &route))
        }
        Destination::RemotePod(_) => Err(Counter::DropHostSourceUnroutable),
        Destination::UnknownLocalPod => Err(Counter::DropUnknownEndpoint),
        Destination::UnknownNode => Err(Counter::DropUnknownNode),
        // The node's own traffic, including the tunnel's outer packets.
        Destination::Host | Destination::Outside => Ok(TC_ACT_OK),
    }
}
