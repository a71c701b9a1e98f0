//! from-tunnel: TC ingress on the collect_md VXLAN device. The device exists
//! so the kernel's VXLAN GRO aggregates received packets before the uplink
//! program decapsulates them; anything the kernel decapsulates itself went
//! around the checks of that program and is dropped.

use aya_ebpf::programs::TcContext;
use dataplane_common::Counter;

use crate::counters::drop;

pub fn handle(ctx: &TcContext) -> i32 {
    drop(ctx, Counter::DropTunnelBypass)
}
