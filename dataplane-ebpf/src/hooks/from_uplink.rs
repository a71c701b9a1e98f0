//! from-uplink: TC ingress on the uplink. VXLAN to this node is decapsulated
//! here when it comes from a known node on our VNI, and dropped otherwise;
//! unencapsulated packets from pods of other nodes (direct routing) are
//! accepted only in frames from their node's MAC: nobody on the underlay
//! can inject into pods. VLAN-tagged frames are the kernel's (a VLAN
//! device's, or nobody's): delivered to a pod, the tag would go with them.
//! Everything else passes.

use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use core::mem::offset_of;

use dataplane_common::{Counter, FROM_OUTSIDE_SLOT, Ipv4Octets, NodeConfig, fragment_rewrite};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
    udp::UdpHdr,
};

use crate::{
    counters::{Outcome, finish, pass_to_host, verdict},
    direct, fragments,
    hooks::from_outside,
    ipv4::{forward_hop, is_fragment},
    ipv6,
    local::{Redirect, deliver},
    maps::{
        TAIL_CALLS, endpoint, is_host_address, is_unmasqueraded, node_config, node_route,
        remote_node,
    },
    nat,
    packet::{IP_AT, L4_AT, PLAIN_VIHL, TCP, UDP, load, vlan_tagged},
    service,
    tunnel::{self, VxlanPacket},
};

/// Enough of a packet to tell VXLAN to this node from everything else.
#[repr(C)]
#[derive(Clone, Copy)]
struct UdpPacket {
    eth: EthHdr,
    ip: Ipv4Hdr,
    udp: UdpHdr,
}

/// The headers every IPv4 packet has: all a short one (the last piece of a
/// fragmented datagram can be) is looked at for.
#[repr(C)]
#[derive(Clone, Copy)]
struct IpPacket {
    eth: EthHdr,
    ip: Ipv4Hdr,
}

pub fn handle(ctx: &TcContext) -> i32 {
    let config = node_config();
    if !config.tunnel_enabled() || vlan_tagged(ctx) {
        return TC_ACT_OK;
    }
    // Cheap test first: IPv4, UDP, to the VXLAN port of this node.
    let Ok(outer) = ctx.load::<UdpPacket>(0) else {
        return short_packet(ctx, config);
    };
    if outer.eth.ether_type == EtherType::Ipv6 as u16 && pkt_type(ctx) == PACKET_HOST {
        return ipv6::from_direct_node(ctx, config);
    }
    if outer.eth.ether_type != EtherType::Ipv4 as u16 {
        return TC_ACT_OK;
    }
    // A later fragment's first bytes are payload, not a UDP header.
    let is_vxlan_to_us = outer.ip.proto == UDP
        && outer.ip.dst_addr == config.node_ip
        && outer.udp.dst == config.vxlan_port.to_be_bytes()
        && outer.ip.frag_offset() == 0;
    if is_vxlan_to_us {
        match from_node(ctx, config) {
            FOR_NODE_IP_FROM_A_NODE => to_node_ip(ctx, config, Counter::DecapsulatedToHost),
            IPV6_FROM_A_NODE => ipv6_from_node(ctx, config),
            action => action,
        }
    } else {
        finish_not_tunnelled(ctx, config, not_tunnelled(ctx, config, &outer.ip))
    }
}

/// The verdict on an unencapsulated packet, a direct one for the node IP
/// taken on (after not-tunnelled returned, as for a decapsulated one).
#[inline(always)]
fn finish_not_tunnelled(ctx: &TcContext, config: &NodeConfig, outcome: Outcome) -> i32 {
    match outcome {
        Ok(FOR_NODE_IP_FROM_A_NODE) => to_node_ip(ctx, config, Counter::DirectToHost),
        outcome => finish(ctx, outcome),
    }
}

/// Too short to be UDP: IPv4 ones can still be a reply's last piece.
#[inline(always)]
fn short_packet(ctx: &TcContext, config: &NodeConfig) -> i32 {
    match ctx.load::<IpPacket>(0) {
        Ok(packet) if packet.eth.ether_type == EtherType::Ipv4 as u16 => {
            finish_not_tunnelled(ctx, config, not_tunnelled(ctx, config, &packet.ip))
        }
        _ => TC_ACT_OK,
    }
}

/// Replies to masqueraded connections, replies from non-masquerade
/// destinations to pods, and outside clients of Services; the node's own
/// traffic passes untouched.
#[inline(always)]
fn not_tunnelled(ctx: &TcContext, config: &NodeConfig, ip: &Ipv4Hdr) -> Outcome {
    let (source, destination) = (ip.src_addr, ip.dst_addr);
    // Frames to other hosts (a switch flooding) are the kernel's to discard.
    if pkt_type(ctx) == PACKET_OTHERHOST {
        return Ok(TC_ACT_OK);
    }
    match direct_sender(config, source, destination)? {
        NOT_FROM_A_NODE => {}
        node_ip => return Ok(from_direct_node(ctx, config, node_ip, destination)),
    }
    if may_be_for_a_service(ctx, config, ip) {
        // SAFETY: the slot holds a classifier; the call only returns when
        // it is empty (an agent is installing it): then the packet passes.
        unsafe { TAIL_CALLS.tail_call(ctx, FROM_OUTSIDE_SLOT) };
    }
    if destination == config.node_ip && config.masquerade != 0 {
        return Ok(reply_to_masqueraded(ctx, config, ip));
    }
    if config.pod_cidr.contains(destination) && is_unmasqueraded(source) {
        return match endpoint(&destination) {
            Some(pod) => {
                forward_hop(ctx)?;
                deliver(ctx, &pod, Redirect::into_pod(config), Counter::RoutedToPod)
            }
            None if is_host_address(&destination, config) => Ok(TC_ACT_OK),
            None => Err(Counter::DropUnknownEndpoint),
        };
    }
    // Pods are reached from out here only as above. (Without masquerading
    // pod addresses are the world's to reach, as routed.)
    if config.masquerade != 0
        && config.pod_cidr.contains(destination)
        && !is_host_address(&destination, config)
    {
        return Err(Counter::DropUplinkToPod);
    }
    Ok(TC_ACT_OK)
}

const PACKET_HOST: u32 = 0;
const PACKET_OTHERHOST: u32 = 3;

#[inline(always)]
fn pkt_type(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer is valid for the program's whole run.
    unsafe { (*ctx.skb.skb).pkt_type }
}

/// What `direct_sender` returns for a packet no node speaks for.
const NOT_FROM_A_NODE: u32 = 0;

/// The node (its IP, network byte order) an unencapsulated packet must come
/// from: the owner of its source pod address, or the node at its source
/// address sending to a pod here. Pod sources no node owns, and this
/// node's own, never arrive from outside.
#[inline(always)]
fn direct_sender(config: &NodeConfig, source: Ipv4Octets, destination: Ipv4Octets) -> Outcome<u32> {
    if config.pod_cidr.contains(source) {
        return Err(Counter::DropSpoofedSource);
    }
    let in_cluster = config.cluster_cidr.contains(source);
    if in_cluster || config.cluster_cidr.is_set == 0 {
        if let Some(route) = node_route(source) {
            return Ok(u32::from_ne_bytes(route.node_ip));
        }
        if in_cluster {
            return Err(Counter::DropUnknownNode);
        }
    }
    if config.pod_cidr.contains(destination) && remote_node(&source).is_some() {
        return Ok(u32::from_ne_bytes(source));
    }
    Ok(NOT_FROM_A_NODE)
}

/// From another node without the tunnel: checked against its MAC, then
/// delivered as if it had been decapsulated (`FOR_NODE_IP_FROM_A_NODE`: for
/// the node IP while Services exist, taken on by the caller).
// Out of line: the delivery's frame stays off from-uplink's.
#[inline(never)]
fn from_direct_node(
    ctx: &TcContext,
    config: &NodeConfig,
    node_ip: u32,
    destination: Ipv4Octets,
) -> i32 {
    finish(ctx, deliver_direct(ctx, config, node_ip, destination))
}

#[inline(always)]
fn deliver_direct(
    ctx: &TcContext,
    config: &NodeConfig,
    node_ip: u32,
    destination: Ipv4Octets,
) -> Outcome {
    if !direct::from_node_mac(ctx, node_ip.to_ne_bytes()) {
        return Err(Counter::DropDirectUnverified);
    }
    if let Some(pod) = endpoint(&destination) {
        // A backend on the sender answering a Service connection of a pod here.
        if config.services != 0 {
            service::translate_reply(ctx)?;
        }
        forward_hop(ctx)?;
        return deliver(ctx, &pod, Redirect::into_pod(config), Counter::DirectToPod);
    }
    if destination == config.node_ip && config.services != 0 && config.masquerade != 0 {
        return Ok(FOR_NODE_IP_FROM_A_NODE);
    }
    if is_host_address(&destination, config) {
        return Ok(verdict(ctx, Counter::DirectToHost, TC_ACT_OK));
    }
    if config.pod_cidr.contains(destination) {
        return Err(Counter::DropUnknownEndpoint);
    }
    // Not for this node: its own routing decides (nodes do not forward).
    Ok(pass_to_host(ctx))
}

/// Whether a packet from outside may be for a Service frontend: TCP or UDP
/// (whole, a first piece, or a later one of a datagram whose first went to
/// a backend), not to a pod, and not an answer to a masqueraded connection
/// (those go to the NAT's port range).
#[inline(always)]
fn may_be_for_a_service(ctx: &TcContext, config: &NodeConfig, ip: &Ipv4Hdr) -> bool {
    // Only frames addressed to this node (not a switch's flooding, not
    // broadcast): the stack would discard the others, and so do Services.
    if config.services == 0
        || pkt_type(ctx) != PACKET_HOST
        || (ip.proto != TCP && ip.proto != UDP)
        || ip.vihl != PLAIN_VIHL
        || config.pod_cidr.contains(ip.dst_addr)
    {
        return false;
    }
    if ip.frag_offset() != 0 {
        return first_piece_went_to_a_backend(ctx);
    }
    let to_nat_range = ip.dst_addr == config.node_ip
        && config.masquerade != 0
        && ctx
            .load::<[u8; 2]>(L4_AT + offset_of!(UdpHdr, dst))
            .is_ok_and(|port| nat::in_port_range(config, port));
    !to_nat_range
}

/// Whether the datagram of a later piece had its first piece sent to a
/// Service's backend by from-outside.
// Out of line: the record stays off from-uplink's frame (the stack limit).
#[inline(never)]
fn first_piece_went_to_a_backend(ctx: &TcContext) -> bool {
    load::<Ipv4Hdr>(ctx, IP_AT).is_ok_and(|ip| {
        fragments::recorded(&ip)
            .is_some_and(|record| record.rewrite >= fragment_rewrite::OUTSIDE_MASQUERADED)
    })
}

/// What from-node and from-direct-node return for a packet from another
/// node for the node IP while Services exist: it may answer an outside
/// client (never a TC action).
const FOR_NODE_IP_FROM_A_NODE: i32 = i32::MIN;

/// What from-node returns for VXLAN from a known node on our VNI that
/// carries IPv6 (never a TC action): taken on after it returned, its frame
/// gone from the stack.
const IPV6_FROM_A_NODE: i32 = i32::MIN + 1;

/// VXLAN from a known node carrying IPv6, its outer headers checked.
#[inline(always)]
fn ipv6_from_node(ctx: &TcContext, config: &NodeConfig) -> i32 {
    match load::<Ipv4Octets>(ctx, IP_AT + offset_of!(Ipv4Hdr, src_addr)) {
        Ok(node_ip) => ipv6::from_node(ctx, config, node_ip),
        Err(reason) => finish(ctx, Err(reason)),
    }
}

/// From another node for the node IP: a backend on the sender answering an
/// outside client's connection to a Service goes to the client; the rest
/// up the stack, counted under `counter`. (After from-node returned: the
/// NAT's frame does not fit on its.)
#[inline(always)]
fn to_node_ip(ctx: &TcContext, config: &NodeConfig, counter: Counter) -> i32 {
    let outcome = from_outside::translate_reply_to_client(ctx, config)
        .unpack()
        .and_then(|client| match client {
            service::UNTOUCHED => Ok(verdict(ctx, counter, TC_ACT_OK)),
            client => from_outside::forward_to_client(ctx, config, client.to_ne_bytes()),
        });
    finish(ctx, outcome)
}

/// Translated back by NAT when it answers a masqueraded connection, then
/// delivered into its pod; the node's own traffic passes.
// Out of line: the NAT's state stays out of the other paths' stack frames.
#[inline(never)]
fn reply_to_masqueraded(ctx: &TcContext, config: &NodeConfig, ip: &Ipv4Hdr) -> i32 {
    let outcome = nat::translate_reply(ctx, config, ip).and_then(|translated| match translated {
        Some(pod) => to_translated_pod(ctx, config, pod),
        None => Ok(TC_ACT_OK),
    });
    finish(ctx, outcome)
}

#[inline(always)]
fn to_translated_pod(ctx: &TcContext, config: &NodeConfig, pod: Ipv4Octets) -> Outcome {
    // Outside clients masqueraded on their way to a Service are answered by
    // pods (from-pod, or after decapsulation), never from out here.
    let destination = endpoint(&pod).ok_or(Counter::DropStaleEndpoint)?;
    // A backend outside the cluster answering a pod's Service connection.
    if config.services != 0 {
        service::translate_reply(ctx)?;
    }
    forward_hop(ctx)?;
    deliver(
        ctx,
        &destination,
        Redirect::into_pod(config),
        Counter::NatReplyToPod,
    )
}

/// VXLAN to this node: ours to deliver or to drop. VXLAN with IPv4 options or
/// a short frame is not something nodes send.
// Out of line: its header buffer would otherwise weigh on every path's stack.
#[inline(never)]
fn from_node(ctx: &TcContext, config: &NodeConfig) -> i32 {
    finish(ctx, accept_from_node(ctx, config))
}

#[inline(always)]
fn accept_from_node(ctx: &TcContext, config: &NodeConfig) -> Outcome {
    let packet: VxlanPacket = load(ctx, 0)?;
    let outer = &packet.outer;
    if is_fragment(&outer.ip) {
        return Err(Counter::DropTunnelFragment);
    }
    if outer.ip.vihl != PLAIN_VIHL {
        return Err(Counter::DropMalformed);
    }
    let source = outer.ip.src_addr;
    let sender = remote_node(&source).ok_or(Counter::DropUnknownTunnelSource)?;
    if !outer.vxlan.vni_present() || outer.vxlan.vni() != config.vni {
        return Err(Counter::DropWrongVni);
    }
    if outer.inner_eth.ether_type == EtherType::Ipv6 as u16 {
        return Ok(IPV6_FROM_A_NODE);
    }
    let inner = &packet.inner_ip;
    if outer.inner_eth.ether_type != EtherType::Ipv4 as u16
        || inner.version() != 4
        || inner.ihl() < Ipv4Hdr::LEN as u8
    {
        return Err(Counter::DropMalformed);
    }
    let (inner_source, inner_destination) = (inner.src_addr, inner.dst_addr);
    // A node speaks for its own pods and itself, never for another node's pods.
    if inner_source != source && !sender.pod_cidr.contains(inner_source) {
        return Err(Counter::DropSpoofedSource);
    }
    let destination = endpoint(&inner_destination);
    if destination.is_none() && !is_host_address(&inner_destination, config) {
        return Err(Counter::DropUnknownEndpoint);
    }
    tunnel::decapsulate(ctx)?;
    match destination {
        // For this node (its IP, or e.g. a gateway address a pod of the
        // sender answers): up the stack, behind the outer Ethernet header that
        // was addressed to the uplink.
        None if inner_destination == config.node_ip
            && config.services != 0
            && config.masquerade != 0 =>
        {
            Ok(FOR_NODE_IP_FROM_A_NODE)
        }
        None => Ok(verdict(ctx, Counter::DecapsulatedToHost, TC_ACT_OK)),
        Some(destination) => {
            // A backend on the sender answering a Service connection of a pod here.
            if config.services != 0 {
                service::translate_reply(ctx)?;
            }
            forward_hop(ctx)?;
            deliver(
                ctx,
                &destination,
                Redirect::into_pod(config),
                Counter::DecapsulatedToPod,
            )
        }
    }
}
