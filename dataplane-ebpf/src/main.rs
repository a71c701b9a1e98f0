//! eBPF programs of the pod dataplane: one module per hook, one per concern.
#![no_std]
#![no_main]
// For `atomic_xadd`: the BPF target has no atomic read-modify-write types.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod counters;
mod direct;
mod fragments;
mod hooks;
mod ipv4;
mod ipv6;
mod local;
mod maps;
mod monitor;
mod nat;
mod nat_share;
mod packet;
mod policy;
mod rewrite;
mod route;
mod service;
mod tunnel;

use aya_ebpf::{
    macros::{cgroup_sock_addr, classifier},
    programs::{SockAddrContext, TcContext},
};

/// TC ingress on the host side of every pod veth: everything a pod sends.
#[classifier]
pub fn from_pod(ctx: TcContext) -> i32 {
    hooks::from_pod::handle(&ctx)
}

/// TC ingress on the VXLAN device: only what the uplink program let pass.
#[classifier]
pub fn from_tunnel(ctx: TcContext) -> i32 {
    hooks::from_tunnel::handle(&ctx)
}

/// TC ingress on the uplink: VXLAN from other nodes, decapsulated in BPF.
#[classifier]
pub fn from_uplink(ctx: TcContext) -> i32 {
    hooks::from_uplink::handle(&ctx)
}

/// TC egress on the uplink: the node's own packets for pod addresses.
#[classifier]
pub fn from_host(ctx: TcContext) -> i32 {
    hooks::from_host::handle(&ctx)
}

/// Entered by tail call from from-uplink: outside clients of Services.
#[classifier]
pub fn from_outside(ctx: TcContext) -> i32 {
    hooks::from_outside::handle(&ctx)
}

/// Entered by tail call from from-outside: the translated packet, its client
/// masqueraded, to its backend.
#[classifier]
pub fn outside_to_backend(ctx: TcContext) -> i32 {
    hooks::from_outside::masquerade_to_backend(&ctx)
}

/// TC egress on the host side of every pod veth: the node's stack to a pod.
#[classifier]
pub fn to_pod(ctx: TcContext) -> i32 {
    hooks::to_pod::handle(&ctx)
}

/// cgroup connect4 of the node: a host socket connecting to a Service.
#[cgroup_sock_addr(connect4)]
pub fn host_connect(ctx: SockAddrContext) -> i32 {
    hooks::host_socket::to_backend(&ctx)
}

/// cgroup sendmsg4: a host socket's datagram addressed to a Service.
#[cgroup_sock_addr(sendmsg4)]
pub fn host_sendmsg(ctx: SockAddrContext) -> i32 {
    hooks::host_socket::to_backend(&ctx)
}

/// cgroup recvmsg4: a datagram from a backend, shown as the frontend's.
#[cgroup_sock_addr(recvmsg4)]
pub fn host_recvmsg(ctx: SockAddrContext) -> i32 {
    hooks::host_socket::to_client(&ctx)
}

/// cgroup getpeername4: a host socket connected to a Service names it.
#[cgroup_sock_addr(getpeername4)]
pub fn host_getpeername(ctx: SockAddrContext) -> i32 {
    hooks::host_socket::to_client(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
