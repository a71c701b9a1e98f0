//! from-pod: TC ingress on the host side of a pod veth.

use aya_ebpf::programs::TcContext;
use dataplane_common::{Counter, NodeConfig};
use network_types::eth::{EthHdr, EtherType};

use crate::{
    arp,
    counters::{drop, pass_to_host},
    icmp,
    ipv4::{addresses, forward_hop},
    local::{Redirect, deliver},
    maps::{endpoint, is_unmasqueraded, node_config, remote_node},
    nat,
    packet::{header, ingress_ifindex, linearize_headers},
    route::{Destination, lookup},
    tunnel::{self, send_out_uplink},
};

pub fn handle(ctx: &TcContext) -> i32 {
    linearize_headers(ctx);
    let Some(eth) = header::<EthHdr>(ctx, 0) else {
        return drop(ctx, Counter::DropMalformed);
    };
    // SAFETY: bounds checked by `header`.
    let ether_type = unsafe { (*eth).ether_type };
    if ether_type == EtherType::Ipv4 as u16 {
        ipv4(ctx)
    } else if ether_type == EtherType::Arp as u16 {
        arp::answer_request(ctx)
    } else {
        pass_to_host(ctx)
    }
}

fn ipv4(ctx: &TcContext) -> i32 {
    let Some((src, dst)) = addresses(ctx) else {
        return drop(ctx, Counter::DropMalformed);
    };

    // A pod may only send from its own address, and only through its own veth.
    match endpoint(&src) {
        Some(source) if source.host_ifindex == ingress_ifindex(ctx) => {}
        _ => return drop(ctx, Counter::DropSpoofedSource),
    }

    let config = node_config();
    let (destination, counter) = match lookup(dst, &config) {
        Destination::LocalPod(destination) => (Some(destination), Counter::ForwardedLocal),
        Destination::RemotePod(node_ip) => return tunnel_to(ctx, &config, node_ip),
        // The node itself: kubelet, node-local DNS, the gateway address.
        Destination::Host => return pass_to_host(ctx),
        // Never let the host stack guess where an unknown pod address goes.
        Destination::UnknownLocalPod => return drop(ctx, Counter::DropUnknownEndpoint),
        Destination::UnknownNode => return drop(ctx, Counter::DropUnknownNode),
        Destination::Outside => return outside(ctx, &config, src, dst),
    };
    match destination {
        Some(destination) if forward_hop(ctx) => {
            deliver(ctx, &destination, Redirect::Peer, counter)
        }
        _ => drop(ctx, Counter::DropTtlExceeded),
    }
}

/// Not a pod address and not this node: another node, or the world.
fn outside(ctx: &TcContext, config: &NodeConfig, src: [u8; 4], dst: [u8; 4]) -> i32 {
    if !config.tunnel_enabled() {
        return pass_to_host(ctx);
    }
    // Pod to another node's own IP goes through the tunnel, so the remote
    // node sees the pod's address and answers through its tunnel.
    if remote_node(&dst).is_some() {
        return tunnel_to(ctx, config, dst);
    }
    if config.masquerade == 0 {
        return pass_to_host(ctx);
    }
    if is_unmasqueraded(dst) {
        if !forward_hop(ctx) {
            return drop(ctx, Counter::DropTtlExceeded);
        }
        return send_out_uplink(ctx, config, Counter::RoutedUnmasqueraded);
    }
    nat::masquerade(ctx, config, src, dst)
}

fn tunnel_to(ctx: &TcContext, config: &NodeConfig, node_ip: [u8; 4]) -> i32 {
    // Checked before the TTL changes: the ICMP error quotes the header as sent.
    if icmp::exceeds_mtu(ctx, config.tunnel_mtu) {
        return icmp::frag_needed(ctx, config, config.tunnel_mtu);
    }
    if !forward_hop(ctx) {
        return drop(ctx, Counter::DropTtlExceeded);
    }
    tunnel::encapsulate(ctx, config, node_ip)
}
