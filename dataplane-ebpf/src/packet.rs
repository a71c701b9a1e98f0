//! Bounds-checked access to packet headers.

use core::mem::size_of;

use aya_ebpf::programs::TcContext;
use network_types::{arp::ArpHdr, eth::EthHdr};

/// Longest header chain the programs read: Ethernet + ARP (IPv4 is shorter).
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

/// Pointer to a `T` at `offset`, or `None` when the packet is too short.
#[inline(always)]
pub fn header<T>(ctx: &TcContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data() + offset;
    if start + size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some(start as *mut T)
}

/// ifindex of the device the packet arrived on.
#[inline(always)]
pub fn ingress_ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer is valid for the program's whole run.
    unsafe { (*ctx.skb.skb).ifindex }
}
