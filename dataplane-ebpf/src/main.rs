//! eBPF programs of the pod dataplane: one module per hook, one per concern.
#![no_std]
#![no_main]
// For `atomic_xadd`: the BPF target has no atomic read-modify-write types.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod arp;
mod counters;
mod from_host;
mod from_pod;
mod from_tunnel;
mod from_uplink;
mod icmp;
mod ipv4;
mod local;
mod maps;
mod monitor;
mod nat;
mod nat_share;
mod packet;
mod rewrite;
mod route;
mod service;
mod tunnel;

use aya_ebpf::{macros::classifier, programs::TcContext};

/// TC ingress on the host side of every pod veth: everything a pod sends.
#[classifier]
pub fn from_pod(ctx: TcContext) -> i32 {
    from_pod::handle(&ctx)
}

/// TC ingress on the VXLAN device: only what the uplink program let pass.
#[classifier]
pub fn from_tunnel(ctx: TcContext) -> i32 {
    from_tunnel::handle(&ctx)
}

/// TC ingress on the uplink: VXLAN from other nodes, decapsulated in BPF.
#[classifier]
pub fn from_uplink(ctx: TcContext) -> i32 {
    from_uplink::handle(&ctx)
}

/// TC egress on the uplink: the node's own packets for pod addresses.
#[classifier]
pub fn from_host(ctx: TcContext) -> i32 {
    from_host::handle(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
