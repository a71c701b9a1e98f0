//! from-uplink: TC ingress on the uplink. VXLAN to this node is decapsulated
//! here when it comes from a known node on our VNI, and dropped otherwise:
//! nobody on the underlay can inject into pods. Everything else passes.

use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use dataplane_common::{Counter, NodeConfig};

use crate::{
    counters::{drop, verdict},
    ipv4::forward_hop,
    local::{Redirect, deliver},
    maps::{endpoint, is_host_address, is_unmasqueraded, node_config, remote_node},
    nat,
    tunnel::{self, INNER_IP_AT, UDP_AT, VXLAN_AT, VXLAN_FLAG_VNI},
};

/// Outer headers and the inner IPv4 header, read in one go.
const HEADERS: usize = INNER_IP_AT + 20;

fn octets(bytes: &[u8]) -> [u8; 4] {
    [bytes[0], bytes[1], bytes[2], bytes[3]]
}

/// Replies to masqueraded connections, and replies from non-masquerade
/// destinations to pods; the node's own traffic passes untouched.
fn not_tunnelled(ctx: &TcContext, config: &NodeConfig, outer: &[u8]) -> i32 {
    if outer[12..14] != [0x08, 0x00] {
        return TC_ACT_OK;
    }
    let (source, destination) = (octets(&outer[26..30]), octets(&outer[30..34]));
    if destination == config.node_ip && config.masquerade != 0 {
        return nat::translate_reply(ctx, config, source).unwrap_or(TC_ACT_OK);
    }
    if config.pod_cidr.contains(destination) && is_unmasqueraded(source) {
        return match endpoint(&destination) {
            Some(pod) if forward_hop(ctx) => {
                deliver(ctx, &pod, Redirect::Peer, Counter::RoutedToPod)
            }
            Some(_) => drop(ctx, Counter::DropTtlExceeded),
            None if is_host_address(&destination, config) => TC_ACT_OK,
            None => drop(ctx, Counter::DropUnknownEndpoint),
        };
    }
    TC_ACT_OK
}

pub fn handle(ctx: &TcContext) -> i32 {
    let config = node_config();
    if !config.tunnel_enabled() {
        return TC_ACT_OK;
    }
    // Cheap test first: IPv4 without options, UDP, to the VXLAN port of this node.
    let Ok(outer) = ctx.load::<[u8; UDP_AT + 4]>(0) else {
        return TC_ACT_OK;
    };
    let is_vxlan_to_us = outer[12..14] == [0x08, 0x00]
        && outer[23] == 17
        && outer[30..34] == config.node_ip
        && outer[UDP_AT + 2..UDP_AT + 4] == config.vxlan_port.to_be_bytes();
    if !is_vxlan_to_us {
        return not_tunnelled(ctx, &config, &outer);
    }
    from_node(ctx, &config)
}

/// VXLAN to this node: ours to deliver or to drop. VXLAN with IPv4 options or
/// a short frame is not something nodes send.
// Out of line: its header buffer would otherwise weigh on every path's stack.
#[inline(never)]
fn from_node(ctx: &TcContext, config: &NodeConfig) -> i32 {
    let Ok(headers) = ctx.load::<[u8; HEADERS]>(0) else {
        return drop(ctx, Counter::DropMalformed);
    };
    if headers[14] != 0x45 {
        return drop(ctx, Counter::DropMalformed);
    }
    let source = octets(&headers[26..30]);
    let Some(sender) = remote_node(&source) else {
        return drop(ctx, Counter::DropUnknownTunnelSource);
    };
    let vni = u32::from_be_bytes([
        0,
        headers[VXLAN_AT + 4],
        headers[VXLAN_AT + 5],
        headers[VXLAN_AT + 6],
    ]);
    if headers[VXLAN_AT] & VXLAN_FLAG_VNI == 0 || vni != config.vni {
        return drop(ctx, Counter::DropWrongVni);
    }
    let inner = &headers[INNER_IP_AT..];
    if headers[INNER_IP_AT - 2..INNER_IP_AT] != [0x08, 0x00]
        || inner[0] >> 4 != 4
        || inner[0] & 0x0f < 5
    {
        return drop(ctx, Counter::DropMalformed);
    }
    let (inner_source, inner_destination) = (octets(&inner[12..16]), octets(&inner[16..20]));
    // A node speaks for its own pods and itself, never for another node's pods.
    if inner_source != source && !sender.pod_cidr.contains(inner_source) {
        return drop(ctx, Counter::DropSpoofedSource);
    }
    let destination = endpoint(&inner_destination);
    if destination.is_none() && !is_host_address(&inner_destination, config) {
        return drop(ctx, Counter::DropUnknownEndpoint);
    }
    if !tunnel::decapsulate(ctx) {
        return drop(ctx, Counter::DropUplinkError);
    }
    match destination {
        // For this node (its IP, or e.g. a gateway address a pod of the
        // sender answers): up the stack, behind the outer Ethernet header that
        // was addressed to the uplink.
        None => verdict(ctx, Counter::DecapsulatedToHost, TC_ACT_OK),
        Some(destination) if forward_hop(ctx) => deliver(
            ctx,
            &destination,
            Redirect::Peer,
            Counter::DecapsulatedToPod,
        ),
        Some(_) => drop(ctx, Counter::DropTtlExceeded),
    }
}
