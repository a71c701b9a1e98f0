// Above 400 lines: one SNAT connection's whole life (open, track, translate, close) read in one place; hooks call its entry points only.
//! Egress SNAT to the node IP with connection tracking, and the reverse
//! translation of replies (including ICMP errors about a translated packet).
//! This module translates and says what came of it; the hooks decide where
//! the packet goes next, as Cilium's `lib/nat.h` translates and `bpf_lxc.c`
//! forwards.
//!
//! Every connection has two entries in the NAT hash: the egress half, keyed by
//! the pod's packet, and the reply half, keyed by what the world sends back.
//! The reply half is inserted first with BPF_NOEXIST, which is also how a port
//! is found free; the egress half follows, and the reply half is removed again
//! if it cannot be. The table is not LRU: nothing is evicted behind an
//! established connection. A connection is established as conntrack's
//! ASSURED is: the other side answered and the opener spoke again (a
//! SYN-ACK alone leaves it half open). Until then it is the first to go
//! when the table or a port range is full (nat_share.rs); otherwise new
//! connections fail (counted) and the agent's garbage collector frees
//! expired pairs. FIN and RST move a connection to closing only when they
//! fit what the other side sent, in either direction.

use core::mem::offset_of;

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    programs::TcContext,
};
use dataplane_common::{
    Counter, FlowKey, Ipv4Octets, NatEntry, NodeConfig, SentSegment, conn_state, fragment_rewrite,
    nat_direction, pod_may_use_port,
};
use network_types::{icmp::Icmpv4Hdr, ip::Ipv4Hdr, udp::UdpHdr};

use crate::{
    counters::{Outcome, count},
    fragments,
    ipv4::icmp::{
        ECHO_ID_OFFSET, ECHO_REQUEST, QUOTE_PAYLOAD_AT, QuotedHeader, echo_id, quoted_header,
        rewrite_quote,
    },
    ipv4::is_fragment,
    maps::NAT,
    nat_share,
    packet::{ICMP, IP_AT, TCP, UDP, load},
    rewrite::{
        IP_DESTINATION_AT, IP_SOURCE_AT, Segment, Transport, rewrite, rewrite_address, transport,
    },
};

/// What a NOEXIST insert returns when the key is taken.
const EEXIST: i32 = 17;

/// Bounded search for a free port: the original one, then random ones (of
/// which those outside the pod's share are passed over without a map call).
const PORT_SEARCH_TRIES: u32 = 32;
/// `last_seen_ns` is rewritten at most this often per half (fewer map writes).
const REFRESH_NS: u64 = 1_000_000_000;

#[inline(always)]
pub fn in_port_range(config: &NodeConfig, port: [u8; 2]) -> bool {
    let port = u16::from_be_bytes(port);
    port >= config.nat_port_min && port <= config.nat_port_max
}

/// What one side of a connection has sent, after its segment `segment`.
#[inline(always)]
fn side_after(mut side: SentSegment, segment: &Segment) -> SentSegment {
    // Sequence numbers wrap: "after" is within half the space ahead.
    if side.next_seq == 0 || (segment.end.wrapping_sub(side.next_seq) as i32) > 0 {
        side.next_seq = segment.end;
    }
    if let Some(ack) = segment.ack {
        side.ack = ack;
        side.window = segment.window;
        side.acked = 1;
    }
    side
}

/// Whether a FIN or RST fits what the other side sent: it acknowledges
/// exactly the other side's furthest segment (a refused SYN's reset does),
/// or it starts within the window the other side offered from what it
/// acknowledged last (the window as on the wire: its scale is not tracked,
/// so a wide window is taken narrower, which a legitimate close, sent at
/// the edge the other side acknowledged, does not need). A blind sender
/// guesses a 32-bit number against either.
#[inline(always)]
fn fits(segment: &Segment, other: &SentSegment) -> bool {
    segment.ack == Some(other.next_seq)
        || (other.acked != 0 && segment.seq.wrapping_sub(other.ack) <= u32::from(other.window))
}

/// Brings one half up to date with a packet just seen.
#[inline(always)]
fn refresh(entry: *mut NatEntry, state: u8, now: u64) {
    // SAFETY: a pointer into a map value, valid for this program run.
    unsafe {
        if state > (*entry).state {
            (*entry).state = state;
        }
        if now.saturating_sub((*entry).last_seen_ns) > REFRESH_NS {
            (*entry).last_seen_ns = now;
        }
    }
}

/// Reserves a port for the connection `egress` and inserts both halves,
/// within the shares of the table and of the ports of its row (the pod, or
/// all outside clients). Every try is a free port; the later half of them
/// also take a port from a connection that was never established.
#[inline(always)]
fn allocate(
    ctx: &TcContext,
    egress: &FlowKey,
    config: &NodeConfig,
    transport: &Transport,
    now: u64,
    outside_client: bool,
) -> Outcome<[u8; 2]> {
    let counts = nat_share::admit(nat_share::row(egress, outside_client), config)?;
    let range = u32::from(config.nat_port_max.saturating_sub(config.nat_port_min)) + 1;
    // A first packet opens a new connection (or a closing one), whatever
    // else it says: nothing answered it yet.
    let state = if transport.state == conn_state::CLOSING {
        conn_state::CLOSING
    } else {
        conn_state::NEW
    };
    let to_pod = NatEntry {
        addr: egress.src,
        port: egress.src_port,
        state,
        last_seen_ns: now,
        ..NatEntry::default()
    };
    let mut to_node = NatEntry {
        addr: config.node_ip,
        sent: transport
            .segment
            .map(|segment| side_after(SentSegment::default(), &segment))
            .unwrap_or_default(),
        outside_client: u8::from(outside_client),
        ..to_pod
    };
    let mut refused = Counter::DropNatExhausted;
    for attempt in 0..PORT_SEARCH_TRIES {
        let port = if attempt == 0 && in_port_range(config, egress.src_port) {
            egress.src_port
        } else {
            // SAFETY: plain helper call.
            let random = unsafe { bpf_get_prandom_u32() };
            ((config.nat_port_min as u32 + random % range) as u16).to_be_bytes()
        };
        if !pod_may_use_port(egress.src, u16::from_be_bytes(port), config.pod_port_share) {
            continue;
        }
        to_node.port = port;
        let reply = nat_share::reply_half(egress, &to_node);
        let inserted = match insert_pair(egress, &reply, &to_pod, &to_node) {
            Ok(()) => true,
            Err(error) if error == -EEXIST => {
                attempt >= PORT_SEARCH_TRIES / 2
                    && nat_share::evict_port_holder(ctx, &reply, now)
                    && insert_pair(egress, &reply, &to_pod, &to_node).is_ok()
            }
            // Full: the oldest connection never established makes room.
            Err(_) => {
                if !nat_share::evict_oldest_unassured(ctx)
                    || insert_pair(egress, &reply, &to_pod, &to_node).is_err()
                {
                    refused = Counter::DropNatTableFull;
                    break;
                }
                true
            }
        };
        if inserted {
            nat_share::opened(counts, egress);
            return Ok(port);
        }
    }
    nat_share::refused(counts, refused);
    Err(refused)
}

/// Inserts both halves of the connection `egress`: the reply half first
/// (NOEXIST: `-EEXIST` when the port is taken toward this destination),
/// then the egress half, or neither.
// Out of line: called from three places of the port search.
#[inline(never)]
fn insert_pair(
    egress: &FlowKey,
    reply: &FlowKey,
    to_pod: &NatEntry,
    to_node: &NatEntry,
) -> Result<(), i32> {
    NAT.insert(reply, to_pod, u64::from(BPF_NOEXIST))?;
    NAT.insert(egress, to_node, u64::from(BPF_ANY))
        .inspect_err(|_| {
            let _ = NAT.remove(reply);
        })
}

/// The state the opener's packet moves the egress half `entry` to: a close
/// only when it fits what the other side sent (an outside client's address
/// is anyone's to spoof), established only once the other side answered
/// (then never evicted).
// Inline: a `Transport` passed by reference to a call is spilled whole,
// the unset part of its `Option`s included, which the verifier refuses.
#[inline(always)]
fn opener_state(
    ctx: &TcContext,
    egress: &FlowKey,
    entry: *mut NatEntry,
    transport: &Transport,
) -> u8 {
    // SAFETY: as in `refresh`.
    let current = unsafe { (*entry).state };
    let state = transport.state;
    let wants_reply_half = match state {
        conn_state::CLOSING => transport.segment.is_some(),
        conn_state::ESTABLISHED => current < conn_state::ESTABLISHED,
        _ => false,
    };
    if !wants_reply_half {
        return state;
    }
    // SAFETY: as in `refresh`; only the first packets and closes get here.
    let to_node = unsafe { *entry };
    // SAFETY: the value is copied out at once.
    let Some(to_pod) = (unsafe { NAT.get(nat_share::reply_half(egress, &to_node)) }).copied()
    else {
        return current;
    };
    if state == conn_state::CLOSING {
        if let Some(segment) = &transport.segment
            && !fits(segment, &to_pod.sent)
        {
            count(ctx, Counter::NatCloseIgnored);
            return current;
        }
        return state;
    }
    if to_pod.state < conn_state::ANSWERED {
        return current;
    }
    // SAFETY: as in `refresh`.
    unsafe { (*entry).assured = 1 };
    state
}

/// Traffic leaving the cluster, from a pod or from an outside client on its
/// way to a Service's backend (`outside_client`): the source becomes the
/// node IP and a port of the SNAT range.
#[inline(always)]
pub fn masquerade(
    ctx: &TcContext,
    config: &NodeConfig,
    (src, dst): (Ipv4Octets, Ipv4Octets),
    outside_client: bool,
) -> Outcome<()> {
    let ip: Ipv4Hdr = load(ctx, IP_AT)?;
    if ip.frag_offset() != 0 {
        return rewrite_address(ctx, IP_SOURCE_AT, (src, config.node_ip));
    }
    let transport = transport(ctx, &ip, true).ok_or(Counter::DropNatUnsupported)?;
    let egress = FlowKey {
        src,
        dst,
        src_port: transport.src_port,
        dst_port: transport.dst_port,
        protocol: transport.protocol,
        direction: nat_direction::EGRESS,
        _pad: [0; 2],
    };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let port = match NAT.get_ptr_mut(egress) {
        Some(entry) => {
            refresh(entry, opener_state(ctx, &egress, entry, &transport), now);
            // SAFETY: as in `refresh`.
            unsafe {
                if let Some(segment) = &transport.segment {
                    (*entry).sent = side_after((*entry).sent, segment);
                }
                (*entry).port
            }
        }
        None => allocate(ctx, &egress, config, &transport, now, outside_client)?,
    };
    rewrite(
        ctx,
        &transport,
        IP_SOURCE_AT,
        (src, config.node_ip),
        (transport.src_port, port),
    )
}

/// A packet to the node IP (its IPv4 header `ip`, as the hook read it) that
/// may answer a masqueraded connection, translated back: the pod (or outside
/// client) it is for, or `None` when it is not for NAT (the node's own traffic).
#[inline(always)]
pub fn translate_reply(
    ctx: &TcContext,
    config: &NodeConfig,
    ip: &Ipv4Hdr,
) -> Outcome<Option<Ipv4Octets>> {
    if ip.frag_offset() != 0 {
        return translate_later_fragment(ctx, config, ip);
    }
    if ip.proto == ICMP
        && let Some(quoted) = quoted_header(ctx)
    {
        return translate_icmp_error(ctx, config, &quoted);
    }
    let Some(transport) = transport(ctx, ip, false) else {
        return Ok(None);
    };
    if !in_port_range(config, transport.dst_port) {
        return Ok(None);
    }
    let reply = FlowKey {
        src: ip.src_addr,
        dst: config.node_ip,
        src_port: transport.src_port,
        dst_port: transport.dst_port,
        protocol: transport.protocol,
        direction: nat_direction::REPLY,
        _pad: [0; 2],
    };
    let entry = NAT.get_ptr_mut(reply).ok_or(Counter::DropNatNoMapping)?;
    // SAFETY: as in `refresh`.
    let (pod, pod_port) = unsafe { ((*entry).addr, (*entry).port) };
    let mut state = transport.state;
    if let Some(segment) = &transport.segment {
        if state == conn_state::CLOSING && !closes_opener_side(&reply, pod, pod_port, segment) {
            count(ctx, Counter::NatCloseIgnored);
            state = conn_state::ANSWERED;
        }
        // SAFETY: as in `refresh`.
        unsafe { (*entry).sent = side_after((*entry).sent, segment) };
    }
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    refresh(entry, state, now);
    rewrite(
        ctx,
        &transport,
        IP_DESTINATION_AT,
        (config.node_ip, pod),
        (transport.dst_port, pod_port),
    )?;
    // `ip` is the header as it came (a copy), untouched by the rewrite.
    if is_fragment(ip) {
        fragments::remember(&fragments::datagram(ip), pod, fragment_rewrite::DESTINATION);
    }
    Ok(Some(pod))
}

/// Whether the reply FIN or RST `segment` of the connection whose reply half
/// is `reply` (to `pod`:`pod_port`) fits what the opener sent.
#[inline(never)]
fn closes_opener_side(
    reply: &FlowKey,
    pod: Ipv4Octets,
    pod_port: [u8; 2],
    segment: &Segment,
) -> bool {
    let egress = nat_share::egress_half(reply, pod, pod_port);
    // SAFETY: the value is copied out at once.
    unsafe { NAT.get(egress) }.is_some_and(|egress| fits(segment, &egress.sent))
}

/// A later piece of a datagram to the node IP: to the pod its first piece
/// went to, or `None` (the node's own datagram, or a piece that came before
/// its first one, which the node's stack then holds).
#[inline(always)]
fn translate_later_fragment(
    ctx: &TcContext,
    config: &NodeConfig,
    ip: &Ipv4Hdr,
) -> Outcome<Option<Ipv4Octets>> {
    let Some(pod) = fragments::recorded_for(ip, fragment_rewrite::DESTINATION) else {
        return Ok(None);
    };
    rewrite_address(ctx, IP_DESTINATION_AT, (config.node_ip, pod))?;
    Ok(Some(pod))
}

/// An ICMP error (unreachable, fragmentation needed, time exceeded) about a
/// masqueraded packet: addressed to the pod, with the quoted packet restored
/// to what the pod sent, so the pod's stack finds the right socket and route.
#[inline(always)]
fn translate_icmp_error(
    ctx: &TcContext,
    config: &NodeConfig,
    quoted: &QuotedHeader,
) -> Outcome<Option<Ipv4Octets>> {
    if quoted.src != config.node_ip {
        return Ok(None);
    }
    let protocol = quoted.protocol;
    let (nat_port, remote_port, port_at) = match protocol {
        TCP | UDP => {
            // TCP and UDP headers both start with the two ports.
            let Ok(ports) = ctx.load::<UdpHdr>(QUOTE_PAYLOAD_AT) else {
                return Ok(None);
            };
            (
                ports.src,
                ports.dst,
                QUOTE_PAYLOAD_AT + offset_of!(UdpHdr, src),
            )
        }
        ICMP => {
            let Ok(echo) = ctx.load::<Icmpv4Hdr>(QUOTE_PAYLOAD_AT) else {
                return Ok(None);
            };
            if echo.type_ != ECHO_REQUEST {
                return Ok(None);
            }
            (echo_id(&echo), [0; 2], QUOTE_PAYLOAD_AT + ECHO_ID_OFFSET)
        }
        _ => return Ok(None),
    };
    if !in_port_range(config, nat_port) {
        return Ok(None);
    }
    let reply = FlowKey {
        src: quoted.dst,
        dst: config.node_ip,
        src_port: remote_port,
        dst_port: nat_port,
        protocol,
        direction: nat_direction::REPLY,
        _pad: [0; 2],
    };
    // SAFETY: the value is copied out at once.
    let entry = unsafe { NAT.get(reply) }
        .copied()
        .ok_or(Counter::DropNatNoMapping)?;
    let pod = entry.addr;
    rewrite_quote(
        ctx,
        quoted,
        offset_of!(Ipv4Hdr, src_addr),
        (config.node_ip, pod),
        port_at,
        (nat_port, entry.port),
    )?;
    rewrite_address(ctx, IP_DESTINATION_AT, (config.node_ip, pod))?;
    Ok(Some(pod))
}
