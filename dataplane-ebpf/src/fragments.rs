//! Later pieces of fragmented datagrams carry no ports, so what translated
//! the first piece (the NAT's reply half, a Service's connection) cannot be
//! found for them: the translation of each first piece is recorded by the
//! datagram ({source, destination, IP id, protocol}, as Linux reassembles
//! it), and its later pieces are translated by that record, in any order
//! among themselves. A piece that comes before its datagram's first is not
//! translated.

use aya_ebpf::{bindings::BPF_ANY, helpers::bpf_ktime_get_ns};
use dataplane_common::{FragmentKey, FragmentRecord, Ipv4Octets};
use network_types::ip::Ipv4Hdr;

use crate::maps::FRAGMENTS;

/// How long a datagram's later pieces are translated after its first one:
/// as long as Linux keeps an incomplete datagram (`ipfrag_time`).
const LIFETIME_NS: u64 = 30_000_000_000;

/// Records `address` (what the translation put in the address it changed,
/// which `rewrite` says) for the later pieces of `datagram` (of its first
/// piece as it arrived). Best effort: without it the later pieces are not
/// translated.
#[inline(never)]
pub fn remember(datagram: &FragmentKey, address: Ipv4Octets, rewrite: u8) {
    let record = FragmentRecord {
        address,
        rewrite,
        _pad: [0; 3],
        // SAFETY: plain helper call.
        first_seen_ns: unsafe { bpf_ktime_get_ns() },
    };
    let _ = FRAGMENTS.insert(datagram, record, u64::from(BPF_ANY));
}

/// The record of the datagram of the later piece `ip`, while its pieces
/// may still come.
#[inline(always)]
pub fn recorded(ip: &Ipv4Hdr) -> Option<FragmentRecord> {
    // SAFETY: the value is copied out at once.
    let record = (unsafe { FRAGMENTS.get(datagram(ip)) }).copied()?;
    // SAFETY: plain helper call.
    let age = unsafe { bpf_ktime_get_ns() }.saturating_sub(record.first_seen_ns);
    (age <= LIFETIME_NS).then_some(record)
}

/// The address recorded for the later piece `ip` when its record rewrites
/// `rewrite`.
#[inline(always)]
pub fn recorded_for(ip: &Ipv4Hdr, rewrite: u8) -> Option<Ipv4Octets> {
    recorded(ip)
        .filter(|record| record.rewrite == rewrite)
        .map(|record| record.address)
}

/// The datagram the piece `ip` belongs to (read before anything rewrites it).
#[inline(always)]
pub fn datagram(ip: &Ipv4Hdr) -> FragmentKey {
    FragmentKey {
        src: ip.src_addr,
        dst: ip.dst_addr,
        id: ip.id,
        protocol: ip.proto,
        _pad: 0,
    }
}
