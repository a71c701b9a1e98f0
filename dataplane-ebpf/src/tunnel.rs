//! VXLAN through the collect_md tunnel device: the program attaches the
//! tunnel key (remote node, VNI) and the kernel's vxlan driver encapsulates,
//! routes the outer packet, segments GSO packets, hashes the inner flow into
//! the outer source port and sends ICMP frag-needed for oversized packets.

use core::mem::size_of;

use aya_ebpf::{
    bindings::{TC_ACT_REDIRECT, bpf_tunnel_key},
    helpers::{bpf_redirect, bpf_skb_get_tunnel_key, bpf_skb_set_tunnel_key},
    programs::TcContext,
};
use dataplane_common::{Counter, Ipv4Octets, NodeConfig};

use crate::counters::{drop, verdict};

const OUTER_TTL: u8 = 64;

/// Sends the packet to the node `node_ip` through the tunnel device.
pub fn encapsulate(ctx: &TcContext, config: &NodeConfig, node_ip: Ipv4Octets) -> i32 {
    // SAFETY: an all-zero tunnel key is valid.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    key.tunnel_id = config.vni;
    key.__bindgen_anon_1.remote_ipv4 = u32::from_be_bytes(node_ip);
    key.tunnel_ttl = OUTER_TTL;
    // SAFETY: the key lives on the stack for the duration of the call.
    let set = unsafe {
        bpf_skb_set_tunnel_key(ctx.skb.skb, &mut key, size_of::<bpf_tunnel_key>() as u32, 0)
    };
    if set < 0 {
        return drop(ctx, Counter::DropTunnelError);
    }
    // SAFETY: plain helper call.
    let action = unsafe { bpf_redirect(config.tunnel_ifindex, 0) } as i32;
    if action == TC_ACT_REDIRECT {
        verdict(ctx, Counter::Encapsulated, action)
    } else {
        drop(ctx, Counter::DropTunnelError)
    }
}

/// Outer source address and VNI of a packet received on the tunnel device.
pub fn received_from(ctx: &TcContext) -> Option<(Ipv4Octets, u32)> {
    // SAFETY: an all-zero tunnel key is valid.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    // SAFETY: the key lives on the stack for the duration of the call.
    let read = unsafe {
        bpf_skb_get_tunnel_key(ctx.skb.skb, &mut key, size_of::<bpf_tunnel_key>() as u32, 0)
    };
    if read < 0 {
        return None;
    }
    // SAFETY: reading the IPv4 member; the key was filled for an IPv4 tunnel.
    let remote = unsafe { key.__bindgen_anon_1.remote_ipv4 };
    Some((remote.to_be_bytes(), key.tunnel_id))
}
