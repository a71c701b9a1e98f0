//! What the agent reports: packets for the monitor and their filter, the
//! node's status, and the entries of each listing.

use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};

use ipnetwork::Ipv4Network;
use macaddr::MacAddr6;
use serde::{Deserialize, Serialize};
use serde_with::{DisplayFromStr, serde_as};

use super::{CounterName, IpProtocol};
use crate::model::{
    Frontend, HostInterface, NodePath, Routing, ServiceSpec, Source,
    policy::{Direction, PolicyWorld},
};
use dataplane_common::Counter;

/// A dropped (or traced) packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PacketReport {
    /// The drop reason, or the path a traced packet took.
    pub reason: CounterName,
    pub drop: bool,
    pub ifindex: u32,
    pub protocol: IpProtocol,
    pub source: Ipv4Addr,
    /// TCP and UDP only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_port: Option<u16>,
    pub destination: Ipv4Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_port: Option<u16>,
    /// For a NetworkPolicy drop: the pod whose policy dropped it, as the
    /// agent knew it when the drop was reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyDrop>,
}

/// The pod a NetworkPolicy drop was judged for ("namespace/name") and the
/// policies isolating it in that direction: none of them allowed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyDrop {
    pub pod: String,
    pub isolated_by: Vec<String>,
}

impl PacketReport {
    /// `None` for a reason this build does not know (a program from another
    /// build still attached).
    pub fn from_event(event: &dataplane_common::PacketEvent) -> Option<Self> {
        let counter = Counter::from_index(event.reason)?;
        let port = |port: [u8; 2]| Some(u16::from_be_bytes(port)).filter(|port| *port != 0);
        Some(Self {
            reason: CounterName(counter),
            drop: counter.is_drop(),
            ifindex: event.ifindex,
            protocol: IpProtocol(event.protocol),
            source: event.src.into(),
            source_port: port(event.src_port),
            destination: event.dst.into(),
            destination_port: port(event.dst_port),
            policy: None,
        })
    }

    /// Names the pod and the policies behind a NetworkPolicy drop (left
    /// as it is for any other report, or a pod `world` does not know).
    pub fn with_policy(mut self, world: &PolicyWorld) -> Self {
        let (pod, direction) = match self.reason.0 {
            Counter::DropPolicyIngress => (self.destination, Direction::Ingress),
            Counter::DropPolicyEgress => (self.source, Direction::Egress),
            _ => return self,
        };
        self.policy = world
            .isolation_of(IpAddr::V4(pod), direction)
            .map(|(pod, isolated_by)| PolicyDrop { pod, isolated_by });
        self
    }
}

/// Which packet events a monitor client wants; an empty list admits all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PacketFilter {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<CounterName>,
    /// Source or destination.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<IpAddr>,
    /// Source or destination port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    /// The interface the program saw the packet on; names are resolved by
    /// the agent, in its network namespace, when the stream starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<HostInterface>,
}

impl PacketFilter {
    pub fn admits(&self, event: &PacketReport) -> bool {
        (self.reasons.is_empty() || self.reasons.contains(&event.reason))
            && (self.addresses.is_empty()
                || self.addresses.contains(&event.source.into())
                || self.addresses.contains(&event.destination.into()))
            && (self.ports.is_empty()
                || [event.source_port, event.destination_port]
                    .into_iter()
                    .flatten()
                    .any(|port| self.ports.contains(&port)))
            && (self.interfaces.is_empty()
                || self
                    .interfaces
                    .contains(&HostInterface::Index(event.ifindex)))
    }
}

/// The node's settings as the agent applied them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub node_ip: Option<Ipv4Addr>,
    /// The source of the ICMPv6 errors the node sends pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_ipv6: Option<std::net::Ipv6Addr>,
    pub pod_cidr: Option<Ipv4Network>,
    /// The IPv6 pod CIDR (dual stack): the CNI plugin registers pods'
    /// IPv6 addresses in it, and refuses the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr_ipv6: Option<ipnetwork::Ipv6Network>,
    pub cluster_cidr: Option<Ipv4Network>,
    pub uplink: Option<String>,
    pub tunnel_interface: Option<String>,
    pub vni: u32,
    pub vxlan_port: u16,
    /// How pod packets reach other nodes (`node.routing`).
    pub routing: Routing,
    /// Remote nodes reached unencapsulated, and through the tunnel.
    pub direct_nodes: usize,
    pub tunnelled_nodes: usize,
    /// MTU pods must use: the smallest of the paths this node sends on
    /// (the uplink's MTU direct, 50 bytes less through the tunnel).
    pub pod_mtu: Option<u32>,
    pub endpoints: usize,
    pub remote_nodes: usize,
    /// Whether pod traffic leaving the cluster is masqueraded to the node IP.
    pub masquerade: bool,
    pub nat_port_range: Option<String>,
    /// NAT table entries (two per connection) at the last garbage collection.
    pub nat_entries: usize,
    pub nat_capacity: usize,
    pub nat_expired_total: u64,
    /// `program on interface (direction)`, for every attachment.
    pub attachments: Vec<String>,
    /// Fill level of the maps that grow.
    pub maps: Vec<MapFill>,
    /// Where nodes and endpoints come from.
    pub sources: Vec<String>,
    pub uptime_seconds: u64,
    /// Seconds since the node map was last reconciled with a source.
    pub last_reconcile_seconds_ago: u64,
    /// How NetworkPolicy stands (none without a policy source).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapFill {
    pub name: String,
    pub entries: usize,
    pub capacity: usize,
}

/// A remote node as programmed, and how it is reached.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    pub ip: Ipv4Addr,
    pub pod_cidr: Ipv4Network,
    /// Its IPv6 pod CIDR (dual stack).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr_ipv6: Option<ipnetwork::Ipv6Network>,
    pub path: NodePath,
    /// Nodes on the uplink's network: the MAC learned for it from the
    /// neighbour table, which its unencapsulated packets must come from
    /// (`None`: not learned yet, or a node behind a router).
    #[serde_as(as = "Option<DisplayFromStr>")]
    pub mac: Option<MacAddr6>,
    /// How often the neighbour table gave it another MAC since the agent
    /// started (a node replaced, or a forged ARP reply).
    #[serde(default)]
    pub mac_changes: u64,
}

#[serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointEntry {
    pub ip: IpAddr,
    pub host_ifindex: u32,
    /// Name of the host veth; `None` if it no longer exists.
    pub interface: Option<String>,
    #[serde_as(as = "DisplayFromStr")]
    pub pod_mac: MacAddr6,
    #[serde_as(as = "DisplayFromStr")]
    pub host_mac: MacAddr6,
    /// Whether the from-pod program is attached to the host veth.
    pub attached: bool,
}

/// A Service and the source that lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEntry {
    pub source: Source,
    pub service: ServiceSpec,
    /// Frontends of the Service another (older) Service is served at,
    /// each with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shadowed: Vec<String>,
    /// Why the Service is not programmed at all (it breaks a rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// A frontend as the Service maps hold it: its id and backends by slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrontendEntry {
    pub frontend: Frontend,
    pub id: u32,
    pub backends: Vec<SocketAddrV4>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterEntry {
    pub name: CounterName,
    pub drop: bool,
    pub packets: u64,
    pub bytes: u64,
}

/// One pod's share of the NAT table (or all outside clients' of Services,
/// `pod` 0.0.0.0): what it holds against its limit, and what it was refused
/// or had evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNatUsage {
    pub pod: Ipv4Addr,
    pub connections: u64,
    pub limit: u64,
    pub opened: u64,
    /// Never established, removed to make room when the table or the ports
    /// toward a destination were full.
    pub evicted: u64,
    /// Refused: the pod held its share of the table.
    pub refused_share: u64,
    /// Refused: no free port in the pod's share toward the destination.
    pub refused_ports: u64,
    /// Refused: the table was full and nothing could be evicted.
    pub refused_full: u64,
}

impl PodNatUsage {
    /// Who the row is: a pod's address, or `outside` for all outside clients.
    pub fn holder(&self) -> String {
        if self.pod.octets() == dataplane_common::OUTSIDE_CLIENTS {
            "outside".to_owned()
        } else {
            self.pod.to_string()
        }
    }
}

/// A masqueraded connection, from its pod's side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connection {
    pub protocol: IpProtocol,
    pub pod: SocketAddrV4,
    /// The node address and port the pod's side is translated to.
    pub node: SocketAddrV4,
    pub remote: SocketAddrV4,
    pub state: ConnectionState,
    pub idle_seconds: u64,
}

impl Connection {
    pub fn involves(&self, address: IpAddr) -> bool {
        [self.pod, self.node, self.remote]
            .iter()
            .any(|end| IpAddr::V4(*end.ip()) == address)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionState {
    New,
    /// The other side answered, the opener has not spoken since (half open).
    Answered,
    Established,
    Closing,
}

impl std::fmt::Display for ConnectionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConnectionState::New => "new",
            ConnectionState::Answered => "answered",
            ConnectionState::Established => "established",
            ConnectionState::Closing => "closing",
        })
    }
}

/// One of this node's pods and the NetworkPolicies isolating it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodPolicies {
    pub ip: IpAddr,
    /// "namespace/name"; none when the policy source does not know the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The policies isolating it in each direction ("namespace/name"), and
    /// their rules for that direction.
    pub ingress: Vec<String>,
    pub ingress_rules: usize,
    pub egress: Vec<String>,
    pub egress_rules: usize,
    /// Whether the programs isolate it (it is in the policy table they read).
    #[serde(default)]
    pub programmed: bool,
}

/// `policy list`: this node's pods, the policies refused (name, reason),
/// whether the programs enforce them (once the source has listed
/// everything), and the pods whose policy is not in the maps whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyReport {
    pub pods: Vec<PodPolicies>,
    pub refused: Vec<(String, String)>,
    pub enforced: bool,
    /// Changed at every switch of the policy table the programs read.
    #[serde(default)]
    pub generation: u32,
    /// They deny what their policy's missing entries would allow.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partial: Vec<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}
