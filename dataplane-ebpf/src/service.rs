// Above 400 lines: one Service connection's whole life (choose, track, translate, close) read in one place; hooks call its entry points only.
//! Services (kube-proxy's job, per packet at TC): a pod's connection to a
//! Service frontend (address, port, protocol) is translated to one of its
//! backends, chosen on the connection's first packet (at random, or with
//! ClientIP session affinity the backend of the client's last connection
//! while that is recent) and kept for its whole life; the backend's
//! replies are translated back, so the client only ever sees the frontend. The backend sees the client's own address,
//! as with kube-proxy, except when the client is the backend itself
//! (hairpin): its stack would drop a packet from its own address as martian,
//! so that one comes from `HAIRPIN_SOURCE`.
//!
//! Both halves of a connection live in `SERVICE_FLOWS`, on the client's
//! node: the reply half is written first, so the backend's first answer
//! finds it. Each half records its last packet and what it saw (the agent
//! expires connections by protocol and state, as the NAT's). A backend
//! that stops serving (terminating, or gone from the Service) keeps its
//! TCP connections until they end, as kube-proxy's conntrack entries do:
//! only new connections and datagram flows check `SERVING` and move to a
//! backend that serves. Nothing walks the table when a backend changes.

use core::mem::offset_of;

use aya_ebpf::{
    bindings::BPF_ANY,
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    programs::TcContext,
};
use dataplane_common::{
    Affinity, AffinityKey, Backend, BackendKey, Counter, FlowKey, FragmentKey, HAIRPIN_SOURCE,
    Ipv4Octets, NODE_PORT_ADDRESS, NodeConfig, ServiceFlow, ServiceKey, ServiceValue, conn_state,
    fragment_rewrite, frontend_scope, service_direction, service_flags,
};
use network_types::ip::Ipv4Hdr;

use crate::{
    counters::{Outcome, PackedOutcome, count, note},
    fragments,
    ipv4::icmp::{QUOTE_PAYLOAD_AT, quoted_header, rewrite_quote},
    ipv4::is_fragment,
    maps::{
        AFFINITY, BACKENDS, SERVICE_FLOWS, SERVICES, in_source_ranges, is_host_address, is_serving,
        node_config, remote_node,
    },
    packet::{ICMP, IP_AT, L4_AT, PLAIN_VIHL, TCP, UDP, header, load},
    rewrite::{
        DESTINATION_PORT_AT, IP_DESTINATION_AT, IP_SOURCE_AT, SOURCE_PORT_AT, Transport,
        ports_only, rewrite_address, rewrite_port, rewrite_transport_address,
    },
};

/// A pod's packet (its checked IPv4 header `ip`) to a Service frontend is
/// translated to a backend, and a backend's reply back to the frontend:
/// the packet's destination after that, or `UNTOUCHED` when it is neither
/// (an address as a `u32` in memory order: one register to return, where
/// an `Option` would take a slot of the caller's scarce stack).
/// `Err(DropServiceNoBackend)`: the frontend has no backend.
// Out of line: its state stays out of the other paths' stack frames.
#[inline(never)]
pub fn translate(ctx: &TcContext, ip: &Ipv4Hdr, config: &NodeConfig) -> PackedOutcome {
    PackedOutcome::pack(translate_inline(ctx, ip, config))
}

/// What `translate` returns for a packet it left alone (0.0.0.0 is never a
/// destination: from-pod drops it before).
pub const UNTOUCHED: u32 = 0;

/// One map lookup per packet: a reply to a client on this node goes to a
/// pod of this node (or to the hairpin address), a packet to a frontend
/// never does (Service addresses stay out of the pod CIDRs). The new
/// destination as a `u32`, or `UNTOUCHED` (not an `Option`: on an error
/// its unset bytes would leave the compiler registers it copies unset,
/// which the verifier refuses).
#[inline(always)]
fn translate_inline(ctx: &TcContext, ip: &Ipv4Hdr, config: &NodeConfig) -> Outcome<u32> {
    // A first piece's datagram, read before anything (a header read in
    // place is not readable after some calls).
    let datagram = fragments::datagram(ip);
    let first_piece = is_fragment(ip).then_some(&datagram);
    let to_client_side = config.pod_cidr.contains(ip.dst_addr) || ip.dst_addr == HAIRPIN_SOURCE;
    // A backend here answering an outside client whose address was kept
    // (only where a frontend keeps them: one more lookup per packet out).
    let maybe_to_outside_client =
        config.outside_local != 0 && !config.cluster_cidr.contains(ip.dst_addr);
    if ip.proto == ICMP {
        return if to_client_side {
            error_to_client(ctx, ip.src_addr).unpack()
        } else {
            Ok(UNTOUCHED)
        };
    }
    let Some(key) = reply_key(ctx, ip) else {
        return Ok(UNTOUCHED);
    };
    let flags = tcp_flags(ctx, &key);
    let opening = opens(flags);
    if !opening && to_client_side {
        return back_to_client(ctx, first_piece, &key, flags);
    }
    if !opening && maybe_to_outside_client {
        let client = back_to_client(ctx, first_piece, &key, flags)?;
        if client != UNTOUCHED {
            return Ok(client);
        }
    }
    if !config.cluster_cidr.contains(key.dst) {
        let mut frontend = ServiceKey {
            address: key.dst,
            port: key.dst_port,
            protocol: key.protocol,
            scope: frontend_scope::EVERYONE,
        };
        if let Some(service) = frontend_entry(&mut frontend, config) {
            // A pod client's FIN or RST is its own (its source is checked).
            let backend = to_backend(ctx, &key, &service, flags)?;
            if let Some(datagram) = first_piece.filter(|datagram| datagram.src != backend) {
                fragments::remember(datagram, backend, fragment_rewrite::DESTINATION);
            }
            return Ok(u32::from_ne_bytes(backend));
        }
        // A Service address at a port it does not have, or no Service's:
        // refused, never routed out as if it were somewhere.
        if config.service_cidr.contains(key.dst) {
            return Err(Counter::DropServiceUnknown);
        }
    }
    if opening {
        forget_reply_half(&key);
    }
    Ok(UNTOUCHED)
}

/// An outside client's packet (its checked IPv4 header `ip`) to the
/// frontend whose entry is `service`, translated to a backend: the
/// backend's address.
#[inline(never)]
pub fn from_outside_to_backend(
    ctx: &TcContext,
    ip: &Ipv4Hdr,
    service: &ServiceValue,
) -> PackedOutcome {
    PackedOutcome::pack(
        reply_key(ctx, ip)
            .ok_or(Counter::DropMalformed)
            .and_then(|key| {
                // Anyone may claim an outside client's address: its FIN or
                // RST does not shorten the connection's tracking.
                let flags = tcp_flags(ctx, &key) & !CLOSE_FLAGS;
                to_backend(ctx, &key, service, flags)
            })
            .map(u32::from_ne_bytes),
    )
}

/// The `SERVICES` entry of the frontend `key` a client addressed: the
/// address's own, or for an address of a node at a port in the node port
/// range, the node port's (`key` then has its address).
#[inline(always)]
pub fn frontend_entry(key: &mut ServiceKey, config: &NodeConfig) -> Option<ServiceValue> {
    // SAFETY: the value is copied out at once.
    if let Some(service) = unsafe { SERVICES.get(*key) }.copied() {
        return Some(service);
    }
    let port = u16::from_be_bytes(key.port);
    if port < config.node_port_min || port > config.node_port_max || !is_node(&key.address, config)
    {
        return None;
    }
    key.address = NODE_PORT_ADDRESS;
    // SAFETY: as above.
    unsafe { SERVICES.get(*key) }.copied()
}

/// Whether `address` is one of this node's or another node's IP.
#[inline(always)]
fn is_node(address: &Ipv4Octets, config: &NodeConfig) -> bool {
    *address == config.node_ip || is_host_address(address, config) || remote_node(address).is_some()
}

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;
/// The flags that end a TCP connection.
const CLOSE_FLAGS: u8 = FIN | RST;

/// The TCP flags of the packet `key` (0 for UDP).
#[inline(always)]
fn tcp_flags(ctx: &TcContext, key: &FlowKey) -> u8 {
    const FLAGS_AT: usize = L4_AT + 13;
    if key.protocol != TCP {
        return 0;
    }
    match header::<u8>(ctx, FLAGS_AT) {
        // SAFETY: bounds checked by `header`.
        Some(flags) => unsafe { *flags },
        None => ctx.load(FLAGS_AT).unwrap_or(0),
    }
}

/// TCP flags that open a connection (SYN without ACK).
#[inline(always)]
fn opens(flags: u8) -> bool {
    flags & (SYN | ACK) == SYN
}

/// The state a half moves to on a packet with `flags`: `seen` (what the
/// packet shows of the connection), or closing on a FIN or RST. A SYN (or
/// SYN-ACK) starts a connection afresh: a port reused after a closed
/// connection must not inherit its short closing timeout.
#[inline(always)]
fn advanced(state: u8, flags: u8, seen: u8) -> u8 {
    if flags & SYN != 0 {
        return seen;
    }
    let now = if flags & CLOSE_FLAGS != 0 {
        conn_state::CLOSING
    } else {
        seen
    };
    if now > state { now } else { state }
}

/// A client opens a connection straight to an address and port a closed
/// connection to a frontend had as its backend, from the same port (the
/// kernel reuses a port toward another destination at once): the reply
/// half that connection left must not dress the new one's answers as the
/// frontend's.
#[inline(always)]
fn forget_reply_half(opening: &FlowKey) {
    let stale = FlowKey {
        src: opening.dst,
        dst: opening.src,
        src_port: opening.dst_port,
        dst_port: opening.src_port,
        ..*opening
    };
    // Nothing there is the common case.
    let _ = SERVICE_FLOWS.remove(stale);
}

/// A packet about to be delivered to a pod of this node after crossing the
/// tunnel, NAT or the node's stack: a backend's reply to a client here is
/// translated back.
#[inline(always)]
pub fn translate_reply(ctx: &TcContext) -> Outcome<()> {
    // Read in place: the delivery paths' frames are deep already. Every
    // path here has the headers linear (decapsulation and NAT rewrote them;
    // the node's stack builds them so).
    let ip = header::<Ipv4Hdr>(ctx, IP_AT).ok_or(Counter::DropMalformed)?;
    // SAFETY: bounds checked by `header`; read before anything changes the packet.
    let ip = unsafe { &*ip };
    if ip.proto == ICMP {
        return error_to_client(ctx, ip.src_addr).unpack().map(|_| ());
    }
    if ip.frag_offset() != 0 {
        return later_piece(ctx, node_config()).unpack().map(|_| ());
    }
    let datagram = fragments::datagram(ip);
    let first_piece = is_fragment(ip).then_some(&datagram);
    match reply_key(ctx, ip) {
        Some(key) => {
            let flags = tcp_flags(ctx, &key);
            back_to_client(ctx, first_piece, &key, flags).map(|_| ())
        }
        None => Ok(()),
    }
}

/// An ICMP error (its packet's IPv4 header `ip`) about a packet a client's
/// connection to a frontend sent its backend: the quoted packet is restored
/// to what the client sent (to the frontend), and an error the backend
/// itself sent comes from the frontend, so the client's stack finds the
/// socket (a connected UDP socket gets ECONNREFUSED, a TCP one its path
/// MTU). Errors from routers on the way keep their source. Returns the
/// client, or `UNTOUCHED`. (Hairpin connections' errors are left alone.)
// Out of line: the quote stays out of the callers' stack frames.
#[inline(never)]
fn error_to_client(ctx: &TcContext, source: Ipv4Octets) -> PackedOutcome {
    PackedOutcome::pack(
        restore_error(ctx, source).map(|client| client.map_or(UNTOUCHED, u32::from_ne_bytes)),
    )
}

#[inline(always)]
fn restore_error(ctx: &TcContext, source: Ipv4Octets) -> Outcome<Option<Ipv4Octets>> {
    let Some(quoted) = quoted_header(ctx) else {
        return Ok(None);
    };
    if quoted.protocol != TCP && quoted.protocol != UDP {
        return Ok(None);
    }
    // TCP and UDP headers both start with the two ports.
    let Ok([client_port, backend_port]) = ctx.load::<[[u8; 2]; 2]>(QUOTE_PAYLOAD_AT) else {
        return Ok(None);
    };
    let reply = FlowKey {
        src: quoted.dst,
        dst: quoted.src,
        src_port: backend_port,
        dst_port: client_port,
        protocol: quoted.protocol,
        direction: service_direction::TO_CLIENT,
        _pad: [0; 2],
    };
    // SAFETY: the fields are copied out at once.
    let Some((frontend, client)) =
        unsafe { SERVICE_FLOWS.get(reply) }.map(|flow| (flow.target, flow.client))
    else {
        return Ok(None);
    };
    if client != quoted.src {
        return Ok(None);
    }
    // Counted, not traced: the monitor's frame on top of this one would
    // pass the stack limit under the delivery paths (whose trace follows).
    count(ctx, Counter::ServiceToClient);
    rewrite_quote(
        ctx,
        &quoted,
        offset_of!(Ipv4Hdr, dst_addr),
        (quoted.dst, frontend.address),
        QUOTE_PAYLOAD_AT + 2,
        (backend_port, frontend.port),
    )?;
    if source == quoted.dst {
        rewrite_address(ctx, IP_SOURCE_AT, (source, frontend.address))?;
    }
    Ok(Some(client))
}

/// The packet as the key of a reply half, its ports read in place (the
/// checksum facts are derived only for a packet that is translated); `None`
/// for what Services never translate: other protocols, later fragments
/// (no ports), headers with options.
#[inline(always)]
fn reply_key(ctx: &TcContext, ip: &Ipv4Hdr) -> Option<FlowKey> {
    if (ip.proto != TCP && ip.proto != UDP) || ip.frag_offset() != 0 || ip.vihl != PLAIN_VIHL {
        return None;
    }
    // In place when the headers are linear (from-pod makes them so), else copied.
    let [src_port, dst_port] = match header::<[[u8; 2]; 2]>(ctx, L4_AT) {
        // SAFETY: bounds checked by `header`; copied before anything changes the packet.
        Some(ports) => unsafe { *ports },
        None => ctx.load(L4_AT).ok()?,
    };
    Some(FlowKey {
        src: ip.src_addr,
        dst: ip.dst_addr,
        src_port,
        dst_port,
        protocol: ip.proto,
        direction: service_direction::TO_CLIENT,
        _pad: [0; 2],
    })
}

/// Translates the packet `key` (with TCP `flags`) back to the frontend
/// when it is a backend's reply, and records it in its half; returns the
/// client it now goes to, or `UNTOUCHED`.
#[inline(always)]
fn back_to_client(
    ctx: &TcContext,
    first_piece: Option<&FragmentKey>,
    key: &FlowKey,
    flags: u8,
) -> Outcome<u32> {
    let Some(flow) = SERVICE_FLOWS.get_ptr_mut(key) else {
        return Ok(UNTOUCHED);
    };
    // SAFETY: a live entry of the map, its fields read and written whole
    // (a racing packet of the same half writes the same kind of values).
    let (frontend, client) = unsafe {
        (*flow).last_seen_ns = bpf_ktime_get_ns();
        (*flow).state = advanced((*flow).state, flags, conn_state::ESTABLISHED);
        ((*flow).target, (*flow).client)
    };
    to_client(ctx, key, frontend, client)?;
    if let Some(datagram) = first_piece {
        fragments::remember(datagram, frontend.address, fragment_rewrite::SOURCE);
    }
    Ok(u32::from_ne_bytes(client))
}

/// A later piece (no ports) of a datagram whose first piece was translated:
/// toward the client, from the frontend; toward a backend, to it. Returns
/// the piece's destination now, or `UNTOUCHED` (its first piece was no
/// Service's, or has not come yet). Hairpin pieces are left alone.
// Out of line, with the header read here: few arguments (the compiler would
// pass a borrowed header's fields one by one, past the five registers), and
// its own result in one register.
#[inline(never)]
pub fn later_piece(ctx: &TcContext, config: &NodeConfig) -> PackedOutcome {
    let ip = match load::<Ipv4Hdr>(ctx, IP_AT) {
        Ok(ip) => ip,
        Err(reason) => return PackedOutcome::pack(Err(reason)),
    };
    let record = (ip.dst_addr != HAIRPIN_SOURCE)
        .then(|| fragments::recorded(&ip))
        .flatten();
    let translated = match record {
        // Toward the client (a pod here, or outside): from the frontend.
        Some(record) if record.rewrite == fragment_rewrite::SOURCE => {
            rewrite_address(ctx, IP_SOURCE_AT, (ip.src_addr, record.address)).map(|()| ip.dst_addr)
        }
        // Toward a backend: to it (a piece for a cluster address is for no
        // frontend).
        Some(record)
            if record.rewrite == fragment_rewrite::DESTINATION
                && !config.cluster_cidr.contains(ip.dst_addr) =>
        {
            rewrite_address(ctx, IP_DESTINATION_AT, (ip.dst_addr, record.address))
                .map(|()| record.address)
        }
        _ => Ok(UNTOUCHED.to_ne_bytes()),
    };
    PackedOutcome::pack(translated.map(u32::from_ne_bytes))
}

/// The checksum facts of the TCP or UDP packet `key`.
#[inline(always)]
fn transport_of(key: &FlowKey) -> Outcome<Transport> {
    ports_only(key.protocol, [key.src_port, key.dst_port]).ok_or(Counter::DropMalformed)
}

/// The reply `key` of a connection to `frontend` from `client`: from the frontend.
#[inline(always)]
fn to_client(ctx: &TcContext, key: &FlowKey, frontend: Backend, client: Ipv4Octets) -> Outcome<()> {
    let packet = &transport_of(key)?;
    note(ctx, Counter::ServiceToClient);
    rewrite_transport_address(ctx, packet, IP_SOURCE_AT, (key.src, frontend.address))?;
    rewrite_port(ctx, packet, SOURCE_PORT_AT, (key.src_port, frontend.port))?;
    if client != key.dst {
        rewrite_transport_address(ctx, packet, IP_DESTINATION_AT, (key.dst, client))?;
    }
    Ok(())
}

/// The client's packet `key` (with TCP `flags`) to a frontend of
/// `service`: to the backend its connection has, or a new one. Returns the
/// backend's address.
#[inline(always)]
fn to_backend(
    ctx: &TcContext,
    key: &FlowKey,
    service: &ServiceValue,
    flags: u8,
) -> Outcome<Ipv4Octets> {
    let packet = &transport_of(key)?;
    let forward = FlowKey {
        direction: service_direction::TO_BACKEND,
        ..*key
    };
    let backend = match kept_backend(&forward, service, flags) {
        // A SYN keeping its backend (retransmitted, or a port reused while
        // that backend serves) records both halves again: the reply half
        // may be gone (the agent collects the halves of a closed
        // connection one at a time, the LRU evicts them one at a time), and
        // without it the backend's answer is not the frontend's.
        Some(backend) if opens(flags) => record(&forward, backend)?,
        Some(backend) => backend,
        None => open(&forward, service)?,
    };
    let client = key.src;
    note(ctx, Counter::ServiceToBackend);
    rewrite_transport_address(ctx, packet, IP_DESTINATION_AT, (key.dst, backend.address))?;
    rewrite_port(
        ctx,
        packet,
        DESTINATION_PORT_AT,
        (key.dst_port, backend.port),
    )?;
    if backend.address == client {
        rewrite_transport_address(ctx, packet, IP_SOURCE_AT, (client, HAIRPIN_SOURCE))?;
    }
    Ok(backend.address)
}

/// The backend the connection `forward` has, recorded in its half, if it
/// keeps it: a TCP connection under way always does (it drains from a
/// backend that stopped serving); a new connection (a SYN reusing the
/// port of one that ended) and a datagram flow only while the backend
/// serves the frontend.
#[inline(always)]
fn kept_backend(forward: &FlowKey, service: &ServiceValue, flags: u8) -> Option<Backend> {
    let flow = SERVICE_FLOWS.get_ptr_mut(forward)?;
    // SAFETY: a live entry of the map, its fields read and written whole.
    unsafe {
        let backend = (*flow).target;
        let under_way = forward.protocol == TCP && !opens(flags);
        if !under_way && !is_serving(service.id, backend) {
            return None;
        }
        (*flow).last_seen_ns = bpf_ktime_get_ns();
        (*flow).state = advanced((*flow).state, flags, conn_state::NEW);
        Some(backend)
    }
}

/// A backend slot at random.
#[inline(always)]
fn random_backend(service: &ServiceValue) -> Outcome<Backend> {
    // SAFETY: plain helper call.
    let slot = unsafe { bpf_get_prandom_u32() } % service.backend_count;
    let slot_key = BackendKey {
        service_id: service.id,
        slot,
    };
    // SAFETY: the value is copied out at once. A slot missing while the
    // agent shrinks the set is a backend that is going away.
    unsafe { BACKENDS.get(slot_key) }
        .copied()
        .ok_or(Counter::DropServiceNoBackend)
}

/// With ClientIP affinity, the backend of the client's last connection if
/// that was recent enough and it still serves the frontend.
#[inline(always)]
fn sticky_backend(service: &ServiceValue, client: Ipv4Octets) -> Option<Backend> {
    if service.affinity_seconds == 0 {
        return None;
    }
    let key = AffinityKey {
        service_id: service.id,
        client,
    };
    // SAFETY: the value is copied out at once.
    let affinity = unsafe { AFFINITY.get(key) }.copied()?;
    // SAFETY: plain helper call.
    let idle = unsafe { bpf_ktime_get_ns() }.saturating_sub(affinity.last_used_ns);
    let recent = idle <= u64::from(service.affinity_seconds) * 1_000_000_000;
    (recent && is_serving(service.id, affinity.backend)).then_some(affinity.backend)
}

#[inline(always)]
fn remember_affinity(service: &ServiceValue, client: Ipv4Octets, backend: Backend) {
    let key = AffinityKey {
        service_id: service.id,
        client,
    };
    let affinity = Affinity {
        backend,
        // SAFETY: plain helper call.
        last_used_ns: unsafe { bpf_ktime_get_ns() },
    };
    // Best effort: without it the next connection picks at random.
    let _ = AFFINITY.insert(key, affinity, u64::from(BPF_ANY));
}

/// The backend for a new connection of `client` to `service` (a client
/// outside the frontend's source ranges has none): its sticky one with
/// session affinity, else one at random.
#[inline(always)]
pub fn choose_backend(service: &ServiceValue, client: Ipv4Octets) -> Outcome<Backend> {
    if service.flags & service_flags::SOURCE_RANGES != 0 && !in_source_ranges(service.id, client) {
        return Err(Counter::DropServiceSourceRange);
    }
    if service.backend_count == 0 {
        return Err(Counter::DropServiceNoBackend);
    }
    let backend = match sticky_backend(service, client) {
        Some(backend) => backend,
        None => random_backend(service)?,
    };
    if service.affinity_seconds != 0 {
        remember_affinity(service, client, backend);
    }
    Ok(backend)
}

/// Picks a backend for the new connection `forward` (the client's sticky
/// one with session affinity, else at random) and records both halves.
#[inline(always)]
fn open(forward: &FlowKey, service: &ServiceValue) -> Outcome<Backend> {
    let backend = choose_backend(service, forward.src)?;
    record(forward, backend)
}

/// Records both halves of the new connection `forward` to `backend`, the
/// reply half first (the backend's first answer must find it).
#[inline(always)]
fn record(forward: &FlowKey, backend: Backend) -> Outcome<Backend> {
    let client = forward.src;
    let reply = FlowKey {
        src: backend.address,
        dst: if backend.address == client {
            HAIRPIN_SOURCE
        } else {
            client
        },
        src_port: backend.port,
        dst_port: forward.src_port,
        protocol: forward.protocol,
        direction: service_direction::TO_CLIENT,
        _pad: [0; 2],
    };
    let mut half = ServiceFlow {
        target: Backend {
            address: forward.dst,
            port: forward.dst_port,
            _pad: [0; 2],
        },
        client,
        state: conn_state::NEW,
        _pad: [0; 3],
        // SAFETY: plain helper call.
        last_seen_ns: unsafe { bpf_ktime_get_ns() },
    };
    let recorded = SERVICE_FLOWS
        .insert(reply, half, u64::from(BPF_ANY))
        .and_then(|()| {
            half.target = backend;
            SERVICE_FLOWS.insert(forward, half, u64::from(BPF_ANY))
        });
    // LRU inserts make room; a failure is a kernel out of memory.
    recorded.map_err(|_| Counter::DropServiceUntracked)?;
    Ok(backend)
}
