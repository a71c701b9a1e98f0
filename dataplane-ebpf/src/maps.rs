//! Maps shared with the agent; layouts come from `dataplane-common`.
//! All are pinned by name so they outlive the agent process.

use aya_ebpf::{
    macros::map,
    maps::{
        Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, Queue, RingBuf,
        lpm_trie::Key,
    },
};
use dataplane_common::{
    Affinity, AffinityKey, Backend, BackendKey, Counter, CounterValue, EVENTS_RING_BYTES, Endpoint,
    EventBudget, FlowKey, FragmentKey, FragmentRecord, Ipv4Octets, Ipv6Octets, MAX_AFFINITIES,
    MAX_BACKEND_SLOTS, MAX_ENDPOINTS, MAX_FRAGMENTS, MAX_HOST_ADDRESSES, MAX_NAT_ENTRIES,
    MAX_NO_MASQUERADE, MAX_POLICY_CLASSES, MAX_POLICY_FLOWS, MAX_POLICY_RULES, MAX_REMOTE_NODES,
    MAX_SERVICE_FLOWS, MAX_SERVICES, MAX_SOCKET_FLOWS, MAX_SOURCE_RANGES, MAX_UNASSURED,
    MonitorConfig, NatEntry, NodeConfig, NodeRoute, PodNat, PolicyClassKey, PolicyDrops,
    PolicyFlow, PolicyOpen6, PolicyOpenKey6, PolicyRuleKey, PolicySubject, PolicySubjectKey,
    RemoteNode, ServiceFlow, ServiceKey, ServiceValue, ServingKey, SocketFlowKey, SourceRangeKey,
    TAIL_CALL_SLOTS,
};

#[map(name = "ENDPOINTS")]
pub static ENDPOINTS: HashMap<Ipv4Octets, Endpoint> = HashMap::pinned(MAX_ENDPOINTS, 0);

/// The pods' IPv6 addresses, as `ENDPOINTS` holds their IPv4 ones.
#[map(name = "ENDPOINTS6")]
pub static ENDPOINTS6: HashMap<Ipv6Octets, Endpoint> = HashMap::pinned(MAX_ENDPOINTS, 0);

/// Every host veth a pod with an IPv6 address is behind: its ifindex -> its
/// MAC, which the pod's neighbour discovery from its link-local address is
/// answered with (a pod without IPv6 gets no answer there).
#[map(name = "HOST_VETHS")]
pub static HOST_VETHS: HashMap<u32, [u8; 6]> = HashMap::pinned(MAX_ENDPOINTS, 0);

#[map(name = "NODE_CONFIG")]
pub static NODE_CONFIG: Array<NodeConfig> = Array::pinned(1, 0);

/// Remote pod CIDR -> node IP and path. LPM tries require BPF_F_NO_PREALLOC.
#[map(name = "NODE_ROUTES")]
pub static NODE_ROUTES: LpmTrie<Ipv4Octets, NodeRoute> =
    LpmTrie::pinned(MAX_REMOTE_NODES, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// Remote nodes' IPv6 pod CIDRs, as `NODE_ROUTES` holds their IPv4 ones.
#[map(name = "NODE_ROUTES6")]
pub static NODE_ROUTES6: LpmTrie<Ipv6Octets, NodeRoute> =
    LpmTrie::pinned(MAX_REMOTE_NODES, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

#[map(name = "REMOTE_NODES")]
pub static REMOTE_NODES: HashMap<Ipv4Octets, RemoteNode> = HashMap::pinned(MAX_REMOTE_NODES, 0);

/// Both halves of every masqueraded connection (see nat.rs).
#[map(name = "NAT")]
pub static NAT: HashMap<FlowKey, NatEntry> = HashMap::pinned(MAX_NAT_ENTRIES, 0);

/// Each pod's share of the NAT table as the programs count it (pod
/// addresses come from the node's pod CIDR: the keys are bounded by it).
#[map(name = "POD_NAT")]
pub static POD_NAT: HashMap<Ipv4Octets, PodNat> = HashMap::pinned(MAX_ENDPOINTS, 0);

/// Each pod's connections the agent collected, written by the agent only.
#[map(name = "POD_NAT_CLOSED")]
pub static POD_NAT_CLOSED: HashMap<Ipv4Octets, u64> = HashMap::pinned(MAX_ENDPOINTS, 0);

/// Egress keys of new connections, oldest first: where eviction looks for
/// connections that were never established.
#[map(name = "UNASSURED")]
pub static UNASSURED: Queue<FlowKey> = Queue::pinned(MAX_UNASSURED, 0);

/// Where the later pieces of a fragmented reply to a masqueraded connection
/// go (see nat.rs). LRU: a record nobody needs any more gives way.
#[map(name = "FRAGMENTS")]
pub static FRAGMENTS: LruHashMap<FragmentKey, FragmentRecord> =
    LruHashMap::pinned(MAX_FRAGMENTS, 0);

/// Service frontends (see service.rs); written by the agent only.
#[map(name = "SERVICES")]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::pinned(MAX_SERVICES, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// The backends of each frontend, by slot; written by the agent only.
#[map(name = "BACKENDS")]
pub static BACKENDS: HashMap<BackendKey, Backend> =
    HashMap::pinned(MAX_BACKEND_SLOTS, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// The backends each frontend gives new connections (its slots' backends,
/// by id); written by the agent only. A backend leaving a frontend is one
/// delete here: its connections are judged when they are used, never
/// walked.
#[map(name = "SERVING")]
pub static SERVING: HashMap<ServingKey, u8> =
    HashMap::pinned(MAX_BACKEND_SLOTS, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// The client ranges of frontends with `service_flags::SOURCE_RANGES`;
/// written by the agent only.
#[map(name = "SOURCE_RANGES")]
pub static SOURCE_RANGES: LpmTrie<SourceRangeKey, u8> =
    LpmTrie::pinned(MAX_SOURCE_RANGES, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// Both halves of every connection to a Service. LRU: connections nobody
/// uses any more give way to new ones without the agent's help.
#[map(name = "SERVICE_FLOWS")]
pub static SERVICE_FLOWS: LruHashMap<FlowKey, ServiceFlow> =
    LruHashMap::pinned(MAX_SERVICE_FLOWS, 0);

/// The backend each client of a frontend with session affinity sticks to.
/// LRU: clients gone quiet give way to new ones.
#[map(name = "AFFINITY")]
pub static AFFINITY: LruHashMap<AffinityKey, Affinity> = LruHashMap::pinned(MAX_AFFINITIES, 0);

/// Both directions of every frontend a socket of the node's namespace
/// addressed: keyed by the frontend, its backend; keyed by the backend, the
/// frontend. LRU: entries of closed sockets give way.
#[map(name = "SOCKET_FLOWS")]
pub static SOCKET_FLOWS: LruHashMap<SocketFlowKey, Backend> =
    LruHashMap::pinned(MAX_SOCKET_FLOWS, 0);

/// Programs from-uplink continues in (`bpf_tail_call`): `FROM_OUTSIDE_SLOT`.
/// Pinned, as the other maps: the kernel empties a program array nobody
/// in userspace holds, and the programs keep forwarding without the agent.
#[map(name = "TAIL_CALLS")]
pub static TAIL_CALLS: ProgramArray = ProgramArray::pinned(TAIL_CALL_SLOTS, 0);

/// Destinations outside the cluster that pods reach with their own address.
#[map(name = "NO_MASQUERADE")]
pub static NO_MASQUERADE: LpmTrie<Ipv4Octets, u8> =
    LpmTrie::pinned(MAX_NO_MASQUERADE, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// Every IPv4 address of the node itself (node IP, gateway addresses the
/// main CNI plugin put on host veths or a bridge, any other), kept current
/// by the agent: pods reach them through the host stack.
#[map(name = "HOST_ADDRESSES")]
pub static HOST_ADDRESSES: HashMap<Ipv4Octets, u8> = HashMap::pinned(MAX_HOST_ADDRESSES, 0);

/// The node's own IPv6 addresses, as `HOST_ADDRESSES` holds its IPv4 ones.
#[map(name = "HOST_ADDRESSES6")]
pub static HOST_ADDRESSES6: HashMap<Ipv6Octets, u8> = HashMap::pinned(MAX_HOST_ADDRESSES, 0);

/// Drop events for `dataplane monitor`; written only while it is enabled.
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::pinned(EVENTS_RING_BYTES, 0);

#[map(name = "MONITOR")]
pub static MONITOR: Array<MonitorConfig> = Array::pinned(1, 0);

#[map(name = "EVENT_BUDGET")]
pub static EVENT_BUDGET: PerCpuArray<EventBudget> = PerCpuArray::pinned(1, 0);

/// Every address's peer class, per table (see `policy.rs`); written by
/// the agent only.
#[map(name = "POLICY_CLASSES")]
pub static POLICY_CLASSES: LpmTrie<PolicyClassKey, u32> =
    LpmTrie::pinned(MAX_POLICY_CLASSES, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// Single addresses' classes, per table, looked up before the trie;
/// written by the agent only.
#[map(name = "POLICY_HOSTS")]
pub static POLICY_HOSTS: HashMap<PolicyClassKey, u32> = HashMap::pinned(MAX_POLICY_CLASSES, 0);

/// The local pods policy isolates, per table; written by the agent only.
#[map(name = "POLICY_SUBJECTS")]
pub static POLICY_SUBJECTS: HashMap<PolicySubjectKey, PolicySubject> =
    HashMap::pinned(MAX_ENDPOINTS, 0);

/// The local pods' IPv6 addresses and the directions no policy isolates
/// them in, per table; written by the agent only.
#[map(name = "POLICY_OPEN6")]
pub static POLICY_OPEN6: HashMap<PolicyOpenKey6, PolicyOpen6> = HashMap::pinned(MAX_ENDPOINTS, 0);

/// What the policies of those pods allow, single ports aside; written by
/// the agent only.
#[map(name = "POLICY_RULES")]
pub static POLICY_RULES: LpmTrie<PolicyRuleKey, u8> =
    LpmTrie::pinned(MAX_POLICY_RULES, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// What those pods' policies allow at single ports, looked up before the
/// trie; written by the agent only.
#[map(name = "POLICY_PORTS")]
pub static POLICY_PORTS: HashMap<PolicyRuleKey, u8> = HashMap::pinned(MAX_POLICY_RULES, 0);

/// Connections isolated pods were allowed. LRU: connections nobody uses
/// any more give way to new ones.
#[map(name = "POLICY_FLOWS")]
pub static POLICY_FLOWS: LruHashMap<FlowKey, PolicyFlow> = LruHashMap::pinned(MAX_POLICY_FLOWS, 0);

/// Each local pod's packets its policy dropped (per-pod metrics).
#[map(name = "POLICY_DROPS")]
pub static POLICY_DROPS: HashMap<Ipv4Octets, PolicyDrops> = HashMap::pinned(MAX_ENDPOINTS, 0);

/// Where a policy verdict keeps its keys (one per CPU; not pinned).
#[map(name = "POLICY_SCRATCH")]
pub static POLICY_SCRATCH: PerCpuArray<crate::policy::Scratch> =
    PerCpuArray::with_max_entries(1, 0);

#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<CounterValue> = PerCpuArray::pinned(Counter::COUNT, 0);

#[inline(always)]
pub fn endpoint(addr: &Ipv4Octets) -> Option<Endpoint> {
    // SAFETY: the value is copied out at once; the agent only replaces whole entries.
    unsafe { ENDPOINTS.get(addr).copied() }
}

#[inline(always)]
pub fn endpoint6(addr: &Ipv6Octets) -> Option<Endpoint> {
    // SAFETY: as for `endpoint`.
    unsafe { ENDPOINTS6.get(addr).copied() }
}

/// The MAC of the host veth `ifindex`, when a pod with IPv6 is behind it.
#[inline(always)]
pub fn host_veth_mac(ifindex: u32) -> Option<[u8; 6]> {
    // SAFETY: as for `endpoint`.
    unsafe { HOST_VETHS.get(ifindex).copied() }
}

/// The directions the local pod at `addr` is open in under the policy
/// table `table` (closed both ways when the agent wrote nothing for it).
#[inline(always)]
pub fn policy_open6(addr: Ipv6Octets, table: u8) -> PolicyOpen6 {
    let key = PolicyOpenKey6 {
        address: addr,
        table,
        _pad: [0; 3],
    };
    // SAFETY: copied out at once; the agent writes whole entries.
    unsafe { POLICY_OPEN6.get(key).copied() }.unwrap_or_default()
}

/// Whether `addr` is one of the node's own IPv6 addresses.
#[inline(always)]
pub fn is_host_address6(addr: &Ipv6Octets) -> bool {
    // SAFETY: only presence is read.
    unsafe { HOST_ADDRESSES6.get(addr).is_some() }
}

/// The node's settings, read in place: a copy would take 64 bytes of each
/// hook's scarce stack. All zero (nothing enabled) until the agent writes them.
#[inline(always)]
pub fn node_config() -> &'static NodeConfig {
    NODE_CONFIG.get(0).unwrap_or(&UNCONFIGURED)
}

// SAFETY: NodeConfig is integers and byte arrays: all zero is a value.
static UNCONFIGURED: NodeConfig = unsafe { core::mem::zeroed() };

/// The node whose pod CIDR holds `addr`, by longest prefix.
#[inline(always)]
pub fn node_route(addr: Ipv4Octets) -> Option<NodeRoute> {
    NODE_ROUTES.get(Key::new(32, addr)).copied()
}

/// The node whose IPv6 pod CIDR holds `addr`, by longest prefix.
#[inline(always)]
pub fn node_route6(addr: Ipv6Octets) -> Option<NodeRoute> {
    NODE_ROUTES6.get(Key::new(128, addr)).copied()
}

#[inline(always)]
pub fn remote_node(addr: &Ipv4Octets) -> Option<RemoteNode> {
    // SAFETY: as for `endpoint`.
    unsafe { REMOTE_NODES.get(addr).copied() }
}

/// Whether `addr` belongs to this node (the node IP always does).
#[inline(always)]
pub fn is_host_address(addr: &Ipv4Octets, config: &NodeConfig) -> bool {
    // SAFETY: only presence is read.
    *addr == config.node_ip || unsafe { HOST_ADDRESSES.get(addr).is_some() }
}

/// Whether frontend `service_id` gives new connections `backend`.
#[inline(always)]
pub fn is_serving(service_id: u32, backend: Backend) -> bool {
    let key = ServingKey {
        service_id,
        backend,
    };
    // SAFETY: only presence is read.
    unsafe { SERVING.get(key).is_some() }
}

/// Whether frontend `service_id` takes new connections from `client`.
#[inline(always)]
pub fn in_source_ranges(service_id: u32, client: Ipv4Octets) -> bool {
    let key = SourceRangeKey {
        service_id: service_id.to_be_bytes(),
        address: client,
    };
    SOURCE_RANGES.get(Key::new(64, key)).is_some()
}

#[inline(always)]
pub fn is_unmasqueraded(addr: Ipv4Octets) -> bool {
    NO_MASQUERADE.get(Key::new(32, addr)).is_some()
}
