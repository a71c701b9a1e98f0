//! VXLAN encapsulation and decapsulation in BPF (RFC 7348): no trip through
//! the kernel's tunnel device, its routing or its socket. `bpf_skb_adjust_room`
//! with the encap flags marks GSO packets as UDP-tunnel GSO, so they stay
//! aggregated down to the NIC (or the veth), and shrinks their segment size by
//! the headers it adds.

use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_ENCAP_L2_ETH, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L4_UDP,
        BPF_F_ADJ_ROOM_FIXED_GSO, TC_ACT_REDIRECT, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    },
    helpers::{bpf_get_hash_recalc, bpf_redirect_neigh},
    programs::TcContext,
};
use dataplane_common::{Counter, Ipv4Octets, NodeConfig, VXLAN_OVERHEAD};
use network_types::eth::EthHdr;

use crate::{
    counters::{drop, verdict},
    ipv4::checksum,
    packet::own_header,
};

/// Outer IPv4 + UDP + VXLAN + inner Ethernet, inserted after the outer Ethernet header.
pub const VXLAN_HEADERS: usize = VXLAN_OVERHEAD as usize;
pub const UDP_AT: usize = EthHdr::LEN + 20;
pub const VXLAN_AT: usize = UDP_AT + 8;
pub const INNER_IP_AT: usize = VXLAN_AT + 8 + EthHdr::LEN;
/// The I flag: the VNI field is valid.
pub const VXLAN_FLAG_VNI: u8 = 0x08;
const OUTER_TTL: u8 = 64;
const UDP_PROTOCOL: u8 = 17;
/// Source ports come from the dynamic range (RFC 6335), as the kernel's do.
const SOURCE_PORT_MIN: u32 = 49152;

/// Encapsulates in BPF and sends the packet out of the uplink; the kernel
/// fills in the outer MACs from its neighbour table.
#[inline(never)]
pub fn encapsulate(ctx: &TcContext, config: &NodeConfig, node_ip: Ipv4Octets) -> i32 {
    let Ok(inner_eth) = ctx.load::<[u8; 14]>(0) else {
        return drop(ctx, Counter::DropMalformed);
    };
    // The inner flow's hash picks the outer source port, spreading flows
    // across receive queues and ECMP paths (RFC 7348).
    // SAFETY: plain helper call.
    let hash = unsafe { bpf_get_hash_recalc(ctx.skb.skb) };
    let flags = (BPF_F_ADJ_ROOM_ENCAP_L3_IPV4
        | BPF_F_ADJ_ROOM_ENCAP_L4_UDP
        | BPF_F_ADJ_ROOM_ENCAP_L2_ETH) as u64
        | ((EthHdr::LEN as u64) << 56);
    if ctx
        .adjust_room(VXLAN_HEADERS as i32, BPF_ADJ_ROOM_MAC, flags)
        .is_err()
    {
        return drop(ctx, Counter::DropUplinkError);
    }
    let outer_len = ctx.len() - EthHdr::LEN as u32;
    let mut headers = [0u8; VXLAN_HEADERS];
    // GSO packets get their outer lengths and checksums per segment.
    let ip = &mut headers[0..20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(outer_len as u16).to_be_bytes());
    ip[8] = OUTER_TTL;
    ip[9] = UDP_PROTOCOL;
    ip[12..16].copy_from_slice(&config.node_ip);
    ip[16..20].copy_from_slice(&node_ip);
    let ip_sum = checksum(&headers[0..20]);
    headers[10..12].copy_from_slice(&ip_sum);
    let source_port = SOURCE_PORT_MIN + (hash % (65536 - SOURCE_PORT_MIN));
    headers[20..22].copy_from_slice(&(source_port as u16).to_be_bytes());
    headers[22..24].copy_from_slice(&config.vxlan_port.to_be_bytes());
    headers[24..26].copy_from_slice(&((outer_len - 20) as u16).to_be_bytes());
    // UDP checksum 0: allowed over IPv4, and what keeps receivers' GRO simple.
    headers[28] = VXLAN_FLAG_VNI;
    headers[32..35].copy_from_slice(&config.vni.to_be_bytes()[1..4]);
    headers[36..50].copy_from_slice(&inner_eth);
    if ctx.store(EthHdr::LEN, &headers, 0).is_err() {
        return drop(ctx, Counter::DropUplinkError);
    }
    send_out_uplink(ctx, config, Counter::Encapsulated)
}

/// Sends a routed packet out of the uplink, counted under `counter`.
pub fn send_out_uplink(ctx: &TcContext, config: &NodeConfig, counter: Counter) -> i32 {
    own_header(ctx);
    // SAFETY: plain helper call. Without parameters the kernel routes the
    // destination and fills in the MACs from its neighbour table.
    let action =
        unsafe { bpf_redirect_neigh(config.uplink_ifindex, core::ptr::null_mut(), 0, 0) } as i32;
    if action == TC_ACT_REDIRECT {
        verdict(ctx, counter, action)
    } else {
        drop(ctx, Counter::DropUplinkError)
    }
}

/// Removes the outer headers of a VXLAN packet received on the uplink; the
/// outer Ethernet header stays in front. GSO aggregates keep their segment size.
pub fn decapsulate(ctx: &TcContext) -> bool {
    ctx.adjust_room(
        -(VXLAN_HEADERS as i32),
        BPF_ADJ_ROOM_MAC,
        BPF_F_ADJ_ROOM_FIXED_GSO as u64,
    )
    .is_ok()
}
