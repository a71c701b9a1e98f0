//! ICMP "fragmentation needed" for packets too big for the tunnel, answered
//! the way a router would (RFC 1191): the pod learns the path MTU instead of
//! having its packet fragmented or lost.

use aya_ebpf::{
    bindings::TC_ACT_REDIRECT,
    helpers::{bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};
use dataplane_common::{Counter, NodeConfig};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{
    counters::{drop, verdict},
    ipv4::checksum,
    packet::{header, ingress_ifindex},
};

const IPV4_HEADER: usize = Ipv4Hdr::LEN;
const ICMP_HEADER: usize = 8;
/// The offending packet's IPv4 header (without options) and 8 bytes of payload.
const QUOTED: usize = IPV4_HEADER + 8;
const IP_AT: usize = EthHdr::LEN;
const ICMP_AT: usize = IP_AT + IPV4_HEADER;
const QUOTE_AT: usize = ICMP_AT + ICMP_HEADER;
const REPLY_LEN: usize = QUOTE_AT + QUOTED;

const DONT_FRAGMENT: u8 = 0x40;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
const ICMP_PROTOCOL: u8 = 1;

/// Whether the IPv4 packet (not a GSO aggregate, whose segments are sized by
/// the sender) exceeds `mtu` while forbidding fragmentation.
#[inline(always)]
pub fn exceeds_mtu(ctx: &TcContext, mtu: u32) -> bool {
    // SAFETY: the context pointer is valid for the program's whole run.
    let gso_size = unsafe { (*ctx.skb.skb).gso_size };
    if gso_size != 0 || ctx.len() <= mtu + EthHdr::LEN as u32 {
        return false;
    }
    // SAFETY: bounds checked by `header`.
    header::<Ipv4Hdr>(ctx, EthHdr::LEN)
        .is_some_and(|ip| unsafe { (*ip).frags[0] } & DONT_FRAGMENT != 0)
}

/// Turns the packet into an ICMP fragmentation-needed (next-hop MTU `mtu`)
/// from this node to its sender, and sends it back out of the veth it came in.
// Out of line: its buffers would otherwise sit in every caller's stack frame.
#[inline(never)]
pub fn frag_needed(ctx: &TcContext, config: &NodeConfig, mtu: u32) -> i32 {
    let (Ok(original_eth), Ok(quoted)) = (ctx.load::<[u8; 12]>(0), ctx.load::<[u8; QUOTED]>(IP_AT))
    else {
        return drop(ctx, Counter::DropMalformed);
    };
    if quoted[0] != 0x45 {
        // Options in the header would not fit the quote; such packets are rare.
        return drop(ctx, Counter::DropFragNeeded);
    }
    let mut reply = [0u8; REPLY_LEN];
    reply[QUOTE_AT..].copy_from_slice(&quoted);

    reply[0..6].copy_from_slice(&original_eth[6..12]);
    reply[6..12].copy_from_slice(&original_eth[0..6]);
    reply[12..14].copy_from_slice(&0x0800u16.to_be_bytes());

    let ip = &mut reply[IP_AT..ICMP_AT];
    ip[0] = 0x45;
    ip[1] = 0xc0; // precedence "internetwork control", as routers send errors
    ip[2..4].copy_from_slice(&((REPLY_LEN - IP_AT) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = ICMP_PROTOCOL;
    ip[12..16].copy_from_slice(&config.node_ip);
    ip[16..20].copy_from_slice(&quoted[12..16]);
    let ip_sum = checksum(&reply[IP_AT..ICMP_AT]);
    reply[IP_AT + 10..IP_AT + 12].copy_from_slice(&ip_sum);

    reply[ICMP_AT] = ICMP_DEST_UNREACH;
    reply[ICMP_AT + 1] = ICMP_FRAG_NEEDED;
    reply[ICMP_AT + 6..ICMP_AT + 8].copy_from_slice(&(mtu as u16).to_be_bytes());
    let icmp_sum = checksum(&reply[ICMP_AT..]);
    reply[ICMP_AT + 2..ICMP_AT + 4].copy_from_slice(&icmp_sum);

    // SAFETY: plain helper call; packet pointers are not used after it.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, REPLY_LEN as u32, 0) } < 0
        || ctx.store(0, &reply, 0).is_err()
    {
        return drop(ctx, Counter::DropFragNeeded);
    }
    // SAFETY: plain helper call.
    let action = unsafe { bpf_redirect(ingress_ifindex(ctx), 0) } as i32;
    if action == TC_ACT_REDIRECT {
        verdict(ctx, Counter::DropFragNeeded, action)
    } else {
        drop(ctx, Counter::DropFragNeeded)
    }
}
