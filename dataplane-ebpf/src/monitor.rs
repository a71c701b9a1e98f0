//! Events for `dataplane monitor`: drops, and forwarded packets when traces
//! are asked for. Reported only while someone watches, and at most a
//! per-second budget per CPU, so a flood costs the datapath no more than that.

use core::mem::offset_of;

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::TcContext};
use dataplane_common::{Counter, PacketEvent};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
};

use crate::{
    maps::{EVENT_BUDGET, EVENTS, MONITOR},
    packet::{IP_AT, L4_AT, PLAIN_VIHL, TCP, UDP, ingress_ifindex},
};

const ONE_SECOND_NS: u64 = 1_000_000_000;

/// Whether an event may be sent now (and counts it against the budget).
#[inline(always)]
fn within_budget(events_per_second: u32) -> bool {
    let Some(budget) = EVENT_BUDGET.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: plain helper call; `budget` is this CPU's slot, for this run.
    unsafe {
        let now = bpf_ktime_get_ns();
        if now.saturating_sub((*budget).window_start_ns) > ONE_SECOND_NS {
            (*budget).window_start_ns = now;
            (*budget).sent = 0;
        }
        if (*budget).sent >= events_per_second {
            return false;
        }
        (*budget).sent += 1;
    }
    true
}

/// Reports the packet in `ctx`, counted under `reason` (a drop reason or a
/// path), if someone watches that kind. Returns whether the budget suppressed it.
// Out of line: no caller's stack grows; when nobody watches it is one lookup.
#[inline(never)]
pub fn report(ctx: &TcContext, reason: Counter) -> bool {
    let Some(config) = MONITOR.get(0) else {
        return false;
    };
    let watched = if reason.is_drop() {
        config.drops
    } else {
        config.traces
    };
    if watched == 0 {
        return false;
    }
    if !within_budget(config.events_per_second) {
        return true;
    }
    let mut event = PacketEvent {
        reason: reason as u32,
        ifindex: ingress_ifindex(ctx),
        ..PacketEvent::default()
    };
    // Header by header, not the frame's first bytes at once: this sits at
    // the end of the deepest call chains, where every stack byte counts.
    if ctx.load::<u16>(offset_of!(EthHdr, ether_type)) == Ok(EtherType::Ipv4 as u16)
        && let Ok(ip) = ctx.load::<Ipv4Hdr>(IP_AT)
    {
        event.src = ip.src_addr;
        event.dst = ip.dst_addr;
        event.protocol = ip.proto;
        // TCP and UDP headers both start with the two ports.
        if (ip.proto == TCP || ip.proto == UDP)
            && ip.vihl == PLAIN_VIHL
            && let Ok(ports) = ctx.load::<[[u8; 2]; 2]>(L4_AT)
        {
            [event.src_port, event.dst_port] = ports;
        }
    }
    // A full ring only loses this event; the packet's fate is already decided.
    let _ = EVENTS.output(event, 0);
    false
}
