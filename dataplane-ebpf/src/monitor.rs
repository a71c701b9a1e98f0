//! Events for `dataplane monitor`: drops, and forwarded packets when traces
//! are asked for. Reported only while someone watches, and at most a
//! per-second budget per CPU, so a flood costs the datapath no more than that.

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::TcContext};
use dataplane_common::{Counter, PacketEvent};

use crate::{
    maps::{EVENT_BUDGET, EVENTS, MONITOR},
    packet::ingress_ifindex,
};

const ONE_SECOND_NS: u64 = 1_000_000_000;
const TCP: u8 = 6;
const UDP: u8 = 17;

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
    if let (Ok([0x08, 0x00]), Ok(ip)) = (ctx.load::<[u8; 2]>(12), ctx.load::<[u8; 20]>(14)) {
        event.src = [ip[12], ip[13], ip[14], ip[15]];
        event.dst = [ip[16], ip[17], ip[18], ip[19]];
        event.protocol = ip[9];
        let header_len = usize::from(ip[0] & 0x0f) * 4;
        if (event.protocol == TCP || event.protocol == UDP)
            && header_len == 20
            && let Ok(ports) = ctx.load::<[u8; 4]>(14 + 20)
        {
            event.src_port = [ports[0], ports[1]];
            event.dst_port = [ports[2], ports[3]];
        }
    }
    // A full ring only loses this event; the packet's fate is already decided.
    let _ = EVENTS.output(event, 0);
    false
}
