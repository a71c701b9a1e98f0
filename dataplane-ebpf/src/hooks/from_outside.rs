//! from-outside: a client outside the cluster reaching a Service through
//! this node: at one of its external frontends (the node IP at a node port,
//! an external or load balancer IP) or at its ClusterIP routed here. A
//! program of its own, entered by tail call from from-uplink (a fresh
//! stack: the NAT's frame does not fit under from-uplink's). The backend is
//! chosen as for pods; the client is then masqueraded to the node IP
//! (kube-proxy's `externalTrafficPolicy: Cluster`, in a second tail-called
//! program: the NAT's paths on top of the translation's exceed the
//! verifier's budget), so the backend answers through this node wherever
//! it is, and the answer is translated back here (`translate_reply_to_client`).
//! A frontend without any endpoint answers ICMP port unreachable; one whose
//! external traffic policy is Local drops outside clients on a node
//! without a local endpoint (the load balancer's health check steers them
//! away), as kube-proxy does. A fragmented datagram's first piece records
//! where it went; from-uplink sends the later pieces here too, and they
//! follow it.

use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use dataplane_common::{
    Counter, Ipv4Octets, NODE_PORT_ADDRESS, NodeConfig, ServiceKey, TO_BACKEND_SLOT,
    fragment_rewrite, frontend_scope, service_flags,
};
use network_types::ip::Ipv4Hdr;

use crate::{
    counters::{Outcome, PackedOutcome, finish},
    direct, fragments,
    ipv4::icmp,
    ipv4::{forward_hop, is_fragment, is_martian_source},
    local::{Redirect, deliver},
    maps::{SERVICES, TAIL_CALLS, endpoint, is_host_address, node_config, node_route},
    nat,
    packet::{IP_AT, L4_AT, load},
    rewrite::{IP_DESTINATION_AT, IP_SOURCE_AT, rewrite_address},
    route::{Destination, lookup},
    service,
    tunnel::send_out_uplink,
};

pub fn handle(ctx: &TcContext) -> i32 {
    finish(ctx, to_backend(ctx))
}

#[inline(always)]
fn to_backend(ctx: &TcContext) -> Outcome {
    let ip: Ipv4Hdr = load(ctx, IP_AT)?;
    if ip.frag_offset() != 0 {
        return later_piece(ctx, &ip);
    }
    let Ok([_, port]) = ctx.load::<[[u8; 2]; 2]>(L4_AT) else {
        return Ok(TC_ACT_OK);
    };
    let mut key = ServiceKey {
        address: ip.dst_addr,
        port,
        protocol: ip.proto,
        scope: frontend_scope::EVERYONE,
    };
    let config = node_config();
    let Some(service) = service::frontend_entry(&mut key, config) else {
        // Not a frontend: the node's own traffic.
        return Ok(TC_ACT_OK);
    };
    // A node port is this node's to serve at its own addresses only (pods
    // reach other nodes' node ports translated on their own node): a frame
    // for another node's address is the kernel's to route or discard.
    if key.address == NODE_PORT_ADDRESS && !is_host_address(&ip.dst_addr, config) {
        return Ok(TC_ACT_OK);
    }
    if is_martian_source(ip.src_addr) || is_host_address(&ip.src_addr, config) {
        return Err(Counter::DropMartianSource);
    }
    if service.backend_count == 0 {
        // No endpoint anywhere: refused at once, as kube-proxy's REJECT
        // does (and as pods and the node's sockets are).
        return Ok(icmp::port_unreachable(
            ctx,
            config,
            Counter::DropServiceNoBackend,
        ));
    }
    if service.flags & service_flags::OUTSIDE_LOCAL == 0 {
        let backend = service::from_outside_to_backend(ctx, &ip, &service).unpack()?;
        remember_first_piece(&ip, backend, fragment_rewrite::OUTSIDE_MASQUERADED);
        // SAFETY: the slot holds a classifier; the call returns only while
        // an agent installs it.
        unsafe { TAIL_CALLS.tail_call(ctx, TO_BACKEND_SLOT) };
        return Err(Counter::DropUplinkError);
    }
    // External traffic policy Local: a backend of this node, the client's
    // address kept (its answer is translated on its way out, in from-pod).
    key.scope = frontend_scope::OUTSIDE_LOCAL;
    // SAFETY: the value is copied out at once.
    let local = (unsafe { SERVICES.get(key) }).copied();
    let local = local
        .filter(|local| local.backend_count != 0)
        .ok_or(Counter::DropServiceNoLocalBackend)?;
    let backend = service::from_outside_to_backend(ctx, &ip, &local).unpack()?;
    remember_first_piece(&ip, backend, fragment_rewrite::OUTSIDE_LOCAL);
    let pod = endpoint(&backend.to_ne_bytes()).ok_or(Counter::DropServiceExternalUnsupported)?;
    forward_hop(ctx)?;
    deliver(ctx, &pod, Redirect::into_pod(config), Counter::RoutedToPod)
}

/// Slot `TO_BACKEND_SLOT`: the translated packet (to its backend), its
/// client masqueraded, goes to the backend. (A program of its own: the
/// NAT's paths verified apart from the translation's.)
pub fn masquerade_to_backend(ctx: &TcContext) -> i32 {
    finish(ctx, masquerade_and_forward(ctx))
}

#[inline(always)]
fn masquerade_and_forward(ctx: &TcContext) -> Outcome {
    let config = node_config();
    let ip: Ipv4Hdr = load(ctx, IP_AT)?;
    let (client, backend) = (ip.src_addr, ip.dst_addr);
    // Checked before the NAT makes anything for the packet.
    check_path(ctx, config, backend)?;
    masquerade(ctx, config, client, backend)?;
    forward(ctx, config, backend)
}

/// Whether the packet fits the path to `backend`.
#[inline(always)]
fn check_path(ctx: &TcContext, config: &NodeConfig, backend: Ipv4Octets) -> Outcome<()> {
    if endpoint(&backend).is_none() {
        let route = node_route(backend).ok_or(Counter::DropServiceExternalUnsupported)?;
        // No ICMP toward the outside yet: TCP's MSS keeps within the path.
        if icmp::exceeds_mtu(ctx, direct::path_mtu(config, &route)) {
            return Err(Counter::DropFragNeeded);
        }
    }
    Ok(())
}

/// The translated packet, routed on to `backend`.
#[inline(always)]
fn forward(ctx: &TcContext, config: &NodeConfig, backend: Ipv4Octets) -> Outcome {
    forward_hop(ctx)?;
    match lookup(backend, config) {
        Destination::LocalPod(pod) => {
            deliver(ctx, &pod, Redirect::into_pod(config), Counter::RoutedToPod)
        }
        Destination::RemotePod(route) => Ok(direct::to_node(ctx, config, &route)),
        _ => Err(Counter::DropServiceExternalUnsupported),
    }
}

/// Records where a datagram's first piece (its header as it came, `ip`)
/// went, for its later pieces; nothing for a whole datagram.
#[inline(always)]
fn remember_first_piece(ip: &Ipv4Hdr, backend: u32, rewrite: u8) {
    if is_fragment(ip) {
        fragments::remember(&fragments::datagram(ip), backend.to_ne_bytes(), rewrite);
    }
}

/// A later piece of an outside client's datagram to a Service (from-uplink
/// found its first piece's record): to the same backend, its client
/// masqueraded as the first piece's was (the NAT mapped the ports, which
/// later pieces do not carry).
// Out of line: the first pieces' frame stays off it.
#[inline(never)]
fn later_piece(ctx: &TcContext, ip: &Ipv4Hdr) -> Outcome {
    let config = node_config();
    let Some(record) = fragments::recorded(ip) else {
        return Ok(TC_ACT_OK);
    };
    let backend = record.address;
    check_path(ctx, config, backend)?;
    rewrite_address(ctx, IP_DESTINATION_AT, (ip.dst_addr, backend))?;
    if record.rewrite == fragment_rewrite::OUTSIDE_MASQUERADED {
        rewrite_address(ctx, IP_SOURCE_AT, (ip.src_addr, config.node_ip))?;
    }
    forward(ctx, config, backend)
}

/// The client becomes the node IP and a port of the SNAT range.
// Out of line: the NAT's many paths end at its return instead of each
// going on through the forwarding (the verifier's budget).
#[inline(never)]
fn masquerade(
    ctx: &TcContext,
    config: &NodeConfig,
    client: Ipv4Octets,
    backend: Ipv4Octets,
) -> Outcome<()> {
    nat::masquerade(ctx, config, (client, backend), true)
}

/// A backend's answer to the node IP, from a pod of this node or through
/// the tunnel: if it answers a client masqueraded on its way to a Service,
/// it is translated back (NAT, then the frontend) and the client returned
/// (to be sent on with `forward_to_client`); `UNTOUCHED` for the node's own
/// traffic. (Out of line and apart from the forwarding: the NAT's frame and
/// the tunnel's do not fit on top of each other.)
#[inline(never)]
pub fn translate_reply_to_client(ctx: &TcContext, config: &NodeConfig) -> PackedOutcome {
    let translated =
        load::<Ipv4Hdr>(ctx, IP_AT).and_then(|ip| match nat::translate_reply(ctx, config, &ip) {
            Ok(Some(client)) => service::translate_reply(ctx).map(|()| u32::from_ne_bytes(client)),
            Ok(None) | Err(Counter::DropNatNoMapping) => Ok(service::UNTOUCHED),
            Err(reason) => Err(reason),
        });
    PackedOutcome::pack(translated)
}

/// A translated answer to `client`, outside the cluster: out of the
/// uplink. (Pods reach node ports translated on their own node, so no
/// client of these is another node's pod.)
#[inline(always)]
pub fn forward_to_client(ctx: &TcContext, config: &NodeConfig, client: Ipv4Octets) -> Outcome {
    if config.cluster_cidr.contains(client) {
        return Err(Counter::DropStaleEndpoint);
    }
    forward_hop(ctx)?;
    send_out_uplink(ctx, config, Counter::ServiceReplyToOutside)
}
