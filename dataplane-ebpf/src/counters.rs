//! Per-CPU packet and byte counters, one slot per path and drop reason, and
//! the funnel every verdict goes through (counting and monitoring).

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT},
    helpers::bpf_redirect,
    programs::TcContext,
};
use dataplane_common::Counter;

use crate::{maps::COUNTERS, monitor};

/// What a step of a program comes to: a TC action already counted under
/// its path, or the reason the packet is dropped (counted where the step is
/// finished). Steps chain with `?`.
pub type Outcome<T = i32> = Result<T, Counter>;

/// An `Outcome<u32>` in one register, for what out-of-line functions
/// return: the compiler may hand a pair back through the caller's stack,
/// which the verifier refuses.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct PackedOutcome(u64);

impl PackedOutcome {
    #[inline(always)]
    pub fn pack(outcome: Outcome<u32>) -> Self {
        match outcome {
            Ok(value) => Self(u64::from(value)),
            Err(reason) => Self((u64::from(reason as u32) + 1) << 32),
        }
    }

    #[inline(always)]
    pub fn unpack(self) -> Outcome<u32> {
        match (self.0 >> 32) as u32 {
            0 => Ok(self.0 as u32),
            reason => Err(Counter::from_index(reason - 1).unwrap_or(Counter::DropMalformed)),
        }
    }
}

/// Counts `counter` for the packet, beside the verdict it will get.
#[inline(always)]
pub fn count(ctx: &TcContext, counter: Counter) {
    if let Some(value) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe {
            (*value).packets += 1;
            (*value).bytes += u64::from(ctx.len());
        }
    }
}

/// Counts `counter` for an event without a packet (a socket hook's).
#[inline(always)]
pub fn count_event(counter: Counter) {
    if let Some(value) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { (*value).packets += 1 };
    }
}

/// Counts under `counter`, shows the packet to the monitor if it watches,
/// and returns the TC action `action`.
#[inline(always)]
pub fn verdict(ctx: &TcContext, counter: Counter, action: i32) -> i32 {
    if monitor::report(ctx, counter) {
        count(ctx, Counter::MonitorSuppressed);
    }
    count(ctx, counter);
    action
}

/// Sends the packet out of `ifindex`, counted under `counter`; dropped for
/// `failed` when the kernel refuses (the device is gone).
#[inline(always)]
pub fn redirect_out(ctx: &TcContext, ifindex: u32, counter: Counter, failed: Counter) -> Outcome {
    // SAFETY: plain helper call; no packet pointer is used after it.
    let action = unsafe { bpf_redirect(ifindex, 0) } as i32;
    if action == TC_ACT_REDIRECT {
        Ok(verdict(ctx, counter, action))
    } else {
        Err(failed)
    }
}

/// Counts `counter` beside the verdict, and shows the packet as it is now to
/// the monitor: a step that traces should show (a translation, before it).
#[inline(always)]
pub fn note(ctx: &TcContext, counter: Counter) {
    verdict(ctx, counter, 0);
}

#[inline(always)]
pub fn drop(ctx: &TcContext, reason: Counter) -> i32 {
    verdict(ctx, reason, TC_ACT_SHOT)
}

#[inline(always)]
pub fn pass_to_host(ctx: &TcContext) -> i32 {
    verdict(ctx, Counter::PassedToHost, TC_ACT_OK)
}

/// The TC action of a finished step: its own, or a counted drop.
#[inline(always)]
pub fn finish(ctx: &TcContext, outcome: Outcome) -> i32 {
    outcome.unwrap_or_else(|reason| drop(ctx, reason))
}
