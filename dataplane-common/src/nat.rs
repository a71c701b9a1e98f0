//! Egress SNAT and connection tracking: connection halves, each pod's
//! share of the table and ports, fragments.

use crate::Ipv4Octets;

/// Capacity of the NAT table: two entries (egress + reply) per connection.
pub const MAX_NAT_ENTRIES: u32 = 262_144;

/// Connections a pod may hold at most when its share of the table is 100%.
pub const MAX_NAT_CONNECTIONS: u32 = MAX_NAT_ENTRIES / 2;

/// Capacity of the queue of new connections, oldest first: the candidates
/// for eviction when the table is full (those not established by then).
/// As many as the table holds, so none falls out of it unseen.
pub const MAX_UNASSURED: u32 = MAX_NAT_CONNECTIONS;

/// The `POD_NAT` row all outside clients masqueraded on their way to a
/// Service share (they hold one share of the table together: a flood from
/// spoofed addresses never takes more, nor makes rows).
pub const OUTSIDE_CLIENTS: Ipv4Octets = [0; 4];

/// A share of the SNAT ports given as a fraction of this (so 100% fits).
pub const PORT_SHARE_WHOLE: u32 = 1 << 16;

/// Capacity of the fragment records of translated replies (datagrams in
/// flight at once; the oldest record gives way when it is full).
pub const MAX_FRAGMENTS: u32 = 8192;

/// Whether SNAT may give `pod` the port `port` for a new connection: each
/// pod has its own pseudo-random `share` (of `PORT_SHARE_WHOLE`) of the
/// ports, so one pod can never take every port toward one destination, and
/// another pod finds free ports among the ones the first may not use.
#[inline(always)]
pub fn pod_may_use_port(pod: Ipv4Octets, port: u16, share: u32) -> bool {
    // The finalizer of MurmurHash3: every input bit moves every output bit.
    let mut hash = u32::from_be_bytes(pod) ^ u32::from(port).wrapping_mul(0x9e37_79b1);
    hash ^= hash >> 16;
    hash = hash.wrapping_mul(0x85eb_ca6b);
    hash ^= hash >> 13;
    hash = hash.wrapping_mul(0xc2b2_ae35);
    hash ^= hash >> 16;
    (hash & (PORT_SHARE_WHOLE - 1)) < share
}

/// What the programs count for one pod's masqueraded connections, or all
/// outside clients' (key `OUTSIDE_CLIENTS`), written by the programs only,
/// with atomic adds. The agent counts the ones it collected in
/// `POD_NAT_CLOSED`: the pod holds `opened - evicted - closed`. The agent
/// removes the rows of addresses that are no pod here and hold nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct PodNat {
    pub opened: u64,
    /// Its connections that were never established, removed to make room
    /// when the table or the ports toward a destination were full.
    pub evicted: u64,
    /// New connections refused because the pod held its share of the table.
    pub refused_share: u64,
    /// New connections refused for want of a free port (in its share)
    /// toward the destination.
    pub refused_ports: u64,
    /// New connections refused because the table was full and nothing
    /// could be evicted.
    pub refused_full: u64,
}

/// Which half of a connection a NAT entry translates.
pub mod nat_direction {
    /// Keyed by the pod's packet (pod -> world); translates the source to the node.
    pub const EGRESS: u8 = 0;
    /// Keyed by the reply (world -> node); translates the destination to the pod.
    pub const REPLY: u8 = 1;
}

/// A connection as seen in one direction. Ports are in network byte order as
/// on the wire; for ICMP echo the identifier is the source port of requests
/// and the destination port of replies, the other port 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FlowKey {
    pub src: Ipv4Octets,
    pub dst: Ipv4Octets,
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
    pub protocol: u8,
    /// `nat_direction::EGRESS` or `nat_direction::REPLY`.
    pub direction: u8,
    pub _pad: [u8; 2],
}

/// Lifecycle of a connection, as far as timeouts care. Each half records what
/// it saw; the connection is in the larger of its two states.
pub mod conn_state {
    /// Only the side that opened it has spoken.
    pub const NEW: u8 = 0;
    /// The other side answered (a SYN-ACK included): half open until the
    /// opener speaks again (NAT halves; Service flows go to ESTABLISHED).
    pub const ANSWERED: u8 = 1;
    /// The opener spoke after the answer: the handshake completed.
    pub const ESTABLISHED: u8 = 2;
    /// FIN or RST seen.
    pub const CLOSING: u8 = 3;
}

/// What one side of a TCP connection last sent, kept in the half its
/// packets are keyed by, so that a FIN or RST from the other side is
/// believed only when it fits the connection (the check Linux conntrack's
/// `tcp_in_window` makes). Sequence numbers in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SentSegment {
    /// The sequence number after the side's furthest segment (its SYN and
    /// FIN count one): what an answer to it acknowledges.
    pub next_seq: u32,
    /// What the side last acknowledged: where the other side's next segment starts.
    pub ack: u32,
    /// The window the side last offered, as on the wire (unscaled).
    pub window: u16,
    /// 1 once the side has sent an ACK (`ack` and `window` hold).
    pub acked: u8,
    pub _pad: u8,
}

/// One half of a NAT mapping. For an egress entry `addr:port` is the node's
/// address and SNAT port; for a reply entry, the pod's.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct NatEntry {
    pub addr: Ipv4Octets,
    pub port: [u8; 2],
    /// A `conn_state` value.
    pub state: u8,
    /// Egress halves: 1 once the connection was established. Never evicted
    /// to make room, unlike connections that are not (conntrack's ASSURED).
    pub assured: u8,
    /// bpf_ktime_get_ns (CLOCK_MONOTONIC) of the last packet of this half.
    pub last_seen_ns: u64,
    /// TCP: what the side whose packets key this half has sent (zero elsewhere).
    pub sent: SentSegment,
    /// Egress halves: 1 when the opener is an outside client of a Service
    /// (its row in `POD_NAT` is `OUTSIDE_CLIENTS`), 0 for a pod.
    pub outside_client: u8,
    pub _pad: [u8; 3],
}

/// A fragmented datagram, as its pieces all carry it: the first piece alone
/// has the ports, so the later ones are translated by what it recorded.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FragmentKey {
    pub src: Ipv4Octets,
    pub dst: Ipv4Octets,
    /// The IPv4 identification field, as on the wire.
    pub id: [u8; 2],
    pub protocol: u8,
    pub _pad: u8,
}

/// What the later pieces of a datagram get, by what its first piece got.
pub mod fragment_rewrite {
    /// The destination becomes the record's address (a NAT reply's pod, a
    /// Service's backend).
    pub const DESTINATION: u8 = 0;
    /// The source becomes the record's address (a backend's answer from
    /// its frontend).
    pub const SOURCE: u8 = 1;
    /// An outside client's datagram to a Service: to the record's backend,
    /// the client masqueraded to the node IP (from-outside).
    pub const OUTSIDE_MASQUERADED: u8 = 2;
    /// The same with external traffic policy Local: the client kept.
    pub const OUTSIDE_LOCAL: u8 = 3;
}

/// Where the later pieces of a translated datagram go.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FragmentRecord {
    pub address: Ipv4Octets,
    /// A `fragment_rewrite` value: which address becomes `address`.
    pub rewrite: u8,
    pub _pad: [u8; 3],
    /// bpf_ktime_get_ns when the first piece was translated; the record is
    /// used for as long as Linux waits for a datagram's pieces (30 s).
    pub first_seen_ns: u64,
}
