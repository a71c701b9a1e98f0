//! Services as the sources describe them (config file, local API; each
//! Service owned by the source that contributed it, by name), and the
//! frontends they make together: what the Service maps must hold.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddrV4},
};

use dataplane_common::{MAX_BACKENDS_PER_SERVICE, NODE_PORT_ADDRESS};
use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

use super::{Source, Violation};

/// A Service: an address clients use, its ports and each port's backends.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Unique per source ("namespace/name" for Kubernetes Services).
    pub name: String,
    /// The address clients connect to (the ClusterIP).
    pub ip: Ipv4Addr,
    pub ports: Vec<ServicePort>,
    /// ClientIP session affinity: a client's new connections go to the
    /// backend of its last one for this long after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity_seconds: Option<u32>,
    /// More addresses its ports are served on, for clients outside the
    /// cluster too (Kubernetes' externalIPs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external_ips: Vec<Ipv4Addr>,
    /// Load balancer ingress IPs: served as external addresses are, but
    /// with `source_ranges` to the clients in them only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub load_balancer_ips: Vec<Ipv4Addr>,
    /// `loadBalancerSourceRanges`: the clients the load balancer IPs take
    /// new connections from (empty: everyone; others are dropped, as
    /// kube-proxy's firewall chain drops them). Node ports and external
    /// IPs are not limited by them, as with kube-proxy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
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
    fn has(&self, backend: &SocketAddrV4) -> bool {
        let ip = *backend.ip();
        self.ip == Some(ip) || self.pod_cidr.is_some_and(|cidr| cidr.contains(ip))
    }
}

/// The longest session affinity Kubernetes allows (a day).
pub const MAX_AFFINITY_SECONDS: u32 = 86_400;

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

    /// Checks that every node port is in `range` (the node's, where the
    /// programs look for them).
    pub fn validate_node_ports(
        &self,
        range: std::ops::RangeInclusive<u16>,
    ) -> Result<(), Violation> {
        match self
            .ports
            .iter()
            .filter_map(|port| port.node_port)
            .find(|node_port| !range.contains(node_port))
        {
            Some(node_port) => Err((
                "ports",
                format!(
                    "node port {node_port} is outside node.node_port_range {}-{}",
                    range.start(),
                    range.end()
                ),
            )),
            None => Ok(()),
        }
    }

    /// Which of two Services claiming a frontend is served there.
    pub fn seniority(&self) -> Seniority {
        (self.created.unwrap_or(0), self.name.clone())
    }

    /// Checks the Service's address against the node: never the node's own
    /// IP (its port would take over the node's), and inside the Service
    /// CIDR when one is set (as the API server allocates them).
    pub fn validate_address(
        &self,
        node_ip: Option<Ipv4Addr>,
        service_cidr: Option<Ipv4Network>,
    ) -> Result<(), Violation> {
        if node_ip == Some(self.ip) {
            return Err(("ip", format!("{} is this node's own IP", self.ip)));
        }
        if let Some(cidr) = service_cidr
            && !cidr.contains(self.ip)
        {
            return Err((
                "ip",
                format!("{} is outside node.service_cidr {cidr}", self.ip),
            ));
        }
        Ok(())
    }

    /// Checks the Service on its own: `pod_cidrs` are address ranges a
    /// Service address must stay out of (it would hide pods).
    pub fn validate(&self, pod_cidrs: &[Ipv4Network]) -> Result<(), Violation> {
        if self.name.trim().is_empty() {
            return Err(("name", "must not be empty".into()));
        }
        // A namespace and a name as Kubernetes bounds them, with room.
        if self.name.len() > MAX_NAME_LEN {
            return Err((
                "name",
                format!("{} bytes: at most {MAX_NAME_LEN}", self.name.len()),
            ));
        }
        let ip = self.ip;
        if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast() {
            return Err(("ip", format!("{ip} is not a unicast address")));
        }
        if let Some(cidr) = pod_cidrs.iter().find(|cidr| cidr.contains(ip)) {
            return Err(("ip", format!("{ip} is inside the pod CIDR {cidr}")));
        }
        let mut external = BTreeSet::from([ip]);
        let listed = (self.external_ips.iter().map(|ip| ("external_ips", ip))).chain(
            self.load_balancer_ips
                .iter()
                .map(|ip| ("load_balancer_ips", ip)),
        );
        for (field, &address) in listed {
            if address.is_unspecified()
                || address.is_loopback()
                || address.is_multicast()
                || address.is_broadcast()
            {
                return Err((field, format!("{address} is not a unicast address")));
            }
            if let Some(cidr) = pod_cidrs.iter().find(|cidr| cidr.contains(address)) {
                return Err((field, format!("{address} is inside the pod CIDR {cidr}")));
            }
            if !external.insert(address) {
                return Err((field, format!("{address} is listed twice")));
            }
        }
        if self.ports.is_empty() {
            return Err(("ports", "a Service needs at least one port".into()));
        }
        if let Some(seconds) = self.session_affinity_seconds
            && !(1..=MAX_AFFINITY_SECONDS).contains(&seconds)
        {
            return Err((
                "session_affinity_seconds",
                format!("{seconds} is not in 1..={MAX_AFFINITY_SECONDS}"),
            ));
        }
        let mut seen = BTreeSet::new();
        let mut node_ports = BTreeSet::new();
        for port in &self.ports {
            if let Some(node_port) = port.node_port
                && (node_port == 0 || !node_ports.insert((node_port, port.protocol)))
            {
                return Err((
                    "ports",
                    format!(
                        "node port {node_port}/{} is 0 or listed twice",
                        port.protocol
                    ),
                ));
            }
            if port.port == 0 {
                return Err(("ports", "port 0 cannot be connected to".into()));
            }
            if !seen.insert((port.port, port.protocol)) {
                return Err((
                    "ports",
                    format!("{}/{} is listed twice", port.port, port.protocol),
                ));
            }
            for backends in [&port.backends, &port.terminating_backends] {
                if backends.len() > MAX_BACKENDS_PER_SERVICE as usize {
                    return Err((
                        "ports",
                        format!(
                            "{}/{} has {} backends, more than the {MAX_BACKENDS_PER_SERVICE} one port may have",
                            port.port,
                            port.protocol,
                            backends.len()
                        ),
                    ));
                }
            }
            if let Some(backend) = port
                .backends
                .iter()
                .chain(&port.terminating_backends)
                .find(|backend| backend.port() == 0)
            {
                return Err(("ports", format!("backend {backend} has port 0")));
            }
        }
        Ok(())
    }
}

/// The Services each source lists, and the frontends they make together.
/// Within the config file or the API, two Services cannot share a
/// frontend (the change is refused); within Kubernetes, where any tenant
/// may create such a pair, the older Service is served at the frontend and
/// the younger one everywhere else (kube-proxy programs both, and the
/// first rule wins). Between sources, each frontend is taken from the
/// highest-ranking source that has it (as remote nodes are), so Services
/// found pinned at start-up give way to any source that names the same
/// frontend. A change costs in proportion to the frontends it touches, not
/// to all of them.
#[derive(Debug, Clone, Default)]
pub struct Services {
    node: ServingNode,
    contributed: BTreeMap<Source, BTreeMap<String, ServiceSpec>>,
    /// Each source's frontends: the Services claiming each, by seniority,
    /// and where each would lead (the first is served).
    by_source: BTreeMap<Source, BTreeMap<Frontend, BTreeMap<Seniority, FrontendTarget>>>,
    /// Services a source listed that break a rule, with the reason: not
    /// programmed, shown in the list.
    refused: BTreeMap<(Source, String), (ServiceSpec, String)>,
    effective: BTreeMap<Frontend, FrontendTarget>,
    /// The Services with a health check port (external traffic policy
    /// Local), in ranking order: each change looks at these, not at all.
    health_checked: BTreeSet<(Source, String)>,
}

impl Services {
    /// No Services yet, served on `node`.
    pub fn on_node(node: ServingNode) -> Self {
        Self {
            node,
            ..Self::default()
        }
    }

    /// Serves the Services on `node` from now on (its pod CIDR may come
    /// late, from Kubernetes); returns the frontends that changed.
    pub fn serve_on(&mut self, node: ServingNode) -> Vec<Frontend> {
        if node == self.node {
            return Vec::new();
        }
        self.node = node;
        let node = &self.node;
        let mut touched: Vec<Frontend> = self.effective.keys().copied().collect();
        for (source, services) in &self.contributed {
            let claimed = self.by_source.entry(*source).or_default();
            claimed.clear();
            for service in services.values() {
                for (frontend, target) in service.frontends(node) {
                    claimed
                        .entry(frontend)
                        .or_default()
                        .insert(service.seniority(), target);
                    touched.push(frontend);
                }
            }
        }
        self.settle(touched)
    }

    /// The health check ports of the Services with external traffic policy
    /// Local, by port (a port two Services name goes to the higher-ranking
    /// source's, then the first by name).
    pub fn health_checks(&self) -> BTreeMap<u16, HealthCheck> {
        let mut checks = BTreeMap::new();
        for (source, name) in &self.health_checked {
            let Some(service) = self.contributed.get(source).and_then(|of| of.get(name)) else {
                continue;
            };
            let Some(port) = service.health_check_node_port else {
                continue;
            };
            let local: BTreeSet<Ipv4Addr> = service
                .ports
                .iter()
                .flat_map(|port| &port.backends)
                .filter(|backend| self.node.has(backend))
                .map(|backend| *backend.ip())
                .collect();
            checks.entry(port).or_insert_with(|| HealthCheck {
                service: service.name.clone(),
                local_endpoints: local.len(),
            });
        }
        checks
    }

    /// Every frontend in effect and where it leads.
    pub fn frontends(&self) -> &BTreeMap<Frontend, FrontendTarget> {
        &self.effective
    }

    /// Every Service of every source.
    pub fn list(&self) -> Vec<(Source, &ServiceSpec)> {
        self.contributed
            .iter()
            .flat_map(|(source, services)| services.values().map(|service| (*source, service)))
            .collect()
    }

    /// `source`'s Service `name`, if it lists one.
    pub fn service(&self, source: Source, name: &str) -> Option<&ServiceSpec> {
        self.contributed.get(&source)?.get(name)
    }

    /// The frontends of `source`'s `service` an older Service of the same
    /// source is served at instead, each with that Service's name.
    pub fn shadowed(&self, source: Source, service: &ServiceSpec) -> Vec<(Frontend, String)> {
        let Some(claimed) = self.by_source.get(&source) else {
            return Vec::new();
        };
        service
            .frontend_keys()
            .filter_map(|frontend| {
                let ((_, served), _) = claimed.get(&frontend)?.first_key_value()?;
                (*served != service.name).then(|| (frontend, served.clone()))
            })
            .collect()
    }

    /// How many claims on frontends are not served (a Service claims a
    /// frontend an older one of its source is served at).
    pub fn shadowed_claims(&self) -> usize {
        self.by_source
            .values()
            .flat_map(BTreeMap::values)
            .map(|claims| claims.len() - 1)
            .sum()
    }

    /// Records that `source`'s `service` breaks a rule (`reason`): it is
    /// not programmed (what it had is withdrawn); returns the frontends
    /// that changed.
    pub fn refuse(
        &mut self,
        source: Source,
        service: ServiceSpec,
        reason: String,
    ) -> Vec<Frontend> {
        let touched = self.take_out(source, &service.name);
        self.refused
            .insert((source, service.name.clone()), (service, reason));
        self.settle(touched)
    }

    /// The Services refused, with their reasons.
    pub fn refused(&self) -> impl Iterator<Item = (Source, &ServiceSpec, &str)> {
        self.refused
            .iter()
            .map(|((source, _), (service, reason))| (*source, service, reason.as_str()))
    }

    /// `source` lists `service` (too), replacing its earlier entry of that
    /// name. Returns the frontends whose backends changed.
    pub fn upsert(
        &mut self,
        source: Source,
        service: ServiceSpec,
    ) -> Result<Vec<Frontend>, Violation> {
        if let Some(claimed) = self.by_source.get(&source)
            && source != Source::Kubernetes
        {
            for frontend in service.frontend_keys() {
                if let Some((_, owner)) = claimed
                    .get(&frontend)
                    .into_iter()
                    .flat_map(BTreeMap::keys)
                    .find(|(_, owner)| *owner != service.name)
                {
                    return Err(conflict(frontend, &service.name, owner));
                }
            }
        }
        let mut touched = self.take_out(source, &service.name);
        touched.extend(self.put_in(source, service));
        Ok(self.settle(touched))
    }

    /// `source` lists exactly `services` now. All or nothing.
    pub fn replace(
        &mut self,
        source: Source,
        services: Vec<ServiceSpec>,
    ) -> Result<Vec<Frontend>, Violation> {
        let mut claimed: BTreeMap<Frontend, &str> = BTreeMap::new();
        let mut names = BTreeSet::new();
        for service in &services {
            if !names.insert(service.name.as_str()) {
                return Err(("name", format!("Service {} is listed twice", service.name)));
            }
            if source == Source::Kubernetes {
                continue;
            }
            for frontend in service.frontend_keys() {
                if let Some(owner) = claimed.insert(frontend, &service.name) {
                    return Err(conflict(frontend, &service.name, owner));
                }
            }
        }
        self.refused.retain(|(from, _), _| *from != source);
        let listed: Vec<String> = self
            .contributed
            .get(&source)
            .map(|services| services.keys().cloned().collect())
            .unwrap_or_default();
        let mut touched = Vec::new();
        for name in listed {
            touched.extend(self.take_out(source, &name));
        }
        for service in services {
            touched.extend(self.put_in(source, service));
        }
        Ok(self.settle(touched))
    }

    /// `source` (`None`: every source) no longer lists the Service `name`;
    /// returns the frontends that changed (none: no such Service).
    pub fn withdraw(&mut self, source: Option<Source>, name: &str) -> Vec<Frontend> {
        let mut touched = Vec::new();
        for from in Source::ALL {
            if source.is_none_or(|source| source == from) {
                touched.extend(self.take_out(from, name));
            }
        }
        self.settle(touched)
    }

    /// Removes `source`'s Service `name` (and its refusal); returns its
    /// frontends.
    fn take_out(&mut self, source: Source, name: &str) -> Vec<Frontend> {
        self.refused.remove(&(source, name.to_string()));
        let Some(service) = self
            .contributed
            .get_mut(&source)
            .and_then(|services| services.remove(name))
        else {
            return Vec::new();
        };
        self.health_checked.remove(&(source, name.to_string()));
        let claimed = self.by_source.entry(source).or_default();
        let seniority = service.seniority();
        service
            .frontend_keys()
            .inspect(|frontend| {
                if let Some(claims) = claimed.get_mut(frontend) {
                    claims.remove(&seniority);
                    if claims.is_empty() {
                        claimed.remove(frontend);
                    }
                }
            })
            .collect()
    }

    /// Adds `source`'s Service; returns its frontends.
    fn put_in(&mut self, source: Source, service: ServiceSpec) -> Vec<Frontend> {
        let claimed = self.by_source.entry(source).or_default();
        let seniority = service.seniority();
        let frontends = service
            .frontends(&self.node)
            .map(|(frontend, target)| {
                claimed
                    .entry(frontend)
                    .or_default()
                    .insert(seniority.clone(), target);
                frontend
            })
            .collect();
        if service.health_check_node_port.is_some() && service.external_traffic_local {
            self.health_checked.insert((source, service.name.clone()));
        }
        self.contributed
            .entry(source)
            .or_default()
            .insert(service.name.clone(), service);
        frontends
    }

    /// Brings the effective entry of each `touched` frontend in line with
    /// its highest-ranking source; returns those that changed.
    fn settle(&mut self, mut touched: Vec<Frontend>) -> Vec<Frontend> {
        touched.sort_unstable();
        touched.dedup();
        touched.retain(|frontend| {
            let winner = Source::ALL.iter().find_map(|source| {
                let (_, target) = self
                    .by_source
                    .get(source)?
                    .get(frontend)?
                    .first_key_value()?;
                Some(target.clone())
            });
            if self.effective.get(frontend) == winner.as_ref() {
                return false;
            }
            match winner {
                Some(target) => self.effective.insert(*frontend, target),
                None => self.effective.remove(frontend),
            };
            true
        });
        touched
    }
}

/// The longest Service name taken (a 63-byte namespace, '/', a 253-byte name).
pub const MAX_NAME_LEN: usize = 317;

fn conflict(frontend: Frontend, name: &str, owner: &str) -> Violation {
    (
        "ports",
        format!("{frontend} of Service {name} is already Service {owner}'s"),
    )
}
