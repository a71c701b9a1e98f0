//! Services: frontends, backend slots and the set serving new
//! connections, connection halves, affinities, the node's socket flows.

use crate::Ipv4Octets;

/// Service frontends (address, port, protocol): 30,000 Services of two ports.
pub const MAX_SERVICES: u32 = 65_536;

/// Backend slots of all frontends together (ten per frontend at the limit).
pub const MAX_BACKEND_SLOTS: u32 = 655_360;

/// Backends one frontend may have (kube-proxy has no limit; a DaemonSet's
/// Service on a 5,000-node cluster has 5,000; Kubernetes' own scale limit
/// is 5,000 nodes of 110 pods, so more is a frontend taking a tenth of
/// every slot there is).
pub const MAX_BACKENDS_PER_SERVICE: u32 = 65_536;

/// Source ranges of all load balancer frontends together
/// (`loadBalancerSourceRanges`).
pub const MAX_SOURCE_RANGES: u32 = 65_536;

/// Both halves of the connections to Services being tracked (LRU).
pub const MAX_SERVICE_FLOWS: u32 = 262_144;

/// Clients remembered by Services with ClientIP session affinity (LRU).
pub const MAX_AFFINITIES: u32 = 131_072;

/// The slot of `TAIL_CALLS` from-uplink continues in for a packet from
/// outside the cluster that may be for a Service (a program of its own:
/// a fresh stack).
pub const FROM_OUTSIDE_SLOT: u32 = 0;

/// The slot from-outside continues in once the packet is translated to
/// its backend: the client's masquerade and the forwarding.
pub const TO_BACKEND_SLOT: u32 = 1;

/// Slots of `TAIL_CALLS`.
pub const TAIL_CALL_SLOTS: u32 = 2;

/// Entries of `SOCKET_FLOWS` (both directions of every host socket's
/// frontend).
pub const MAX_SOCKET_FLOWS: u32 = 131_072;

/// The source a pod's connection to itself through a Service gets (hairpin):
/// a packet from its own address would be dropped by its stack as martian.
/// Link-local, never a pod's or a node's address; Cilium uses the same one.
pub const HAIRPIN_SOURCE: Ipv4Octets = [169, 254, 42, 1];

/// The address of a node port's `SERVICES` key: every node's addresses.
pub const NODE_PORT_ADDRESS: Ipv4Octets = [0; 4];

/// A Service frontend: what a client addresses. Key of `SERVICES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct ServiceKey {
    pub address: Ipv4Octets,
    /// Network byte order.
    pub port: [u8; 2],
    /// 6 (TCP) or 17 (UDP).
    pub protocol: u8,
    /// `frontend_scope::*`: which clients the entry is for.
    pub scope: u8,
}

/// Which clients a `SERVICES` entry serves.
pub mod frontend_scope {
    /// Every client: pods, the node, outside clients (masqueraded).
    pub const EVERYONE: u8 = 0;
    /// Outside clients of a frontend whose external traffic policy is
    /// Local: this node's backends only, the client's address kept. Looked
    /// up only when the `EVERYONE` entry has `service_flags::OUTSIDE_LOCAL`.
    pub const OUTSIDE_LOCAL: u8 = 1;
}

/// Flags of a `ServiceValue`.
pub mod service_flags {
    /// Outside clients are served by the frontend's `OUTSIDE_LOCAL` entry.
    pub const OUTSIDE_LOCAL: u8 = 1;
    /// New connections only from clients in the frontend's `SOURCE_RANGES`
    /// (a load balancer IP with `loadBalancerSourceRanges`).
    pub const SOURCE_RANGES: u8 = 2;
}

/// A client range of a frontend: the data of a `SOURCE_RANGES` LPM key,
/// whose prefix is 32 (the whole id) plus the range's own.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SourceRangeKey {
    /// The frontend entry's `ServiceValue::id`, big-endian (prefix order).
    pub service_id: [u8; 4],
    pub address: Ipv4Octets,
}

/// A frontend's backends: `BACKENDS` entries `{id, 0..backend_count}`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct ServiceValue {
    /// Chosen by the agent, unique among the frontends programmed.
    pub id: u32,
    /// 0: clients are refused (ICMP port unreachable).
    pub backend_count: u32,
    /// ClientIP session affinity: a client's new connections go to the
    /// backend of its last one for this long after it (0: none).
    pub affinity_seconds: u32,
    /// `service_flags::*`.
    pub flags: u8,
    pub _pad: [u8; 3],
}

/// A client of a frontend with session affinity. Key of `AFFINITY`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct AffinityKey {
    pub service_id: u32,
    pub client: Ipv4Octets,
}

/// The backend a client's connections to a frontend stick to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Affinity {
    pub backend: Backend,
    /// bpf_ktime_get_ns of the client's last new connection.
    pub last_used_ns: u64,
}

/// One backend slot of a frontend. Key of `BACKENDS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct BackendKey {
    pub service_id: u32,
    pub slot: u32,
}

/// Where a backend listens.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Backend {
    pub address: Ipv4Octets,
    /// Network byte order.
    pub port: [u8; 2],
    pub _pad: [u8; 2],
}

/// Which half of a connection to a Service an entry of `SERVICE_FLOWS` is.
pub mod service_direction {
    /// Keyed by the client's packet to the frontend; leads to the backend.
    pub const TO_BACKEND: u8 = 0;
    /// Keyed by the backend's reply (source the backend, destination the
    /// client or `HAIRPIN_SOURCE`); leads back to the frontend.
    pub const TO_CLIENT: u8 = 1;
}

/// One half of a connection to a Service, keyed by a `FlowKey` whose
/// `direction` is a `service_direction`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct ServiceFlow {
    /// `TO_BACKEND`: the backend chosen; `TO_CLIENT`: the frontend the
    /// client addressed, which the reply's source becomes.
    pub target: Backend,
    /// `TO_CLIENT`: the client's address, which the reply's destination
    /// becomes (it differs from the key's only for hairpin).
    pub client: Ipv4Octets,
    /// A `conn_state` value: what this half saw (the agent expires the
    /// connection by the more advanced of its halves, as the NAT's).
    pub state: u8,
    pub _pad: [u8; 3],
    /// bpf_ktime_get_ns of this half's last packet.
    pub last_seen_ns: u64,
}

/// A backend new connections to a frontend may be given. Key of
/// `SERVING`: a connection whose backend is no longer there keeps it
/// (TCP drains, as kube-proxy's conntrack entries do) unless it is a
/// datagram flow or a new connection, which pick a serving one.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct ServingKey {
    /// The frontend entry's `ServiceValue::id`.
    pub service_id: u32,
    pub backend: Backend,
}

/// Which way an entry of `SOCKET_FLOWS` translates.
pub mod socket_direction {
    /// Keyed by the frontend a socket addressed: the backend it was given.
    pub const TO_BACKEND: u8 = 0;
    /// Keyed by the backend: the frontend its datagrams (and the socket's
    /// peer name) are shown as coming from.
    pub const TO_CLIENT: u8 = 1;
}

/// A socket of the node's namespace and an address it sent to or heard
/// from. Key of `SOCKET_FLOWS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SocketFlowKey {
    /// `bpf_get_socket_cookie`: unique for the socket's life.
    pub cookie: u64,
    pub address: Ipv4Octets,
    /// Network byte order.
    pub port: [u8; 2],
    /// `socket_direction::*`.
    pub direction: u8,
    /// The socket's (TCP or UDP): the frontend is address, port and protocol.
    pub protocol: u8,
}
