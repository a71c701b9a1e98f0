//! The task that owns the node's desired state and answers every command
//! in turn: no locks, one order of changes.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    time::Instant,
};

use dataplane_common::{NodeConfig, VXLAN_OVERHEAD, service_flags};
use ipnetwork::Ipv4Network;
use macaddr::MacAddr6;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::NodeFacts;
use super::{
    Command, Reply, ServiceTables,
    nat_table::NatTable,
    reconcile::{DesiredNodes, Reconciler},
    report::Watchers,
};
use crate::{
    api::{FrontendEntry, ServiceEntry},
    dataplane::{Dataplane, DataplaneError},
    interfaces::{HostLinks, Interfaces, Neighbour},
    maps::{MapsError, backend_address, frontend_of},
    model::{
        EndpointSources, EndpointSpec, Frontend, HealthCheck, LocalFacts, NodePath, NodeSpec,
        PeerMacs, Refusal, RemoteNodes, Routing, Scope, ServicePort, ServiceSpec, Services,
        ServingNode, Source, Violation,
    },
};

pub struct Owner<L: HostLinks = Interfaces> {
    pub(super) facts: NodeFacts,
    pub(super) interfaces: L,
    pub(super) dataplane: Dataplane,
    pub(super) reconciler: Reconciler,
    pub(super) remote_nodes: RemoteNodes,
    pub(super) services: Services,
    pub(super) endpoint_sources: EndpointSources,
    /// Read for status and metrics; its own thread walks it.
    pub(super) nat: NatTable,
    /// Likewise.
    pub(super) service_tables: ServiceTables,
    /// The health check ports the Services ask for, for their server.
    pub(super) health_checks: watch::Sender<BTreeMap<u16, HealthCheck>>,
    pub(super) watchers: Watchers,
    pub(super) started: Instant,
    /// When a source last reconciled the node map as a whole.
    pub(super) last_reconcile: Instant,
    /// Nodes reached directly whose neighbour entry the kernel keeps
    /// resolved for this agent (`managed`).
    pub(super) managed_neighbours: BTreeSet<Ipv4Addr>,
    /// The last MAC the uplink's neighbour table held for each address
    /// (what direct packets from a node must come from). Kept when the
    /// entry goes: the kernel drops stale entries it still needs.
    pub(super) neighbour_macs: BTreeMap<Ipv4Addr, [u8; 6]>,
    /// How often each node's MAC changed (in `neighbour_macs`, or refused
    /// there while pinned).
    pub(super) mac_changes: BTreeMap<Ipv4Addr, u64>,
    /// What NODE_CONFIG holds (written when the facts make it differ).
    pub(super) node_config: NodeConfig,
}

impl<L: HostLinks> Owner<L> {
    /// Takes over a loaded dataplane. Nodes already in the pinned maps are
    /// kept (as [`Source::Pinned`]) until a source says otherwise.
    pub fn new(
        facts: NodeFacts,
        interfaces: L,
        dataplane: Dataplane,
        nat: NatTable,
        service_tables: ServiceTables,
    ) -> Self {
        let mut remote_nodes = RemoteNodes::default();
        let pinned: Vec<NodeSpec> = dataplane
            .programmed_nodes()
            .map(|(ip, node)| NodeSpec {
                ip,
                pod_cidr: node.pod_cidr,
            })
            .collect();
        // What an earlier agent programmed obeyed the rules then; a node that
        // does not any more (its own IP, now) is dropped by the next reconcile.
        let local = facts.local_facts();
        if let Err((ip, (field, problem))) = remote_nodes.replace(Source::Pinned, &pinned, &local) {
            warn!(%ip, "pinned node map: {field}: {problem}; starting from an empty node set");
        }
        let node = ServingNode {
            ip: facts.settings.node_ip,
            pod_cidr: facts.settings.pod_cidr,
            zone: None,
        };
        let services = pinned_services(&dataplane, node);
        // The MACs an earlier agent learned stand until the neighbour table
        // is read: written again without them, direct packets would be
        // refused in between.
        let neighbour_macs = dataplane
            .programmed_nodes()
            .filter_map(|(ip, node)| Some((ip, node.mac?)))
            .collect();
        // As the agent's start wrote it.
        let node_config = facts.node_config(
            !dataplane.programmed_services().is_empty(),
            dataplane.serves_outside_local(),
        );
        Self {
            facts,
            interfaces,
            dataplane,
            reconciler: Reconciler::default(),
            remote_nodes,
            services,
            endpoint_sources: EndpointSources::default(),
            nat,
            service_tables,
            health_checks: watch::Sender::new(BTreeMap::new()),
            watchers: Watchers::default(),
            started: Instant::now(),
            last_reconcile: Instant::now(),
            managed_neighbours: BTreeSet::new(),
            neighbour_macs,
            mac_changes: BTreeMap::new(),
            node_config,
        }
    }

    /// Writes NODE_CONFIG when what it should hold changed.
    fn write_node_config(&mut self) -> anyhow::Result<()> {
        let wanted = self.facts.node_config(
            !self.dataplane.programmed_services().is_empty(),
            self.dataplane.serves_outside_local(),
        );
        if wanted != self.node_config {
            self.dataplane.set_node_config(wanted)?;
            self.node_config = wanted;
        }
        Ok(())
    }

    pub(super) fn local_facts(&self) -> LocalFacts {
        self.facts.local_facts()
    }

    /// Answers commands until every handle is gone.
    pub(super) async fn run(mut self, mut queue: mpsc::Receiver<Command>) {
        let mut retry = tokio::time::interval(RETRY_INTERVAL);
        loop {
            tokio::select! {
                command = queue.recv() => match command {
                    Some(command) => self.handle(command).await,
                    None => break,
                },
                _ = retry.tick() => self.retry_failed().await,
            }
        }
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::AddEndpoint(endpoint, reply) => {
                answer(reply, self.add_endpoint(&endpoint).await);
            }
            Command::RemoveEndpoint {
                ip,
                host_ifindex,
                reply,
            } => answer(reply, self.remove_endpoint(ip, host_ifindex)),
            Command::InterfaceRemoved(ifindex) => {
                if let Err(error) = self.interface_removed(ifindex) {
                    warn!(
                        ifindex,
                        "removing the endpoints of a deleted link: {error:#}"
                    );
                }
            }
            Command::SyncHostAddresses(reply) => answer(reply, self.sync_host_addresses().await),
            Command::NeighbourResolved { ifindex, ip, mac } => {
                if ifindex == self.facts.uplink_ifindex()
                    && let Err(error) = self.neighbour_resolved(ip, mac).await
                {
                    warn!(%ip, "writing a node's learned MAC: {error:#}");
                }
            }
            Command::ResyncHost(reply) => answer(reply, self.resync_host().await),
            Command::UpsertNode(source, node, reply) => {
                let changed = self.remote_nodes.upsert(source, node, &self.local_facts());
                let programmed = match changed.map_err(refused) {
                    Ok(changed) => self.program_nodes(&changed).await,
                    Err(error) => Err(error),
                };
                answer(reply, programmed);
            }
            Command::WithdrawNode(source, ip, reply) => {
                let changed = self.remote_nodes.withdraw(source, ip, &self.local_facts());
                let removed = !changed.is_empty();
                answer(reply, self.program_nodes(&changed).await.map(|()| removed));
            }
            Command::ReplaceNodes(source, nodes, reply) => {
                answer(
                    reply,
                    self.replace_nodes_skipping_invalid(source, nodes).await,
                );
            }
            Command::ApplyConfigFile {
                nodes,
                endpoints,
                services,
                reply,
            } => answer(
                reply,
                self.apply_config_file(nodes, &endpoints, services).await,
            ),
            Command::UpsertService(source, service, reply) => {
                answer(reply, self.upsert_service(source, service));
            }
            Command::WithdrawService(source, name, reply) => {
                let changed = self.services.withdraw(source, &name);
                let removed = !changed.is_empty();
                answer(reply, self.program_services(&changed).map(|()| removed));
            }
            Command::ReplaceServices(source, services, reply) => {
                answer(reply, self.replace_services(source, services));
            }
            Command::Services(reply) => answer(reply, Ok(self.service_entries())),
            Command::ServiceMaps(reply) => answer(reply, Ok(self.frontend_entries())),
            Command::LocalNode { pod_cidr, zone } => {
                if let Err(error) = self.set_local_node(pod_cidr, zone) {
                    warn!("applying this node's pod CIDR {pod_cidr}: {error:#}");
                }
            }
            Command::Status(reply) => answer(reply, self.status().await),
            Command::Endpoints(reply) => answer(reply, self.list_endpoints().await),
            Command::Nodes(reply) => answer(reply, Ok(self.node_entries())),
            Command::Counters(reply) => answer(reply, self.counter_entries()),
            Command::Tables(reply) => answer(reply, Ok(self.table_sizes())),
            Command::Watch(traces, reply) => answer(reply, self.watch(traces)),
            Command::Unwatch(traces) => self.unwatch(traces),
        }
    }

    /// Writes the nodes whose desired entry changed, then their neighbour
    /// entries.
    async fn program_nodes(&mut self, changed: &[Ipv4Addr]) -> anyhow::Result<()> {
        let local = self.local_facts();
        let desired = DesiredNodes {
            nodes: self.remote_nodes.effective(),
            local: &local,
            macs: &self.neighbour_macs,
        };
        let written = self
            .reconciler
            .write_nodes(&mut self.dataplane, &desired, changed);
        self.manage_neighbours(changed).await;
        written
    }

    /// The uplink's neighbour table says `ip` is at `mac` now: a node there
    /// is written again if that is news. A node's MAC that changes is warned
    /// about and counted: the node was replaced, or a host on the uplink's
    /// network forged an ARP reply (it then gets that node's pod traffic and
    /// is believed sending in its name). With `peer_macs = "pinned"` the
    /// MAC first learned stays, in a permanent neighbour entry.
    async fn neighbour_resolved(&mut self, ip: Ipv4Addr, mac: [u8; 6]) -> anyhow::Result<()> {
        if self.remote_nodes.effective().get(ip).is_none() {
            self.neighbour_macs.insert(ip, mac);
            return Ok(());
        }
        let previous = self.neighbour_macs.get(&ip).copied();
        if previous == Some(mac) {
            return Ok(());
        }
        let pinned = self.facts.settings.peer_macs == PeerMacs::Pinned;
        let (new, old) = (MacAddr6::from(mac), previous.map(MacAddr6::from));
        match previous {
            None => info!(%ip, mac = %new, "a node's MAC learned"),
            Some(previous) => {
                *self.mac_changes.entry(ip).or_default() += 1;
                if pinned {
                    warn!(
                        %ip, kept = ?old, refused = %new,
                        "a node's MAC changed on the uplink; the pinned one stays \
                         (node.peer_macs = \"pinned\"): remove and add the node to take another"
                    );
                    self.pin_neighbour(ip, previous).await;
                    return Ok(());
                }
                warn!(
                    %ip, from = ?old, to = %new,
                    "a node's MAC changed on the uplink: the node was replaced, or a host there \
                     forged an ARP reply and now gets its pod traffic (node.peer_macs = \"pinned\" \
                     keeps learned MACs)"
                );
            }
        }
        self.neighbour_macs.insert(ip, mac);
        let written = self.program_nodes(&[ip]).await;
        if pinned {
            self.pin_neighbour(ip, mac).await;
        }
        written
    }

    /// Makes the neighbour entry of `ip`, a node reached directly, a
    /// permanent one at `mac`. Failures are warned about: ARP may then
    /// still change it.
    async fn pin_neighbour(&mut self, ip: Ipv4Addr, mac: [u8; 6]) {
        let uplink = self.facts.uplink_ifindex();
        let direct = self
            .dataplane
            .programmed_node(ip)
            .is_some_and(|node| node.path == NodePath::Direct);
        if uplink == 0 || !direct {
            return;
        }
        self.managed_neighbours.insert(ip);
        if let Err(error) = self.interfaces.pin_neighbour(uplink, ip, mac).await {
            warn!(%ip, "pinning the node's neighbour entry: {error}");
        }
    }

    /// Writes every node again where the maps differ from what it should
    /// be: at start-up, nodes an earlier agent pinned may be reached
    /// another way now (`node.routing` changed across the restart).
    pub async fn reprogram_nodes(&mut self) -> anyhow::Result<()> {
        let all: Vec<Ipv4Addr> = self
            .remote_nodes
            .effective()
            .iter()
            .map(|node| node.ip)
            .collect();
        self.program_nodes(&all).await
    }

    /// Keeps a managed neighbour entry for every node reached directly (as
    /// programmed): the kernel resolves and probes it on its own, so the
    /// receive check always finds the node's MAC (an unmanaged entry can be
    /// garbage-collected while the node keeps sending) and the first packet
    /// to it does not wait for ARP. Failures are warned about: the paths
    /// work without, resolving on demand.
    async fn manage_neighbours(&mut self, ips: &[Ipv4Addr]) {
        let uplink = self.facts.uplink_ifindex();
        if uplink == 0 {
            return;
        }
        let pinned = self.facts.settings.peer_macs == PeerMacs::Pinned;
        for &ip in ips {
            let direct = self
                .dataplane
                .programmed_node(ip)
                .is_some_and(|node| node.path == NodePath::Direct);
            if self.remote_nodes.effective().get(ip).is_none() {
                // A node added again later learns its MAC afresh.
                self.mac_changes.remove(&ip);
                if pinned {
                    self.neighbour_macs.remove(&ip);
                }
            }
            let result = match (direct, self.neighbour_macs.get(&ip)) {
                (true, Some(&mac)) if pinned => {
                    self.managed_neighbours.insert(ip);
                    self.interfaces.pin_neighbour(uplink, ip, mac).await
                }
                (true, _) => {
                    self.managed_neighbours.insert(ip);
                    self.interfaces.manage_neighbour(uplink, ip).await
                }
                (false, _) if self.managed_neighbours.remove(&ip) => {
                    self.interfaces.remove_neighbour(uplink, ip).await
                }
                (false, _) => Ok(()),
            };
            if let Err(error) = result {
                warn!(%ip, "the node's managed neighbour entry: {error}");
            }
        }
    }

    /// The MACs of the uplink's neighbours learned again, and its managed
    /// neighbour entries brought in line with the nodes reached directly:
    /// an earlier agent's for nodes since removed go, missing ones are made.
    async fn sync_neighbours(&mut self) -> anyhow::Result<()> {
        let uplink = self.facts.uplink_ifindex();
        if uplink == 0 {
            return Ok(());
        }
        let neighbours = self.interfaces.neighbours(uplink).await?;
        for (ip, neighbour) in &neighbours {
            if let Some(mac) = neighbour.mac {
                self.neighbour_resolved(*ip, mac).await?;
            }
        }
        let pinned = self.facts.settings.peer_macs == PeerMacs::Pinned;
        let entries = |wanted: fn(&Neighbour) -> bool| -> BTreeSet<Ipv4Addr> {
            neighbours
                .iter()
                .filter(|(_, neighbour)| wanted(neighbour))
                .map(|(ip, _)| *ip)
                .collect()
        };
        // Ours: managed ones, and permanent ones when pinning.
        let ours = if pinned {
            entries(|neighbour| neighbour.managed || neighbour.permanent)
        } else {
            entries(|neighbour| neighbour.managed)
        };
        // As this mode keeps them.
        let kept = if pinned {
            entries(|neighbour| neighbour.permanent)
        } else {
            ours.clone()
        };
        let direct: BTreeSet<Ipv4Addr> = self
            .dataplane
            .programmed_nodes()
            .filter(|(_, node)| node.path == NodePath::Direct)
            .map(|(ip, _)| ip)
            .collect();
        // Only what differs: entries there are kept by the kernel.
        let differing: Vec<Ipv4Addr> = direct
            .difference(&kept)
            .chain(ours.difference(&direct))
            .copied()
            .collect();
        self.managed_neighbours = ours;
        self.manage_neighbours(&differing).await;
        Ok(())
    }

    /// The MTU pods must use: the smallest of the paths this node sends on
    /// (without remote nodes yet, the one its routing takes on its own network).
    pub(super) fn pod_mtu(&self) -> Option<u32> {
        let uplink_mtu = self.facts.uplink?.mtu;
        let local = self.local_facts();
        let tunnelled = match local.routing {
            Routing::Tunnel => true,
            Routing::Direct => false,
            Routing::Auto => self
                .remote_nodes
                .effective()
                .iter()
                .any(|node| local.path_to(node.ip) == NodePath::Tunnel),
        };
        Some(if tunnelled {
            uplink_mtu - VXLAN_OVERHEAD
        } else {
            uplink_mtu
        })
    }

    /// `source` lists exactly `nodes`, except those breaking a rule, which
    /// are skipped with a warning (one bad Node object must not hold up
    /// the cluster's other nodes).
    async fn replace_nodes_skipping_invalid(
        &mut self,
        source: Source,
        mut nodes: Vec<NodeSpec>,
    ) -> anyhow::Result<()> {
        let local = self.local_facts();
        let changed = loop {
            match self.remote_nodes.replace(source, &nodes, &local) {
                Ok(changed) => break changed,
                Err(refusal) => {
                    let listed = nodes.len();
                    nodes.retain(|node| node.ip != refusal.0);
                    if nodes.len() == listed {
                        return Err(refused(refusal));
                    }
                    warn!(?source, "node skipped: {:#}", refused(refusal));
                }
            }
        };
        self.last_reconcile = Instant::now();
        self.program_nodes(&changed).await
    }

    pub fn nat_table(&self) -> NatTable {
        self.nat.clone()
    }

    pub fn service_tables(&self) -> ServiceTables {
        self.service_tables.clone()
    }

    /// Follows the health check ports the Services ask for.
    pub fn health_checks(&self) -> watch::Receiver<BTreeMap<u16, HealthCheck>> {
        self.health_checks.subscribe()
    }

    pub fn node_ip(&self) -> Option<Ipv4Addr> {
        self.facts.settings.node_ip
    }

    async fn retry_failed(&mut self) {
        let local = self.local_facts();
        let failed = self.reconciler.failed_nodes();
        let desired = DesiredNodes {
            nodes: self.remote_nodes.effective(),
            local: &local,
            macs: &self.neighbour_macs,
        };
        self.reconciler.retry_nodes(&mut self.dataplane, &desired);
        self.manage_neighbours(&failed).await;
        self.reconciler
            .retry_services(&mut self.dataplane, &self.services);
    }

    /// Writes the frontends whose backends changed, and tells the programs
    /// whether to look at Services at all.
    fn program_services(&mut self, changed: &[Frontend]) -> anyhow::Result<()> {
        let written = self
            .reconciler
            .write_services(&mut self.dataplane, &self.services, changed);
        let checks = self.services.health_checks();
        self.health_checks.send_if_modified(|current| {
            let changed = *current != checks;
            *current = checks;
            changed
        });
        self.write_node_config()?;
        written
    }

    /// A Service's own rules: its address stays out of the pod addresses.
    fn checked_service(&self, service: &ServiceSpec) -> anyhow::Result<()> {
        let settings = &self.facts.settings;
        let pod_cidrs: Vec<Ipv4Network> = settings
            .cluster_cidr
            .into_iter()
            .chain(settings.pod_cidr)
            .collect();
        let node_ports = settings.node_port_range.min..=settings.node_port_range.max;
        service
            .validate(&pod_cidrs)
            .and_then(|()| service.validate_address(settings.node_ip, settings.service_cidr))
            .and_then(|()| service.validate_node_ports(node_ports))
            .map_err(|(field, problem)| {
                Refusal(format!(
                    "service {}: field `{field}`: {problem}",
                    service.name
                ))
                .into()
            })
    }

    /// `source` lists `service` (too). From Kubernetes, a Service that
    /// breaks a rule is refused on its own (warned, counted, listed with
    /// the reason; what it had is withdrawn); from the others, the change is.
    fn upsert_service(&mut self, source: Source, service: ServiceSpec) -> anyhow::Result<()> {
        if let Err(error) = self.checked_service(&service) {
            if source == Source::Kubernetes {
                warn!(service = service.name, "service refused: {error:#}");
                let changed = self.services.refuse(source, service, format!("{error:#}"));
                self.program_services(&changed)?;
            }
            return Err(error);
        }
        let name = service.name.clone();
        let changed = self
            .services
            .upsert(source, service)
            .map_err(refused_service)?;
        self.warn_shadowed(source, &name);
        self.program_services(&changed)
    }

    /// Warns about the frontends of `source`'s Service `name` an older
    /// Service is served at.
    fn warn_shadowed(&self, source: Source, name: &str) {
        let Some(service) = self.services.service(source, name) else {
            return;
        };
        for (frontend, served) in self.services.shadowed(source, service) {
            warn!(
                service = name,
                %frontend,
                served,
                "two Services claim one frontend: the older is served there"
            );
        }
    }

    /// `source` lists exactly `services`. A Service that breaks a rule
    /// refuses the whole list, except from Kubernetes, where it is refused
    /// on its own (one bad object must not hold up the others).
    fn replace_services(
        &mut self,
        source: Source,
        services: Vec<ServiceSpec>,
    ) -> anyhow::Result<()> {
        let mut valid = Vec::with_capacity(services.len());
        let mut refused = Vec::new();
        for service in services {
            match self.checked_service(&service) {
                Ok(()) => valid.push(service),
                Err(error) if source == Source::Kubernetes => {
                    warn!(service = service.name, "service refused: {error:#}");
                    refused.push((service, format!("{error:#}")));
                }
                Err(error) => return Err(error),
            }
        }
        let names: Vec<String> = valid.iter().map(|service| service.name.clone()).collect();
        let mut changed = self
            .services
            .replace(source, valid)
            .map_err(refused_service)?;
        for (service, reason) in refused {
            changed.extend(self.services.refuse(source, service, reason));
        }
        for name in &names {
            self.warn_shadowed(source, name);
        }
        self.program_services(&changed)
    }

    fn service_entries(&self) -> Vec<ServiceEntry> {
        let listed = self
            .services
            .list()
            .into_iter()
            .map(|(source, service)| ServiceEntry {
                source,
                service: service.clone(),
                shadowed: self
                    .services
                    .shadowed(source, service)
                    .into_iter()
                    .map(|(frontend, served)| format!("{frontend}: Service {served}'s (older)"))
                    .collect(),
                refused: None,
            });
        let refused = self
            .services
            .refused()
            .map(|(source, service, reason)| ServiceEntry {
                source,
                service: service.clone(),
                shadowed: Vec::new(),
                refused: Some(reason.to_string()),
            });
        listed.chain(refused).collect()
    }

    fn frontend_entries(&self) -> (Vec<FrontendEntry>, usize) {
        let frontends = self
            .dataplane
            .programmed_services()
            .iter()
            .filter_map(|(key, programmed)| {
                Some(FrontendEntry {
                    frontend: frontend_of(key)?,
                    id: programmed.id,
                    backends: programmed.backends.iter().map(backend_address).collect(),
                })
            })
            .collect();
        (frontends, self.service_tables.last().connection_halves)
    }

    pub async fn apply_config_file(
        &mut self,
        nodes: Vec<NodeSpec>,
        endpoints: &[EndpointSpec],
        services: Vec<ServiceSpec>,
    ) -> anyhow::Result<()> {
        // Every endpoint's veth must exist before anything changes.
        let resolved = self.checked_interfaces(endpoints).await?;
        // The pinned copies are named by frontend (`pinned_services`).
        let pinned_names: Vec<String> = services
            .iter()
            .flat_map(ServiceSpec::frontend_keys)
            .map(|frontend| frontend.to_string())
            .collect();
        self.replace_services(Source::ConfigFile, services)?;
        let local = self.local_facts();
        let mut changed = self
            .remote_nodes
            .replace(Source::ConfigFile, &nodes, &local)
            .map_err(refused)?;
        // What the file lists is the file's: an earlier agent's pinned copy
        // of it must not outlive its removal from the file.
        for node in &nodes {
            changed.extend(
                self.remote_nodes
                    .withdraw(Some(Source::Pinned), node.ip, &local),
            );
        }
        let unpinned: Vec<Frontend> = pinned_names
            .iter()
            .flat_map(|name| self.services.withdraw(Some(Source::Pinned), name))
            .collect();
        self.program_services(&unpinned)?;
        self.last_reconcile = Instant::now();
        self.program_nodes(&changed).await?;
        self.replace_file_endpoints(endpoints, resolved)
    }

    /// Puts every address of the node in the host address map (a node with
    /// more addresses than the map holds keeps working on the ones that fit,
    /// warned about), and follows the uplink's networks: in auto routing,
    /// which nodes are reached directly. Only a failure to read or write is
    /// an error.
    async fn sync_host_addresses(&mut self) -> anyhow::Result<()> {
        self.sync_uplink_networks().await?;
        let addresses = self.interfaces.host_addresses().await?;
        let count = addresses.len();
        match self.dataplane.set_host_addresses(addresses) {
            Ok(true) => info!(addresses = count, "the node's own addresses changed"),
            Ok(false) => {}
            Err(DataplaneError::Maps(full @ MapsError::HostAddressesFull { .. })) => {
                warn!("{full}");
            }
            Err(error) => return Err(error.into()),
        }
        Ok(())
    }

    /// The uplink's networks as they are now; nodes whose path they change
    /// are written again.
    async fn sync_uplink_networks(&mut self) -> anyhow::Result<()> {
        let uplink = self.facts.uplink_ifindex();
        if uplink == 0 {
            return Ok(());
        }
        let networks = self.interfaces.ipv4_networks(uplink).await?;
        if networks == self.facts.uplink_networks {
            return Ok(());
        }
        let before = self.local_facts();
        self.facts.uplink_networks = networks;
        let after = self.local_facts();
        let moved: Vec<Ipv4Addr> = self
            .remote_nodes
            .effective()
            .iter()
            .map(|node| node.ip)
            .filter(|ip| before.path_to(*ip) != after.path_to(*ip))
            .collect();
        info!(networks = ?self.facts.uplink_networks, nodes_moved = moved.len(), "the uplink's networks changed");
        self.program_nodes(&moved).await
    }

    /// Full resynchronisation with the node: its addresses, its managed
    /// neighbours, and endpoints whose veth vanished while no notification
    /// could tell.
    pub async fn resync_host(&mut self) -> anyhow::Result<()> {
        self.sync_host_addresses().await?;
        self.sync_neighbours().await?;
        let ifindexes: BTreeSet<u32> = self
            .dataplane
            .programmed_endpoints()
            .map(|(_, endpoint)| endpoint.host_ifindex)
            .collect();
        for ifindex in ifindexes {
            if self.interfaces.by_index(ifindex).await?.is_none() {
                self.interface_removed(ifindex)?;
            }
        }
        Ok(())
    }

    /// The packet event ring, for the relay (once).
    pub fn take_events(&mut self) -> Option<aya::maps::RingBuf<aya::maps::MapData>> {
        self.dataplane.take_events()
    }

    pub fn masquerading(&self) -> bool {
        self.facts.masquerading
    }

    /// Removes pinned links nothing attached or adopted in this run.
    pub fn remove_stale_links(&mut self) -> Vec<std::path::PathBuf> {
        self.dataplane.remove_stale_links()
    }

    fn set_local_node(
        &mut self,
        pod_cidr: Ipv4Network,
        zone: Option<String>,
    ) -> anyhow::Result<()> {
        if self.facts.settings.pod_cidr != Some(pod_cidr) {
            self.facts.settings.pod_cidr = Some(pod_cidr);
            self.write_node_config()?;
            info!(%pod_cidr, "this node's pod CIDR");
        }
        // Which backends are this node's (the Local traffic policies), and
        // which are close (topology-aware routing).
        let changed = self.services.serve_on(ServingNode {
            ip: self.facts.settings.node_ip,
            pod_cidr: Some(pod_cidr),
            zone,
        });
        self.program_services(&changed)
    }
}

/// How often writes that failed are tried again.
const RETRY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// A node change the rules refused, as the error of the source that asked.
fn refused((ip, (field, problem)): (Ipv4Addr, Violation)) -> anyhow::Error {
    Refusal(format!("node {ip}: field `{field}`: {problem}")).into()
}

/// A Service change the rules refused.
fn refused_service((field, problem): Violation) -> anyhow::Error {
    Refusal(format!("field `{field}`: {problem}")).into()
}

/// The frontends an earlier agent programmed, kept (as [`Source::Pinned`],
/// one Service per frontend) until a source names them: connections to
/// Services keep working across a restart.
fn pinned_services(dataplane: &Dataplane, node: ServingNode) -> Services {
    let mut services = Services::on_node(node);
    for (key, programmed) in dataplane.programmed_services() {
        let Some(frontend) = frontend_of(key) else {
            warn!(
                ?key,
                "pinned service map: a protocol no agent writes; dropped"
            );
            continue;
        };
        // An outside-local entry comes back with its frontend's.
        if frontend.scope != Scope::Everyone {
            continue;
        }
        let outside_local = programmed.flags & service_flags::OUTSIDE_LOCAL != 0;
        let ranged = programmed.flags & service_flags::SOURCE_RANGES != 0;
        let service = ServiceSpec {
            name: frontend.to_string(),
            ip: frontend.ip,
            external_ips: Vec::new(),
            load_balancer_ips: Vec::new(),
            source_ranges: programmed.source_ranges.clone(),
            external_traffic_local: outside_local,
            internal_traffic_local: false,
            health_check_node_port: None,
            address_is_external: outside_local || ranged,
            ports: vec![ServicePort {
                node_port: None,
                port: frontend.port,
                protocol: frontend.protocol,
                backends: programmed.backends.iter().map(backend_address).collect(),
                terminating_backends: Vec::new(),
                zone_hints: BTreeMap::new(),
            }],
            session_affinity_seconds: (programmed.affinity_seconds != 0)
                .then_some(programmed.affinity_seconds),
            created: None,
        };
        // One frontend per Service, each named by it: they cannot collide.
        let _ = services.upsert(Source::Pinned, service);
    }
    services
}

/// Hands an outcome back; a requester that stopped waiting is no error.
fn answer<T>(reply: Reply<T>, outcome: anyhow::Result<T>) {
    let _ = reply.send(outcome);
}
