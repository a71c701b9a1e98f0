//! The task that owns the node's desired state and answers every command
//! in turn: no locks, one order of changes.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    time::Instant,
};

use dataplane_common::NodeConfig;
use tokio::sync::{mpsc, watch};
use tracing::warn;

use super::{
    Command, Reply, ServiceTables,
    nat_table::NatTable,
    policy::PolicyHealth,
    reconcile::{DesiredNodes, Reconciler},
    report::Watchers,
};
use super::{NodeFacts, nodes::refused, services::pinned_services};
use crate::{
    dataplane::{Dataplane, PolicySwitch},
    interfaces::{HostLinks, Interfaces},
    model::{
        EndpointSources, EndpointSpec, Frontend, HealthCheck, LocalFacts, NodeSpec, RemoteNodes,
        ServiceSpec, Services, ServingNode, Source, policy::SharedPolicies,
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
    /// NetworkPolicy as its source has it (empty without one).
    pub(super) policies: SharedPolicies,
    /// How this node's policy stands in the maps.
    pub(super) policy_health: PolicyHealth,
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
                pod_cidr_ipv6: node.pod_cidr_ipv6,
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
            dataplane.policy_switch(),
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
            policies: SharedPolicies::default(),
            policy_health: PolicyHealth::default(),
        }
    }

    /// Writes NODE_CONFIG when what it should hold changed.
    pub(super) fn write_node_config(&mut self) -> anyhow::Result<()> {
        self.write_node_config_with(self.dataplane.policy_switch())
    }

    /// Writes NODE_CONFIG with the policy switch `policy`, when it differs.
    pub(super) fn write_node_config_with(&mut self, policy: PolicySwitch) -> anyhow::Result<()> {
        let wanted = self.facts.node_config(
            !self.dataplane.programmed_services().is_empty(),
            self.dataplane.serves_outside_local(),
            policy,
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
            Command::LocalNode {
                pod_cidr,
                pod_cidr_ipv6,
                zone,
            } => {
                if let Err(error) = self.set_local_node(pod_cidr, pod_cidr_ipv6, zone) {
                    warn!("applying this node's pod CIDR {pod_cidr}: {error:#}");
                }
            }
            Command::Status(reply) => answer(reply, self.status().await),
            Command::Endpoints(reply) => answer(reply, self.list_endpoints().await),
            Command::Nodes(reply) => answer(reply, Ok(self.node_entries())),
            Command::Counters(reply) => answer(reply, self.counter_entries()),
            Command::Tables(reply) => answer(reply, Ok(self.table_sizes())),
            Command::Watch(traces, reply) => answer(reply, self.watch(traces)),
            Command::Policies(reply) => answer(reply, Ok(self.policy_report())),
            Command::ExplainPolicy(connection, reply) => {
                answer(reply, Ok(self.explain_policy(&connection)));
            }
            Command::PoliciesChanged => self.program_policies_or_retry(),
            Command::Unwatch(traces) => self.unwatch(traces),
        }
    }

    /// The policy model, for its source to write.
    pub fn policies(&self) -> SharedPolicies {
        self.policies.clone()
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
        if self.policy_health.pending {
            self.program_policies_or_retry();
        }
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
}

/// How often writes that failed are tried again.
const RETRY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Hands an outcome back; a requester that stopped waiting is no error.
fn answer<T>(reply: Reply<T>, outcome: anyhow::Result<T>) {
    let _ = reply.send(outcome);
}
