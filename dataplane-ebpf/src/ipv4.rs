//! IPv4 header handling shared by the hooks.

use aya_ebpf::programs::TcContext;
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::packet::header;

/// A well-formed IPv4 header after the Ethernet header: (source, destination).
#[inline(always)]
pub fn addresses(ctx: &TcContext) -> Option<([u8; 4], [u8; 4])> {
    let ip = header::<Ipv4Hdr>(ctx, EthHdr::LEN)?;
    // SAFETY: bounds checked by `header`.
    let (vihl, src, dst) = unsafe { ((*ip).vihl, (*ip).src_addr, (*ip).dst_addr) };
    if vihl >> 4 != 4 || vihl & 0x0f < 5 {
        return None;
    }
    Some((src, dst))
}

/// Accounts for one routing hop: decrements the TTL, with an RFC 1624
/// incremental checksum update (TTL is the high byte of its 16-bit word).
/// `false` when the TTL would expire and the packet must be dropped.
#[inline(always)]
pub fn forward_hop(ctx: &TcContext) -> bool {
    let Some(ip) = header::<Ipv4Hdr>(ctx, EthHdr::LEN) else {
        return false;
    };
    // SAFETY: bounds checked by `header`.
    let ip = unsafe { &mut *ip };
    if ip.ttl <= 1 {
        return false;
    }
    let sum = u32::from(u16::from_be_bytes(ip.check)) + 0x0100;
    let folded = (sum & 0xffff) + (sum >> 16);
    ip.check = (folded as u16).to_be_bytes();
    ip.ttl -= 1;
    true
}

/// The Internet checksum (RFC 1071) of an even number of bytes.
#[inline(always)]
pub fn checksum(bytes: &[u8]) -> [u8; 2] {
    let mut sum: u32 = 0;
    for pair in bytes.chunks_exact(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    (!(sum as u16)).to_be_bytes()
}
