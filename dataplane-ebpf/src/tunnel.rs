//! VXLAN encapsulation and decapsulation in BPF (RFC 7348): no trip through
//! the kernel's tunnel device, its routing or its socket. `bpf_skb_adjust_room`
//! with the encap flags marks GSO packets as UDP-tunnel GSO, so they stay
//! aggregated down to the NIC (or the veth), and shrinks their segment size by
//! the headers it adds.

use core::mem::size_of;

use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_DECAP_L3_IPV6, BPF_F_ADJ_ROOM_ENCAP_L2_ETH, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4,
        BPF_F_ADJ_ROOM_ENCAP_L4_UDP, BPF_F_ADJ_ROOM_FIXED_GSO, TC_ACT_REDIRECT,
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, bpf_redir_neigh,
    },
    helpers::{bpf_get_hash_recalc, bpf_redirect_neigh},
    programs::TcContext,
};
use dataplane_common::{Counter, Ipv4Octets, NodeConfig, VXLAN_OVERHEAD, checksum};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{IpProto, Ipv4Hdr},
    udp::UdpHdr,
    vxlan::VxlanHdr,
};

use crate::{
    counters::{Outcome, finish, verdict},
    packet::{PLAIN_VIHL, bytes_of, load, own_header},
};

/// What encapsulation inserts after the outer Ethernet header.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct VxlanHeaders {
    pub ip: Ipv4Hdr,
    pub udp: UdpHdr,
    pub vxlan: VxlanHdr,
    pub inner_eth: EthHdr,
}

const _: () = assert!(size_of::<VxlanHeaders>() == VXLAN_OVERHEAD as usize);

/// A VXLAN packet as it arrives on the uplink, up to the inner IPv4 header.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct VxlanPacket {
    pub eth: EthHdr,
    pub outer: VxlanHeaders,
    pub inner_ip: Ipv4Hdr,
}

const OUTER_TTL: u8 = 64;
/// Source ports come from the dynamic range (RFC 6335), as the kernel's do.
const SOURCE_PORT_MIN: u32 = 49152;

/// Encapsulates in BPF and sends the packet out of the uplink; the kernel
/// fills in the outer MACs from its neighbour table.
#[inline(never)]
pub fn encapsulate(ctx: &TcContext, config: &NodeConfig, node_ip: Ipv4Octets) -> i32 {
    finish(ctx, try_encapsulate(ctx, config, node_ip))
}

#[inline(always)]
fn try_encapsulate(ctx: &TcContext, config: &NodeConfig, node_ip: Ipv4Octets) -> Outcome {
    let inner_eth: EthHdr = load(ctx, 0)?;
    // The inner flow's hash picks the outer source port, spreading flows
    // across receive queues and ECMP paths (RFC 7348).
    // SAFETY: plain helper call.
    let hash = unsafe { bpf_get_hash_recalc(ctx.skb.skb) };
    let flags = (BPF_F_ADJ_ROOM_ENCAP_L3_IPV4
        | BPF_F_ADJ_ROOM_ENCAP_L4_UDP
        | BPF_F_ADJ_ROOM_ENCAP_L2_ETH) as u64
        | ((EthHdr::LEN as u64) << 56);
    ctx.adjust_room(VXLAN_OVERHEAD as i32, BPF_ADJ_ROOM_MAC, flags)
        .map_err(|_| Counter::DropUplinkError)?;
    // GSO packets get their outer lengths and checksums per segment.
    let outer_len = (ctx.len() - EthHdr::LEN as u32) as u16;
    let mut ip = Ipv4Hdr {
        vihl: PLAIN_VIHL,
        tos: 0,
        tot_len: outer_len.to_be_bytes(),
        id: [0; 2],
        frags: [0; 2],
        ttl: OUTER_TTL,
        proto: IpProto::Udp as u8,
        check: [0; 2],
        src_addr: config.node_ip,
        dst_addr: node_ip,
    };
    ip.check = checksum::internet(bytes_of(&ip)).to_be_bytes();
    let source_port = SOURCE_PORT_MIN + (hash % (65536 - SOURCE_PORT_MIN));
    let headers = VxlanHeaders {
        ip,
        udp: UdpHdr {
            src: (source_port as u16).to_be_bytes(),
            dst: config.vxlan_port.to_be_bytes(),
            len: (outer_len - Ipv4Hdr::LEN as u16).to_be_bytes(),
            // 0: allowed over IPv4, and what keeps receivers' GRO simple.
            check: [0; 2],
        },
        vxlan: VxlanHdr::new(config.vni),
        inner_eth,
    };
    ctx.store(EthHdr::LEN, &headers, 0)
        .map_err(|_| Counter::DropUplinkError)?;
    // An IPv6 pod's packet: the outer frame is IPv4 now (the kernel's
    // protocol followed the encapsulation flags).
    if inner_eth.ether_type != EtherType::Ipv4 as u16 {
        ctx.store(
            core::mem::offset_of!(EthHdr, ether_type),
            &(EtherType::Ipv4 as u16),
            0,
        )
        .map_err(|_| Counter::DropUplinkError)?;
    }
    send_out_uplink(ctx, config, Counter::Encapsulated)
}

/// Sends a routed packet out of the uplink, counted under `counter`.
pub fn send_out_uplink(ctx: &TcContext, config: &NodeConfig, counter: Counter) -> Outcome {
    // Without a next hop the kernel routes the destination.
    redirect_out_of_uplink(ctx, config, core::ptr::null_mut(), counter)
}

/// Sends a routed packet out of the uplink toward `next_hop` (null: by the
/// route to its destination), counted under `counter`; the kernel fills in
/// the MACs from its neighbour table.
#[inline(always)]
pub fn redirect_out_of_uplink(
    ctx: &TcContext,
    config: &NodeConfig,
    next_hop: *mut bpf_redir_neigh,
    counter: Counter,
) -> Outcome {
    own_header(ctx);
    let size = if next_hop.is_null() {
        0
    } else {
        size_of::<bpf_redir_neigh>() as i32
    };
    // SAFETY: plain helper call; `next_hop` is null or a parameter block of
    // the size given.
    let action = unsafe { bpf_redirect_neigh(config.uplink_ifindex, next_hop, size, 0) } as i32;
    if action == TC_ACT_REDIRECT {
        Ok(verdict(ctx, counter, action))
    } else {
        Err(Counter::DropUplinkError)
    }
}

/// Removes the outer headers of a VXLAN packet received on the uplink; the
/// outer Ethernet header stays in front. GSO aggregates keep their segment size.
pub fn decapsulate(ctx: &TcContext) -> Outcome<()> {
    ctx.adjust_room(
        -(VXLAN_OVERHEAD as i32),
        BPF_ADJ_ROOM_MAC,
        BPF_F_ADJ_ROOM_FIXED_GSO as u64,
    )
    .map_err(|_| Counter::DropUplinkError)
}

/// As `decapsulate`, for an inner IPv6 packet: the packet's protocol (the
/// kernel's, and the Ethernet header's left in front) becomes IPv6.
pub fn decapsulate_ipv6(ctx: &TcContext) -> Outcome<()> {
    ctx.adjust_room(
        -(VXLAN_OVERHEAD as i32),
        BPF_ADJ_ROOM_MAC,
        (BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_DECAP_L3_IPV6) as u64,
    )
    .map_err(|_| Counter::DropUplinkError)?;
    ctx.store(
        core::mem::offset_of!(EthHdr, ether_type),
        &(EtherType::Ipv6 as u16),
        0,
    )
    .map_err(|_| Counter::DropUplinkError)
}
