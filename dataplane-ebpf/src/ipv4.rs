//! IPv4 header handling shared by the hooks.

use core::mem::offset_of;

use aya_ebpf::programs::TcContext;
use dataplane_common::{Counter, Ipv4Octets};
use network_types::ip::{IpProto, Ipv4Hdr};

use crate::{
    counters::Outcome,
    packet::{IP_AT, header},
};

/// Transport protocols the programs look into, as `Ipv4Hdr::proto` holds them.
pub const TCP: u8 = IpProto::Tcp as u8;
pub const UDP: u8 = IpProto::Udp as u8;
pub const ICMP: u8 = IpProto::Icmp as u8;

/// Version 4 with a 20-byte header: the only IPv4 headers the programs
/// translate, build or read past.
pub const PLAIN_VIHL: u8 = 0x45;

/// A well-formed IPv4 header after the Ethernet header: (source, destination).
#[inline(always)]
pub fn addresses(ctx: &TcContext) -> Option<(Ipv4Octets, Ipv4Octets)> {
    let ip = header::<Ipv4Hdr>(ctx, IP_AT)?;
    // SAFETY: bounds checked by `header`.
    let ip = unsafe { &*ip };
    if ip.version() != 4 || ip.ihl() < Ipv4Hdr::LEN as u8 {
        return None;
    }
    Some((ip.src_addr, ip.dst_addr))
}

/// Accounts for one routing hop: decrements the TTL and updates the header
/// checksum for it, as Cilium's `ipv4_dec_ttl` does. A packet whose TTL
/// would expire is dropped.
#[inline(always)]
pub fn forward_hop(ctx: &TcContext) -> Outcome<()> {
    let ip = header::<Ipv4Hdr>(ctx, IP_AT).ok_or(Counter::DropMalformed)?;
    // SAFETY: bounds checked by `header`; the pointer is not used after the
    // checksum helper below invalidates it.
    let ip = unsafe { &mut *ip };
    if ip.ttl <= 1 {
        return Err(Counter::DropTtlExceeded);
    }
    // The TTL shares its 16-bit checksum word with the protocol.
    let old = u16::from_ne_bytes([ip.ttl, ip.proto]);
    ip.ttl -= 1;
    let new = u16::from_ne_bytes([ip.ttl, ip.proto]);
    ctx.l3_csum_replace(
        IP_AT + offset_of!(Ipv4Hdr, check),
        u64::from(old),
        u64::from(new),
        2,
    )
    .map_err(|_| Counter::DropMalformed)
}
