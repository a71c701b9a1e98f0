//! Direct routing: pod packets for a node on the uplink's own network leave
//! unencapsulated, that node's IP the next hop, and are accepted on arrival
//! only in frames from the sending node's MAC: on a shared L2, what the
//! underlay can prove about who sent a packet. (The MAC is the agent's copy
//! of the neighbour table's: `bpf_fib_lookup` would read it at the source,
//! but refuses to on a device that does not forward.)

use core::mem::offset_of;

use aya_ebpf::{
    bindings::{TC_ACT_OK, bpf_redir_neigh, bpf_redir_neigh__bindgen_ty_1},
    programs::TcContext,
};
use dataplane_common::{Counter, Ipv4Octets, NodeConfig, NodeRoute, node_path};
use network_types::eth::EthHdr;

use crate::{
    counters::{Outcome, finish, redirect_out, verdict},
    maps::remote_node,
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
    let mut next_hop = bpf_redir_neigh {
        nh_family: u32::from(AF_INET),
        __bindgen_anon_1: bpf_redir_neigh__bindgen_ty_1 {
            ipv4_nh: u32::from_ne_bytes(node_ip),
        },
    };
    tunnel::redirect_out_of_uplink(ctx, config, &mut next_hop, Counter::ForwardedDirect)
}

/// Whether the frame comes from the MAC learned for the node at `node_ip`
/// (nodes on the uplink's network have one).
#[inline(always)]
pub fn from_node_mac(ctx: &TcContext, node_ip: Ipv4Octets) -> bool {
    remote_node(&node_ip).is_some_and(|node| {
        node.mac_known != 0
            && ctx
                .load::<[u8; 6]>(offset_of!(EthHdr, src_addr))
                .is_ok_and(|source_mac| source_mac == node.mac)
    })
}

/// The MAC of the node of `route` when it is reached directly and its MAC
/// was learned.
#[inline(always)]
pub fn node_mac(route: &NodeRoute) -> Option<[u8; 6]> {
    // The path first: tunnelled nodes pay for no second lookup.
    (route.path == node_path::DIRECT)
        .then(|| remote_node(&route.node_ip))
        .flatten()
        .filter(|node| node.mac_known != 0)
        .map(|node| node.mac)
}

/// Sends the frame out of the uplink to the node at `mac`, from the
/// uplink's own MAC: how IPv6 reaches a node directly (the kernel's
/// neighbour lookup by the node's IPv4 address cannot address an IPv6
/// frame).
#[inline(always)]
pub fn send_to_mac(ctx: &TcContext, config: &NodeConfig, mac: [u8; 6]) -> Outcome {
    let macs = [mac, config.uplink_mac];
    ctx.store(offset_of!(EthHdr, dst_addr), &macs, 0)
        .map_err(|_| Counter::DropUplinkError)?;
    redirect_out(
        ctx,
        config.uplink_ifindex,
        Counter::ForwardedDirect,
        Counter::DropUplinkError,
    )
}

/// The node's own packet (already on its way out of the uplink, by the
/// default route) to the node of `route`: addressed to that node's MAC and
/// sent on as it is (a redirect would bring it back here). Through the
/// tunnel while no MAC is known for it.
#[inline(always)]
pub fn from_host_to_node(ctx: &TcContext, config: &NodeConfig, route: &NodeRoute) -> i32 {
    let Some(mac) = node_mac(route) else {
        return tunnel::encapsulate(ctx, config, route.node_ip);
    };
    let addressed = ctx
        .store(offset_of!(EthHdr, dst_addr), &mac, 0)
        .map(|()| verdict(ctx, Counter::ForwardedDirect, TC_ACT_OK))
        .map_err(|_| Counter::DropUplinkError);
    finish(ctx, addressed)
}
