//! Neighbour discovery from pods: a solicitation for any address but the
//! pod's own (its gateway, whatever address the main plugin gave it) is
//! answered with the host veth MAC, so the node needs no gateway address
//! or proxy NDP for it; advertisements answering the node's own
//! solicitations go up to it; a pod's router solicitations, advertisements
//! and redirects reach no one (the host veth would otherwise learn routes
//! from them: CVE-2020-10749's class), nor does duplicate address
//! detection get an answer (it would make the pod give its address up).

use aya_ebpf::programs::TcContext;
use dataplane_common::{Counter, Ipv6Octets};
use network_types::{eth::EthHdr, ip::Ipv6Hdr};

use super::{L4_AT6, icmpv6_checksum, is_link_local};
use crate::{
    counters::{Outcome, pass_to_host, redirect_out},
    maps::{endpoint6, host_veth_mac},
    packet::{IP_AT, header, ingress_ifindex},
};

/// The first of neighbour discovery's ICMPv6 types (then router
/// advertisement, 134).
const ROUTER_SOLICITATION: u8 = 133;
const NEIGHBOR_SOLICITATION: u8 = 135;
const NEIGHBOR_ADVERTISEMENT: u8 = 136;
const REDIRECT: u8 = 137;

/// An advertisement's flags: from a router, solicited, overriding.
const ADVERTISED_FLAGS: u8 = 0xe0;
const SOURCE_LINK_LAYER: u8 = 1;
const TARGET_LINK_LAYER: u8 = 2;

/// Neighbour discovery is only valid from the link itself (RFC 4861).
const LINK_HOP_LIMIT: u8 = 255;

/// A solicitation or advertisement (RFC 4861 4.3, 4.4).
#[repr(C)]
struct NeighborMessage {
    kind: u8,
    code: u8,
    checksum: [u8; 2],
    flags: [u8; 4],
    target: Ipv6Octets,
}

/// A link-layer address option (RFC 4861 4.6.1), on Ethernet.
#[repr(C)]
struct LinkLayerOption {
    kind: u8,
    /// In units of 8 bytes.
    len: u8,
    mac: [u8; 6],
}

const MESSAGE_LEN: usize = size_of::<NeighborMessage>();
const OPTION_LEN: usize = size_of::<LinkLayerOption>();

/// The end of the longest chain read here (Ethernet, IPv6, a solicitation
/// with its option): what from-pod makes linear for IPv6.
pub const HEADERS_END: usize = L4_AT6 + MESSAGE_LEN + OPTION_LEN;

/// The ICMPv6 type of a neighbour discovery message, if the packet (of
/// next header ICMPv6) is one.
#[inline(always)]
pub fn message_kind(ctx: &TcContext) -> Option<u8> {
    let kind = header::<u8>(ctx, L4_AT6)?;
    // SAFETY: bounds checked by `header`.
    let kind = unsafe { *kind };
    is_message(kind).then_some(kind)
}

/// Whether ICMPv6 type `kind` is neighbour discovery's.
#[inline(always)]
pub fn is_message(kind: u8) -> bool {
    (ROUTER_SOLICITATION..=REDIRECT).contains(&kind)
}

/// A pod's neighbour discovery message `kind`, from `src`.
#[inline(always)]
pub fn from_pod(ctx: &TcContext, kind: u8, src: &Ipv6Octets) -> Outcome {
    let ifindex = ingress_ifindex(ctx);
    let from_pod =
        is_link_local(src) || endpoint6(src).is_some_and(|pod| pod.host_ifindex == ifindex);
    match kind {
        NEIGHBOR_SOLICITATION if from_pod => answer_solicitation(ctx, ifindex),
        // Answers to the node's own solicitations (it reaches the pod).
        NEIGHBOR_ADVERTISEMENT if from_pod => Ok(pass_to_host(ctx)),
        _ => Err(Counter::DropNdpIgnored),
    }
}

/// Turns the solicitation into the advertisement answering it, sent back
/// into the pod.
// Out of line: its addresses stay out of from-pod's stack frame.
#[inline(never)]
fn answer_solicitation(ctx: &TcContext, ifindex: u32) -> Outcome {
    let eth = header::<EthHdr>(ctx, 0).ok_or(Counter::DropMalformed)?;
    let ip = header::<Ipv6Hdr>(ctx, IP_AT).ok_or(Counter::DropMalformed)?;
    let message = header::<NeighborMessage>(ctx, L4_AT6).ok_or(Counter::DropMalformed)?;
    // SAFETY: all three bounds checked above; they do not overlap.
    let (eth, ip, message) = unsafe { (&mut *eth, &mut *ip, &mut *message) };
    let payload = usize::from(u16::from_be_bytes(ip.payload_len));
    let with_option = payload == MESSAGE_LEN + OPTION_LEN;
    // Duplicate address detection (from `::`) and probes of the pod's own
    // address stay unanswered.
    if ip.hop_limit != LINK_HOP_LIMIT
        || message.code != 0
        || !(payload == MESSAGE_LEN || with_option)
        || ip.src_addr == [0; 16]
        || message.target == ip.src_addr
    {
        return Err(Counter::DropNdpIgnored);
    }
    // The host veth's MAC: the pod's own endpoint has it; for a
    // link-local source (a link-local gateway's solicitation), the veth's
    // entry, or the MAC a unicast probe was sent to.
    let host_mac = match endpoint6(&ip.src_addr) {
        Some(pod) => pod.host_mac,
        None => match host_veth_mac(ifindex) {
            Some(mac) => mac,
            None if eth.dst_addr[0] & 1 == 0 => eth.dst_addr,
            None => return Err(Counter::DropNdpIgnored),
        },
    };
    message.kind = NEIGHBOR_ADVERTISEMENT;
    message.flags = [ADVERTISED_FLAGS, 0, 0, 0];
    if with_option {
        let option =
            header::<LinkLayerOption>(ctx, L4_AT6 + MESSAGE_LEN).ok_or(Counter::DropMalformed)?;
        // SAFETY: bounds checked above.
        let option = unsafe { &mut *option };
        if option.kind != SOURCE_LINK_LAYER || option.len != 1 {
            return Err(Counter::DropNdpIgnored);
        }
        option.kind = TARGET_LINK_LAYER;
        option.mac = host_mac;
    }
    ip.dst_addr = ip.src_addr;
    ip.src_addr = message.target;
    eth.dst_addr = eth.src_addr;
    eth.src_addr = host_mac;
    message.checksum = [0, 0];
    let checksum = if with_option {
        icmpv6_checksum::<{ MESSAGE_LEN + OPTION_LEN }>(ctx)
    } else {
        icmpv6_checksum::<MESSAGE_LEN>(ctx)
    };
    message.checksum = checksum.ok_or(Counter::DropMalformed)?;

    // The answer leaves through the veth it came in on.
    redirect_out(
        ctx,
        ifindex,
        Counter::NdpAnswered,
        Counter::DropStaleEndpoint,
    )
}
