//! The agent's configuration file (TOML): the settings (`Config`), read
//! whole and checked whole (`validate.rs`) before anything is applied. The
//! reference with a complete example is `docs/configuration.md`, whose
//! example a test parses.

use std::{
    collections::HashMap,
    io::Read as _,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use ipnetwork::{Ipv4Network, Ipv6Network};
use serde::{Deserialize, Serialize};
use serde_with::serde_as;

use crate::model::{
    EndpointSpec, LocalFacts, NodeSet, NodeSpec, PeerMacs, PodCidrs, Routing, ServiceSpec,
    Services, Source, family::AnyFamily, host_bits_problem, not_a_unicast_address,
    validate_endpoint,
};

pub const DEFAULT_API_SOCKET: &str = "/run/dataplane/agent.sock";

/// The largest config file read: 16 MiB holds tens of thousands of nodes
/// and Services (the file is reread on every change).
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;
pub const DEFAULT_BPF_ROOT: &str = "/sys/fs/bpf/dataplane";

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub agent: AgentSettings,
    #[serde(default)]
    pub node: NodeSettings,
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
    #[serde(default)]
    pub nodes: Vec<NodeSpec>,
    #[serde(default)]
    pub nat: NatSettings,
    #[serde(default)]
    pub kubernetes: KubernetesSettings,
    #[serde(default)]
    pub services: Vec<ServiceSpec>,
}

/// Nodes and pod CIDRs from the Kubernetes API (`Node.spec.podCIDR(s)` and
/// the InternalIP), through the usual in-cluster or KUBECONFIG credentials.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesSettings {
    pub enabled: bool,
    /// This node's name; by default $NODE_NAME (the downward API), else the hostname.
    pub node_name: Option<String>,
}

/// Egress SNAT to the node IP for pod traffic leaving the cluster.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatSettings {
    /// Masquerade pod traffic to destinations outside the cluster.
    pub masquerade: bool,
    /// Source ports (and ICMP echo identifiers) SNAT uses; must not overlap
    /// the node's net.ipv4.ip_local_port_range.
    pub port_range: PortRange,
    /// Destinations reached with the pod's own address (like ip-masq-agent).
    #[serde_as(as = "Vec<AnyFamily>")]
    pub no_masquerade_cidrs: Vec<Ipv4Network>,
    pub tcp_new_timeout_seconds: u64,
    pub tcp_established_timeout_seconds: u64,
    pub tcp_closing_timeout_seconds: u64,
    pub udp_timeout_seconds: u64,
    pub icmp_timeout_seconds: u64,
    /// How often expired connections are removed from the NAT table.
    pub gc_interval_seconds: u64,
    /// The share of the SNAT ports toward one destination one pod may use
    /// (which ones depends on the pod), in percent. 90 by default: the
    /// others keep a tenth, and one busy pod loses little (at 50, the
    /// benchmark's single pod opening connections to one server lost two
    /// thirds of its rate).
    pub pod_port_share_percent: u8,
    /// The share of the NAT table one pod may hold, in percent.
    pub pod_table_share_percent: u8,
}

impl NatSettings {
    /// Of every `PORT_SHARE_WHOLE` ports, how many one pod may use.
    pub fn pod_port_share(&self) -> u32 {
        u32::from(self.pod_port_share_percent) * dataplane_common::PORT_SHARE_WHOLE / 100
    }

    /// Connections one pod may hold.
    pub fn pod_connection_limit(&self) -> u32 {
        let connections = u64::from(dataplane_common::MAX_NAT_CONNECTIONS);
        (connections * u64::from(self.pod_table_share_percent) / 100) as u32
    }

    fn validate(&self) -> Result<(), (String, String)> {
        for (name, percent) in [
            ("pod_port_share_percent", self.pod_port_share_percent),
            ("pod_table_share_percent", self.pod_table_share_percent),
        ] {
            if !(1..=100).contains(&percent) {
                return Err((format!("nat.{name}"), "must be between 1 and 100".into()));
            }
        }
        Ok(())
    }
}

impl Default for NatSettings {
    fn default() -> Self {
        Self {
            masquerade: true,
            port_range: PortRange {
                min: 61000,
                max: 65535,
            },
            no_masquerade_cidrs: Vec::new(),
            tcp_new_timeout_seconds: 60,
            tcp_established_timeout_seconds: 6 * 3600,
            tcp_closing_timeout_seconds: 10,
            udp_timeout_seconds: 60,
            icmp_timeout_seconds: 30,
            gc_interval_seconds: 10,
            pod_port_share_percent: 90,
            pod_table_share_percent: 50,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSettings {
    #[serde(default = "default_api_socket")]
    pub api_socket: PathBuf,
    #[serde(default = "default_bpf_root")]
    pub bpf_root: PathBuf,
    /// Where Prometheus metrics are served (`GET /metrics`); off when unset.
    #[serde(default)]
    pub metrics_address: Option<std::net::SocketAddr>,
    /// The root of the cgroup2 hierarchy the socket hooks attach to (Services
    /// for the node's own sockets); default: where cgroup2 is mounted, or
    /// mounted by the agent when it is nowhere.
    #[serde(default)]
    pub cgroup_root: Option<PathBuf>,
    /// kube-proxy's health server (`/healthz`, on every address), which
    /// cloud load balancers probe for Services with external traffic
    /// policy Cluster; 0 turns it off.
    #[serde(default = "default_healthz_port")]
    pub healthz_port: u16,
}

impl Default for AgentSettings {
    fn default() -> Self {
        Self {
            api_socket: default_api_socket(),
            bpf_root: default_bpf_root(),
            metrics_address: None,
            cgroup_root: None,
            healthz_port: default_healthz_port(),
        }
    }
}

/// kube-proxy's `--healthz-bind-address` port.
pub const DEFAULT_HEALTHZ_PORT: u16 = 10256;

fn default_healthz_port() -> u16 {
    DEFAULT_HEALTHZ_PORT
}

fn default_api_socket() -> PathBuf {
    DEFAULT_API_SOCKET.into()
}

fn default_bpf_root() -> PathBuf {
    DEFAULT_BPF_ROOT.into()
}

pub const DEFAULT_VNI: u32 = 1;
pub const DEFAULT_VXLAN_PORT: u16 = 4789;
const MAX_VNI: u32 = (1 << 24) - 1;

#[serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSettings {
    /// Pod CIDR of this node. Addresses in it without an endpoint are dropped.
    #[serde_as(as = "Option<AnyFamily>")]
    pub pod_cidr: Option<Ipv4Network>,
    /// This node's IPv6 pod CIDR (a dual-stack or IPv6 node): pods' IPv6
    /// addresses come from it; addresses in it without an endpoint are
    /// dropped.
    #[serde(default)]
    pub pod_cidr_ipv6: Option<Ipv6Network>,
    /// All pod addresses of the cluster. Addresses in it that no node owns
    /// are dropped.
    #[serde_as(as = "Option<AnyFamily>")]
    pub cluster_cidr: Option<Ipv4Network>,
    /// Interface toward the other nodes. Setting it enables the VXLAN tunnel.
    pub uplink: Option<String>,
    /// How pod packets reach other nodes: through VXLAN, unencapsulated
    /// (nodes on the uplink's network), or per node.
    #[serde(default)]
    pub routing: Routing,
    /// This node's underlay IP; by default the uplink's first IPv4 address.
    #[serde_as(as = "Option<AnyFamily>")]
    pub node_ip: Option<Ipv4Addr>,
    /// The node's IPv6 address the ICMPv6 errors it sends pods as their
    /// router come from; by default the uplink's first global IPv6 address.
    #[serde(default)]
    pub node_ipv6: Option<Ipv6Addr>,
    #[serde(default = "default_vni")]
    pub vni: u32,
    #[serde(default = "default_vxlan_port")]
    pub vxlan_port: u16,
    /// Where Services' node ports are (the API server's
    /// `--service-node-port-range`): packets to a node's address at a port
    /// outside it are never looked up as node ports.
    #[serde(default = "default_node_port_range")]
    pub node_port_range: PortRange,
    /// Where Service addresses are (the API server's
    /// `--service-cluster-ip-range`): an address in it at a port no Service
    /// has is refused instead of routed out. Optional.
    #[serde_as(as = "Option<AnyFamily>")]
    pub service_cidr: Option<Ipv4Network>,
    /// Whether the MAC of a node reached directly follows ARP (a forged
    /// reply from a host on the uplink's network redirects that node's pod
    /// traffic to it) or stays as first learned.
    #[serde(default)]
    pub peer_macs: PeerMacs,
}

impl Default for NodeSettings {
    fn default() -> Self {
        Self {
            pod_cidr: None,
            pod_cidr_ipv6: None,
            cluster_cidr: None,
            uplink: None,
            routing: Routing::default(),
            node_ip: None,
            node_ipv6: None,
            vni: DEFAULT_VNI,
            vxlan_port: DEFAULT_VXLAN_PORT,
            node_port_range: default_node_port_range(),
            service_cidr: None,
            peer_macs: PeerMacs::default(),
        }
    }
}

/// Kubernetes' default `--service-node-port-range`.
fn default_node_port_range() -> PortRange {
    PortRange {
        min: 30000,
        max: 32767,
    }
}

fn default_vni() -> u32 {
    DEFAULT_VNI
}

fn default_vxlan_port() -> u16 {
    DEFAULT_VXLAN_PORT
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: field `{field}`: {problem}")]
    Invalid {
        path: PathBuf,
        field: String,
        problem: String,
    },
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let read = |source| ConfigError::Read {
            path: path.to_owned(),
            source,
        };
        // Read up to the bound (a device such as /dev/zero says size 0).
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|file| file.take(MAX_CONFIG_BYTES + 1).read_to_string(&mut text))
            .map_err(read)?;
        if text.len() as u64 > MAX_CONFIG_BYTES {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                field: "(document)".into(),
                problem: format!("longer than {MAX_CONFIG_BYTES} bytes"),
            });
        }
        Self::parse(&text, path)
    }

    /// Parses and validates `text`; `path` only labels errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let invalid = |field: String, problem: String| ConfigError::Invalid {
            path: path.to_owned(),
            field,
            problem,
        };
        let deserializer = toml::Deserializer::parse(text)
            .map_err(|error| invalid("(document)".into(), error.to_string()))?;
        let config: Config = serde_path_to_error::deserialize(deserializer).map_err(|error| {
            let field = error.path().to_string();
            invalid(field, error.into_inner().message().trim().to_string())
        })?;
        config
            .validate()
            .map_err(|(field, problem)| invalid(field, problem))?;
        Ok(config)
    }
}

impl NodeSettings {
    /// The node's pod CIDRs, each family's.
    pub fn pod_cidrs(&self) -> PodCidrs {
        PodCidrs {
            ipv4: self.pod_cidr,
            ipv6: self.pod_cidr_ipv6,
        }
    }

    /// What remote nodes are checked against.
    pub fn local_facts(&self) -> LocalFacts {
        LocalFacts {
            tunnel: self.uplink.is_some(),
            node_ip: self.node_ip,
            pod_cidr: self.pod_cidr,
            pod_cidr_ipv6: self.pod_cidr_ipv6,
            cluster_cidr: self.cluster_cidr,
            routing: self.routing,
            uplink_networks: Vec::new(),
        }
    }
}

mod port_range;
mod validate;

pub use port_range::PortRange;

#[cfg(test)]
mod tests;
