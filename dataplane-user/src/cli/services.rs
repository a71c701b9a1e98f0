//! `dataplane service`: Services through the API.

use std::net::{Ipv4Addr, SocketAddrV4};

use clap::Subcommand;
use ipnetwork::Ipv4Network;

use crate::{
    api::Request,
    model::{Protocol, ServicePort, ServiceSpec, family},
};

#[derive(Subcommand)]
pub(super) enum ServiceCommand {
    /// Add a Service, or replace the one of that name.
    Add {
        /// Unique name (e.g. namespace/name).
        #[arg(long)]
        name: String,
        /// The address clients connect to.
        #[arg(value_parser = family::parse::<Ipv4Addr>, long)]
        ip: Ipv4Addr,
        /// A port and its backends: PORT[/tcp|/udp][:NODE_PORT]=ADDRESS:PORT,...
        /// (repeat for more ports; nothing after `=`: clients are refused;
        /// a node port serves the port on the node's IP too).
        #[arg(long = "port", required = true)]
        ports: Vec<PortArg>,
        /// Another address the ports are served on, for clients outside the
        /// cluster too (an external or load balancer IP; repeat for more).
        #[arg(value_parser = family::parse::<Ipv4Addr>, long = "external-ip")]
        external_ips: Vec<Ipv4Addr>,
        /// A load balancer IP the ports are served on (repeat for more):
        /// as an external IP, limited by --source-range.
        #[arg(value_parser = family::parse::<Ipv4Addr>, long = "load-balancer-ip")]
        load_balancer_ips: Vec<Ipv4Addr>,
        /// loadBalancerSourceRanges: only clients in these ranges reach the
        /// load balancer IPs (repeat for more; none: everyone).
        #[arg(value_parser = family::parse::<Ipv4Network>, long = "source-range")]
        source_ranges: Vec<Ipv4Network>,
        /// externalTrafficPolicy Local: outside clients reach only this
        /// node's backends, with their address kept.
        #[arg(long)]
        external_traffic_local: bool,
        /// internalTrafficPolicy Local: the Service address leads only to
        /// this node's backends.
        #[arg(long)]
        internal_traffic_local: bool,
        /// With --external-traffic-local: the port this node answers load
        /// balancers' health checks on (HTTP, 200 with its local endpoints).
        #[arg(long, requires = "external_traffic_local")]
        health_check_node_port: Option<u16>,
        /// ClientIP session affinity: a client's new connections go to the
        /// backend of its last one for this many seconds after it.
        #[arg(long)]
        affinity_seconds: Option<u32>,
    },
    /// Remove a Service (succeeds if it is not known).
    Del {
        #[arg(long)]
        name: String,
    },
    /// List Services as the sources list them.
    List,
}

/// `80/tcp:30080=10.244.1.5:8080,10.244.2.7:8080`, as typed.
#[derive(Clone)]
pub(super) struct PortArg(ServicePort);

impl std::str::FromStr for PortArg {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (port, backends) = text.split_once('=').unwrap_or((text, ""));
        let (port, node_port) = match port.split_once(':') {
            Some((port, node_port)) => (
                port,
                Some(
                    node_port
                        .parse()
                        .map_err(|_| format!("node port {node_port:?} is not a port number"))?,
                ),
            ),
            None => (port, None),
        };
        let (number, protocol) = match port.split_once('/') {
            Some((number, "tcp")) => (number, Protocol::Tcp),
            Some((number, "udp")) => (number, Protocol::Udp),
            Some((_, other)) => return Err(format!("protocol {other:?}: only tcp and udp")),
            None => (port, Protocol::Tcp),
        };
        let port = number
            .parse()
            .map_err(|_| format!("{number:?} is not a port number"))?;
        let backends = backends
            .split(',')
            .filter(|backend| !backend.is_empty())
            .map(|backend| {
                family::parse::<SocketAddrV4>(backend)
                    .map_err(|error| format!("backend (ADDRESS:PORT) {error}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(PortArg(ServicePort {
            port,
            protocol,
            backends,
            terminating_backends: Vec::new(),
            zone_hints: Default::default(),
            node_port,
        }))
    }
}

impl ServiceCommand {
    pub(super) fn request(self) -> Request {
        match self {
            ServiceCommand::Add {
                name,
                ip,
                ports,
                external_ips,
                load_balancer_ips,
                source_ranges,
                affinity_seconds,
                external_traffic_local,
                internal_traffic_local,
                health_check_node_port,
            } => Request::AddService {
                service: ServiceSpec {
                    name,
                    ip,
                    ports: ports.into_iter().map(|PortArg(port)| port).collect(),
                    session_affinity_seconds: affinity_seconds,
                    external_ips,
                    load_balancer_ips,
                    source_ranges,
                    external_traffic_local,
                    internal_traffic_local,
                    health_check_node_port,
                    address_is_external: false,
                    created: None,
                },
            },
            ServiceCommand::Del { name } => Request::RemoveService { name },
            ServiceCommand::List => Request::ListServices { address: None },
        }
    }
}
