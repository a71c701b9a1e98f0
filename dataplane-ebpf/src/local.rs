//! Delivery to a pod on this node: MAC rewrite, TTL decrement, and a redirect
//! straight into the destination pod's namespace.

use aya_ebpf::{bindings::TC_ACT_REDIRECT, helpers::bpf_redirect_peer, programs::TcContext};
use dataplane_common::{Counter, Endpoint};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{
    counters::{drop, verdict},
    packet::header,
};

pub fn deliver(ctx: &TcContext, destination: &Endpoint) -> i32 {
    let (Some(eth), Some(ip)) = (
        header::<EthHdr>(ctx, 0),
        header::<Ipv4Hdr>(ctx, EthHdr::LEN),
    ) else {
        return drop(ctx, Counter::DropMalformed);
    };
    // SAFETY: both headers are bounds checked above.
    let (eth, ip) = unsafe { (&mut *eth, &mut *ip) };

    if ip.ttl <= 1 {
        return drop(ctx, Counter::DropTtlExceeded);
    }
    decrement_ttl(ip);
    eth.src_addr = destination.host_mac;
    eth.dst_addr = destination.pod_mac;

    // SAFETY: plain helper call.
    let action = unsafe { bpf_redirect_peer(destination.host_ifindex, 0) } as i32;
    if action == TC_ACT_REDIRECT {
        verdict(ctx, Counter::ForwardedLocal, action)
    } else {
        drop(ctx, Counter::DropStaleEndpoint)
    }
}

/// RFC 1624 incremental update: TTL is the high byte of its 16-bit word, so
/// the checksum (one's complement) goes up by 0x0100.
#[inline(always)]
fn decrement_ttl(ip: &mut Ipv4Hdr) {
    let sum = u32::from(u16::from_be_bytes(ip.check)) + 0x0100;
    let folded = (sum & 0xffff) + (sum >> 16);
    ip.check = (folded as u16).to_be_bytes();
    ip.ttl -= 1;
}
