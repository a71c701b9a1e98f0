//! Egress SNAT to the node IP with connection tracking, and the reverse
//! translation of replies (including ICMP errors about a translated packet).
//!
//! Every connection has two entries in the NAT hash: the egress half, keyed by
//! the pod's packet, and the reply half, keyed by what the world sends back.
//! The reply half is inserted first with BPF_NOEXIST, which is also how a port
//! is found free; the egress half follows, and the reply half is removed again
//! if it cannot be. The table is not LRU: nothing is evicted behind a live
//! connection; when it is full, new connections fail (counted) and the agent's
//! garbage collector frees expired pairs.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_NOEXIST},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    programs::TcContext,
};
use dataplane_common::{
    Counter, FlowKey, Ipv4Octets, NatEntry, NodeConfig, conn_state, nat_direction,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{
    counters::drop,
    ipv4::forward_hop,
    local::{Redirect, deliver},
    maps::{NAT, endpoint},
    tunnel::send_out_uplink,
};

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_TIME_EXCEEDED: u8 = 11;
const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;
/// What a NOEXIST insert returns when the key is taken.
const EEXIST: i32 = 17;

const IP_AT: usize = EthHdr::LEN;
const IP_CHECKSUM_AT: usize = IP_AT + 10;
const IP_SOURCE_AT: usize = IP_AT + 12;
const IP_DESTINATION_AT: usize = IP_AT + 16;
/// Only headers without options are translated.
const L4_AT: usize = IP_AT + Ipv4Hdr::LEN;
/// The packet an ICMP error quotes: its IPv4 header and first 8 bytes.
const QUOTED_AT: usize = L4_AT + 8;

/// Bounded search for a free port: the original one, then random ones.
const PORT_SEARCH_TRIES: u32 = 32;
/// `last_seen_ns` is rewritten at most this often per half (fewer map writes).
const REFRESH_NS: u64 = 1_000_000_000;

/// The transport fields of a packet that NAT looks at and rewrites.
struct Transport {
    protocol: u8,
    src_port: [u8; 2],
    dst_port: [u8; 2],
    /// Where the source (egress) or destination (reply) port or echo id sits.
    port_at: usize,
    checksum_at: usize,
    /// The L4 checksum covers the IPv4 pseudo-header (TCP, UDP).
    pseudo_header: bool,
    /// UDP: a zero checksum means "none" and must stay zero.
    checksum_optional: bool,
    /// The state this packet moves its half of the connection to.
    state: u8,
}

/// Reads the transport fields of a packet (IPv4 without options, at `L4_AT`).
/// `egress`: the port that gets translated is the source one.
#[inline(always)]
fn transport(ctx: &TcContext, egress: bool) -> Option<Transport> {
    let ip = ctx.load::<[u8; 20]>(IP_AT).ok()?;
    if ip[0] != 0x45 {
        return None;
    }
    let protocol = ip[9];
    let ports = ctx.load::<[u8; 8]>(L4_AT).ok()?;
    let translated_at = if egress { L4_AT } else { L4_AT + 2 };
    let established = if egress {
        conn_state::NEW
    } else {
        conn_state::ESTABLISHED
    };
    match protocol {
        TCP => {
            let flags = ctx.load::<u8>(L4_AT + 13).ok()?;
            let closing = flags & (TCP_FIN | TCP_RST) != 0;
            Some(Transport {
                protocol,
                src_port: [ports[0], ports[1]],
                dst_port: [ports[2], ports[3]],
                port_at: translated_at,
                checksum_at: L4_AT + 16,
                pseudo_header: true,
                checksum_optional: false,
                state: if closing {
                    conn_state::CLOSING
                } else {
                    established
                },
            })
        }
        UDP => Some(Transport {
            protocol,
            src_port: [ports[0], ports[1]],
            dst_port: [ports[2], ports[3]],
            port_at: translated_at,
            checksum_at: L4_AT + 6,
            pseudo_header: true,
            checksum_optional: true,
            state: established,
        }),
        ICMP => {
            // Echo: the identifier plays the port, as the requester's source
            // port and the replier's destination port.
            let wanted = if egress {
                ICMP_ECHO_REQUEST
            } else {
                ICMP_ECHO_REPLY
            };
            if ports[0] != wanted {
                return None;
            }
            let id = [ports[4], ports[5]];
            let (src_port, dst_port) = if egress { (id, [0; 2]) } else { ([0; 2], id) };
            Some(Transport {
                protocol,
                src_port,
                dst_port,
                port_at: L4_AT + 4,
                checksum_at: L4_AT + 2,
                pseudo_header: false,
                checksum_optional: false,
                state: established,
            })
        }
        _ => None,
    }
}

#[inline(always)]
fn in_port_range(config: &NodeConfig, port: [u8; 2]) -> bool {
    let port = u16::from_be_bytes(port);
    port >= config.nat_port_min && port <= config.nat_port_max
}

/// `bytes` as the raw value the checksum helpers diff (network order in memory).
#[inline(always)]
fn raw4(bytes: Ipv4Octets) -> u64 {
    u64::from(u32::from_ne_bytes(bytes))
}

#[inline(always)]
fn raw2(bytes: [u8; 2]) -> u64 {
    u64::from(u16::from_ne_bytes(bytes))
}

/// Replaces the address at `address_at` and the port at `transport.port_at`,
/// keeping the IPv4 and L4 checksums right (also for checksum-offloaded
/// packets, which the helpers handle).
#[inline(always)]
fn rewrite(
    ctx: &TcContext,
    transport: &Transport,
    address_at: usize,
    (old_address, new_address): (Ipv4Octets, Ipv4Octets),
    (old_port, new_port): ([u8; 2], [u8; 2]),
) -> Result<(), i64> {
    let optional = if transport.checksum_optional {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    };
    ctx.l3_csum_replace(IP_CHECKSUM_AT, raw4(old_address), raw4(new_address), 4)?;
    if transport.pseudo_header {
        let flags = u64::from(BPF_F_PSEUDO_HDR) | optional | 4;
        ctx.l4_csum_replace(
            transport.checksum_at,
            raw4(old_address),
            raw4(new_address),
            flags,
        )?;
    }
    ctx.l4_csum_replace(
        transport.checksum_at,
        raw2(old_port),
        raw2(new_port),
        optional | 2,
    )?;
    ctx.store(address_at, &new_address, 0)?;
    ctx.store(transport.port_at, &new_port, 0)?;
    Ok(())
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

enum Allocation {
    Port([u8; 2]),
    NoFreePort,
    TableFull,
}

/// Reserves a port for the connection `egress` and inserts both halves.
#[inline(always)]
fn allocate(egress: &FlowKey, config: &NodeConfig, state: u8, now: u64) -> Allocation {
    let range = u32::from(config.nat_port_max.saturating_sub(config.nat_port_min)) + 1;
    for attempt in 0..PORT_SEARCH_TRIES {
        let port = if attempt == 0 && in_port_range(config, egress.src_port) {
            egress.src_port
        } else {
            // SAFETY: plain helper call.
            let random = unsafe { bpf_get_prandom_u32() };
            ((config.nat_port_min as u32 + random % range) as u16).to_be_bytes()
        };
        let reply = FlowKey {
            src: egress.dst,
            dst: config.node_ip,
            src_port: egress.dst_port,
            dst_port: port,
            protocol: egress.protocol,
            direction: nat_direction::REPLY,
            _pad: [0; 2],
        };
        let to_pod = NatEntry {
            addr: egress.src,
            port: egress.src_port,
            state,
            _pad: 0,
            last_seen_ns: now,
        };
        match NAT.insert(reply, to_pod, u64::from(BPF_NOEXIST)) {
            Ok(()) => {
                let to_node = NatEntry {
                    addr: config.node_ip,
                    port,
                    ..to_pod
                };
                if NAT.insert(egress, to_node, u64::from(BPF_ANY)).is_err() {
                    let _ = NAT.remove(reply);
                    return Allocation::TableFull;
                }
                return Allocation::Port(port);
            }
            Err(error) if error == -EEXIST => continue,
            Err(_) => return Allocation::TableFull,
        }
    }
    Allocation::NoFreePort
}

/// Pod traffic leaving the cluster: source to the node IP and a port of the
/// SNAT range, then out of the uplink.
#[inline(never)]
pub fn masquerade(ctx: &TcContext, config: &NodeConfig, src: Ipv4Octets, dst: Ipv4Octets) -> i32 {
    let Some(transport) = transport(ctx, true) else {
        return drop(ctx, Counter::DropNatUnsupported);
    };
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
            refresh(entry, transport.state, now);
            // SAFETY: as in `refresh`.
            unsafe { (*entry).port }
        }
        None => match allocate(&egress, config, transport.state, now) {
            Allocation::Port(port) => port,
            Allocation::NoFreePort => return drop(ctx, Counter::DropNatExhausted),
            Allocation::TableFull => return drop(ctx, Counter::DropNatTableFull),
        },
    };
    if rewrite(
        ctx,
        &transport,
        IP_SOURCE_AT,
        (src, config.node_ip),
        (transport.src_port, port),
    )
    .is_err()
    {
        return drop(ctx, Counter::DropMalformed);
    }
    if !forward_hop(ctx) {
        return drop(ctx, Counter::DropTtlExceeded);
    }
    send_out_uplink(ctx, config, Counter::Masqueraded)
}

/// A packet to the node IP that may answer a masqueraded connection: `None`
/// when it is not for NAT (the node's own traffic), else the verdict.
#[inline(never)]
pub fn translate_reply(ctx: &TcContext, config: &NodeConfig, src: Ipv4Octets) -> Option<i32> {
    let protocol = ctx.load::<u8>(IP_AT + 9).ok()?;
    if protocol == ICMP {
        let kind = ctx.load::<u8>(L4_AT).ok()?;
        if kind == ICMP_DEST_UNREACH || kind == ICMP_TIME_EXCEEDED {
            return translate_icmp_error(ctx, config);
        }
    }
    let transport = transport(ctx, false)?;
    if !in_port_range(config, transport.dst_port) {
        return None;
    }
    let reply = FlowKey {
        src,
        dst: config.node_ip,
        src_port: transport.src_port,
        dst_port: transport.dst_port,
        protocol: transport.protocol,
        direction: nat_direction::REPLY,
        _pad: [0; 2],
    };
    let Some(entry) = NAT.get_ptr_mut(reply) else {
        return Some(drop(ctx, Counter::DropNatNoMapping));
    };
    // SAFETY: plain helper call.
    refresh(entry, transport.state, unsafe { bpf_ktime_get_ns() });
    // SAFETY: as in `refresh`.
    let (pod, pod_port) = unsafe { ((*entry).addr, (*entry).port) };
    if rewrite(
        ctx,
        &transport,
        IP_DESTINATION_AT,
        (config.node_ip, pod),
        (transport.dst_port, pod_port),
    )
    .is_err()
    {
        return Some(drop(ctx, Counter::DropMalformed));
    }
    Some(deliver_to_pod(ctx, pod))
}

/// An ICMP error (unreachable, fragmentation needed, time exceeded) about a
/// masqueraded packet: sent back to the pod, with the quoted packet restored
/// to what the pod sent, so the pod's stack finds the right socket and route.
#[inline(never)]
fn translate_icmp_error(ctx: &TcContext, config: &NodeConfig) -> Option<i32> {
    let quoted = ctx.load::<[u8; 28]>(QUOTED_AT).ok()?;
    if quoted[0] != 0x45 || quoted[12..16] != config.node_ip {
        return None;
    }
    let protocol = quoted[9];
    let (nat_port, remote_port, port_at) = match protocol {
        TCP | UDP => (
            [quoted[20], quoted[21]],
            [quoted[22], quoted[23]],
            QUOTED_AT + 20,
        ),
        ICMP if quoted[20] == ICMP_ECHO_REQUEST => {
            ([quoted[24], quoted[25]], [0; 2], QUOTED_AT + 24)
        }
        _ => return None,
    };
    if !in_port_range(config, nat_port) {
        return None;
    }
    let reply = FlowKey {
        src: [quoted[16], quoted[17], quoted[18], quoted[19]],
        dst: config.node_ip,
        src_port: remote_port,
        dst_port: nat_port,
        protocol,
        direction: nat_direction::REPLY,
        _pad: [0; 2],
    };
    // SAFETY: the value is copied out at once.
    let Some(entry) = (unsafe { NAT.get(reply) }).copied() else {
        return Some(drop(ctx, Counter::DropNatNoMapping));
    };
    let pod = entry.addr;
    // The quoted header's own checksum, updated for its new source address.
    let old_quoted_checksum = [quoted[10], quoted[11]];
    let new_quoted_checksum = checksum_update(old_quoted_checksum, config.node_ip, pod);
    let icmp_checksum_at = L4_AT + 2;
    let translated = ctx
        .l3_csum_replace(IP_CHECKSUM_AT, raw4(config.node_ip), raw4(pod), 4)
        .and_then(|()| ctx.l4_csum_replace(icmp_checksum_at, raw4(config.node_ip), raw4(pod), 4))
        .and_then(|()| {
            ctx.l4_csum_replace(
                icmp_checksum_at,
                raw2(old_quoted_checksum),
                raw2(new_quoted_checksum),
                2,
            )
        })
        .and_then(|()| ctx.l4_csum_replace(icmp_checksum_at, raw2(nat_port), raw2(entry.port), 2))
        .and_then(|()| ctx.store(IP_DESTINATION_AT, &pod, 0))
        .and_then(|()| ctx.store(QUOTED_AT + 12, &pod, 0))
        .and_then(|()| ctx.store(QUOTED_AT + 10, &new_quoted_checksum, 0))
        .and_then(|()| ctx.store(port_at, &entry.port, 0));
    if translated.is_err() {
        return Some(drop(ctx, Counter::DropMalformed));
    }
    Some(deliver_to_pod(ctx, pod))
}

/// RFC 1624 update of a checksum for one changed 32-bit field.
#[inline(always)]
fn checksum_update(checksum: [u8; 2], old: Ipv4Octets, new: Ipv4Octets) -> [u8; 2] {
    let mut sum = u32::from(!u16::from_be_bytes(checksum));
    for index in [0, 2] {
        sum += u32::from(!u16::from_be_bytes([old[index], old[index + 1]]));
        sum += u32::from(u16::from_be_bytes([new[index], new[index + 1]]));
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    (!(sum as u16)).to_be_bytes()
}

fn deliver_to_pod(ctx: &TcContext, pod: Ipv4Octets) -> i32 {
    match endpoint(&pod) {
        Some(destination) if forward_hop(ctx) => {
            deliver(ctx, &destination, Redirect::Peer, Counter::NatReplyToPod)
        }
        Some(_) => drop(ctx, Counter::DropTtlExceeded),
        None => drop(ctx, Counter::DropStaleEndpoint),
    }
}
