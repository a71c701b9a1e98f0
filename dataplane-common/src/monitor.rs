//! The monitor: packet events and their per-CPU budget.

use crate::Ipv4Octets;

/// Size of the drop event ring buffer in bytes (a power of two pages).
pub const EVENTS_RING_BYTES: u32 = 256 * 1024;

/// Whether drops (and forwarded packets) are reported, and how many per
/// second per CPU at most, so the monitor never costs the datapath more.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct MonitorConfig {
    /// Non-zero while someone watches drops.
    pub drops: u32,
    /// Non-zero while someone watches forwarded packets too.
    pub traces: u32,
    pub events_per_second: u32,
    pub _pad: u32,
}

/// Per-CPU state of the event budget.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct EventBudget {
    pub window_start_ns: u64,
    pub sent: u32,
    pub _pad: u32,
}

/// One dropped (or, when tracing, forwarded) packet, as the monitor shows it.
/// Addresses and ports are those of the outermost IPv4 header (zero when the
/// packet has none).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct PacketEvent {
    /// A `Counter` discriminant: the drop reason or the path taken.
    pub reason: u32,
    pub ifindex: u32,
    pub src: Ipv4Octets,
    pub dst: Ipv4Octets,
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
    pub protocol: u8,
    pub _pad: [u8; 3],
}
