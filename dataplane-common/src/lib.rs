//! Types shared by the eBPF programs and the userspace agent.
//!
//! Every map key and value is defined here once, `#[repr(C)]` with explicit
//! padding, so both sides agree on the layout byte for byte.
#![no_std]

/// Bumped whenever a map's key/value layout or meaning changes. The agent pins
/// maps under `<bpf root>/v<MAP_LAYOUT_VERSION>`, so maps of an older layout are
/// never silently reused by newer programs.
pub const MAP_LAYOUT_VERSION: u32 = 12;

/// Map and program names as they appear in the eBPF object.
pub mod names {
    pub const ENDPOINTS_MAP: &str = "ENDPOINTS";
    pub const NODE_CONFIG_MAP: &str = "NODE_CONFIG";
    pub const NODE_ROUTES_MAP: &str = "NODE_ROUTES";
    pub const REMOTE_NODES_MAP: &str = "REMOTE_NODES";
    pub const NAT_MAP: &str = "NAT";
    pub const NO_MASQUERADE_MAP: &str = "NO_MASQUERADE";
    pub const HOST_ADDRESSES_MAP: &str = "HOST_ADDRESSES";
    pub const FRAGMENTS_MAP: &str = "FRAGMENTS";
    pub const SERVICES_MAP: &str = "SERVICES";
    pub const BACKENDS_MAP: &str = "BACKENDS";
    pub const SERVING_MAP: &str = "SERVING";
    pub const SOURCE_RANGES_MAP: &str = "SOURCE_RANGES";
    pub const SERVICE_FLOWS_MAP: &str = "SERVICE_FLOWS";
    pub const AFFINITY_MAP: &str = "AFFINITY";
    pub const SOCKET_FLOWS_MAP: &str = "SOCKET_FLOWS";
    pub const TAIL_CALLS_MAP: &str = "TAIL_CALLS";
    pub const POD_NAT_MAP: &str = "POD_NAT";
    pub const POD_NAT_CLOSED_MAP: &str = "POD_NAT_CLOSED";
    pub const UNASSURED_MAP: &str = "UNASSURED";
    pub const MONITOR_MAP: &str = "MONITOR";
    pub const EVENTS_MAP: &str = "EVENTS";
    pub const EVENT_BUDGET_MAP: &str = "EVENT_BUDGET";
    pub const COUNTERS_MAP: &str = "COUNTERS";
    pub const FROM_POD_PROGRAM: &str = "from_pod";
    pub const FROM_TUNNEL_PROGRAM: &str = "from_tunnel";
    pub const FROM_HOST_PROGRAM: &str = "from_host";
    pub const FROM_UPLINK_PROGRAM: &str = "from_uplink";
    pub const TO_POD_PROGRAM: &str = "to_pod";
    /// Reached by tail call only (slot `FROM_OUTSIDE_SLOT` of `TAIL_CALLS`).
    pub const FROM_OUTSIDE_PROGRAM: &str = "from_outside";
    /// Slot `TO_BACKEND_SLOT`.
    pub const OUTSIDE_TO_BACKEND_PROGRAM: &str = "outside_to_backend";
    pub const HOST_CONNECT_PROGRAM: &str = "host_connect";
    pub const HOST_SENDMSG_PROGRAM: &str = "host_sendmsg";
    pub const HOST_RECVMSG_PROGRAM: &str = "host_recvmsg";
    pub const HOST_GETPEERNAME_PROGRAM: &str = "host_getpeername";
}

/// Capacity of the endpoints map (pods on one node, with ample headroom).
pub const MAX_ENDPOINTS: u32 = 65_536;

/// Capacity of the remote node maps (nodes in one cluster).
pub const MAX_REMOTE_NODES: u32 = 16_384;

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

/// Capacity of the non-masquerade CIDR list.
pub const MAX_NO_MASQUERADE: u32 = 1024;

/// Capacity of the node's own address set (every IPv4 address of every
/// interface; kube-proxy's IPVS mode alone puts one per Service on a node).
pub const MAX_HOST_ADDRESSES: u32 = 16_384;

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

/// The Internet checksum (RFC 1071) and its incremental update (RFC 1624),
/// for the programs and for the tests that build and verify packets.
pub mod checksum {
    /// Folds a 32-bit sum of 16-bit words into 16 bits (two folds suffice
    /// for any sum that fits 32 bits).
    #[inline(always)]
    const fn fold(sum: u32) -> u16 {
        let sum = (sum & 0xffff) + (sum >> 16);
        ((sum & 0xffff) + (sum >> 16)) as u16
    }

    /// The checksum of `bytes` (an odd last byte is padded with zero); a
    /// header holding its correct checksum sums to 0.
    #[inline(always)]
    pub fn internet(bytes: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        let mut pairs = bytes.chunks_exact(2);
        for pair in &mut pairs {
            sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
        }
        if let [last] = pairs.remainder() {
            sum += u32::from(u16::from_be_bytes([*last, 0]));
        }
        !fold(sum)
    }

    /// `checksum` after a 16-bit word it covers changed from `old` to `new`.
    #[inline(always)]
    pub fn replace2(checksum: u16, old: [u8; 2], new: [u8; 2]) -> u16 {
        let sum = u32::from(!checksum)
            + u32::from(!u16::from_be_bytes(old))
            + u32::from(u16::from_be_bytes(new));
        !fold(sum)
    }

    /// `checksum` after a 32-bit field it covers changed from `old` to `new`.
    #[inline(always)]
    pub fn replace4(checksum: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
        let mut sum = u32::from(!checksum);
        for index in [0, 2] {
            sum += u32::from(!u16::from_be_bytes([old[index], old[index + 1]]));
            sum += u32::from(u16::from_be_bytes([new[index], new[index + 1]]));
        }
        !fold(sum)
    }
}

/// Bytes VXLAN over IPv4 adds to every packet: outer IPv4 (20) + UDP (8) +
/// VXLAN (8) + inner Ethernet (14).
pub const VXLAN_OVERHEAD: u32 = 50;

/// An IPv4 address as it appears on the wire (network byte order).
pub type Ipv4Octets = [u8; 4];

/// A pod attached to this node. Keyed by the pod's IPv4 address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Endpoint {
    /// ifindex of the host side of the pod's veth, in the node's namespace.
    pub host_ifindex: u32,
    /// MAC of the pod's own interface (destination MAC when delivering to it).
    pub pod_mac: [u8; 6],
    /// MAC of the host-side veth: the pod's gateway MAC, answered to its ARP.
    pub host_mac: [u8; 6],
}

/// An IPv4 prefix; `prefix_len` 0 with `is_set` 0 means "not configured".
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Ipv4Cidr {
    pub addr: Ipv4Octets,
    pub prefix_len: u8,
    pub is_set: u8,
    pub _pad: [u8; 2],
}

impl Ipv4Cidr {
    pub const fn new(addr: Ipv4Octets, prefix_len: u8) -> Self {
        Self {
            addr,
            prefix_len,
            is_set: 1,
            _pad: [0; 2],
        }
    }

    /// Whether `addr` lies inside this prefix (never, when not configured).
    #[inline(always)]
    pub fn contains(&self, addr: Ipv4Octets) -> bool {
        if self.is_set == 0 || self.prefix_len > 32 {
            return false;
        }
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0);
        (u32::from_be_bytes(addr) ^ u32::from_be_bytes(self.addr)) & mask == 0
    }
}

/// Settings of the local node, stored at index 0 of the node config array.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct NodeConfig {
    /// This node's pod CIDR; addresses inside it that are not endpoints are
    /// dropped instead of handed to the host stack.
    pub pod_cidr: Ipv4Cidr,
    /// All pod CIDRs of the cluster; an address inside it that no node owns
    /// is dropped (never sent to the host stack or out to the world).
    pub cluster_cidr: Ipv4Cidr,
    /// This node's IP on the underlay (inner destination of host-bound tunnel traffic).
    pub node_ip: Ipv4Octets,
    /// VXLAN network identifier of the cluster.
    pub vni: u32,
    /// ifindex of the uplink that carries the tunnel; 0 when tunnelling is off.
    pub uplink_ifindex: u32,
    /// Largest IPv4 packet the tunnel carries (uplink MTU - VXLAN_OVERHEAD).
    pub tunnel_mtu: u32,
    /// VXLAN UDP port.
    pub vxlan_port: u16,
    /// 1 when pod traffic leaving the cluster is masqueraded to `node_ip`.
    pub masquerade: u8,
    /// 1 when any Service frontend is programmed: pod packets are then
    /// checked against the Service maps.
    pub services: u8,
    /// Source ports (or ICMP echo identifiers) SNAT may use, inclusive.
    pub nat_port_min: u16,
    pub nat_port_max: u16,
    /// Of every `PORT_SHARE_WHOLE` ports of the range, how many one pod may
    /// use toward one destination (which ones depends on the pod: see
    /// `pod_may_use_port`).
    pub pod_port_share: u32,
    /// Connections one pod may hold in the NAT table.
    pub pod_connection_limit: u32,
    /// The node's own network namespace (`SO_NETNS_COOKIE`): the socket
    /// hooks translate frontends for sockets of this namespace only (pods'
    /// packets are translated at their veth).
    pub host_netns_cookie: u64,
    /// 1 when a frontend keeps outside clients' addresses (external
    /// traffic policy Local): pods' packets to outside addresses are then
    /// checked for answers to them.
    pub outside_local: u8,
    pub _pad: u8,
    /// Where node ports are, inclusive: a packet to a node's address at a
    /// port in it is looked up as a node port (key address `NODE_PORT_ADDRESS`).
    pub node_port_min: u16,
    pub node_port_max: u16,
    pub _pad_end: [u8; 2],
    /// Where Service addresses are (the API server's
    /// `--service-cluster-ip-range`; prefix 0: not given): one of them at a
    /// port no Service has is refused.
    pub service_cidr: Ipv4Cidr,
    /// The uplink's MTU: the largest IPv4 packet sent to a node directly.
    pub uplink_mtu: u32,
    pub _pad_mtu: u32,
}

/// The address of a node port's `SERVICES` key: every node's addresses.
pub const NODE_PORT_ADDRESS: Ipv4Octets = [0; 4];

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

impl NodeConfig {
    pub const fn tunnel_enabled(&self) -> bool {
        self.uplink_ifindex != 0
    }
}

/// How pod packets reach a remote node.
pub mod node_path {
    /// VXLAN, encapsulated in BPF: across any underlay.
    pub const TUNNEL: u8 = 0;
    /// Unencapsulated, with the node's IP as next hop: nodes on the uplink's
    /// own network only (the receiver checks the sender's MAC).
    pub const DIRECT: u8 = 1;
}

/// Where a remote pod CIDR lives: the value of the node routes LPM trie,
/// keyed by `{prefix_len, pod CIDR address}`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct NodeRoute {
    pub node_ip: Ipv4Octets,
    /// A `node_path` value.
    pub path: u8,
    pub _pad: [u8; 3],
}

/// A remote node, keyed by its underlay IP. Tunnel traffic is accepted only
/// from these addresses; the agent also rebuilds its state from it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct RemoteNode {
    pub pod_cidr: Ipv4Cidr,
    /// The node's MAC on the uplink, as this node's neighbour table holds it
    /// (learned by the agent, for nodes on the uplink's network): the only
    /// frames unencapsulated packets from its pods are taken in.
    pub mac: [u8; 6],
    /// A `node_path` value: how its pods and itself are reached.
    pub path: u8,
    /// 1 when `mac` was learned.
    pub mac_known: u8,
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

/// Packets and bytes seen by one counter on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct CounterValue {
    pub packets: u64,
    pub bytes: u64,
}

/// Declares `Counter` from one list. An entry's position is its index into
/// the counters array, its kind (`path` or `drop`) and label give its name
/// (`drop_` + label for drops) and its metric label, and its doc comment is
/// its help text.
macro_rules! counters {
    ($($(#[doc = $help:literal])+ $kind:ident $variant:ident = $label:literal;)+) => {
        /// Index into the per-CPU counters array: one slot per path and drop reason.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Counter {
            $($(#[doc = $help])+ $variant,)+
        }

        impl Counter {
            pub const COUNT: u32 = [$(Counter::$variant),+].len() as u32;

            pub const ALL: [Counter; Self::COUNT as usize] = [$(Counter::$variant),+];

            /// Stable name used by the CLI, the API and logs.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Counter::$variant => counter_name!($kind, $label),)+
                }
            }

            /// The metric label: the name without the `drop_` its family says.
            pub const fn label(self) -> &'static str {
                match self {
                    $(Counter::$variant => $label,)+
                }
            }

            /// What the counter counts (its doc comment, each line with a
            /// leading space).
            pub const fn help(self) -> &'static str {
                match self {
                    $(Counter::$variant => concat!($($help),+),)+
                }
            }

            pub const fn is_drop(self) -> bool {
                match self {
                    $(Counter::$variant => counter_is_drop!($kind),)+
                }
            }
        }
    };
}

macro_rules! counter_name {
    (path, $label:literal) => {
        $label
    };
    (drop, $label:literal) => {
        concat!("drop_", $label)
    };
}

macro_rules! counter_is_drop {
    (path) => {
        false
    };
    (drop) => {
        true
    };
}

counters! {
    /// ARP request from a pod answered with its host veth MAC.
    path ArpReplied = "arp_replied";
    /// Pod-to-pod on this node, redirected into the destination pod.
    path ForwardedLocal = "forwarded_local";
    /// Handed to the host stack (destination not handled by the dataplane).
    path PassedToHost = "passed_to_host";
    /// Source address is not the endpoint's own IP on its own veth.
    drop DropSpoofedSource = "spoofed_source";
    /// Destination in the local pod CIDR without a registered endpoint.
    drop DropUnknownEndpoint = "unknown_endpoint";
    /// TTL would reach zero on forwarding: a pod's packet is answered with
    /// ICMP time exceeded (counted here too), others are dropped.
    drop DropTtlExceeded = "ttl_exceeded";
    /// Truncated or malformed header.
    drop DropMalformed = "malformed";
    /// ARP that is not a request we answer (from an unknown sender, not IPv4
    /// over Ethernet, or for the sender's own address).
    drop DropArpIgnored = "arp_ignored";
    /// The endpoint's veth no longer exists (pod deleted, map not yet updated).
    drop DropStaleEndpoint = "stale_endpoint";
    /// Sent into the VXLAN tunnel toward a remote node.
    path Encapsulated = "encapsulated";
    /// Arrived through the tunnel and delivered into a local pod.
    path DecapsulatedToPod = "decapsulated_to_pod";
    /// Arrived through the tunnel for this node's own IP.
    path DecapsulatedToHost = "decapsulated_to_host";
    /// From the node's own stack into a local pod.
    path HostToPod = "host_to_pod";
    /// VXLAN packet whose outer source is not a known node.
    drop DropUnknownTunnelSource = "unknown_tunnel_source";
    /// VXLAN packet with another network identifier, or without the VNI flag.
    drop DropWrongVni = "wrong_vni";
    /// In the cluster CIDR, but no node owns the address (e.g. a removed node).
    drop DropUnknownNode = "unknown_node";
    /// Encapsulation, decapsulation or the redirect out of the uplink failed.
    drop DropUplinkError = "uplink_error";
    /// Too big for the tunnel with DF set: answered with ICMP fragmentation-needed.
    drop DropFragNeeded = "frag_needed";
    /// VXLAN the uplink program did not take, decapsulated by the kernel's
    /// device instead: never delivered.
    drop DropTunnelBypass = "tunnel_bypass";
    /// Pod traffic leaving the cluster, source translated to the node IP.
    path Masqueraded = "masqueraded";
    /// A reply to a masqueraded connection, delivered into its pod.
    path NatReplyToPod = "nat_reply_to_pod";
    /// Pod traffic to a non-masquerade CIDR, routed out with the pod's address.
    path RoutedUnmasqueraded = "routed_unmasqueraded";
    /// No free SNAT port for this destination within the bounded search.
    drop DropNatExhausted = "nat_exhausted";
    /// Inbound to the SNAT port range without a mapping (unsolicited).
    drop DropNatNoMapping = "nat_no_mapping";
    /// A protocol SNAT does not translate (not TCP, UDP or ICMP echo).
    drop DropNatUnsupported = "nat_unsupported";
    /// The NAT table is full: new connections cannot be tracked.
    drop DropNatTableFull = "nat_table_full";
    /// From a non-masquerade CIDR (routed, not translated) into a local pod.
    path RoutedToPod = "routed_to_pod";
    /// Monitor events not reported because the per-second budget was spent.
    path MonitorSuppressed = "monitor_suppressed";
    /// The node's own packet for a remote pod, from a host address the remote
    /// node cannot answer through the tunnel (neither the node IP nor in
    /// this node's pod CIDR).
    drop DropHostSourceUnroutable = "host_source_unroutable";
    /// From a pod, neither IPv4 nor ARP (IPv6 included, until the dataplane
    /// forwards it): never handed to the node, so a pod's router
    /// advertisements or neighbour discovery cannot change its routing.
    drop DropPodNotIpv4 = "pod_not_ipv4";
    /// From a pod with an 802.1Q or 802.1ad tag: a pod does not choose the
    /// underlay's VLAN, nor another pod's.
    drop DropPodVlanTagged = "pod_vlan_tagged";
    /// From a pod to an address nothing may be sent to: 0.0.0.0/8 (this
    /// network), 127.0.0.0/8 (loopback) or 240.0.0.0/4 (reserved).
    drop DropMartianDestination = "martian_destination";
    /// From a pod to a broadcast or multicast address, or in a frame to a
    /// group MAC: the dataplane forwards unicast only.
    drop DropNotUnicast = "not_unicast";
    /// VXLAN whose outer IPv4 header is a fragment: nodes never fragment the
    /// tunnel, and a piece must not be decapsulated as if it were whole.
    drop DropTunnelFragment = "tunnel_fragment";
    /// A FIN or RST in the reply direction of a masqueraded connection that
    /// does not fit it (sequence outside what the pod acknowledged and
    /// offered): delivered to the pod, whose stack judges it, but the
    /// connection's tracking is not shortened by it (counted beside the
    /// packet's path).
    path NatCloseIgnored = "nat_close_ignored";
    /// A pod's new masqueraded connection refused: the pod holds its share
    /// of the NAT table already.
    drop DropNatPodShare = "nat_pod_share";
    /// A connection that never got an answer, removed to make room for a
    /// new one when the NAT table was full (Linux conntrack's early drop;
    /// counted beside the new connection's packet).
    path NatEvicted = "nat_evicted";
    /// A pod's packet to a Service frontend, translated to a backend
    /// (counted beside how it was then forwarded; a trace shows it as the
    /// client sent it, the forwarding trace as translated).
    path ServiceToBackend = "service_to_backend";
    /// A backend's reply, translated back to the Service frontend the client
    /// addressed (counted beside its delivery; traced as the backend sent it).
    path ServiceToClient = "service_to_client";
    /// To a Service frontend with no backend: answered with ICMP port
    /// unreachable, as kube-proxy's REJECT does, so clients fail at once (a
    /// socket of the node's namespace: its connect or send fails with EPERM).
    drop DropServiceNoBackend = "service_no_backend";
    /// A new connection to a Service whose halves could not be recorded
    /// (the kernel had no memory for the entries).
    drop DropServiceUntracked = "service_untracked";
    /// A socket of the node's own namespace connecting (or sending a
    /// datagram) to a Service frontend, given a backend at the socket
    /// (counted per connect or datagram, with no bytes).
    path ServiceHostSocket = "service_host_socket";
    /// A datagram from a backend to a socket of the node's namespace, or
    /// that socket's peer name, shown as the frontend's.
    path ServiceHostSocketReply = "service_host_socket_reply";
    /// To an address in the Service CIDR that is no frontend (a Service
    /// address at a port it does not have, or an address no Service has):
    /// answered with ICMP port unreachable (a node socket's connect fails
    /// with EPERM), as kube-proxy's nftables rules reject it.
    drop DropServiceUnknown = "service_unknown";
    /// A backend's answer to a client outside the cluster (which reached a
    /// Service through this node, masqueraded on its way in), translated
    /// back and sent out of the uplink.
    path ServiceReplyToOutside = "service_reply_to_outside";
    /// From outside the cluster to a frontend whose external traffic policy
    /// is Local, on a node without a backend of it (kube-proxy drops these
    /// too: the load balancer's health check steers clients away).
    drop DropServiceNoLocalBackend = "service_no_local_backend";
    /// From outside the cluster to a Service whose chosen backend is not a
    /// pod (an address of a node or outside the cluster): not served to
    /// outside clients.
    drop DropServiceExternalUnsupported = "service_external_unsupported";
    /// Sent unencapsulated to a remote node on the uplink's own network
    /// (direct routing), that node's IP the next hop.
    path ForwardedDirect = "forwarded_direct";
    /// Arrived unencapsulated from a remote node (one of its pods, or the
    /// node itself to a pod here), its MAC checked, delivered into a local pod.
    path DirectToPod = "direct_to_pod";
    /// As `direct_to_pod`, for an address of this node itself.
    path DirectToHost = "direct_to_host";
    /// Arrived unencapsulated from a remote node's pod address (or from a
    /// node's own address to a pod here), but not in a frame from that
    /// node's MAC as this node's neighbour table knows it, or from a node
    /// not on the uplink's network: another underlay host, or a node
    /// speaking for pods it does not own.
    drop DropDirectUnverified = "direct_unverified";
    /// A new connection to a load balancer IP from a client outside the
    /// Service's `loadBalancerSourceRanges` (kube-proxy drops these too).
    drop DropServiceSourceRange = "service_source_range";
    /// From outside to a Service frontend with a source no client has:
    /// 0.0.0.0/8, 127.0.0.0/8, multicast, 240.0.0.0/4, broadcast, or an
    /// address of this node itself (never given a backend or NAT state).
    drop DropMartianSource = "martian_source";
    /// From the underlay, unencapsulated, to a pod of this node while
    /// masquerading: not a reply, not for a Service, not from a verified
    /// node or an unmasqueraded destination. Nothing else has a reason to
    /// address a pod from out there (the node's stack would forward it).
    drop DropUplinkToPod = "uplink_to_pod";
}

impl Counter {
    /// The counter whose discriminant is `index`.
    pub fn from_index(index: u32) -> Option<Counter> {
        Self::ALL.get(index as usize).copied()
    }
}

#[cfg(feature = "user")]
mod user {
    /// Marks shared layouts as map keys and values for aya.
    macro_rules! map_layouts {
        ($($layout:ident),* $(,)?) => {$(
            // SAFETY: #[repr(C)] plain data whose padding is explicit fields
            // (bytemuck's Pod derive on each refuses implicit padding).
            unsafe impl aya::Pod for super::$layout {}
        )*};
    }

    map_layouts!(
        Endpoint,
        NodeConfig,
        NodeRoute,
        RemoteNode,
        CounterValue,
        FlowKey,
        NatEntry,
        FragmentKey,
        FragmentRecord,
        PodNat,
        ServiceKey,
        ServiceValue,
        BackendKey,
        Backend,
        ServiceFlow,
        ServingKey,
        SourceRangeKey,
        AffinityKey,
        SocketFlowKey,
        Affinity,
        MonitorConfig,
        EventBudget,
        PacketEvent,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_table_is_indexed_by_discriminant() {
        for (index, counter) in Counter::ALL.iter().enumerate() {
            assert_eq!(*counter as usize, index);
        }
        assert_eq!(Counter::COUNT, 54);
        assert_eq!(Counter::DropTunnelFragment as u32, 33);
    }

    #[test]
    fn counter_names_labels_and_help_come_from_one_entry() {
        assert_eq!(Counter::ArpReplied.name(), "arp_replied");
        assert_eq!(Counter::DropSpoofedSource.name(), "drop_spoofed_source");
        assert_eq!(Counter::DropSpoofedSource.label(), "spoofed_source");
        assert!(Counter::DropSpoofedSource.is_drop());
        assert!(!Counter::MonitorSuppressed.is_drop());
        assert!(
            Counter::DropTtlExceeded
                .help()
                .contains("TTL would reach zero")
        );
        for counter in Counter::ALL {
            assert_eq!(counter.is_drop(), counter.name().starts_with("drop_"));
        }
    }

    #[test]
    fn checksums_verify_and_update_incrementally() {
        // RFC 1071's example header (checksum 0xb861 in place).
        let mut header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum::internet(&header), 0);
        let updated = checksum::replace4(0xb861, [0xc0, 0xa8, 0x00, 0x01], [10, 0, 0, 7]);
        header[12..16].copy_from_slice(&[10, 0, 0, 7]);
        header[10..12].copy_from_slice(&updated.to_be_bytes());
        assert_eq!(checksum::internet(&header), 0);
        assert_eq!(checksum::internet(&[0x01]), !0x0100);
        // A TTL decrement: the word (TTL, protocol) changes.
        let check = checksum::replace2(
            u16::from_be_bytes([header[10], header[11]]),
            [0x40, 0x11],
            [0x3f, 0x11],
        );
        header[8] = 0x3f;
        header[10..12].copy_from_slice(&check.to_be_bytes());
        assert_eq!(checksum::internet(&header), 0);
    }

    #[test]
    fn each_pod_may_use_its_share_of_the_ports_and_pods_differ() {
        let half = PORT_SHARE_WHOLE / 2;
        let usable = |pod| {
            (61000..=65535u16)
                .filter(|port| pod_may_use_port(pod, *port, half))
                .count()
        };
        let (a, b) = ([10, 244, 0, 2], [10, 244, 0, 3]);
        for pod in [a, b] {
            assert!((2100..2450).contains(&usable(pod)), "{}", usable(pod));
        }
        let free_for_b = (61000..=65535u16)
            .filter(|port| !pod_may_use_port(a, *port, half) && pod_may_use_port(b, *port, half))
            .count();
        assert!(free_for_b > 1000, "{free_for_b}");
        assert!(pod_may_use_port(a, 61000, PORT_SHARE_WHOLE));
        assert!(!pod_may_use_port(a, 61000, 0));
    }

    #[test]
    fn cidr_membership() {
        let cidr = Ipv4Cidr::new([10, 244, 1, 0], 24);
        assert!(cidr.contains([10, 244, 1, 7]));
        assert!(!cidr.contains([10, 244, 2, 7]));
        let host = Ipv4Cidr::new([10, 244, 1, 0], 32);
        assert!(host.contains([10, 244, 1, 0]));
        assert!(!host.contains([10, 244, 1, 1]));
        assert!(Ipv4Cidr::new([0; 4], 0).contains([203, 0, 113, 1]));
        assert!(!Ipv4Cidr::default().contains([10, 244, 1, 7]));
    }

    #[test]
    fn layouts_have_no_hidden_padding() {
        assert_eq!(size_of::<Endpoint>(), 16);
        assert_eq!(size_of::<Ipv4Cidr>(), 8);
        assert_eq!(size_of::<NodeConfig>(), 80);
        assert_eq!(size_of::<ServiceKey>(), 8);
        assert_eq!(size_of::<ServiceValue>(), 16);
        assert_eq!(size_of::<ServiceFlow>(), 24);
        assert_eq!(size_of::<ServingKey>(), 12);
        assert_eq!(size_of::<SocketFlowKey>(), 16);
        assert_eq!(size_of::<PodNat>(), 40);
        assert_eq!(size_of::<FlowKey>(), 16);
        assert_eq!(size_of::<NatEntry>(), 32);
        assert_eq!(size_of::<SentSegment>(), 12);
        assert_eq!(size_of::<FragmentKey>(), 12);
        assert_eq!(size_of::<FragmentRecord>(), 16);
        assert_eq!(size_of::<PacketEvent>(), 24);
        assert_eq!(size_of::<NodeRoute>(), 8);
        assert_eq!(size_of::<RemoteNode>(), 16);
        assert_eq!(size_of::<CounterValue>(), 16);
    }
}
