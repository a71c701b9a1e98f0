//! Types shared by the eBPF programs and the userspace agent.
//!
//! Every map key and value is defined here once, `#[repr(C)]` with explicit
//! padding, so both sides agree on the layout byte for byte.
#![no_std]

/// Bumped whenever a map's key/value layout or meaning changes. The agent pins
/// maps under `<bpf root>/v<MAP_LAYOUT_VERSION>`, so maps of an older layout are
/// never silently reused by newer programs.
pub const MAP_LAYOUT_VERSION: u32 = 1;

/// Map and program names as they appear in the eBPF object.
pub mod names {
    pub const ENDPOINTS_MAP: &str = "ENDPOINTS";
    pub const NODE_CONFIG_MAP: &str = "NODE_CONFIG";
    pub const COUNTERS_MAP: &str = "COUNTERS";
    pub const FROM_POD_PROGRAM: &str = "from_pod";
}

/// Capacity of the endpoints map (pods on one node, with ample headroom).
pub const MAX_ENDPOINTS: u32 = 65_536;

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

/// Settings of the local node, stored at index 0 of the node config array.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct NodeConfig {
    /// This node's pod CIDR; addresses inside it that are not endpoints are
    /// dropped instead of handed to the host stack.
    pub pod_cidr: Ipv4Octets,
    /// Prefix length of `pod_cidr`; 0 means no pod CIDR is configured.
    pub pod_cidr_prefix_len: u8,
    pub _pad: [u8; 3],
}

impl NodeConfig {
    /// Whether `addr` lies in this node's pod CIDR.
    #[inline(always)]
    pub fn in_pod_cidr(&self, addr: Ipv4Octets) -> bool {
        let len = self.pod_cidr_prefix_len;
        if len == 0 || len > 32 {
            return false;
        }
        let mask = u32::MAX << (32 - u32::from(len));
        (u32::from_be_bytes(addr) ^ u32::from_be_bytes(self.pod_cidr)) & mask == 0
    }
}

/// Packets and bytes seen by one counter on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct CounterValue {
    pub packets: u64,
    pub bytes: u64,
}

/// Index into the per-CPU counters array: one slot per path and drop reason.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// ARP request from a pod answered with its host veth MAC.
    ArpReplied = 0,
    /// Pod-to-pod on this node, redirected into the destination pod.
    ForwardedLocal = 1,
    /// Handed to the host stack (destination not handled by the dataplane).
    PassedToHost = 2,
    /// Source address is not the endpoint's own IP on its own veth.
    DropSpoofedSource = 3,
    /// Destination in the local pod CIDR without a registered endpoint.
    DropUnknownEndpoint = 4,
    /// TTL would reach zero on forwarding.
    DropTtlExceeded = 5,
    /// Truncated or malformed header.
    DropMalformed = 6,
    /// ARP that is not a request we answer (from an unknown sender, not IPv4
    /// over Ethernet, or for the sender's own address).
    DropArpIgnored = 7,
    /// The endpoint's veth no longer exists (pod deleted, map not yet updated).
    DropStaleEndpoint = 8,
}

impl Counter {
    pub const COUNT: u32 = 9;

    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::ArpReplied,
        Counter::ForwardedLocal,
        Counter::PassedToHost,
        Counter::DropSpoofedSource,
        Counter::DropUnknownEndpoint,
        Counter::DropTtlExceeded,
        Counter::DropMalformed,
        Counter::DropArpIgnored,
        Counter::DropStaleEndpoint,
    ];

    /// Stable name used by the CLI, logs and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::ArpReplied => "arp_replied",
            Counter::ForwardedLocal => "forwarded_local",
            Counter::PassedToHost => "passed_to_host",
            Counter::DropSpoofedSource => "drop_spoofed_source",
            Counter::DropUnknownEndpoint => "drop_unknown_endpoint",
            Counter::DropTtlExceeded => "drop_ttl_exceeded",
            Counter::DropMalformed => "drop_malformed",
            Counter::DropArpIgnored => "drop_arp_ignored",
            Counter::DropStaleEndpoint => "drop_stale_endpoint",
        }
    }

    pub const fn is_drop(self) -> bool {
        matches!(
            self,
            Counter::DropSpoofedSource
                | Counter::DropUnknownEndpoint
                | Counter::DropTtlExceeded
                | Counter::DropMalformed
                | Counter::DropArpIgnored
                | Counter::DropStaleEndpoint
        )
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all three are #[repr(C)] structs of integers and byte arrays with
    // no implicit padding (bytemuck::Pod derive checks this at compile time).
    unsafe impl aya::Pod for super::Endpoint {}
    unsafe impl aya::Pod for super::NodeConfig {}
    unsafe impl aya::Pod for super::CounterValue {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_table_is_indexed_by_discriminant() {
        for (index, counter) in Counter::ALL.iter().enumerate() {
            assert_eq!(*counter as usize, index);
        }
    }

    #[test]
    fn pod_cidr_membership() {
        let node = NodeConfig {
            pod_cidr: [10, 244, 1, 0],
            pod_cidr_prefix_len: 24,
            _pad: [0; 3],
        };
        assert!(node.in_pod_cidr([10, 244, 1, 7]));
        assert!(!node.in_pod_cidr([10, 244, 2, 7]));
        let whole = NodeConfig {
            pod_cidr_prefix_len: 32,
            ..node
        };
        assert!(whole.in_pod_cidr([10, 244, 1, 0]));
        assert!(!whole.in_pod_cidr([10, 244, 1, 1]));
        assert!(!NodeConfig::default().in_pod_cidr([10, 244, 1, 7]));
    }

    #[test]
    fn layouts_have_no_hidden_padding() {
        assert_eq!(core::mem::size_of::<Endpoint>(), 16);
        assert_eq!(core::mem::size_of::<NodeConfig>(), 8);
        assert_eq!(core::mem::size_of::<CounterValue>(), 16);
    }
}
