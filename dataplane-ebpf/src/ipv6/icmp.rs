//! ICMPv6 errors a router sends a pod (RFC 4443): "packet too big" for
//! packets larger than the path to the destination's node (IPv6 routers
//! never fragment: the pod learns the path MTU), "time exceeded" when the
//! hop limit runs out (traceroute from a pod shows this node), and
//! "destination unreachable, administratively prohibited" for packets the
//! node does not forward (an error stacks take as final: a pod's connection
//! fails at once, where "no route" would leave it to its retries). From
//! the node's IPv6 address; none without one.

use core::mem::{offset_of, size_of};

use aya_ebpf::{
    bindings::bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, helpers::bpf_skb_change_tail,
    programs::TcContext,
};
use dataplane_common::{Counter, Ipv6Octets, NodeConfig};
use network_types::{eth::EthHdr, ip::Ipv6Hdr};

use super::{ICMPV6, L4_AT6, icmpv6_checksum};
use crate::{
    counters::{Outcome, finish, redirect_out},
    packet::{IP_AT, header, ingress_ifindex, load},
};

const DEST_UNREACH: u8 = 1;
const PACKET_TOO_BIG: u8 = 2;
const TIME_EXCEEDED: u8 = 3;
/// ICMPv6 types below this are errors, never answered with one.
const FIRST_INFORMATIONAL: u8 = 128;
/// Code of `DEST_UNREACH`: communication administratively prohibited.
const PROHIBITED: u8 = 1;
/// Code of `TIME_EXCEEDED`: the hop limit ran out in transit.
const HOP_LIMIT_EXCEEDED: u8 = 0;

/// Version 6, traffic class and flow label 0.
const PLAIN_VCF: [u8; 4] = [0x60, 0, 0, 0];
const ERROR_HOP_LIMIT: u8 = 64;

/// An error's message (its header, then the quote of the offending
/// packet): the packet's fixed header and 64 bytes past it (past a
/// fragment or other extension header to the transport header), or, of a
/// shorter packet, 40 (a TCP header with its options) or 8 (the ports).
/// Never shorter than the packet allows: the kernel keeps a packet whose
/// checksum is left to the device (a pod's TCP) long enough to hold it.
const LONG_MESSAGE: usize = quoting(64);
const MEDIUM_MESSAGE: usize = quoting(40);
const SHORT_MESSAGE: usize = quoting(8);

/// The length of an error message quoting the fixed header and `past` bytes.
const fn quoting(past: usize) -> usize {
    size_of::<ErrorHeader>() + Ipv6Hdr::LEN + past
}

/// An ICMPv6 error's header: type, code, checksum and the 4 bytes each
/// type gives a meaning (the MTU of "packet too big", else zero).
#[repr(C)]
#[derive(Clone, Copy)]
struct ErrorHeader {
    kind: u8,
    code: u8,
    checksum: [u8; 2],
    data: [u8; 4],
}

/// The headers put before the quote.
#[repr(C)]
#[derive(Clone, Copy)]
struct ErrorHeaders {
    eth: EthHdr,
    ip: Ipv6Hdr,
    icmp: ErrorHeader,
}

/// What the offending packet carries past its extension headers (the
/// upper-layer protocol and where its header is), so that an ICMPv6
/// error is never answered with another.
#[derive(Clone, Copy)]
pub struct Offending {
    pub protocol: u8,
    pub at: usize,
}

/// Turns the packet, too big for the path (`mtu`), into a "packet too big"
/// to its sender, sent back out of the veth it came in.
#[inline(never)]
pub fn packet_too_big(ctx: &TcContext, config: &NodeConfig, offending: Offending, mtu: u32) -> i32 {
    let error = (PACKET_TOO_BIG, 0, mtu.to_be_bytes());
    finish(
        ctx,
        send(ctx, config, offending, error, Counter::DropFragNeeded),
    )
}

/// Turns the packet, whose hop limit would run out here, into a "time
/// exceeded" to its sender, sent back as `packet_too_big` does.
#[inline(never)]
pub fn time_exceeded(ctx: &TcContext, config: &NodeConfig, offending: Offending) -> i32 {
    let error = (TIME_EXCEEDED, HOP_LIMIT_EXCEEDED, [0; 4]);
    finish(
        ctx,
        send(ctx, config, offending, error, Counter::DropTtlExceeded),
    )
}

/// Turns the packet, which the node does not forward, into a "destination
/// unreachable, administratively prohibited" to its sender, sent back as
/// `packet_too_big` does.
#[inline(never)]
pub fn prohibited(ctx: &TcContext, config: &NodeConfig, offending: Offending) -> i32 {
    let error = (DEST_UNREACH, PROHIBITED, [0; 4]);
    finish(
        ctx,
        send(ctx, config, offending, error, Counter::DropIpv6NotForwarded),
    )
}

/// Replaces the packet with the error (type, code, data) quoting it,
/// counted under `counter` whether it is sent or not.
#[inline(always)]
fn send(
    ctx: &TcContext,
    config: &NodeConfig,
    offending: Offending,
    error: (u8, u8, [u8; 4]),
    counter: Counter,
) -> Outcome {
    let about_an_error = offending.protocol == ICMPV6
        && load::<u8>(ctx, offending.at).is_ok_and(|kind| kind < FIRST_INFORMATIONAL);
    if about_an_error || config.node_ipv6 == [0; 16] {
        return Err(counter);
    }
    let quotable = (ctx.len() as usize).saturating_sub(IP_AT) + size_of::<ErrorHeader>();
    if quotable >= LONG_MESSAGE {
        send_quoting::<LONG_MESSAGE>(ctx, config, error, counter)
    } else if quotable >= MEDIUM_MESSAGE {
        send_quoting::<MEDIUM_MESSAGE>(ctx, config, error, counter)
    } else {
        send_quoting::<SHORT_MESSAGE>(ctx, config, error, counter)
    }
}

/// Keeps the first bytes of the packet's IP header on (the quote), puts
/// the error's headers before them, and sends it back: built in place,
/// off the scarce stack. `M`: the error message's length.
#[inline(always)]
fn send_quoting<const M: usize>(
    ctx: &TcContext,
    config: &NodeConfig,
    (kind, code, data): (u8, u8, [u8; 4]),
    counter: Counter,
) -> Outcome {
    let quote_len = M - size_of::<ErrorHeader>();
    let room = (Ipv6Hdr::LEN + size_of::<ErrorHeader>()) as i32;
    // The quote alone after the Ethernet header, then room before it for
    // the error's headers, written in place (the stack is scarce).
    // SAFETY: plain helper call; packet pointers are taken after it.
    let cut = unsafe { bpf_skb_change_tail(ctx.skb.skb, (IP_AT + quote_len) as u32, 0) };
    if cut < 0 || ctx.adjust_room(room, BPF_ADJ_ROOM_MAC, 0).is_err() {
        return Err(counter);
    }
    let quoted_source_at = L4_AT6 + size_of::<ErrorHeader>() + offset_of!(Ipv6Hdr, src_addr);
    let (Some(headers), Some(quoted_source)) = (
        header::<ErrorHeaders>(ctx, 0),
        header::<Ipv6Octets>(ctx, quoted_source_at),
    ) else {
        return Err(counter);
    };
    // SAFETY: both bounds checked above; they do not overlap.
    let (headers, sender) = unsafe { (&mut *headers, *quoted_source) };
    let eth = &mut headers.eth;
    core::mem::swap(&mut eth.dst_addr, &mut eth.src_addr);
    headers.ip = Ipv6Hdr {
        vcf: PLAIN_VCF,
        payload_len: (M as u16).to_be_bytes(),
        next_hdr: ICMPV6,
        hop_limit: ERROR_HOP_LIMIT,
        src_addr: config.node_ipv6,
        dst_addr: sender,
    };
    headers.icmp = ErrorHeader {
        kind,
        code,
        checksum: [0; 2],
        data,
    };
    let checksum = icmpv6_checksum::<M>(ctx).ok_or(counter)?;
    let checksum_at = L4_AT6 + offset_of!(ErrorHeader, checksum);
    if ctx.store(checksum_at, &checksum, 0).is_err() {
        return Err(counter);
    }
    redirect_out(ctx, ingress_ifindex(ctx), counter, counter)
}
