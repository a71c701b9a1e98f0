//! Bounds-checked access to packet headers, and where they sit.

use core::mem::size_of;

use aya_ebpf::{helpers::bpf_skb_change_head, programs::TcContext};
use dataplane_common::Counter;
use network_types::{
    arp::ArpHdr,
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
};

pub use dataplane_common::ip_protocol::{ICMP, TCP, UDP};

/// Version 4 with a 20-byte header: the only IPv4 headers the programs
/// translate, build or read past.
pub const PLAIN_VIHL: u8 = 0x45;

/// The IPv4 header, after the Ethernet header.
pub const IP_AT: usize = EthHdr::LEN;
/// The transport header of an IPv4 packet without options (the only ones
/// the programs read past the IPv4 header).
pub const L4_AT: usize = IP_AT + Ipv4Hdr::LEN;

/// Longest header chain the programs read directly: Ethernet + ARP (IPv4 is
/// shorter).
const HEADERS_LEN: u32 = (EthHdr::LEN + ArpHdr::LEN) as u32;

/// Makes the headers the programs read directly accessible when the kernel
/// left them in paged data. Must run before any packet pointer is taken,
/// since pulling invalidates them.
#[inline(always)]
pub fn linearize_headers(ctx: &TcContext) {
    let want = ctx.len().min(HEADERS_LEN);
    if ctx.data() + want as usize > ctx.data_end() {
        // On failure the bounds checks below report the packet as malformed.
        let _ = ctx.pull_data(want);
    }
}

/// Gives a forwarded packet a header of its own, as the kernel's forwarding
/// path does (`skb_cow` in `ip_forward`); called where every forwarding path
/// ends (`local::deliver`, `tunnel::send_out_uplink`). A TCP segment sent in a pod is a
/// clone sharing its buffer with the copy its sender keeps for
/// retransmission; delivered as such, the receiver can never coalesce it
/// into its queue, and the buffer's shared reference count bounces between
/// the sender's and the receiver's CPUs: measured, 5% more CPU per GB than
/// kernel routing when they are different CPUs. A no-op for packets that are
/// not clones. Invalidates packet pointers, like a pull.
#[inline(always)]
pub fn own_header(ctx: &TcContext) {
    // SAFETY: plain helper call; growing the head by 0 bytes is `skb_cow(skb, 0)`,
    // which copies the header only when it is shared. On failure (no memory)
    // the packet goes on as the clone it was.
    let _ = unsafe { bpf_skb_change_head(ctx.skb.skb, 0, 0) };
}

/// Pointer to a `T` at `offset`, or `None` when the packet is too short.
#[inline(always)]
pub fn header<T>(ctx: &TcContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data() + offset;
    if start + size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some(start as *mut T)
}

/// A copy of the `T` at `offset`; a packet too short for it is malformed.
#[inline(always)]
pub fn load<T>(ctx: &TcContext, offset: usize) -> Result<T, Counter> {
    ctx.load(offset).map_err(|_| Counter::DropMalformed)
}

/// The bytes of a header (a `#[repr(C)]` struct of byte fields and arrays,
/// without padding), e.g. to checksum it.
#[inline(always)]
pub fn bytes_of<T>(header: &T) -> &[u8] {
    // SAFETY: the headers passed here have no padding, so every byte is
    // initialized; the slice borrows `header`.
    unsafe { core::slice::from_raw_parts((header as *const T).cast::<u8>(), size_of::<T>()) }
}

/// Whether the frame's Ethernet header says IPv4.
#[inline(always)]
pub fn is_ipv4(ctx: &TcContext) -> bool {
    header::<EthHdr>(ctx, 0)
        // SAFETY: bounds checked by `header`.
        .is_some_and(|eth| unsafe { (*eth).ether_type } == EtherType::Ipv4 as u16)
}

/// Whether the packet carries a VLAN tag in its metadata: the kernel moves
/// the outer tag there before TC runs, and a redirect keeps it.
#[inline(always)]
pub fn vlan_tagged(ctx: &TcContext) -> bool {
    // SAFETY: the context pointer is valid for the program's whole run.
    unsafe { (*ctx.skb.skb).vlan_present != 0 }
}

/// ifindex of the device the packet arrived on (read at an ingress hook:
/// the device the hook is on).
#[inline(always)]
pub fn ingress_ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer is valid for the program's whole run.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// Whether the node's own stack made the packet: it never arrived on any
/// device (what an egress hook sees of a packet a program or the kernel
/// forwarded has the device it came in on).
#[inline(always)]
pub fn made_by_the_node(ctx: &TcContext) -> bool {
    // SAFETY: the context pointer is valid for the program's whole run.
    unsafe { (*ctx.skb.skb).ingress_ifindex == 0 }
}

/// `bytes` as the raw value the checksum helpers diff (network order in memory).
#[inline(always)]
pub fn raw4(bytes: dataplane_common::Ipv4Octets) -> u64 {
    u64::from(u32::from_ne_bytes(bytes))
}

#[inline(always)]
pub fn raw2(bytes: [u8; 2]) -> u64 {
    u64::from(u16::from_ne_bytes(bytes))
}
