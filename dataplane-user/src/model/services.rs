//! Services as the sources describe them (config file, local API; each
//! Service owned by the source that contributed it, by name), and the
//! frontends they make together: what the Service maps must hold.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddrV4},
};

use dataplane_common::NODE_PORT_ADDRESS;
use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};
use serde_with::serde_as;

use super::family::AnyFamily;

/// A Service: an address clients use, its ports and each port's backends.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Unique per source ("namespace/name" for Kubernetes Services).
    pub name: String,
    /// The address clients connect to (the ClusterIP).
    #[serde_as(as = "AnyFamily")]
    pub ip: Ipv4Addr,
    pub ports: Vec<ServicePort>,
    /// ClientIP session affinity: a client's new connections go to the
    /// backend of its last one for this long after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity_seconds: Option<u32>,
    /// More addresses its ports are served on, for clients outside the
    /// cluster too (Kubernetes' externalIPs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[serde_as(as = "Vec<AnyFamily>")]
    pub external_ips: Vec<Ipv4Addr>,
    /// Load balancer ingress IPs: served as external addresses are, but
    /// with `source_ranges` to the clients in them only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[serde_as(as = "Vec<AnyFamily>")]
    pub load_balancer_ips: Vec<Ipv4Addr>,
    /// `loadBalancerSourceRanges`: the clients the load balancer IPs take
    /// new connections from (empty: everyone; others are dropped, as
    /// kube-proxy's firewall chain drops them). Node ports and external
    /// IPs are not limited by them, as with kube-proxy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[serde_as(as = "Vec<AnyFamily>")]
    pub source_ranges: Vec<Ipv4Network>,
    /// `externalTrafficPolicy: Local`: outside clients at the node ports
    /// and external addresses reach only this node's backends, with their
    /// own address kept (a node without one drops them).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub external_traffic_local: bool,
    /// `internalTrafficPolicy: Local`: the Service address leads only to
    /// this node's backends.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub internal_traffic_local: bool,
    /// With external traffic policy Local: the port where this node
    /// answers load balancers' health checks (200 with its number of local
    /// endpoints, 503 without any), as kube-proxy does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_node_port: Option<u16>,
    /// The address itself is an external frontend (set for the frontends
    /// an earlier agent pinned, which may be node ports or external IPs;
    /// never by a source).
    #[serde(skip)]
    pub address_is_external: bool,
    /// When the object was created (Kubernetes' `creationTimestamp`, in
    /// seconds): of two Kubernetes Services claiming one frontend, the
    /// older is served there. Other sources refuse such a pair.
    #[serde(skip)]
    pub created: Option<i64>,
}

/// Which of two Services claiming a frontend is served there: the older,
/// then the first by name.
pub type Seniority = (i64, String);

/// A health check port's answer: for the Service named, with this many
/// endpoints on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub service: String,
    pub local_endpoints: usize,
}

/// What the Services' frontends depend on of the node they are served on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServingNode {
    /// Backends at it are this node's (hostNetwork pods).
    pub ip: Option<Ipv4Addr>,
    /// Backends in it (or at the node IP) are this node's, for the Local
    /// traffic policies.
    pub pod_cidr: Option<Ipv4Network>,
    /// The node's `topology.kubernetes.io/zone`: endpoints hinted for it
    /// are preferred (topology-aware routing).
    pub zone: Option<String>,
}

impl ServingNode {
    pub(super) fn has(&self, backend: &SocketAddrV4) -> bool {
        let ip = *backend.ip();
        self.ip == Some(ip) || self.pod_cidr.is_some_and(|cidr| cidr.contains(ip))
    }
}

/// The longest session affinity Kubernetes allows (a day).
pub const MAX_AFFINITY_SECONDS: u32 = 86_400;

#[serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServicePort {
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
    /// Where connections to the port go: backend address and target port.
    /// None (and none terminating): clients are refused at once (ICMP port
    /// unreachable).
    #[serde(default)]
    #[serde_as(as = "Vec<AnyFamily>")]
    pub backends: Vec<SocketAddrV4>,
    /// The zones the EndpointSlice controller hinted each ready backend for
    /// (`trafficDistribution: PreferClose`, topology-aware hints); from
    /// Kubernetes only.
    #[serde(skip)]
    pub zone_hints: BTreeMap<SocketAddrV4, BTreeSet<String>>,
    /// Endpoints that still serve while terminating: given new connections
    /// only where no backend is ready (KEP-1669), across the cluster, or on
    /// this node for the Local traffic policies. Their connections under
    /// way drain either way.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[serde_as(as = "Vec<AnyFamily>")]
    pub terminating_backends: Vec<SocketAddrV4>,
    /// NodePort: the port is also served on the node's IP at this port,
    /// for clients outside the cluster too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<u16>,
}

impl ServicePort {
    /// The `ready` backends hinted for `zone`, as kube-proxy prefers them
    /// for the Cluster traffic policies: only when the node's zone is known,
    /// every ready backend has a hint and some are for the zone (otherwise
    /// all of them, so a half-rolled-out hint set never strands a zone).
    fn in_zone(&self, ready: Backends, zone: Option<&str>) -> Backends {
        let Some(zone) = zone else {
            return ready;
        };
        let hinted = |backend: &SocketAddrV4| self.zone_hints.get(backend);
        if ready
            .iter()
            .any(|backend| hinted(backend).is_none_or(BTreeSet::is_empty))
        {
            return ready;
        }
        let close: Backends = ready
            .iter()
            .copied()
            .filter(|backend| hinted(backend).is_some_and(|zones| zones.contains(zone)))
            .collect();
        if close.is_empty() { ready } else { close }
    }
}

/// The transport protocols Services are balanced for (SCTP is refused).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    /// The IPv4 protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Protocol::Tcp => dataplane_common::ip_protocol::TCP,
            Protocol::Udp => dataplane_common::ip_protocol::UDP,
        }
    }

    pub fn from_number(number: u8) -> Option<Self> {
        match number {
            dataplane_common::ip_protocol::TCP => Some(Protocol::Tcp),
            dataplane_common::ip_protocol::UDP => Some(Protocol::Udp),
            _ => None,
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// What clients address: one entry of the Service maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Frontend {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
    #[serde(default, skip_serializing_if = "Scope::is_everyone")]
    pub scope: Scope,
}

impl std::fmt::Display for Frontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}/{}", self.ip, self.port, self.protocol)?;
        match self.scope {
            Scope::Everyone => Ok(()),
            Scope::OutsideLocal => f.write_str(" (outside clients, local backends)"),
        }
    }
}

/// Which clients a frontend entry serves.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    #[default]
    Everyone,
    /// Outside clients of a frontend with external traffic policy Local.
    OutsideLocal,
}

impl Scope {
    pub fn is_everyone(&self) -> bool {
        *self == Scope::Everyone
    }

    /// As the map key has it (`frontend_scope`).
    pub const fn number(self) -> u8 {
        match self {
            Scope::Everyone => dataplane_common::frontend_scope::EVERYONE,
            Scope::OutsideLocal => dataplane_common::frontend_scope::OUTSIDE_LOCAL,
        }
    }

    pub fn from_number(number: u8) -> Option<Self> {
        [Scope::Everyone, Scope::OutsideLocal]
            .into_iter()
            .find(|scope| scope.number() == number)
    }
}

/// Which of a port's backend sets a frontend leads to.
#[derive(Debug, Clone, Copy)]
enum Leads {
    /// The Service address: all, or this node's with internal traffic
    /// policy Local.
    Inside,
    /// An external address for everyone (outside clients go to the
    /// `OutsideLocal` entry under external traffic policy Local).
    Everyone { ranged: bool },
    /// Outside clients under external traffic policy Local: this node's.
    OutsideLocal { ranged: bool },
}

/// A frontend's backends, without repeats, in a stable order.
pub type Backends = BTreeSet<SocketAddrV4>;

/// What a frontend leads to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FrontendTarget {
    pub backends: Backends,
    /// 0: no session affinity.
    pub affinity_seconds: u32,
    /// Outside clients are served by the frontend's `OutsideLocal` entry.
    pub outside_local: bool,
    /// New connections only from these clients (empty: everyone).
    pub source_ranges: Vec<Ipv4Network>,
}

impl ServiceSpec {
    /// The frontends of the Service on a node whose IP is `node_ip` (its
    /// node ports need one), and where each leads: every port on the
    /// Service address and each external address, and on the node IP at its
    /// node port.
    pub fn frontends<'a>(
        &'a self,
        node: &'a ServingNode,
    ) -> impl Iterator<Item = (Frontend, FrontendTarget)> + 'a {
        self.ports.iter().flat_map(move |port| {
            let ready: Backends = port.backends.iter().copied().collect();
            let terminating: Backends = port.terminating_backends.iter().copied().collect();
            let on_node = |backends: &Backends| -> Backends {
                backends
                    .iter()
                    .copied()
                    .filter(|backend| node.has(backend))
                    .collect()
            };
            // The terminating ones serve only where nothing is ready.
            let or_terminating = |ready: Backends, terminating: Backends| {
                if ready.is_empty() { terminating } else { ready }
            };
            let local = or_terminating(on_node(&ready), on_node(&terminating));
            let all = or_terminating(port.in_zone(ready, node.zone.as_deref()), terminating);
            self.port_frontends(port)
                .map(|(frontend, leads)| {
                    let (backends, outside_local, ranged) = match leads {
                        Leads::Inside if self.internal_traffic_local => (&local, false, false),
                        Leads::Inside => (&all, false, false),
                        Leads::Everyone { ranged } => (&all, self.external_traffic_local, ranged),
                        Leads::OutsideLocal { ranged } => (&local, false, ranged),
                    };
                    let target = FrontendTarget {
                        backends: backends.clone(),
                        affinity_seconds: self.session_affinity_seconds.unwrap_or(0),
                        outside_local,
                        source_ranges: if ranged {
                            self.source_ranges.clone()
                        } else {
                            Vec::new()
                        },
                    };
                    (frontend, target)
                })
                .collect::<Vec<_>>()
        })
    }

    /// The frontends of the Service, without working out their backends
    /// (what a change that only needs to know which ones asks).
    pub fn frontend_keys(&self) -> impl Iterator<Item = Frontend> + '_ {
        self.ports
            .iter()
            .flat_map(|port| self.port_frontends(port).map(|(frontend, _)| frontend))
    }

    /// The frontends of one port and what each leads to: on the Service
    /// address, each external and load balancer address, and every node
    /// address at its node port.
    fn port_frontends<'a>(
        &'a self,
        port: &'a ServicePort,
    ) -> impl Iterator<Item = (Frontend, Leads)> + 'a {
        let at = move |ip: Ipv4Addr, number: u16, scope: Scope| Frontend {
            ip,
            port: number,
            protocol: port.protocol,
            scope,
        };
        let inside = (!self.address_is_external)
            .then(|| (at(self.ip, port.port, Scope::Everyone), Leads::Inside));
        // Every node address: the programs look it up by this one.
        let on_node = port
            .node_port
            .map(|node_port| (Ipv4Addr::from(NODE_PORT_ADDRESS), node_port, false));
        // A pinned load balancer IP comes back with its ranges.
        let itself = self.address_is_external.then_some((
            self.ip,
            port.port,
            !self.source_ranges.is_empty(),
        ));
        let external = self
            .external_ips
            .iter()
            .map(|ip| (*ip, port.port, false))
            .chain(
                self.load_balancer_ips
                    .iter()
                    .map(|ip| (*ip, port.port, true)),
            )
            .chain(on_node)
            .chain(itself);
        let local_policy = self.external_traffic_local;
        inside
            .into_iter()
            .chain(external.flat_map(move |(ip, number, ranged)| {
                let everyone = (at(ip, number, Scope::Everyone), Leads::Everyone { ranged });
                let outside_local = local_policy.then(|| {
                    (
                        at(ip, number, Scope::OutsideLocal),
                        Leads::OutsideLocal { ranged },
                    )
                });
                std::iter::once(everyone).chain(outside_local)
            }))
    }

    /// Which of two Services claiming a frontend is served there.
    pub fn seniority(&self) -> Seniority {
        (self.created.unwrap_or(0), self.name.clone())
    }
}
