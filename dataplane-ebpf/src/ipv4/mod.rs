//! The IPv4 family's own code: header checks and the TTL here, ARP and
//! ICMP in their modules (IPv6 gets a folder beside it).

pub mod arp;
pub mod icmp;

use aya_ebpf::programs::TcContext;
use dataplane_common::{Counter, Ipv4Octets, checksum};
use network_types::{ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr};

use crate::{
    counters::Outcome,
    packet::{IP_AT, L4_AT, TCP, UDP, header, load},
};

/// The "more fragments" flag, as `Ipv4Hdr::frag_flags` returns the flags.
const MORE_FRAGMENTS: u8 = 0b001;

/// The IPv4 header after the Ethernet header, in place (valid until the
/// packet is changed), when it is well formed as `ip_rcv` checks it (its
/// checksum aside): version 4, at least 20 bytes, a total length that covers
/// the header and fits in the packet.
#[inline(always)]
pub fn checked_header(ctx: &TcContext) -> Option<&Ipv4Hdr> {
    let ip = header::<Ipv4Hdr>(ctx, IP_AT)?;
    // SAFETY: bounds checked by `header`; read before anything changes the packet.
    let ip = unsafe { &*ip };
    let header_len = u32::from(ip.ihl());
    let total = u32::from(ip.tot_len());
    let carried = ctx.len().checked_sub(IP_AT as u32)?;
    // GSO packets of more than 64 KB (BIG TCP) carry a total length of 0.
    let total_fits = if total == 0 {
        carried > u32::from(u16::MAX)
    } else {
        total >= header_len && total <= carried
    };
    (ip.version() == 4 && header_len >= Ipv4Hdr::LEN as u32 && total_fits).then_some(ip)
}

/// Whether the packet is a piece of a fragmented datagram.
#[inline(always)]
pub fn is_fragment(ip: &Ipv4Hdr) -> bool {
    ip.frag_offset() != 0 || ip.frag_flags() & MORE_FRAGMENTS != 0
}

/// The TCP or UDP header of a packet that carries one is consistent with the
/// IPv4 total length, as the receiving stack would check it: a TCP header of
/// at least 20 bytes within the packet, a UDP length within the datagram.
/// Later fragments carry no transport header.
#[inline(always)]
pub fn check_transport(ctx: &TcContext, ip: &Ipv4Hdr) -> Outcome<()> {
    let header_len = usize::from(ip.ihl());
    let total = usize::from(ip.tot_len());
    if ip.frag_offset() != 0 || total == 0 {
        return Ok(());
    }
    let transport_len = total - header_len;
    // Read in place when the header has no options and is linear (no helper
    // call), else copied out with `load`.
    let plain = header_len == Ipv4Hdr::LEN;
    let well_formed = match ip.proto {
        TCP => {
            let doff = match header::<TcpHdr>(ctx, L4_AT).filter(|_| plain) {
                // SAFETY: bounds checked by `header`.
                Some(tcp) => unsafe { (*tcp).doff() },
                None => load::<TcpHdr>(ctx, IP_AT + header_len)?.doff(),
            };
            let data_offset = usize::from(doff) * 4;
            data_offset >= TcpHdr::LEN && data_offset <= transport_len
        }
        // A first fragment's UDP length covers the whole datagram.
        UDP if !is_fragment(ip) => {
            let length = match header::<UdpHdr>(ctx, L4_AT).filter(|_| plain) {
                // SAFETY: bounds checked by `header`.
                Some(udp) => unsafe { (*udp).len },
                None => load::<UdpHdr>(ctx, IP_AT + header_len)?.len,
            };
            let length = usize::from(u16::from_be_bytes(length));
            length >= UdpHdr::LEN && length <= transport_len
        }
        _ => true,
    };
    if well_formed {
        Ok(())
    } else {
        Err(Counter::DropMalformed)
    }
}

/// Why a pod may not send to `destination`, if it may not: addresses no
/// packet may go to, and broadcast and multicast (unicast only).
#[inline(always)]
pub fn refused_destination(destination: Ipv4Octets) -> Option<Counter> {
    if destination == [255; 4] {
        return Some(Counter::DropNotUnicast);
    }
    match destination[0] {
        0 | 127 | 240..=255 => Some(Counter::DropMartianDestination),
        224..=239 => Some(Counter::DropNotUnicast),
        _ => None,
    }
}

/// Whether no client can have `source`: this network, loopback,
/// multicast, reserved and broadcast addresses.
#[inline(always)]
pub fn is_martian_source(source: Ipv4Octets) -> bool {
    matches!(source[0], 0 | 127 | 224..=255)
}

/// Accounts for one routing hop: decrements the TTL and updates the header
/// checksum for it (RFC 1624). A packet whose TTL would expire is dropped.
/// Computed here rather than with `bpf_l3_csum_replace` (Cilium's
/// `ipv4_dec_ttl`): the helper call made every same-node packet 6 ns slower
/// (93 -> 99 ns of from-pod run time), and the IPv4 header checksum is never
/// offloaded, so the helper knows nothing more.
#[inline(always)]
pub fn forward_hop(ctx: &TcContext) -> Outcome<()> {
    let ip = header::<Ipv4Hdr>(ctx, IP_AT).ok_or(Counter::DropMalformed)?;
    // SAFETY: bounds checked by `header`.
    let ip = unsafe { &mut *ip };
    if ip.ttl <= 1 {
        return Err(Counter::DropTtlExceeded);
    }
    // The TTL shares its 16-bit checksum word with the protocol.
    let old = [ip.ttl, ip.proto];
    ip.ttl -= 1;
    let new = [ip.ttl, ip.proto];
    ip.check = checksum::replace2(u16::from_be_bytes(ip.check), old, new).to_be_bytes();
    Ok(())
}
