//! from-tunnel: TC ingress on the collect_md VXLAN device, after the kernel
//! decapsulated a packet. Only known nodes on our VNI get through, and only
//! with inner sources they own.

use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use dataplane_common::Counter;
use network_types::eth::{EthHdr, EtherType};

use crate::{
    counters::{drop, verdict},
    ipv4::{addresses, forward_hop},
    local::{Redirect, deliver},
    maps::{endpoint, node_config, remote_node},
    packet::{header, linearize_headers},
    tunnel,
};

/// `skb->pkt_type` for packets addressed to this host.
const PACKET_HOST: u32 = 0;

pub fn handle(ctx: &TcContext) -> i32 {
    let Some((outer_source, vni)) = tunnel::received_from(ctx) else {
        return drop(ctx, Counter::DropTunnelError);
    };
    let Some(sender) = remote_node(&outer_source) else {
        return drop(ctx, Counter::DropUnknownTunnelSource);
    };
    let config = node_config();
    if vni != config.vni {
        return drop(ctx, Counter::DropWrongVni);
    }

    linearize_headers(ctx);
    let is_ipv4 = header::<EthHdr>(ctx, 0)
        // SAFETY: bounds checked by `header`.
        .is_some_and(|eth| unsafe { (*eth).ether_type } == EtherType::Ipv4 as u16);
    let Some((src, dst)) = addresses(ctx).filter(|_| is_ipv4) else {
        return drop(ctx, Counter::DropMalformed);
    };
    // A node speaks for its own pods and itself, never for another node's pods.
    if src != outer_source && !sender.pod_cidr.contains(src) {
        return drop(ctx, Counter::DropSpoofedSource);
    }

    if dst == config.node_ip {
        // The inner destination MAC is not ours; tell the stack it is.
        if ctx.change_type(PACKET_HOST).is_err() {
            return drop(ctx, Counter::DropTunnelError);
        }
        return verdict(ctx, Counter::DecapsulatedToHost, TC_ACT_OK);
    }
    match endpoint(&dst) {
        Some(destination) if forward_hop(ctx) => deliver(
            ctx,
            &destination,
            Redirect::Peer,
            Counter::DecapsulatedToPod,
        ),
        Some(_) => drop(ctx, Counter::DropTtlExceeded),
        None => drop(ctx, Counter::DropUnknownEndpoint),
    }
}
