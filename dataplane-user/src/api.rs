//! The agent's local API: newline-delimited JSON over a Unix socket, used by
//! the CLI and the CNI plugin.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::Ipv4Addr,
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use anyhow::Context as _;
use ipnetwork::Ipv4Network;
use macaddr::MacAddr6;
use serde::{Deserialize, Serialize};
use serde_with::{DisplayFromStr, serde_as};

use crate::{
    model::{EndpointSpec, NodeSpec},
    nat::Connection,
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    AddEndpoint {
        endpoint: EndpointSpec,
    },
    RemoveEndpoint {
        ip: Ipv4Addr,
        /// Only while `ip` is registered behind this host veth.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        host_ifindex: Option<u32>,
    },
    ListEndpoints,
    Counters,
    AddNode {
        node: NodeSpec,
    },
    RemoveNode {
        ip: Ipv4Addr,
    },
    ListNodes,
    Status,
    ListNat,
    /// Streams drop events (and forwarded packets with `traces`), one
    /// `Response::Event` per line, until disconnected.
    Monitor {
        #[serde(default)]
        traces: bool,
    },
    /// Removes every tracked connection (they start afresh on their next packet).
    FlushNat,
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
        nodes: Vec<NodeSpec>,
    },
    Status {
        status: Status,
    },
    Nat {
        connections: Vec<Connection>,
    },
    Event {
        event: PacketReport,
    },
    Error {
        message: String,
    },
}

/// A dropped (or traced) packet, for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PacketReport {
    /// The drop reason, or the path a traced packet took.
    pub reason: String,
    pub drop: bool,
    pub ifindex: u32,
    pub protocol: u8,
    pub source: String,
    pub destination: String,
}

impl PacketReport {
    pub fn from_event(event: &dataplane_common::PacketEvent) -> Self {
        let endpoint = |addr: [u8; 4], port: [u8; 2]| {
            let port = u16::from_be_bytes(port);
            if port == 0 {
                Ipv4Addr::from(addr).to_string()
            } else {
                format!("{}:{port}", Ipv4Addr::from(addr))
            }
        };
        let counter = dataplane_common::Counter::from_index(event.reason);
        Self {
            reason: counter.map_or_else(
                || format!("reason {}", event.reason),
                |counter| counter.name().to_string(),
            ),
            drop: counter.is_none_or(|counter| counter.is_drop()),
            ifindex: event.ifindex,
            protocol: event.protocol,
            source: endpoint(event.src, event.src_port),
            destination: endpoint(event.dst, event.dst_port),
        }
    }
}

/// Sends `request` and hands every answer line to `each` until the agent
/// closes the connection or `each` returns false.
pub fn stream(
    socket: &Path,
    request: &Request,
    mut each: impl FnMut(Response) -> bool,
) -> anyhow::Result<()> {
    let stream = UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot reach the dataplane agent at {} (is `dataplane agent` running?)",
            socket.display()
        )
    })?;
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    (&stream).write_all(line.as_bytes())?;
    for answer in BufReader::new(&stream).lines() {
        let answer = answer.context("reading from the agent")?;
        let response = serde_json::from_str(&answer)
            .with_context(|| format!("malformed answer: {answer:?}"))?;
        if !each(response) {
            break;
        }
    }
    Ok(())
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
    /// MTU pods must use so their packets fit the tunnel (uplink MTU - 50).
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterEntry {
    pub name: String,
    pub drop: bool,
    pub packets: u64,
    pub bytes: u64,
}

/// Sends one request to the agent listening on `socket` and waits for its answer.
pub fn call(socket: &Path, request: &Request) -> anyhow::Result<Response> {
    let stream = UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot reach the dataplane agent at {} (is `dataplane agent` running?)",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    (&stream)
        .write_all(line.as_bytes())
        .context("sending the request to the agent")?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .context("reading the agent's answer")?;
    serde_json::from_str(&answer)
        .with_context(|| format!("malformed answer from the agent: {answer:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_tagged_json() {
        let request = Request::AddEndpoint {
            endpoint: EndpointSpec {
                ip: Ipv4Addr::new(10, 244, 0, 2),
                interface: "veth0".into(),
                mac: "02:00:00:00:00:01".parse().unwrap(),
            },
        };
        let json = serde_json::to_string(&request).unwrap();
        assert!(json.contains(r#""request":"add_endpoint""#), "{json}");
        assert!(json.contains(r#""mac":"02:00:00:00:00:01""#), "{json}");
        assert_eq!(serde_json::from_str::<Request>(&json).unwrap(), request);
    }
}
