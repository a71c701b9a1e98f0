//! One owner of the node's state. Sources (config file, local API, CNI
//! plugin through the API, Kubernetes, the node's links and addresses) send
//! what they want as [`Command`]s through a [`StateHandle`]; a single task
//! ([`owner`]) holds the desired state, checks each change against it and has
//! the [`reconcile`]r write the difference into the maps. Status, metrics and
//! listings are answered by the same task, so they always see one state,
//! and nothing else writes the forwarding maps.

mod endpoints;
mod facts;
#[cfg(test)]
mod fake_host;
mod host;
mod nat_table;
mod nodes;
mod owner;
mod policy;
mod reconcile;
mod report;
mod service_tables;
mod services;
#[cfg(test)]
mod tests;

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr},
};

use ipnetwork::{Ipv4Network, Ipv6Network};
use tokio::sync::{mpsc, oneshot};

pub use facts::{NodeFacts, UplinkFacts};
pub use nat_table::{GcReport, NatTable};
pub use owner::Owner;
#[cfg(test)]
pub(crate) use reconcile::{DesiredNodes, Reconciler};
pub use report::TableSizes;
pub use service_tables::{ServiceTables, ServiceTablesFill, Tables};

use crate::{
    api::{
        CounterEntry, EndpointEntry, ErrorKind, FrontendEntry, NodeEntry, PolicyReport,
        ServiceEntry, Status,
    },
    dataplane::DataplaneError,
    interfaces::HostLinks,
    maps::MapsError,
    model::{
        EndpointSpec, NodeSpec, Refusal, ServiceSpec, Source,
        policy::{Connection, Verdict},
    },
};

/// The state owner is not there to answer.
#[derive(Debug, thiserror::Error)]
#[error("the state owner {0}")]
pub struct OwnerGone(&'static str);

/// What kind of failure `error` (a command's) is, by the errors in its
/// chain: what the API tells clients.
pub fn error_kind(error: &anyhow::Error) -> ErrorKind {
    for cause in error.chain() {
        if cause.is::<Refusal>() {
            return ErrorKind::Refused;
        }
        let maps = cause.downcast_ref::<MapsError>().or_else(|| {
            match cause.downcast_ref::<DataplaneError>() {
                Some(DataplaneError::Maps(maps)) => Some(maps),
                _ => None,
            }
        });
        if maps.is_some_and(MapsError::is_full) {
            return ErrorKind::Full;
        }
        if cause.is::<OwnerGone>() {
            return ErrorKind::Unavailable;
        }
    }
    ErrorKind::Failed
}

/// Where a command's outcome goes.
type Reply<T> = oneshot::Sender<anyhow::Result<T>>;

/// A change a source wants, or a question about the state.
pub enum Command {
    /// A pod behind a host veth; refused if another live veth has the address.
    AddEndpoint(EndpointSpec, Reply<()>),
    /// With `host_ifindex`: only while the address is still behind that veth.
    RemoveEndpoint {
        ip: IpAddr,
        host_ifindex: Option<u32>,
        reply: Reply<bool>,
    },
    /// A link of the node is gone; endpoints behind it go too.
    InterfaceRemoved(u32),
    /// Reread the node's addresses.
    SyncHostAddresses(Reply<()>),
    /// The neighbour table has `ip` on interface `ifindex` at `mac`.
    NeighbourResolved {
        ifindex: u32,
        ip: Ipv4Addr,
        mac: [u8; 6],
    },
    /// Reread addresses and drop endpoints whose veth vanished unnoticed.
    ResyncHost(Reply<()>),
    /// `source` lists `node` (too).
    UpsertNode(Source, NodeSpec, Reply<()>),
    /// `source` (`None`: every source) no longer lists the node.
    WithdrawNode(Option<Source>, Ipv4Addr, Reply<bool>),
    /// `source` lists exactly these nodes now; all or nothing.
    ReplaceNodes(Source, Vec<NodeSpec>, Reply<()>),
    /// The config file's nodes, endpoints and Services, checked as a whole first.
    ApplyConfigFile {
        nodes: Vec<NodeSpec>,
        endpoints: Vec<EndpointSpec>,
        services: Vec<ServiceSpec>,
        reply: Reply<()>,
    },
    /// `source` lists the Service (too), replacing its entry of that name.
    UpsertService(Source, ServiceSpec, Reply<()>),
    /// `source` (`None`: every source) no longer lists the Service of that name.
    WithdrawService(Option<Source>, String, Reply<bool>),
    /// `source` lists exactly these Services now; all or nothing.
    ReplaceServices(Source, Vec<ServiceSpec>, Reply<()>),
    Services(Reply<Vec<ServiceEntry>>),
    /// The frontends as programmed, and the connection entries tracked.
    ServiceMaps(Reply<(Vec<FrontendEntry>, usize)>),
    /// This node's pod CIDRs and zone, learned from its Node object.
    LocalNode {
        pod_cidr: Ipv4Network,
        pod_cidr_ipv6: Option<Ipv6Network>,
        zone: Option<String>,
    },
    Status(Reply<Status>),
    Endpoints(Reply<Vec<EndpointEntry>>),
    Nodes(Reply<Vec<NodeEntry>>),
    Counters(Reply<Vec<CounterEntry>>),
    Tables(Reply<TableSizes>),
    /// This node's pods and the policies isolating them.
    Policies(Reply<PolicyReport>),
    /// The verdict the policies give a connection.
    ExplainPolicy(Connection, Reply<Verdict>),
    /// The policy model changed: this node's pods' policy is compiled and
    /// programmed again.
    PoliciesChanged,
    /// A monitor client arrived (`true`: it wants forwarded packets too).
    Watch(bool, Reply<()>),
    Unwatch(bool),
}

/// How sources and readers reach the owner. Cheap to clone.
#[derive(Clone)]
pub struct StateHandle {
    commands: mpsc::Sender<Command>,
}

/// Commands queued for the owner before senders wait.
const QUEUE: usize = 1024;

impl StateHandle {
    /// A handle on `owner`, and the owner's task to run (it ends when every
    /// handle is gone).
    pub fn start<L: HostLinks>(owner: Owner<L>) -> (Self, impl Future<Output = ()> + Send) {
        let (commands, queue) = mpsc::channel(QUEUE);
        (Self { commands }, owner.run(queue))
    }

    /// Starts the owner task; it runs while any handle exists.
    #[cfg(test)]
    pub fn spawn<L: HostLinks>(owner: Owner<L>) -> Self {
        let (handle, owner) = Self::start(owner);
        tokio::spawn(owner);
        handle
    }

    /// Sends a command and waits for its outcome.
    pub async fn ask<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> anyhow::Result<T> {
        let (reply, outcome) = oneshot::channel();
        self.tell(command(reply)).await?;
        outcome
            .await
            .map_err(|_| anyhow::Error::new(OwnerGone("dropped the request")))?
    }

    /// Sends a command that has no answer.
    pub async fn tell(&self, command: Command) -> anyhow::Result<()> {
        self.commands
            .send(command)
            .await
            .map_err(|_| anyhow::Error::new(OwnerGone("has stopped")))
    }

    /// The IPv4 addresses of this node's pods.
    pub async fn pod_addresses(&self) -> anyhow::Result<HashSet<Ipv4Addr>> {
        let endpoints = self.ask(Command::Endpoints).await?;
        Ok(endpoints
            .into_iter()
            .filter_map(|endpoint| match endpoint.ip {
                IpAddr::V4(ip) => Some(ip),
                IpAddr::V6(_) => None,
            })
            .collect())
    }

    pub async fn add_endpoint(&self, endpoint: EndpointSpec) -> anyhow::Result<()> {
        self.ask(|reply| Command::AddEndpoint(endpoint, reply))
            .await
    }

    pub async fn remove_endpoint(
        &self,
        ip: IpAddr,
        host_ifindex: Option<u32>,
    ) -> anyhow::Result<bool> {
        self.ask(|reply| Command::RemoveEndpoint {
            ip,
            host_ifindex,
            reply,
        })
        .await
    }

    pub async fn upsert_node(&self, source: Source, node: NodeSpec) -> anyhow::Result<()> {
        self.ask(|reply| Command::UpsertNode(source, node, reply))
            .await
    }

    pub async fn withdraw_node(
        &self,
        source: Option<Source>,
        ip: Ipv4Addr,
    ) -> anyhow::Result<bool> {
        self.ask(|reply| Command::WithdrawNode(source, ip, reply))
            .await
    }

    pub async fn replace_nodes(&self, source: Source, nodes: Vec<NodeSpec>) -> anyhow::Result<()> {
        self.ask(|reply| Command::ReplaceNodes(source, nodes, reply))
            .await
    }
}
