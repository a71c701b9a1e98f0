//! The agent's local API: newline-delimited JSON over a Unix socket, used by
//! the CLI and the CNI plugin. Every line travels in an [`Envelope`] with
//! the protocol version; a peer speaking another version gets a clear error
//! instead of a misread request. Addresses, ports, protocols and counters are
//! typed here, and listings and the monitor stream are filtered by the agent.

mod client;
mod reports;
mod wire;

use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};
use serde_with::serde_as;

pub use client::{call, stream};
pub use reports::{
    Connection, ConnectionState, CounterEntry, EndpointEntry, FrontendEntry, MapFill, NodeEntry,
    PacketFilter, PacketReport, PodNatUsage, PodPolicies, PolicyReport, ServiceEntry, Status,
};
pub use wire::{CounterName, IpProtocol};

use crate::model::{
    EndpointSpec, NodeSpec, ServiceSpec,
    family::AnyFamily,
    policy::{PolicyProtocol, Verdict},
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
        ip: IpAddr,
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
    /// This node's pods and the NetworkPolicies isolating them.
    ListPolicies,
    /// The verdict NetworkPolicy gives a new connection (to a backend:
    /// policy judges after Service translation).
    ExplainPolicy {
        from: IpAddr,
        to: IpAddr,
        protocol: PolicyProtocol,
        port: u16,
    },
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
    Policies {
        report: PolicyReport,
    },
    PolicyVerdict {
        verdict: Verdict,
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

#[cfg(test)]
mod tests;
