//! The agent's local API: newline-delimited JSON over a Unix socket, used by
//! the CLI and the CNI plugin. Every line travels in an [`Envelope`] with
//! the protocol version; a peer speaking another version gets a clear error
//! instead of a misread request. Addresses, ports, protocols and counters are
//! typed here, and listings and the monitor stream are filtered by the agent.

mod client;
mod wire;

use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};

use ipnetwork::Ipv4Network;
use macaddr::MacAddr6;
use serde::{Deserialize, Serialize};
use serde_with::{DisplayFromStr, serde_as};

pub use client::{call, stream};
pub use wire::{CounterName, IpProtocol};

use crate::model::{
    EndpointSpec, Frontend, HostInterface, NodePath, NodeSpec, Routing, ServiceSpec, Source,
    family::AnyFamily,
};

/// The version of this protocol. 1 was the unversioned protocol before it.
pub const API_VERSION: u32 = 2;

/// One line on the socket: a request or a response with the version its
/// sender speaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub version: u32,
    #[serde(flatten)]
    pub body: T,
}

impl<T> Envelope<T> {
    pub fn new(body: T) -> Self {
        Self {
            version: API_VERSION,
            body,
        }
    }
}

/// Reads a line as an envelope of `T`, refusing another protocol version
/// before looking at the body (whose shape may differ between versions).
pub fn decode<T: for<'de> Deserialize<'de>>(line: &[u8]) -> Result<T, String> {
    #[derive(Deserialize)]
    struct VersionOnly {
        version: Option<u32>,
    }
    let version = serde_json::from_slice::<VersionOnly>(line)
        .map_err(|error| format!("malformed line: {error}"))?
        .version
        .unwrap_or(1);
    if version != API_VERSION {
        return Err(format!(
            "API version mismatch: this side speaks version {API_VERSION}, the other sent \
             version {version}; use the dataplane and dataplane-cni binaries of one release"
        ));
    }
    serde_json::from_slice::<Envelope<T>>(line)
        .map(|envelope| envelope.body)
        .map_err(|error| format!("malformed line: {error}"))
}

#[serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    AddEndpoint {
        endpoint: EndpointSpec,
    },
    RemoveEndpoint {
        #[serde_as(as = "AnyFamily")]
        ip: Ipv4Addr,
        /// Only while `ip` is registered behind this host veth.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        host_ifindex: Option<u32>,
    },
    /// Registered pods; with `address`, only that pod.
    ListEndpoints {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        address: Option<IpAddr>,
    },
    Counters,
    AddNode {
        node: NodeSpec,
    },
    RemoveNode {
        #[serde_as(as = "AnyFamily")]
        ip: Ipv4Addr,
    },
    /// Remote nodes; with `address`, only that node.
    ListNodes {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        address: Option<IpAddr>,
    },
    Status,
    /// Tracked connections; with `address`, those of the pod, node address
    /// or remote with that IP.
    ListNat {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        address: Option<IpAddr>,
    },
    /// Streams drop events (and forwarded packets with `traces`) that pass
    /// `filter`, one `Response::Event` per line, until disconnected.
    Monitor {
        #[serde(default)]
        traces: bool,
        #[serde(default)]
        filter: PacketFilter,
    },
    /// Removes every tracked connection (they start afresh on their next packet).
    FlushNat,
    /// Adds a Service, or replaces the one of that name.
    AddService {
        service: ServiceSpec,
    },
    /// Removes a Service, whichever source listed it.
    RemoveService {
        name: String,
    },
    /// Services as the sources list them; with `address`, those with that IP.
    ListServices {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        address: Option<IpAddr>,
    },
    /// The Service frontends and backend slots as the maps hold them.
    ListServiceMaps,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum Response {
    /// The request was applied; `changed` is false when there was nothing to do.
    Done {
        changed: bool,
    },
    Endpoints {
        endpoints: Vec<EndpointEntry>,
    },
    Counters {
        counters: Vec<CounterEntry>,
    },
    Nodes {
        nodes: Vec<NodeEntry>,
    },
    Status {
        status: Box<Status>,
    },
    Nat {
        connections: Vec<Connection>,
        /// Each pod's share of the table, and what it was refused.
        pods: Vec<PodNatUsage>,
    },
    Event {
        event: PacketReport,
    },
    Services {
        services: Vec<ServiceEntry>,
    },
    ServiceMaps {
        frontends: Vec<FrontendEntry>,
        /// Halves of connections to Services the programs track.
        connection_entries: usize,
    },
    Error {
        message: String,
        /// What kind of failure it is (agents before it was added: failed).
        #[serde(default)]
        kind: ErrorKind,
    },
}

/// What kind of failure an error is, for clients to act on: the CNI plugin
/// gives each its own CNI code.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request breaks a rule (a field and its problem); sending it
    /// again will not help.
    Refused,
    /// A map is full: it may succeed once entries go.
    Full,
    /// The agent cannot answer now (its state owner has stopped).
    Unavailable,
    /// Anything else went wrong (a map write, netlink).
    #[default]
    Failed,
}

impl Response {
    /// An error response of `kind`.
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self::Error {
            message: message.into(),
            kind,
        }
    }
}

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
}

impl PacketReport {
    /// `None` for a reason this build does not know (a program from another
    /// build still attached).
    pub fn from_event(event: &dataplane_common::PacketEvent) -> Option<Self> {
        let counter = dataplane_common::Counter::from_index(event.reason)?;
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
        })
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
    pub pod_cidr: Option<Ipv4Network>,
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
    pub ip: Ipv4Addr,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_versioned_tagged_json() {
        let request = Request::AddEndpoint {
            endpoint: EndpointSpec {
                ip: Ipv4Addr::new(10, 244, 0, 2),
                interface: HostInterface::Index(7),
                mac: "02:00:00:00:00:01".parse().unwrap(),
            },
        };
        let json = serde_json::to_string(&Envelope::new(request.clone())).unwrap();
        assert!(json.contains(r#""version":2"#), "{json}");
        assert!(json.contains(r#""request":"add_endpoint""#), "{json}");
        assert!(json.contains(r#""interface":7"#), "{json}");
        assert!(json.contains(r#""mac":"02:00:00:00:00:01""#), "{json}");
        assert_eq!(decode::<Request>(json.as_bytes()).unwrap(), request);
    }

    #[test]
    fn another_version_is_refused_before_its_body_is_read() {
        let unversioned = br#"{"request":"list_endpoints"}"#;
        let error = decode::<Request>(unversioned).unwrap_err();
        assert!(error.contains("sent version 1"), "{error}");
        let future = br#"{"version":3,"request":"something_new"}"#;
        let error = decode::<Request>(future).unwrap_err();
        assert!(error.contains("sent version 3"), "{error}");
        assert!(decode::<Request>(b"not json").is_err());
    }

    #[test]
    fn packet_filter_matches_on_every_field_it_names() {
        let event = PacketReport {
            reason: CounterName(dataplane_common::Counter::DropSpoofedSource),
            drop: true,
            ifindex: 9,
            protocol: IpProtocol(6),
            source: Ipv4Addr::new(10, 244, 0, 99),
            source_port: Some(40000),
            destination: Ipv4Addr::new(10, 244, 0, 3),
            destination_port: Some(80),
        };
        assert!(PacketFilter::default().admits(&event));
        let by = |filter: PacketFilter| filter.admits(&event);
        assert!(by(PacketFilter {
            addresses: vec![Ipv4Addr::new(10, 244, 0, 3).into()],
            ports: vec![80],
            interfaces: vec![HostInterface::Index(9)],
            reasons: vec!["drop_spoofed_source".parse().unwrap()],
        }));
        assert!(!by(PacketFilter {
            addresses: vec![Ipv4Addr::new(10, 244, 0, 4).into()],
            ..Default::default()
        }));
        assert!(!by(PacketFilter {
            ports: vec![443],
            ..Default::default()
        }));
        assert!(!by(PacketFilter {
            interfaces: vec![HostInterface::Index(10)],
            ..Default::default()
        }));
        assert!(!by(PacketFilter {
            reasons: vec!["drop_malformed".parse().unwrap()],
            ..Default::default()
        }));
    }
}
