//! ICMP: the message types the programs read or send, and the errors a
//! router sends a pod: "fragmentation needed" for packets too big for the
//! tunnel (RFC 1191: the pod learns the path MTU instead of having its packet
//! fragmented or lost), and "time exceeded" for packets whose TTL runs out
//! (so traceroute from a pod shows this node), and "port unreachable" for
//! connections to a Service without backends.

use core::mem::{offset_of, size_of};

use aya_ebpf::{helpers::bpf_skb_change_tail, programs::TcContext};
use dataplane_common::{Counter, Ipv4Octets, NodeConfig, checksum};
use network_types::{
    eth::{EthHdr, EtherType},
    icmp::Icmpv4Hdr,
    ip::{IpProto, Ipv4Hdr},
};

use crate::{
    counters::{Outcome, finish, redirect_out},
    packet::{IP_AT, L4_AT, PLAIN_VIHL, bytes_of, header, ingress_ifindex, load, raw2, raw4},
};

pub const ECHO_REPLY: u8 = 0;
pub const DEST_UNREACH: u8 = 3;
pub const ECHO_REQUEST: u8 = 8;
pub const TIME_EXCEEDED: u8 = 11;
/// Where an echo's identifier sits in its header (the first half of its data).
pub const ECHO_ID_OFFSET: usize = offset_of!(Icmpv4Hdr, data);

/// An echo request's or reply's identifier.
#[inline(always)]
pub fn echo_id(icmp: &Icmpv4Hdr) -> [u8; 2] {
    [icmp.data[0], icmp.data[1]]
}

/// Code of `DEST_UNREACH`: nothing listens on the port.
const PORT_UNREACHABLE: u8 = 3;
/// Code of `DEST_UNREACH`: fragmentation needed and DF set.
const FRAG_NEEDED: u8 = 4;
/// Code of `TIME_EXCEEDED`: the TTL ran out in transit.
const TTL_EXCEEDED_IN_TRANSIT: u8 = 0;

const DONT_FRAGMENT: u8 = 0b010;
/// Type of service of the errors sent: precedence "internetwork control",
/// as routers send them.
const INTERNETWORK_CONTROL: u8 = 0xc0;

/// The packet an ICMP error quotes: its IPv4 header (without options) and
/// the first 8 bytes of its payload.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Quote {
    pub ip: Ipv4Hdr,
    pub payload: [u8; 8],
}

/// Where the packet an ICMP error quotes starts, after the error's header,
/// and its payload (the first bytes of its transport header).
pub const QUOTE_AT: usize = L4_AT + Icmpv4Hdr::LEN;
pub const QUOTE_PAYLOAD_AT: usize = QUOTE_AT + Ipv4Hdr::LEN;

/// What the programs use of the IPv4 header an ICMP error quotes (a
/// quarter of the bytes on the scarce stack).
#[derive(Clone, Copy)]
pub struct QuotedHeader {
    pub src: Ipv4Octets,
    pub dst: Ipv4Octets,
    pub protocol: u8,
    pub checksum: [u8; 2],
}

/// The IPv4 header (without options) an ICMP packet quotes, if it is an
/// error about a packet (destination unreachable, time exceeded).
#[inline(always)]
pub fn quoted_header(ctx: &TcContext) -> Option<QuotedHeader> {
    let kind = ctx.load::<u8>(L4_AT + offset_of!(Icmpv4Hdr, type_)).ok()?;
    if kind != DEST_UNREACH && kind != TIME_EXCEEDED {
        return None;
    }
    let field = |offset: usize| QUOTE_AT + offset;
    if ctx.load::<u8>(QUOTE_AT).ok()? != PLAIN_VIHL {
        return None;
    }
    Some(QuotedHeader {
        src: ctx.load(field(offset_of!(Ipv4Hdr, src_addr))).ok()?,
        dst: ctx.load(field(offset_of!(Ipv4Hdr, dst_addr))).ok()?,
        protocol: ctx.load(field(offset_of!(Ipv4Hdr, proto))).ok()?,
        checksum: ctx.load(field(offset_of!(Ipv4Hdr, check))).ok()?,
    })
}

/// Rewrites an address of the quoted header `quoted` (at `address_offset`
/// within it) and a port of its payload (at `port_at` in the packet),
/// keeping the quoted header's checksum and the ICMP checksum right. (The
/// quoted transport checksum is left: no stack checks it.)
#[inline(always)]
pub fn rewrite_quote(
    ctx: &TcContext,
    quoted: &QuotedHeader,
    address_offset: usize,
    (old_address, new_address): ([u8; 4], [u8; 4]),
    port_at: usize,
    (old_port, new_port): ([u8; 2], [u8; 2]),
) -> Outcome<()> {
    let old_checksum = quoted.checksum;
    let new_checksum =
        checksum::replace4(u16::from_be_bytes(old_checksum), old_address, new_address)
            .to_be_bytes();
    let icmp_checksum_at = L4_AT + offset_of!(Icmpv4Hdr, check);
    let diff =
        |old: u64, new: u64, size: u64| ctx.l4_csum_replace(icmp_checksum_at, old, new, size);
    diff(raw4(old_address), raw4(new_address), 4)
        .and_then(|()| diff(raw2(old_checksum), raw2(new_checksum), 2))
        .and_then(|()| diff(raw2(old_port), raw2(new_port), 2))
        .and_then(|()| ctx.store(QUOTE_AT + address_offset, &new_address, 0))
        .and_then(|()| ctx.store(QUOTE_AT + offset_of!(Ipv4Hdr, check), &new_checksum, 0))
        .and_then(|()| ctx.store(port_at, &new_port, 0))
        .map_err(|_| Counter::DropMalformed)
}

/// An ICMP error to a pod, whole.
#[repr(C)]
#[derive(Clone, Copy)]
struct IcmpError {
    eth: EthHdr,
    ip: Ipv4Hdr,
    icmp: Icmpv4Hdr,
    quote: Quote,
}

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
    header::<Ipv4Hdr>(ctx, IP_AT)
        .is_some_and(|ip| unsafe { (*ip).frag_flags() } & DONT_FRAGMENT != 0)
}

/// Turns the packet into an ICMP fragmentation-needed (next-hop MTU `mtu`)
/// from this node to its sender, and sends it back out of the veth it came in.
// Out of line: its buffers would otherwise sit in every caller's stack frame.
#[inline(never)]
pub fn frag_needed(ctx: &TcContext, config: &NodeConfig, mtu: u32) -> i32 {
    let next_hop_mtu = [0, 0, (mtu >> 8) as u8, mtu as u8];
    let error = (DEST_UNREACH, FRAG_NEEDED, next_hop_mtu);
    finish(ctx, send_error(ctx, config, error, Counter::DropFragNeeded))
}

/// Turns the packet, whose TTL would run out here, into an ICMP time
/// exceeded from this node to its sender, sent back as `frag_needed` does.
#[inline(never)]
pub fn time_exceeded(ctx: &TcContext, config: &NodeConfig) -> i32 {
    let error = (TIME_EXCEEDED, TTL_EXCEEDED_IN_TRANSIT, [0; 4]);
    finish(
        ctx,
        send_error(ctx, config, error, Counter::DropTtlExceeded),
    )
}

/// Turns the packet, to a Service frontend without backends, into an ICMP
/// port unreachable to its sender (kube-proxy's REJECT), sent back as
/// `frag_needed` does: the client's connect or send fails at once.
#[inline(never)]
pub fn port_unreachable(ctx: &TcContext, config: &NodeConfig, reason: Counter) -> i32 {
    let error = (DEST_UNREACH, PORT_UNREACHABLE, [0; 4]);
    finish(ctx, send_error(ctx, config, error, reason))
}

/// Replaces the packet with the ICMP error (type, code, rest of header)
/// quoting it, counted under `counter` whether it is sent or not.
#[inline(always)]
fn send_error(
    ctx: &TcContext,
    config: &NodeConfig,
    (type_, code, data): (u8, u8, [u8; 4]),
    counter: Counter,
) -> Outcome {
    let original: EthHdr = load(ctx, 0)?;
    let quote: Quote = load(ctx, IP_AT)?;
    if quote.ip.vihl != PLAIN_VIHL {
        // Options in the header would not fit the quote; such packets are rare.
        return Err(counter);
    }
    let mut reply = IcmpError {
        eth: EthHdr {
            dst_addr: original.src_addr,
            src_addr: original.dst_addr,
            ether_type: EtherType::Ipv4 as u16,
        },
        ip: Ipv4Hdr {
            vihl: PLAIN_VIHL,
            tos: INTERNETWORK_CONTROL,
            tot_len: ((size_of::<IcmpError>() - IP_AT) as u16).to_be_bytes(),
            id: [0; 2],
            frags: [0; 2],
            ttl: 64,
            proto: IpProto::Icmp as u8,
            check: [0; 2],
            src_addr: config.node_ip,
            dst_addr: quote.ip.src_addr,
        },
        icmp: Icmpv4Hdr {
            type_,
            code,
            check: [0; 2],
            data,
        },
        quote,
    };
    reply.ip.check = checksum::internet(bytes_of(&reply.ip)).to_be_bytes();
    let icmp_check = checksum::internet(&bytes_of(&reply)[IP_AT + Ipv4Hdr::LEN..]);
    reply.icmp.check = icmp_check.to_be_bytes();

    // SAFETY: plain helper call; packet pointers are not used after it.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, size_of::<IcmpError>() as u32, 0) } < 0
        || ctx.store(0, &reply, 0).is_err()
    {
        return Err(counter);
    }
    redirect_out(ctx, ingress_ifindex(ctx), counter, counter)
}
