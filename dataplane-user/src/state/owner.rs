//! The task that owns the node's desired state and answers every command
//! in turn: no locks, one order of changes.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    time::Instant,
};

use dataplane_common::{NodeConfig, service_flags};
use ipnetwork::Ipv4Network;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::{
    Command, Reply, ServiceTables, nat_table::NatTable, reconcile::Reconciler, report::Watchers,
};
use crate::{
    api::{FrontendEntry, ServiceEntry},
    config::{NatSettings, NodeSettings},
    dataplane::{Dataplane, DataplaneError},
    interfaces::Interfaces,
    maps::{MapsError, backend_address, frontend_of, ipv4_cidr},
    model::{
        EndpointSources, EndpointSpec, Frontend, HealthCheck, LocalFacts, NodeSpec, RemoteNodes,
        Scope, ServicePort, ServiceSpec, Services, ServingNode, Source, Violation,
    },
};

/// The node's facts, fixed at start-up (the pod CIDR may still come from
/// Kubernetes).
#[derive(Debug, Clone)]
pub struct NodeFacts {
    /// The node settings with `node_ip` resolved.
    pub settings: NodeSettings,
    /// MTU pods must use so their packets fit the tunnel; `None` without one.
    pub pod_mtu: Option<u32>,
    /// Whether pod traffic leaving the cluster is masqueraded.
    pub masquerading: bool,
    pub nat: NatSettings,
    /// Where nodes and endpoints come from, for `status`.
    pub sources: Vec<String>,
    /// What NODE_CONFIG holds.
    pub node_config: NodeConfig,
}

pub struct Owner {
    pub(super) facts: NodeFacts,
    pub(super) interfaces: Interfaces,
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
}

impl Owner {
    /// Takes over a loaded dataplane. Nodes already in the pinned maps are
    /// kept (as [`Source::Pinned`]) until a source says otherwise.
    pub fn new(
        facts: NodeFacts,
        interfaces: Interfaces,
        dataplane: Dataplane,
        nat: NatTable,
        service_tables: ServiceTables,
    ) -> Self {
        let mut remote_nodes = RemoteNodes::default();
        let pinned: Vec<NodeSpec> = dataplane
            .programmed_nodes()
            .map(|(ip, pod_cidr)| NodeSpec { ip, pod_cidr })
            .collect();
        // What an earlier agent programmed obeyed the rules then; a node that
        // does not any more (its own IP, now) is dropped by the next reconcile.
        let local = facts.settings.local_facts();
        if let Err((ip, (field, problem))) = remote_nodes.replace(Source::Pinned, &pinned, &local) {
            warn!(%ip, "pinned node map: {field}: {problem}; starting from an empty node set");
        }
        let node = ServingNode {
            ip: facts.settings.node_ip,
            pod_cidr: facts.settings.pod_cidr,
        };
        let services = pinned_services(&dataplane, node);
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
        }
    }

    fn local_facts(&self) -> LocalFacts {
        self.facts.settings.local_facts()
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
                _ = retry.tick() => self.retry_failed(),
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
            Command::ResyncHost(reply) => answer(reply, self.resync_host().await),
            Command::UpsertNode(source, node, reply) => {
                let changed = self.remote_nodes.upsert(source, node, &self.local_facts());
                answer(
                    reply,
                    changed
                        .map_err(refused)
                        .and_then(|changed| self.program_nodes(&changed)),
                );
            }
            Command::WithdrawNode(source, ip, reply) => {
                let changed = self.remote_nodes.withdraw(source, ip, &self.local_facts());
                let removed = !changed.is_empty();
                answer(reply, self.program_nodes(&changed).map(|()| removed));
            }
            Command::ReplaceNodes(source, nodes, reply) => {
                answer(reply, self.replace_nodes_skipping_invalid(source, nodes));
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
                let changed = self.checked_service(&service).and_then(|()| {
                    self.services
                        .upsert(source, service)
                        .map_err(refused_service)
                });
                answer(
                    reply,
                    changed.and_then(|changed| self.program_services(&changed)),
                );
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
            Command::LocalPodCidr(pod_cidr) => {
                if let Err(error) = self.set_local_pod_cidr(pod_cidr) {
                    warn!("applying this node's pod CIDR {pod_cidr}: {error:#}");
                }
            }
            Command::Status(reply) => answer(reply, self.status().await),
            Command::Endpoints(reply) => answer(reply, self.list_endpoints().await),
            Command::Nodes(reply) => {
                answer(reply, Ok(self.remote_nodes.effective().iter().collect()));
            }
            Command::Counters(reply) => answer(reply, self.counter_entries()),
            Command::Tables(reply) => answer(reply, Ok(self.table_sizes())),
            Command::Watch(traces, reply) => answer(reply, self.watch(traces)),
            Command::Unwatch(traces) => self.unwatch(traces),
        }
    }

    /// Writes the nodes whose desired entry changed.
    fn program_nodes(&mut self, changed: &[Ipv4Addr]) -> anyhow::Result<()> {
        self.reconciler
            .write_nodes(&mut self.dataplane, self.remote_nodes.effective(), changed)
    }

    /// `source` lists exactly `nodes`, except those breaking a rule, which
    /// are skipped with a warning (one bad Node object must not hold up
    /// the cluster's other nodes).
    fn replace_nodes_skipping_invalid(
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
        self.program_nodes(&changed)
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

    fn retry_failed(&mut self) {
        self.reconciler
            .retry_nodes(&mut self.dataplane, self.remote_nodes.effective());
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
        let any = u8::from(!self.dataplane.programmed_services().is_empty());
        let outside_local = u8::from(self.dataplane.serves_outside_local());
        let config = &mut self.facts.node_config;
        if (config.services, config.outside_local) != (any, outside_local) {
            (config.services, config.outside_local) = (any, outside_local);
            self.dataplane.set_node_config(self.facts.node_config)?;
        }
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
            .and_then(|()| service.validate_node_ports(node_ports))
            .map_err(|(field, problem)| {
                anyhow::anyhow!("service {}: field `{field}`: {problem}", service.name)
            })
    }

    /// `source` lists exactly `services`. A Service that breaks a rule
    /// refuses the whole list, except from Kubernetes, where it is skipped
    /// with a warning (one bad object must not hold up the others).
    fn replace_services(
        &mut self,
        source: Source,
        services: Vec<ServiceSpec>,
    ) -> anyhow::Result<()> {
        let mut valid = Vec::with_capacity(services.len());
        for service in services {
            match self.checked_service(&service) {
                Ok(()) => valid.push(service),
                Err(error) if source == Source::Kubernetes => {
                    warn!("service skipped: {error:#}");
                }
                Err(error) => return Err(error),
            }
        }
        let services = valid;
        let changed = self
            .services
            .replace(source, services)
            .map_err(refused_service)?;
        self.program_services(&changed)
    }

    fn service_entries(&self) -> Vec<ServiceEntry> {
        self.services
            .list()
            .into_iter()
            .map(|(source, service)| ServiceEntry {
                source,
                service: service.clone(),
            })
            .collect()
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
        (frontends, self.dataplane.service_connection_entries())
    }

    pub async fn apply_config_file(
        &mut self,
        nodes: Vec<NodeSpec>,
        endpoints: &[EndpointSpec],
        services: Vec<ServiceSpec>,
    ) -> anyhow::Result<()> {
        // Every endpoint's veth must exist before anything changes.
        let resolved = self.checked_interfaces(endpoints).await?;
        self.replace_services(Source::ConfigFile, services)?;
        let changed = self
            .remote_nodes
            .replace(Source::ConfigFile, &nodes, &self.local_facts())
            .map_err(refused)?;
        self.last_reconcile = Instant::now();
        self.program_nodes(&changed)?;
        self.replace_file_endpoints(endpoints, resolved)
    }

    /// Puts every address of the node in the host address map. A node with
    /// more addresses than the map holds keeps working on the ones that fit
    /// (warned about); only a failure to read or write is an error.
    async fn sync_host_addresses(&mut self) -> anyhow::Result<()> {
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

    /// Full resynchronisation with the node: its addresses, and endpoints
    /// whose veth vanished while no notification could tell.
    pub async fn resync_host(&mut self) -> anyhow::Result<()> {
        self.sync_host_addresses().await?;
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

    fn set_local_pod_cidr(&mut self, pod_cidr: Ipv4Network) -> anyhow::Result<()> {
        if self.facts.settings.pod_cidr == Some(pod_cidr) {
            return Ok(());
        }
        self.facts.node_config.pod_cidr = ipv4_cidr(pod_cidr);
        self.dataplane.set_node_config(self.facts.node_config)?;
        self.facts.settings.pod_cidr = Some(pod_cidr);
        info!(%pod_cidr, "this node's pod CIDR");
        // Which backends are this node's (the Local traffic policies).
        let changed = self.services.serve_on(ServingNode {
            ip: self.facts.settings.node_ip,
            pod_cidr: Some(pod_cidr),
        });
        self.program_services(&changed)
    }
}

/// How often writes that failed are tried again.
const RETRY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// A node change the rules refused, as the error of the source that asked.
fn refused((ip, (field, problem)): (Ipv4Addr, Violation)) -> anyhow::Error {
    anyhow::anyhow!("node {ip}: field `{field}`: {problem}")
}

/// A Service change the rules refused.
fn refused_service((field, problem): Violation) -> anyhow::Error {
    anyhow::anyhow!("field `{field}`: {problem}")
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
        let service = ServiceSpec {
            name: frontend.to_string(),
            ip: frontend.ip,
            external_ips: Vec::new(),
            external_traffic_local: outside_local,
            internal_traffic_local: false,
            health_check_node_port: None,
            address_is_external: outside_local,
            ports: vec![ServicePort {
                node_port: None,
                port: frontend.port,
                protocol: frontend.protocol,
                backends: programmed.backends.iter().map(backend_address).collect(),
            }],
            session_affinity_seconds: (programmed.affinity_seconds != 0)
                .then_some(programmed.affinity_seconds),
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
