//! from-pod: TC ingress on the host side of a pod veth.

use aya_ebpf::programs::TcContext;
use dataplane_common::Counter;
use network_types::{
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
};

use crate::{
    arp,
    counters::{drop, pass_to_host},
    local,
    maps::{endpoint, node_config},
    packet::{header, ingress_ifindex, linearize_headers},
};

pub fn handle(ctx: &TcContext) -> i32 {
    linearize_headers(ctx);
    let Some(eth) = header::<EthHdr>(ctx, 0) else {
        return drop(ctx, Counter::DropMalformed);
    };
    // SAFETY: bounds checked by `header`.
    let ether_type = unsafe { (*eth).ether_type };
    if ether_type == EtherType::Ipv4 as u16 {
        ipv4(ctx)
    } else if ether_type == EtherType::Arp as u16 {
        arp::answer_request(ctx)
    } else {
        pass_to_host(ctx)
    }
}

fn ipv4(ctx: &TcContext) -> i32 {
    let Some(ip) = header::<Ipv4Hdr>(ctx, EthHdr::LEN) else {
        return drop(ctx, Counter::DropMalformed);
    };
    // SAFETY: bounds checked by `header`.
    let (vihl, src, dst) = unsafe { ((*ip).vihl, (*ip).src_addr, (*ip).dst_addr) };
    if vihl >> 4 != 4 || vihl & 0x0f < 5 {
        return drop(ctx, Counter::DropMalformed);
    }

    // A pod may only send from its own address, and only through its own veth.
    match endpoint(&src) {
        Some(source) if source.host_ifindex == ingress_ifindex(ctx) => {}
        _ => return drop(ctx, Counter::DropSpoofedSource),
    }

    if let Some(destination) = endpoint(&dst) {
        return local::deliver(ctx, &destination);
    }
    if node_config().in_pod_cidr(dst) {
        // Never let the host stack guess where an unknown local pod address goes.
        return drop(ctx, Counter::DropUnknownEndpoint);
    }
    pass_to_host(ctx)
}
