//! Fair shares of the NAT table: what each pod holds, refusals counted per
//! pod, and room made when the table is full by evicting connections that
//! were never answered (Linux conntrack's early drop). Without it one pod
//! opening flows fast takes every port toward a destination and then the
//! whole table, and every other pod's new connections fail.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::{BPF_EXIST, BPF_NOEXIST},
    programs::TcContext,
};
use dataplane_common::{
    Counter, FlowKey, Ipv4Octets, NodeConfig, PodNat, conn_state, nat_direction,
};

use crate::{
    counters::{Outcome, count},
    maps::{NAT, POD_NAT, POD_NAT_CLOSED, UNANSWERED},
};

/// Queued connections looked at per eviction (answered ones are skipped).
const EVICTION_CANDIDATES: u32 = 4;

/// One of the counters in a pod's `PodNat`, incremented atomically.
#[inline(always)]
pub fn bump(counter: *mut u64) {
    // SAFETY: a pointer into a map value, valid for this program run and
    // aligned; other CPUs add to it concurrently, hence the atomic add (the
    // BPF target has no `AtomicU64::fetch_add`; this is BPF_XADD).
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, 1) };
}

/// The counts of `pod`, created at its first connection.
#[inline(always)]
fn pod_nat(pod: Ipv4Octets) -> Option<*mut PodNat> {
    if let Some(counts) = POD_NAT.get_ptr_mut(pod) {
        return Some(counts);
    }
    let _ = POD_NAT.insert(pod, PodNat::default(), u64::from(BPF_NOEXIST));
    POD_NAT.get_ptr_mut(pod)
}

/// The counts of `pod` when it may open one more connection; refused
/// (counted) when it holds its share of the table.
#[inline(always)]
pub fn admit(pod: Ipv4Octets, config: &NodeConfig) -> Outcome<*mut PodNat> {
    let counts = pod_nat(pod).ok_or(Counter::DropNatTableFull)?;
    // SAFETY: values copied out of map values valid for this run.
    let (opened, evicted, closed) = unsafe {
        (
            (*counts).opened,
            (*counts).evicted,
            POD_NAT_CLOSED.get(pod).copied().unwrap_or(0),
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

/// Accounts for the new connection `egress` of the pod `counts` belongs to.
#[inline(always)]
pub fn opened(counts: *mut PodNat, egress: &FlowKey) {
    // SAFETY: as in `admit`.
    bump(unsafe { &raw mut (*counts).opened });
    // The oldest entry gives way when the queue is full.
    let _ = UNANSWERED.push(egress, u64::from(BPF_EXIST));
}

/// Counts a refused new connection of the pod `counts` belongs to.
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

/// Removes the oldest queued connection that was never answered, if one of
/// the next few is; whether one was removed.
// Out of line: its keys stay off the NAT path's stack.
#[inline(never)]
pub fn evict_unanswered(ctx: &TcContext) -> bool {
    for _ in 0..EVICTION_CANDIDATES {
        let Ok(Some(egress)) = UNANSWERED.pop() else {
            return false;
        };
        // SAFETY: the value is copied out at once.
        let Some(to_node) = (unsafe { NAT.get(egress) }).copied() else {
            continue;
        };
        let reply = FlowKey {
            src: egress.dst,
            dst: to_node.addr,
            src_port: egress.dst_port,
            dst_port: to_node.port,
            protocol: egress.protocol,
            direction: nat_direction::REPLY,
            _pad: [0; 2],
        };
        // SAFETY: as above.
        let answered =
            unsafe { NAT.get(reply) }.is_none_or(|to_pod| to_pod.state != conn_state::NEW);
        // Removing the egress half succeeds once: the eviction counts once.
        if answered || NAT.remove(egress).is_err() {
            continue;
        }
        let _ = NAT.remove(reply);
        if let Some(counts) = POD_NAT.get_ptr_mut(egress.src) {
            // SAFETY: as in `admit`.
            bump(unsafe { &raw mut (*counts).evicted });
        }
        count(ctx, Counter::NatEvicted);
        return true;
    }
    false
}
