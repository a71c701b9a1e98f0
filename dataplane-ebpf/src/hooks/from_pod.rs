//! from-pod: TC ingress on the host side of a pod veth.

use aya_ebpf::programs::TcContext;
use dataplane_common::{Counter, Ipv4Octets, NodeConfig, NodeRoute};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
};

use crate::{
    counters::{Outcome, drop, finish, pass_to_host},
    direct,
    hooks::from_outside,
    ipv4::arp,
    ipv4::icmp,
    ipv4::{check_transport, checked_header, forward_hop, refused_destination},
    ipv6,
    local::{Redirect, deliver},
    maps::{endpoint, is_unmasqueraded, node_config, remote_node},
    nat,
    packet::{IP_AT, header, ingress_ifindex, linearize_headers, vlan_tagged},
    policy,
    route::{Destination, lookup},
    service,
    tunnel::send_out_uplink,
};

pub fn handle(ctx: &TcContext) -> i32 {
    linearize_headers(ctx);
    let Some(eth) = header::<EthHdr>(ctx, 0) else {
        return drop(ctx, Counter::DropMalformed);
    };
    // SAFETY: bounds checked by `header`.
    let ether_type = unsafe { (*eth).ether_type };
    if vlan_tagged(ctx)
        || ether_type == EtherType::Ieee8021q as u16
        || ether_type == EtherType::Ieee8021ad as u16
    {
        drop(ctx, Counter::DropPodVlanTagged)
    } else if ether_type == EtherType::Ipv4 as u16 {
        // SAFETY: bounds checked by `header`.
        finish(ctx, ipv4(ctx, unsafe { (*eth).dst_addr[0] }))
    } else if ether_type == EtherType::Ipv6 as u16 {
        // SAFETY: bounds checked by `header`.
        let first_mac_octet = unsafe { (*eth).dst_addr[0] };
        ipv6::from_pod(ctx, node_config(), first_mac_octet)
    } else if ether_type == EtherType::Arp as u16 {
        finish(ctx, arp::answer_request(ctx))
    } else {
        // Nothing else reaches the node or anyone else.
        drop(ctx, Counter::DropPodNotIpv4)
    }
}

/// `first_mac_octet`: of the frame's destination MAC.
#[inline(always)]
fn ipv4(ctx: &TcContext, first_mac_octet: u8) -> Outcome {
    let ip = checked_header(ctx).ok_or(Counter::DropMalformed)?;
    let (src, dst) = (ip.src_addr, ip.dst_addr);
    // Checked before anything is created for the packet (a NAT entry).
    if let Some(refused) = refused_destination(dst) {
        return Err(refused);
    }
    // The group bit: broadcast or multicast frames carry no unicast packet.
    if first_mac_octet & 1 != 0 {
        return Err(Counter::DropNotUnicast);
    }
    check_transport(ctx, ip)?;

    // A pod may only send from its own address, and only through its own veth.
    match endpoint(&src) {
        Some(source) if source.host_ifindex == ingress_ifindex(ctx) => {}
        _ => return Err(Counter::DropSpoofedSource),
    }

    let config = node_config();
    // As the pod sent it, for its policy (read before a translation).
    let judged = policy::note_sent(ctx, config);
    let dst = match to_or_from_service(ctx, config, ip) {
        Ok(service::UNTOUCHED) => dst,
        Ok(translated) => translated.to_ne_bytes(),
        Err(reason @ (Counter::DropServiceNoBackend | Counter::DropServiceUnknown)) => {
            return Ok(icmp::port_unreachable(ctx, config, reason));
        }
        Err(refused) => return Err(refused),
    };
    if judged {
        policy::egress(ctx)?;
    }
    let destination = lookup(dst, config);
    // A packet this node would forward with its last hop used up is answered
    // as a router answers it, before anything (a NAT entry) is made for it.
    if forwards(&destination) && last_hop(ctx) {
        return Ok(icmp::time_exceeded(ctx, config));
    }
    match destination {
        Destination::LocalPod(destination) => {
            forward_hop(ctx)?;
            deliver(
                ctx,
                &destination,
                Redirect::into_pod(config),
                Counter::ForwardedLocal,
            )
        }
        Destination::RemotePod(route) => to_node(ctx, config, &route),
        // The node itself: kubelet, node-local DNS, the gateway address.
        Destination::Host => to_host(ctx, config, dst),
        // Never let the host stack guess where an unknown pod address goes.
        Destination::UnknownLocalPod => Err(Counter::DropUnknownEndpoint),
        Destination::UnknownNode => Err(Counter::DropUnknownNode),
        Destination::Outside => outside(ctx, config, src, dst),
    }
}

/// Whether a translation made the packet come from a frontend instead of
/// the pod `src` that sent it: a backend's answer, to be sent as it is.
#[inline(always)]
fn answers_outside_client(ctx: &TcContext, src: Ipv4Octets) -> bool {
    // SAFETY: bounds checked by `header`.
    header::<Ipv4Hdr>(ctx, IP_AT).is_some_and(|ip| unsafe { (*ip).src_addr } != src)
}

/// To an address of the node: up its stack, except a backend's answer to a
/// client masqueraded on its way to a Service, which is sent to the client.
#[inline(always)]
fn to_host(ctx: &TcContext, config: &NodeConfig, dst: Ipv4Octets) -> Outcome {
    if dst != config.node_ip || config.services == 0 || config.masquerade == 0 {
        return Ok(pass_to_host(ctx));
    }
    match from_outside::translate_reply_to_client(ctx, config).unpack()? {
        service::UNTOUCHED => Ok(pass_to_host(ctx)),
        client => from_outside::forward_to_client(ctx, config, client.to_ne_bytes()),
    }
}

/// A packet to a Service frontend or a backend's reply, translated: its
/// destination now, or `service::UNTOUCHED`. (Its source changes only on
/// hairpin connections, which stay on this node and need no SNAT.)
#[inline(always)]
fn to_or_from_service(ctx: &TcContext, config: &NodeConfig, ip: &Ipv4Hdr) -> Outcome<u32> {
    if config.services == 0 {
        return Ok(service::UNTOUCHED);
    }
    // A later piece of a datagram: by what its first piece got.
    if ip.frag_offset() != 0 {
        return service::later_piece(ctx, config).unpack();
    }
    service::translate(ctx, ip, config).unpack()
}

/// Whether the packet's TTL runs out here. Read from the packet as it is now
/// (a translation rewrote it), which also keeps it off the stack.
#[inline(always)]
fn last_hop(ctx: &TcContext) -> bool {
    // SAFETY: bounds checked by `header`.
    header::<Ipv4Hdr>(ctx, IP_AT).is_some_and(|ip| unsafe { (*ip).ttl } <= 1)
}

/// Whether the packet to `destination` leaves through this node (rather than
/// being dropped or handed to its stack, which does its own TTL handling).
#[inline(always)]
fn forwards(destination: &Destination) -> bool {
    matches!(
        destination,
        Destination::LocalPod(_) | Destination::RemotePod(_) | Destination::Outside
    )
}

/// Not a pod address and not this node: another node, or the world.
#[inline(always)]
fn outside(ctx: &TcContext, config: &NodeConfig, src: Ipv4Octets, dst: Ipv4Octets) -> Outcome {
    // A backend here answering an outside client whose address a frontend
    // kept (external traffic policy Local): from the frontend, as it is.
    if config.outside_local != 0 && answers_outside_client(ctx, src) {
        forward_hop(ctx)?;
        return send_out_uplink(ctx, config, Counter::ServiceReplyToOutside);
    }
    if !config.tunnel_enabled() {
        return Ok(pass_to_host(ctx));
    }
    // Pod to another node's own IP goes the way its pods are reached, so
    // the remote node sees the pod's address and answers the same way.
    if let Some(node) = remote_node(&dst) {
        let route = NodeRoute {
            node_ip: dst,
            path: node.path,
            _pad: [0; 3],
        };
        return to_node(ctx, config, &route);
    }
    if config.masquerade == 0 {
        return Ok(pass_to_host(ctx));
    }
    if is_unmasqueraded(dst) {
        forward_hop(ctx)?;
        return send_out_uplink(ctx, config, Counter::RoutedUnmasqueraded);
    }
    Ok(masquerade(ctx, config, src, dst))
}

/// Translated by NAT, then routed out of the uplink.
// Out of line: the NAT's state stays out of the other paths' stack frames.
#[inline(never)]
fn masquerade(ctx: &TcContext, config: &NodeConfig, src: Ipv4Octets, dst: Ipv4Octets) -> i32 {
    let outcome = nat::masquerade(ctx, config, (src, dst), false)
        .and_then(|()| forward_hop(ctx))
        .and_then(|()| send_out_uplink(ctx, config, Counter::Masqueraded));
    finish(ctx, outcome)
}

#[inline(always)]
fn to_node(ctx: &TcContext, config: &NodeConfig, route: &NodeRoute) -> Outcome {
    // Checked before the TTL changes: the ICMP error quotes the header as sent.
    let mtu = direct::path_mtu(config, route);
    if icmp::exceeds_mtu(ctx, mtu) {
        return Ok(icmp::frag_needed(ctx, config, mtu));
    }
    forward_hop(ctx)?;
    Ok(direct::to_node(ctx, config, route))
}
