//! This node and the others: endpoints (pods), remote nodes and their
//! routes, the node's own config the programs read.

use crate::{Ipv4Octets, Ipv6Octets};

/// Capacity of the endpoints map (pods on one node, with ample headroom).
pub const MAX_ENDPOINTS: u32 = 65_536;

/// Capacity of the remote node maps (nodes in one cluster).
pub const MAX_REMOTE_NODES: u32 = 16_384;

/// Capacity of the non-masquerade CIDR list.
pub const MAX_NO_MASQUERADE: u32 = 1024;

/// Capacity of the node's own address set (every IPv4 address of every
/// interface; kube-proxy's IPVS mode alone puts one per Service on a node).
pub const MAX_HOST_ADDRESSES: u32 = 16_384;

/// Bytes VXLAN over IPv4 adds to every packet: outer IPv4 (20) + UDP (8) +
/// VXLAN (8) + inner Ethernet (14).
pub const VXLAN_OVERHEAD: u32 = 50;

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

/// A prefix of either family (`N` octets of address); `prefix_len` 0 with
/// `is_set` 0 means "not configured".
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr<const N: usize> {
    pub addr: [u8; N],
    pub prefix_len: u8,
    pub is_set: u8,
    pub _pad: [u8; 2],
}

/// An IPv4 prefix.
pub type Ipv4Cidr = Cidr<4>;

/// An IPv6 prefix.
pub type Ipv6Cidr = Cidr<16>;

// SAFETY: #[repr(C)], alignment 1 and no padding: plain bytes.
#[cfg(feature = "user")]
unsafe impl<const N: usize> bytemuck::Zeroable for Cidr<N> {}
// SAFETY: as above; every bit pattern is a value.
#[cfg(feature = "user")]
unsafe impl<const N: usize> bytemuck::Pod for Cidr<N> {}

impl<const N: usize> Default for Cidr<N> {
    fn default() -> Self {
        Self {
            addr: [0; N],
            prefix_len: 0,
            is_set: 0,
            _pad: [0; 2],
        }
    }
}

impl<const N: usize> Cidr<N> {
    pub const fn new(addr: [u8; N], prefix_len: u8) -> Self {
        Self {
            addr,
            prefix_len,
            is_set: 1,
            _pad: [0; 2],
        }
    }

    /// Whether `addr` lies inside this prefix (never, when not configured).
    #[inline(always)]
    pub fn contains(&self, addr: [u8; N]) -> bool {
        if self.is_set == 0 || usize::from(self.prefix_len) > N * 8 {
            return false;
        }
        // IPv4's in one word, as the hot paths want it.
        if let (Ok(addr), Ok(base)) = (
            <[u8; 4]>::try_from(&addr[..]),
            <[u8; 4]>::try_from(&self.addr[..]),
        ) {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(self.prefix_len))
                .unwrap_or(0);
            return (u32::from_be_bytes(addr) ^ u32::from_be_bytes(base)) & mask == 0;
        }
        let mut index = 0;
        while index < N {
            let bits = usize::from(self.prefix_len)
                .saturating_sub(index * 8)
                .min(8);
            let mask = (0xff00_u16 >> bits) as u8;
            if (addr[index] ^ self.addr[index]) & mask != 0 {
                return false;
            }
            index += 1;
        }
        true
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
    /// 1 when a NetworkPolicy isolates a pod of this node: pods' packets
    /// are then checked against `POLICY_SUBJECTS`.
    pub policy: u8,
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
    /// Changed with every change of policy: connections allowed under an
    /// earlier one are judged again on their next packet.
    pub policy_generation: u32,
    /// The node's IPv6 address the ICMPv6 errors it sends as a router come
    /// from (all zero: it has none, and sends none).
    pub node_ipv6: Ipv6Octets,
    /// This node's IPv6 pod CIDR: addresses inside it that are no endpoint
    /// are dropped.
    pub pod_cidr6: Ipv6Cidr,
    /// The uplink's MAC: the source of IPv6 frames sent directly to a node
    /// (no neighbour lookup by an IPv4 next hop can address them).
    pub uplink_mac: [u8; 6],
    pub _pad_tail: [u8; 6],
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
