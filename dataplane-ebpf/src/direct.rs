//! Direct routing: pod packets for a node on the uplink's own network leave
//! unencapsulated, that node's IP the next hop, and are accepted on arrival
//! only in frames from the sending node's MAC: on a shared L2, what the
//! underlay can prove about who sent a packet.

use core::mem::{offset_of, size_of};

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_OUTPUT, TC_ACT_REDIRECT, bpf_fib_lookup,
        bpf_redir_neigh, bpf_redir_neigh__bindgen_ty_1,
    },
    helpers::{bpf_fib_lookup, bpf_redirect_neigh},
    programs::TcContext,
};
use dataplane_common::{Counter, Ipv4Octets, NodeConfig, NodeRoute, node_path};
use network_types::eth::EthHdr;

use crate::{
    counters::{Outcome, finish, verdict},
    packet::own_header,
    tunnel,
};

const AF_INET: u8 = 2;

/// The largest IPv4 packet the path to a node carries.
#[inline(always)]
pub fn path_mtu(config: &NodeConfig, route: &NodeRoute) -> u32 {
    if route.path == node_path::DIRECT {
        config.uplink_mtu
    } else {
        config.tunnel_mtu
    }
}

/// Sends the packet, routed, to the node of `route` the way it is reached.
#[inline(always)]
pub fn to_node(ctx: &TcContext, config: &NodeConfig, route: &NodeRoute) -> i32 {
    if route.path == node_path::DIRECT {
        finish(ctx, send(ctx, config, route.node_ip))
    } else {
        tunnel::encapsulate(ctx, config, route.node_ip)
    }
}

/// Sends the packet as it is out of the uplink to the node `node_ip`; the
/// kernel fills in the MACs from its neighbour table (resolving it if needed).
#[inline(always)]
pub fn send(ctx: &TcContext, config: &NodeConfig, node_ip: Ipv4Octets) -> Outcome {
    own_header(ctx);
    let mut next_hop = bpf_redir_neigh {
        nh_family: u32::from(AF_INET),
        __bindgen_anon_1: bpf_redir_neigh__bindgen_ty_1 {
            ipv4_nh: u32::from_ne_bytes(node_ip),
        },
    };
    // SAFETY: plain helper call on a parameter block of the size given.
    let action = unsafe {
        bpf_redirect_neigh(
            config.uplink_ifindex,
            &mut next_hop,
            size_of::<bpf_redir_neigh>() as i32,
            0,
        )
    } as i32;
    if action == TC_ACT_REDIRECT {
        Ok(verdict(ctx, Counter::ForwardedDirect, action))
    } else {
        Err(Counter::DropUplinkError)
    }
}

/// Whether the frame comes from the MAC this node's neighbour table holds
/// for `node_ip` (network byte order), a node reached over the uplink
/// without a router in between. The kernel keeps that table current (ARP),
/// so a node replaced under the same IP is followed without the agent.
// Out of line: the lookup's parameter block stays off the callers' frames.
#[inline(never)]
pub fn from_node_mac(ctx: &TcContext, config: &NodeConfig, node_ip: u32) -> bool {
    let Ok(source_mac) = ctx.load::<[u8; 6]>(offset_of!(EthHdr, src_addr)) else {
        return false;
    };
    // SAFETY: a plain C struct of integers: all zero is a value.
    let mut lookup: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    lookup.family = AF_INET;
    lookup.ifindex = config.uplink_ifindex;
    lookup.__bindgen_anon_4.ipv4_dst = node_ip;
    // SAFETY: plain helper call on a parameter block of the size given. As
    // an output lookup: an input one needs forwarding on, which nodes need not.
    let found = unsafe {
        bpf_fib_lookup(
            ctx.skb.skb.cast(),
            &mut lookup,
            size_of::<bpf_fib_lookup>() as i32,
            BPF_FIB_LOOKUP_OUTPUT,
        )
    };
    // SAFETY: the union's IPv4 member is the one the lookup fills.
    let next_hop = unsafe { lookup.__bindgen_anon_4.ipv4_dst };
    found == i64::from(BPF_FIB_LKUP_RET_SUCCESS)
        && next_hop == node_ip
        && lookup.ifindex == config.uplink_ifindex
        && lookup.dmac == source_mac
}
