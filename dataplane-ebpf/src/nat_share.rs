//! Fair shares of the NAT table: what each pod holds (and all outside
//! clients of Services together, in one row), refusals counted per pod,
//! and room made by evicting connections that were never established
//! (Linux conntrack's early drop of entries that are not ASSURED): the
//! oldest of them when the table is full, the one holding a port when the
//! ports toward a destination are. Without it one pod opening flows fast,
//! or spoofed SYNs at a node port, take every port toward a destination and
//! then the whole table, and every other new connection fails.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::{BPF_EXIST, BPF_NOEXIST},
    programs::TcContext,
};
use dataplane_common::{
    Counter, FlowKey, Ipv4Octets, NatEntry, NodeConfig, OUTSIDE_CLIENTS, PodNat, nat_direction,
};

use crate::{
    counters::{Outcome, count},
    maps::{NAT, POD_NAT, POD_NAT_CLOSED, UNASSURED},
};

/// A connection this young keeps its port toward a destination: its
/// handshake is under way (the answer passed, the opener's ACK not yet).
/// Under a flood the ports cycle through older connections instead.
const HANDSHAKE_GRACE_NS: u64 = 20_000_000;

/// Queued connections looked at per eviction (established ones are
/// dropped from the queue as they are passed).
const EVICTION_CANDIDATES: u32 = 8;

/// One of the counters in a pod's `PodNat`, incremented atomically.
#[inline(always)]
pub fn bump(counter: *mut u64) {
    // SAFETY: a pointer into a map value, valid for this program run and
    // aligned; other CPUs add to it concurrently, hence the atomic add (the
    // BPF target has no `AtomicU64::fetch_add`; this is BPF_XADD).
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, 1) };
}

/// The `POD_NAT` row the connection `egress` is counted in.
#[inline(always)]
pub fn row(egress: &FlowKey, outside_client: bool) -> Ipv4Octets {
    if outside_client {
        OUTSIDE_CLIENTS
    } else {
        egress.src
    }
}

/// The counts of the row `row`, created at its first connection.
#[inline(always)]
fn pod_nat(row: Ipv4Octets) -> Option<*mut PodNat> {
    if let Some(counts) = POD_NAT.get_ptr_mut(row) {
        return Some(counts);
    }
    let _ = POD_NAT.insert(row, PodNat::default(), u64::from(BPF_NOEXIST));
    POD_NAT.get_ptr_mut(row)
}

/// The counts of `row` when it may open one more connection; refused
/// (counted) when it holds its share of the table.
#[inline(always)]
pub fn admit(row: Ipv4Octets, config: &NodeConfig) -> Outcome<*mut PodNat> {
    let counts = pod_nat(row).ok_or(Counter::DropNatTableFull)?;
    // SAFETY: values copied out of map values valid for this run.
    let (opened, evicted, closed) = unsafe {
        (
            (*counts).opened,
            (*counts).evicted,
            POD_NAT_CLOSED.get(row).copied().unwrap_or(0),
        )
    };
    let holds = opened.saturating_sub(evicted).saturating_sub(closed);
    if holds >= u64::from(config.pod_connection_limit) {
        // SAFETY: as above.
        bump(unsafe { &raw mut (*counts).refused_share });
        return Err(Counter::DropNatPodShare);
    }
    Ok(counts)
}

/// Accounts for the new connection `egress` of the row `counts` is.
#[inline(always)]
pub fn opened(counts: *mut PodNat, egress: &FlowKey) {
    // SAFETY: as in `admit`.
    bump(unsafe { &raw mut (*counts).opened });
    // The oldest entry gives way when the queue is full.
    let _ = UNASSURED.push(egress, u64::from(BPF_EXIST));
}

/// Counts a refused new connection of the row `counts` is.
#[inline(always)]
pub fn refused(counts: *mut PodNat, reason: Counter) {
    // SAFETY: as in `admit`.
    let counter = unsafe {
        match reason {
            Counter::DropNatTableFull => &raw mut (*counts).refused_full,
            _ => &raw mut (*counts).refused_ports,
        }
    };
    bump(counter);
}

/// The key of the reply half of the connection `egress`, translated to
/// the node's `to_node`.
#[inline(always)]
pub fn reply_half(egress: &FlowKey, to_node: &NatEntry) -> FlowKey {
    FlowKey {
        src: egress.dst,
        dst: to_node.addr,
        src_port: egress.dst_port,
        dst_port: to_node.port,
        protocol: egress.protocol,
        direction: nat_direction::REPLY,
        _pad: [0; 2],
    }
}

/// The key of the egress half of the connection whose reply half is
/// `reply`, opened from `pod`:`pod_port`.
#[inline(always)]
pub fn egress_half(reply: &FlowKey, pod: Ipv4Octets, pod_port: [u8; 2]) -> FlowKey {
    FlowKey {
        src: pod,
        dst: reply.src,
        src_port: pod_port,
        dst_port: reply.src_port,
        protocol: reply.protocol,
        direction: nat_direction::EGRESS,
        _pad: [0; 2],
    }
}

/// Removes the connection whose egress half is `egress` unless it was
/// established; whether it did.
#[inline(always)]
fn evict_unless_assured(ctx: &TcContext, egress: &FlowKey) -> bool {
    // SAFETY: the value is copied out at once.
    let Some(to_node) = (unsafe { NAT.get(egress) }).copied() else {
        return false;
    };
    // Removing the egress half succeeds once: the eviction counts once.
    if to_node.assured != 0 || NAT.remove(egress).is_err() {
        return false;
    }
    let _ = NAT.remove(reply_half(egress, &to_node));
    if let Some(counts) = POD_NAT.get_ptr_mut(row(egress, to_node.outside_client != 0)) {
        // SAFETY: as in `admit`.
        bump(unsafe { &raw mut (*counts).evicted });
    }
    count(ctx, Counter::NatEvicted);
    true
}

/// Removes the oldest queued connection that was never established, if
/// one of the next few is; whether one was removed.
// Out of line: its keys stay off the NAT path's stack.
#[inline(never)]
pub fn evict_oldest_unassured(ctx: &TcContext) -> bool {
    for _ in 0..EVICTION_CANDIDATES {
        let Ok(Some(egress)) = UNASSURED.pop() else {
            return false;
        };
        if evict_unless_assured(ctx, &egress) {
            return true;
        }
    }
    false
}

/// Removes the connection whose reply half `reply` holds a node port
/// toward a destination, unless it was established or opened less than
/// `HANDSHAKE_GRACE_NS` before `now`; whether it did.
#[inline(never)]
pub fn evict_port_holder(ctx: &TcContext, reply: &FlowKey, now: u64) -> bool {
    // SAFETY: the value is copied out at once.
    let Some(to_pod) = (unsafe { NAT.get(reply) }).copied() else {
        return false;
    };
    // A half's time is its first packet's until a second later.
    if now.saturating_sub(to_pod.last_seen_ns) < HANDSHAKE_GRACE_NS {
        return false;
    }
    let egress = egress_half(reply, to_pod.addr, to_pod.port);
    evict_unless_assured(ctx, &egress)
}
