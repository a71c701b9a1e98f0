//! The IPv6 family's own code: a pod's packets at from-pod (its neighbour
//! discovery in `ndp`), other nodes' pods' packets out of the tunnel or
//! straight from a node reached directly, the header checks and the hop
//! limit, the ICMPv6 errors a router sends (`icmp`). So far IPv6 is
//! forwarded between pods (of this node, and of other nodes, tunnelled or
//! direct) and to the node's own addresses (the pods' gateway, kubelet's
//! probes answered).

pub mod icmp;
pub mod ndp;

use aya_ebpf::{bindings::TC_ACT_OK, helpers::bpf_csum_diff, programs::TcContext};
use dataplane_common::{Counter, Ipv4Octets, Ipv6Octets, NodeConfig, VXLAN_OVERHEAD, policy_table};
use network_types::{eth::EthHdr, ip::Ipv6Hdr};

use crate::{
    counters::{Outcome, finish, pass_to_host},
    direct,
    local::{Redirect, deliver},
    maps::{endpoint6, is_host_address6, node_route6, policy_open6},
    packet::{IP_AT, UDP, header, ingress_ifindex, load},
    tunnel,
};

/// ICMPv6's next header value.
pub const ICMPV6: u8 = 58;

/// Where an IPv6 packet's next header starts (the fixed header's end).
pub const L4_AT6: usize = IP_AT + Ipv6Hdr::LEN;

/// Where the inner IPv6 header of a VXLAN packet starts.
const INNER_IP6_AT: usize = IP_AT + VXLAN_OVERHEAD as usize;

/// A pod's IPv6 packet. `first_mac_octet`: of the frame's destination MAC.
// Out of line: its addresses stay off from-pod's frame, which the IPv4
// paths' deepest call chains share. (A verdict, not an `Outcome`: returned
// through the stack, the verifier refuses it.)
#[inline(never)]
pub fn from_pod(ctx: &TcContext, config: &NodeConfig, first_mac_octet: u8) -> i32 {
    finish(ctx, judge_from_pod(ctx, config, first_mac_octet))
}

#[inline(always)]
fn judge_from_pod(ctx: &TcContext, config: &NodeConfig, first_mac_octet: u8) -> Outcome {
    // The headers read below (neighbour discovery's included) in the
    // linear part; before any packet pointer is taken.
    let want = ctx.len().min(ndp::HEADERS_END as u32);
    if ctx.data() + want as usize > ctx.data_end() {
        let _ = ctx.pull_data(want);
    }
    let ip = checked_header(ctx).ok_or(Counter::DropMalformed)?;
    let (src, dst, next_header) = (ip.src_addr, ip.dst_addr, ip.next_hdr);
    // Forwarded, its hop limit would reach zero here.
    let last_hop = ip.hop_limit <= 1;
    if next_header == ICMPV6
        && let Some(kind) = ndp::message_kind(ctx)
    {
        return ndp::from_pod(ctx, kind, &src);
    }
    let (protocol, at) = upper_layer(ctx, next_header)?;
    let offending = icmp::Offending { protocol, at };
    // Neighbour discovery behind extension headers is no pod's to send.
    if protocol == ICMPV6 && load::<u8>(ctx, at).is_ok_and(ndp::is_message) {
        return Err(Counter::DropNdpIgnored);
    }
    // A DHCPv6 server's (or relay's) answer: a pod never configures anyone.
    if protocol == UDP && load::<[u8; 2]>(ctx, at + 2) == Ok(DHCPV6_CLIENT_PORT.to_be_bytes()) {
        return Err(Counter::DropPodDhcpv6Server);
    }
    // The group bit: multicast frames and addresses (ff00::/8) carry no
    // unicast packet.
    if first_mac_octet & 1 != 0 || dst[0] == 0xff {
        return Err(Counter::DropNotUnicast);
    }
    if is_martian(&dst) {
        return Err(Counter::DropMartianDestination);
    }
    // From a link-local address, only to the link (the host veth): such a
    // source names no pod, and a packet from it can be answered on the
    // link only.
    if is_link_local(&src) {
        return if is_link_local(&dst) {
            Ok(pass_to_host(ctx))
        } else {
            Err(Counter::DropSpoofedSource)
        };
    }
    // A pod may only send from its own address, and only through its own veth.
    match endpoint6(&src) {
        Some(source) if source.host_ifindex == ingress_ifindex(ctx) => {}
        _ => return Err(Counter::DropSpoofedSource),
    }
    if let Some(destination) = endpoint6(&dst) {
        if !open(config, src, Direction::Egress) || !open(config, dst, Direction::Ingress) {
            return Err(Counter::DropPolicyIpv6Unjudged);
        }
        if last_hop {
            return Ok(icmp::time_exceeded(ctx, config, offending));
        }
        forward_hop(ctx)?;
        return deliver(
            ctx,
            &destination,
            Redirect::into_pod(config),
            Counter::ForwardedLocal,
        );
    }
    // The node itself: the pods' gateway, kubelet, node-local services.
    if is_link_local(&dst) || is_host_address6(&dst) {
        return Ok(pass_to_host(ctx));
    }
    // Another node's pod: to its node's MAC when it is reached directly
    // and its MAC is known, else through the tunnel.
    if config.tunnel_enabled()
        && let Some(route) = node_route6(dst)
    {
        if !open(config, src, Direction::Egress) {
            return Err(Counter::DropPolicyIpv6Unjudged);
        }
        if last_hop {
            return Ok(icmp::time_exceeded(ctx, config, offending));
        }
        let node_mac = direct::node_mac(&route);
        let mtu = match node_mac {
            Some(_) => config.uplink_mtu,
            None => config.tunnel_mtu,
        };
        if exceeds_mtu(ctx, mtu) {
            return Ok(icmp::packet_too_big(ctx, config, offending, mtu));
        }
        forward_hop(ctx)?;
        return match node_mac {
            Some(mac) => direct::send_to_mac(ctx, config, mac),
            None => Ok(tunnel::encapsulate(ctx, config, route.node_ip)),
        };
    }
    // A pod of this node that is gone, or never was: no error, as for IPv4.
    if config.pod_cidr6.contains(dst) {
        return Err(Counter::DropUnknownEndpoint);
    }
    if !open(config, src, Direction::Egress) {
        return Err(Counter::DropPolicyIpv6Unjudged);
    }
    Ok(icmp::prohibited(ctx, config, offending))
}

/// An IPv6 packet a known node sent through the tunnel (its outer headers
/// checked by from-uplink): from a pod of that node, to a pod here.
// Out of line: the addresses stay off from-uplink's frame.
#[inline(never)]
pub fn from_node(ctx: &TcContext, config: &NodeConfig, node_ip: Ipv4Octets) -> i32 {
    finish(ctx, judge_from_node(ctx, config, node_ip))
}

#[inline(always)]
fn judge_from_node(ctx: &TcContext, config: &NodeConfig, node_ip: Ipv4Octets) -> Outcome {
    let version: u8 = load(ctx, INNER_IP6_AT)?;
    if version >> 4 != 6 {
        return Err(Counter::DropMalformed);
    }
    let [source, destination]: [Ipv6Octets; 2] =
        load(ctx, INNER_IP6_AT + core::mem::offset_of!(Ipv6Hdr, src_addr))?;
    // A node speaks for its own pods, never for another node's.
    if node_route6(source).is_none_or(|route| route.node_ip != node_ip) {
        return Err(Counter::DropSpoofedSource);
    }
    let pod = endpoint6(&destination).ok_or(Counter::DropUnknownEndpoint)?;
    if !open(config, destination, Direction::Ingress) {
        return Err(Counter::DropPolicyIpv6Unjudged);
    }
    tunnel::decapsulate_ipv6(ctx)?;
    forward_hop(ctx)?;
    deliver(
        ctx,
        &pod,
        Redirect::into_pod(config),
        Counter::DecapsulatedToPod,
    )
}

/// An unencapsulated IPv6 frame from the uplink, addressed to this node:
/// a pod of a node reached directly, to a pod here, is taken only in a
/// frame from that node's MAC; the node's own IPv6 is its stack's.
// Out of line: the addresses stay off from-uplink's frame.
#[inline(never)]
pub fn from_direct_node(ctx: &TcContext, config: &NodeConfig) -> i32 {
    finish(ctx, judge_from_direct_node(ctx, config))
}

#[inline(always)]
fn judge_from_direct_node(ctx: &TcContext, config: &NodeConfig) -> Outcome {
    let [source, destination]: [Ipv6Octets; 2] =
        load(ctx, IP_AT + core::mem::offset_of!(Ipv6Hdr, src_addr))?;
    // This node's pods never send from outside it.
    if config.pod_cidr6.contains(source) {
        return Err(Counter::DropSpoofedSource);
    }
    let Some(pod) = endpoint6(&destination) else {
        return if config.pod_cidr6.contains(destination) && !is_host_address6(&destination) {
            Err(Counter::DropUnknownEndpoint)
        } else {
            Ok(TC_ACT_OK)
        };
    };
    // Pods are reached from the underlay only by other nodes' pods, in
    // frames from their node.
    let route = node_route6(source).ok_or(Counter::DropUplinkToPod)?;
    if !direct::from_node_mac(ctx, route.node_ip) {
        return Err(Counter::DropDirectUnverified);
    }
    if !open(config, destination, Direction::Ingress) {
        return Err(Counter::DropPolicyIpv6Unjudged);
    }
    forward_hop(ctx)?;
    deliver(ctx, &pod, Redirect::into_pod(config), Counter::DirectToPod)
}

enum Direction {
    Ingress,
    Egress,
}

/// Whether the local pod at `pod` may send (egress) or be sent (ingress)
/// IPv6: NetworkPolicy does not judge IPv6 yet, so while a pod of the node
/// is isolated a pod's IPv6 passes only in a direction no policy isolates
/// it in, as the agent wrote for the table in force (fail closed: a pod
/// it wrote nothing for is closed).
#[inline(always)]
fn open(config: &NodeConfig, pod: Ipv6Octets, direction: Direction) -> bool {
    if config.policy == 0 {
        return true;
    }
    let open = policy_open6(pod, policy_table(config.policy_generation));
    match direction {
        Direction::Ingress => open.ingress != 0,
        Direction::Egress => open.egress != 0,
    }
}

/// Whether the packet (not a GSO aggregate, whose segments are sized by
/// the sender) exceeds `mtu`. IPv6 routers never fragment.
#[inline(always)]
fn exceeds_mtu(ctx: &TcContext, mtu: u32) -> bool {
    // SAFETY: the context pointer is valid for the program's whole run.
    let gso_size = unsafe { (*ctx.skb.skb).gso_size };
    gso_size == 0 && ctx.len() > mtu + EthHdr::LEN as u32
}

/// Where DHCPv6 servers and relays send their answers (RFC 8415).
const DHCPV6_CLIENT_PORT: u16 = 546;

/// Extension headers walked past before the upper layer: more is no
/// packet a pod's stack sends (RFC 8200 orders at most 6 kinds, and Linux
/// sends one or two).
const MAX_EXTENSION_HEADERS: usize = 4;

const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const AUTHENTICATION: u8 = 51;
const DESTINATION_OPTIONS: u8 = 60;
/// Mobility, HIP, shim6 and the experimental values: extension headers no
/// pod needs, which would hide what follows them.
const UNWALKED: [u8; 5] = [135, 139, 140, 253, 254];

/// What `upper_layer` says of a later piece of a fragmented datagram: its
/// upper-layer header is in the first piece ("no next header").
const NO_UPPER_LAYER: u8 = 59;

/// The upper-layer protocol of a pod's IPv6 packet (`first`: its fixed
/// header's next header) and where its header starts, past at most
/// `MAX_EXTENSION_HEADERS` extension headers; a longer chain, or one with
/// an extension header not walked, is dropped. A later piece of a
/// fragmented datagram has none (`NO_UPPER_LAYER`): its payload is read
/// as no header.
#[inline(always)]
fn upper_layer(ctx: &TcContext, first: u8) -> Outcome<(u8, usize)> {
    let (mut next, mut at) = (first, L4_AT6);
    for _ in 0..MAX_EXTENSION_HEADERS {
        // Every extension header has these 4 bytes: next header, length,
        // and (of a fragment header) the offset with its flags.
        let [following, length, offset_high, offset_low]: [u8; 4] = match next {
            HOP_BY_HOP | ROUTING | DESTINATION_OPTIONS | FRAGMENT | AUTHENTICATION => {
                load(ctx, at)?
            }
            _ => break,
        };
        if next == FRAGMENT && u16::from_be_bytes([offset_high, offset_low]) >> 3 != 0 {
            return Ok((NO_UPPER_LAYER, at + 8));
        }
        at += match next {
            FRAGMENT => 8,
            AUTHENTICATION => (usize::from(length) + 2) * 4,
            _ => (usize::from(length) + 1) * 8,
        };
        next = following;
    }
    if matches!(
        next,
        HOP_BY_HOP | ROUTING | DESTINATION_OPTIONS | FRAGMENT | AUTHENTICATION
    ) || UNWALKED.contains(&next)
    {
        return Err(Counter::DropIpv6ExtensionHeaders);
    }
    Ok((next, at))
}

/// The IPv6 header after the Ethernet header, in place (valid until the
/// packet is changed), when it is well formed as `ipv6_rcv` checks it:
/// version 6 and a payload length that fits in the packet.
#[inline(always)]
pub fn checked_header(ctx: &TcContext) -> Option<&Ipv6Hdr> {
    let ip = header::<Ipv6Hdr>(ctx, IP_AT)?;
    // SAFETY: bounds checked by `header`; read before anything changes the packet.
    let ip = unsafe { &*ip };
    let payload = u32::from(u16::from_be_bytes(ip.payload_len));
    let carried = ctx.len().checked_sub(L4_AT6 as u32)?;
    // GSO packets of more than 64 KB (BIG TCP) carry a payload length of 0.
    let fits = if payload == 0 {
        carried == 0 || carried > u32::from(u16::MAX)
    } else {
        payload <= carried
    };
    (ip.version() == 6 && fits).then_some(ip)
}

/// Decrements the hop limit of a packet this node forwards; one that would
/// reach zero is dropped. (IPv6 has no header checksum to follow.)
#[inline(always)]
pub fn forward_hop(ctx: &TcContext) -> Outcome<()> {
    let ip = header::<Ipv6Hdr>(ctx, IP_AT).ok_or(Counter::DropMalformed)?;
    // SAFETY: bounds checked by `header`.
    let ip = unsafe { &mut *ip };
    if ip.hop_limit <= 1 {
        return Err(Counter::DropTtlExceeded);
    }
    ip.hop_limit -= 1;
    Ok(())
}

/// The ICMPv6 checksum of the packet's message (the `LEN` bytes after the
/// fixed header, its checksum field zero), summed by the kernel's helper
/// over the packet: the pseudo-header's addresses (contiguous in the
/// header), its length and next header, then the message. (`LEN`: a
/// multiple of 4, at most 512.)
#[inline(always)]
pub fn icmpv6_checksum<const LEN: usize>(ctx: &TcContext) -> Option<[u8; 2]> {
    let addresses = header::<[u32; 8]>(ctx, IP_AT + core::mem::offset_of!(Ipv6Hdr, src_addr))?;
    let message = header::<[u8; LEN]>(ctx, L4_AT6)?;
    let mut rest = [(LEN as u32).to_be(), u32::from(ICMPV6).to_be()];
    let null = core::ptr::null_mut();
    // SAFETY: plain helper calls over memory checked to hold these sizes
    // (the addresses and the message in the packet, the rest on the stack).
    let sum = unsafe {
        let sum = bpf_csum_diff(null, 0, addresses.cast(), 32, 0);
        let sum = bpf_csum_diff(null, 0, rest.as_mut_ptr(), 8, sum as u32);
        bpf_csum_diff(null, 0, message.cast(), LEN as u32, sum as u32)
    };
    if sum < 0 {
        return None;
    }
    let sum = sum as u32;
    let folded = (sum & 0xffff) + (sum >> 16);
    let folded = (folded & 0xffff) + (folded >> 16);
    // Summed as memory holds the words: stored as it came out.
    Some((!(folded as u16)).to_ne_bytes())
}

/// fe80::/10: an address valid on one link only.
#[inline(always)]
pub fn is_link_local(address: &Ipv6Octets) -> bool {
    address[0] == 0xfe && address[1] & 0xc0 == 0x80
}

/// An address nothing may be sent to: unspecified (`::`), loopback
/// (`::1`), or IPv4-mapped (`::ffff:0:0/96`, never on the wire).
#[inline(always)]
fn is_martian(address: &Ipv6Octets) -> bool {
    let mut leading_zeros = true;
    let mut index = 0;
    while index < 10 {
        leading_zeros &= address[index] == 0;
        index += 1;
    }
    if !leading_zeros {
        return false;
    }
    let mapped = address[10] == 0xff && address[11] == 0xff;
    let low_zero = address[10] == 0
        && address[11] == 0
        && address[12] == 0
        && address[13] == 0
        && address[14] == 0;
    mapped || (low_zero && address[15] <= 1)
}
