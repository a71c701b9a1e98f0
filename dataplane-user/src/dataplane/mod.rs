//! The loaded dataplane: programs, maps, and where the programs are attached.
//! Keeps in-memory mirrors of the endpoint and node maps so attach, detach
//! and update decisions need no map scans.
//! How programs are attached and pinned: [`links`].

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
};

use aya::Ebpf;
use dataplane_common::{Backend, Endpoint, NodeConfig, ServiceKey, names};
use ipnetwork::Ipv4Network;

#[cfg(test)]
pub(crate) mod fake;
mod links;
mod policy;
mod services;
#[cfg(test)]
mod tests;

pub use links::{Attachment, Attachments, Links};
use links::{from_pod_on, to_pod_on};
pub use policy::{PolicyEntries, PolicySwitch};
pub use services::FrontendSettings;

use crate::{
    interfaces::Interface,
    maps::{
        CounterTotal, Maps, MapsError, NatMap, PolicyTable, ProgrammedNode, ProgrammedService,
        plan_slots,
    },
};

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("cannot attach {program} to {interface}: {source}")]
    Attach {
        program: &'static str,
        interface: String,
        source: aya::programs::ProgramError,
    },
    #[error("cannot pin the link of {program} on {interface} at {path}: {detail}")]
    Pin {
        program: &'static str,
        interface: String,
        path: PathBuf,
        detail: String,
    },
    #[error(transparent)]
    Maps(#[from] MapsError),
}

pub struct Dataplane {
    maps: Maps,
    links: Box<dyn Attachments>,
    endpoints: BTreeMap<IpAddr, Endpoint>,
    /// The endpoints behind each host veth: detaching and a veth's removal
    /// look up one veth instead of scanning every endpoint.
    behind: HashMap<u32, BTreeSet<IpAddr>>,
    remote_nodes: BTreeMap<Ipv4Addr, ProgrammedNode>,
    /// What the host address map holds.
    host_addresses: BTreeSet<IpAddr>,
    /// The Service frontends programmed (the mirror of the Service maps).
    services: BTreeMap<ServiceKey, ProgrammedService>,
    /// How many of them are for outside clients of a Local frontend.
    outside_local_frontends: usize,
    /// The id the next new frontend gets (ids are not reused in a run).
    next_service_id: u32,
    /// What each policy table holds (index: the table).
    policy_tables: [PolicyTable; 2],
    /// Which table the programs read, and whether a pod is isolated.
    policy_switch: PolicySwitch,
}

impl Dataplane {
    /// Wraps a loaded object. Endpoints and nodes already in the (pinned) maps
    /// are kept in the mirrors but not attached: the caller decides to adopt
    /// or drop them.
    pub fn new(mut ebpf: Ebpf, pin_dir: &Path) -> Result<Self, DataplaneError> {
        let maps = Maps::take_from(&mut ebpf)?;
        Self::with(maps, Box::new(Links::new(ebpf, pin_dir)?))
    }

    /// The same over any maps and attachments (unit tests: fakes).
    pub fn with(maps: Maps, links: Box<dyn Attachments>) -> Result<Self, DataplaneError> {
        let endpoints: BTreeMap<IpAddr, Endpoint> = maps.endpoints()?.into_iter().collect();
        let mut behind: HashMap<u32, BTreeSet<IpAddr>> = HashMap::new();
        for (ip, endpoint) in &endpoints {
            behind.entry(endpoint.host_ifindex).or_default().insert(*ip);
        }
        let remote_nodes = maps.remote_nodes()?.into_iter().collect();
        let services: BTreeMap<ServiceKey, ProgrammedService> =
            maps.services.programmed()?.into_iter().collect();
        let next_service_id = services
            .values()
            .map(|service| service.id + 1)
            .max()
            .unwrap_or(0);
        let outside_local_frontends = services.keys().filter(|key| key.scope != 0).count();
        let policy_tables = maps.policy.programmed()?;
        let pinned_config = maps.node_config()?;
        let policy_switch = PolicySwitch {
            isolating: pinned_config.policy != 0,
            generation: pinned_config.policy_generation,
        };
        Ok(Self {
            maps,
            links,
            endpoints,
            behind,
            remote_nodes,
            host_addresses: BTreeSet::new(),
            services,
            outside_local_frontends,
            next_service_id,
            policy_tables,
            policy_switch,
        })
    }

    /// Attaches the tunnel programs: decapsulation on the uplink's ingress,
    /// the node's own pod-bound traffic on its egress, and the guard on the
    /// VXLAN device.
    pub fn attach_tunnel(
        &mut self,
        vxlan: &Interface,
        uplink: &Interface,
    ) -> Result<(), DataplaneError> {
        self.links
            .attach(names::FROM_TUNNEL_PROGRAM, vxlan, false)?;
        self.links
            .attach(names::FROM_UPLINK_PROGRAM, uplink, false)?;
        self.links.attach(names::FROM_HOST_PROGRAM, uplink, true)?;
        Ok(())
    }

    /// Attaches the socket hooks to the root of the cgroup2 hierarchy at
    /// `cgroup` (see [`Attachments::attach_host_sockets`]).
    pub fn attach_host_sockets(&mut self, cgroup: &Path) -> Result<(), DataplaneError> {
        self.links.attach_host_sockets(cgroup)
    }

    /// The cgroup the socket hooks are attached to, if they are.
    pub fn host_sockets(&self) -> Option<&Path> {
        self.links.host_sockets()
    }

    /// Takes over every pinned interface link back to back (see
    /// [`Attachments::take_over_links`]); how many.
    pub fn take_over_links(&mut self, previous: Option<&Path>) -> usize {
        self.links.take_over_links(previous)
    }

    /// Removes pinned links this agent did not attach or adopt.
    pub fn remove_stale_links(&mut self) -> Vec<PathBuf> {
        self.links.remove_stale_links()
    }

    pub fn set_node_config(&mut self, config: NodeConfig) -> Result<(), DataplaneError> {
        self.maps.set_node_config(config)?;
        self.policy_switch = PolicySwitch {
            isolating: config.policy != 0,
            generation: config.policy_generation,
        };
        Ok(())
    }

    /// Endpoints as the map holds them now.
    pub fn endpoints(&self) -> Result<Vec<(IpAddr, Endpoint)>, DataplaneError> {
        Ok(self.maps.endpoints()?)
    }

    /// The host veths a pod with IPv6 is behind, as the map holds them now.
    pub fn host_veths(&self) -> Result<Vec<(u32, [u8; 6])>, DataplaneError> {
        Ok(self.maps.host_veths()?)
    }

    /// The endpoint registered for `ip`, if any.
    pub fn endpoint(&self, ip: IpAddr) -> Option<Endpoint> {
        self.endpoints.get(&ip).copied()
    }

    /// The endpoints behind host veth `ifindex`.
    pub fn endpoints_behind(&self, ifindex: u32) -> Vec<IpAddr> {
        self.behind
            .get(&ifindex)
            .map_or_else(Vec::new, |ips| ips.iter().copied().collect())
    }

    /// Makes the node's own addresses exactly `addresses`; `Ok(true)` if
    /// that changed anything.
    pub fn set_host_addresses(
        &mut self,
        addresses: BTreeSet<IpAddr>,
    ) -> Result<bool, DataplaneError> {
        if addresses == self.host_addresses {
            return Ok(false);
        }
        let applied = self.maps.set_host_addresses(&addresses);
        // A full map holds what fit: the set is kept as wanted, so the next
        // notification compares against it instead of redoing the whole set
        // (before, every one did: a node with more addresses than the map
        // holds spun a CPU). After any other failure the next call starts over.
        self.host_addresses = match &applied {
            Ok(()) | Err(MapsError::HostAddressesFull { .. }) => addresses,
            Err(_) => BTreeSet::new(),
        };
        applied?;
        Ok(true)
    }

    pub fn host_addresses(&self) -> &BTreeSet<IpAddr> {
        &self.host_addresses
    }

    /// The remote nodes programmed (the mirror of the maps).
    pub fn programmed_nodes(&self) -> impl Iterator<Item = (Ipv4Addr, ProgrammedNode)> + '_ {
        self.remote_nodes.iter().map(|(ip, node)| (*ip, *node))
    }

    pub fn programmed_node(&self, ip: Ipv4Addr) -> Option<ProgrammedNode> {
        self.remote_nodes.get(&ip).copied()
    }

    /// The endpoints programmed (the mirror of the map).
    pub fn programmed_endpoints(&self) -> impl Iterator<Item = (IpAddr, Endpoint)> + '_ {
        self.endpoints.iter().map(|(ip, endpoint)| (*ip, *endpoint))
    }

    pub fn set_monitor(
        &mut self,
        drops: bool,
        traces: bool,
        events_per_second: u32,
    ) -> Result<(), DataplaneError> {
        Ok(self.maps.set_monitor(drops, traces, events_per_second)?)
    }

    pub fn take_events(&mut self) -> Option<aya::maps::RingBuf<aya::maps::MapData>> {
        self.maps.take_events()
    }

    pub fn set_no_masquerade(&mut self, cidrs: &[Ipv4Network]) -> Result<(), DataplaneError> {
        Ok(self.maps.set_no_masquerade(cidrs)?)
    }

    /// The connection table, for the task that owns it.
    pub fn take_nat(&mut self) -> Option<NatMap> {
        self.maps.take_nat()
    }

    pub fn counters(&self) -> Result<Vec<CounterTotal>, DataplaneError> {
        Ok(self.maps.counters()?)
    }

    /// Where the programs are attached now.
    pub fn attachments(&self) -> Vec<Attachment> {
        let mut attachments: Vec<Attachment> = self.links.attached().iter().copied().collect();
        attachments.sort_by_key(|attachment| (attachment.program, attachment.ifindex));
        attachments
    }

    pub fn is_attached(&self, ifindex: u32) -> bool {
        self.links.attached().contains(&from_pod_on(ifindex))
    }

    /// Registers (or replaces) the endpoint `ip` behind host veth `interface`.
    /// On failure nothing is left half-programmed.
    pub fn add_endpoint(
        &mut self,
        ip: IpAddr,
        interface: &Interface,
        pod_mac: [u8; 6],
    ) -> Result<(), DataplaneError> {
        let endpoint = Endpoint {
            host_ifindex: interface.index,
            pod_mac,
            host_mac: interface.mac,
        };
        let newly_attached = self.attach_pod_programs(interface)?;
        // A pod with an IPv6 address: its link-local neighbour discovery is
        // answered too (a pod without one gets no IPv6 of the node's).
        let noted = match ip {
            IpAddr::V6(_) => self.maps.insert_host_veth(interface.index, interface.mac),
            IpAddr::V4(_) => Ok(()),
        };
        if let Err(error) = noted.and_then(|()| self.maps.insert_endpoint(ip, endpoint)) {
            self.forget_host_veth_without_ipv6(interface.index);
            if newly_attached {
                self.detach_from_pod_if_unused(interface.index);
            }
            return Err(error.into());
        }
        self.behind.entry(interface.index).or_default().insert(ip);
        if let Some(previous) = self.endpoints.insert(ip, endpoint)
            && previous.host_ifindex != interface.index
        {
            self.forget_behind(ip, previous.host_ifindex);
            self.detach_from_pod_if_unused(previous.host_ifindex);
        }
        Ok(())
    }

    /// Removes the endpoint `ip`; `Ok(false)` when it was not registered.
    pub fn remove_endpoint(&mut self, ip: IpAddr) -> Result<bool, DataplaneError> {
        let removed = self.maps.remove_endpoint(ip)?;
        if let IpAddr::V4(ip) = ip {
            self.maps.policy.forget_drops(ip)?;
        }
        if let Some(previous) = self.endpoints.remove(&ip) {
            self.forget_behind(ip, previous.host_ifindex);
            self.detach_from_pod_if_unused(previous.host_ifindex);
        }
        Ok(removed)
    }

    /// Makes the pods of node `ip` reachable by `node.path`, replacing what
    /// was known of that node before (a path change overwrites in place:
    /// packets in flight keep a route).
    pub fn add_remote_node(
        &mut self,
        ip: Ipv4Addr,
        node: ProgrammedNode,
    ) -> Result<(), DataplaneError> {
        if let Some(previous) = self.remote_nodes.get(&ip).copied()
            && (previous.pod_cidr != node.pod_cidr || previous.pod_cidr_ipv6 != node.pod_cidr_ipv6)
        {
            self.maps.remove_remote_node(ip, &previous)?;
            self.remote_nodes.remove(&ip);
        }
        self.maps.insert_remote_node(ip, node)?;
        self.remote_nodes.insert(ip, node);
        Ok(())
    }

    /// Forgets node `ip`; `Ok(false)` when it was not known.
    pub fn remove_remote_node(&mut self, ip: Ipv4Addr) -> Result<bool, DataplaneError> {
        let Some(node) = self.remote_nodes.remove(&ip) else {
            return Ok(false);
        };
        Ok(self.maps.remove_remote_node(ip, &node)?)
    }

    fn forget_behind(&mut self, ip: IpAddr, ifindex: u32) {
        if let Some(ips) = self.behind.get_mut(&ifindex) {
            ips.remove(&ip);
            if ips.is_empty() {
                self.behind.remove(&ifindex);
            }
            self.forget_host_veth_without_ipv6(ifindex);
        }
    }

    /// Takes the host veth `ifindex` out of `HOST_VETHS` when no IPv6
    /// endpoint is behind it (best effort: a stale entry only answers
    /// neighbour discovery on that veth).
    fn forget_host_veth_without_ipv6(&mut self, ifindex: u32) {
        let ipv6_behind = self
            .behind
            .get(&ifindex)
            .is_some_and(|ips| ips.iter().any(IpAddr::is_ipv6));
        if !ipv6_behind {
            let _ = self.maps.remove_host_veth(ifindex);
        }
    }

    /// Attaches both programs of a pod's host veth (what the pod sends; what
    /// the node's stack sends it); `Ok(true)` if either was not attached.
    fn attach_pod_programs(&mut self, interface: &Interface) -> Result<bool, DataplaneError> {
        let from_pod = self
            .links
            .attach(names::FROM_POD_PROGRAM, interface, false)?;
        match self.links.attach(names::TO_POD_PROGRAM, interface, true) {
            Ok(to_pod) => Ok(from_pod || to_pod),
            Err(error) => {
                if from_pod {
                    self.links.detach(&from_pod_on(interface.index));
                }
                Err(error)
            }
        }
    }

    fn detach_from_pod_if_unused(&mut self, ifindex: u32) {
        if !self.behind.contains_key(&ifindex) {
            self.links.detach(&from_pod_on(ifindex));
            self.links.detach(&to_pod_on(ifindex));
        }
    }
}
