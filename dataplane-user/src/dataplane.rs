//! The loaded dataplane: programs, maps, and where the programs are attached.
//! Keeps in-memory mirrors of the endpoint and node maps so attach, detach
//! and update decisions need no map scans.

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
};

use aya::{
    Ebpf,
    programs::{TcAttachType, tc::SchedClassifierLinkId},
};
use dataplane_common::{Endpoint, FlowKey, NatEntry, NodeConfig, names};
use ipnetwork::Ipv4Network;
use tracing::debug;

use crate::{
    interfaces::Interface,
    loader::classifier,
    maps::{CounterTotal, Maps, MapsError},
};

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("cannot attach {program} to {interface}: {source}")]
    Attach {
        program: &'static str,
        interface: String,
        source: aya::programs::ProgramError,
    },
    #[error(transparent)]
    Maps(#[from] MapsError),
}

/// A program attached to an interface in one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Attachment {
    program: &'static str,
    ifindex: u32,
    egress: bool,
}

pub struct Dataplane {
    ebpf: Ebpf,
    maps: Maps,
    links: HashMap<Attachment, SchedClassifierLinkId>,
    endpoints: BTreeMap<Ipv4Addr, Endpoint>,
    remote_nodes: BTreeMap<Ipv4Addr, Ipv4Network>,
}

impl Dataplane {
    /// Wraps a loaded object. Endpoints and nodes already in the (pinned) maps
    /// are kept in the mirrors but not attached: the caller decides to adopt
    /// or drop them.
    pub fn new(mut ebpf: Ebpf) -> Result<Self, DataplaneError> {
        let maps = Maps::take_from(&mut ebpf)?;
        let endpoints = maps.endpoints()?.into_iter().collect();
        let remote_nodes = maps.remote_nodes()?.into_iter().collect();
        Ok(Self {
            ebpf,
            maps,
            links: HashMap::new(),
            endpoints,
            remote_nodes,
        })
    }

    pub fn set_node_config(&mut self, config: NodeConfig) -> Result<(), DataplaneError> {
        Ok(self.maps.set_node_config(config)?)
    }

    /// Endpoints as the map holds them now.
    pub fn endpoints(&self) -> Result<Vec<(Ipv4Addr, Endpoint)>, DataplaneError> {
        Ok(self.maps.endpoints()?)
    }

    /// Remote nodes as the map holds them now.
    pub fn remote_nodes(&self) -> Result<Vec<(Ipv4Addr, Ipv4Network)>, DataplaneError> {
        Ok(self.maps.remote_nodes()?)
    }

    pub fn set_no_masquerade(&mut self, cidrs: &[Ipv4Network]) -> Result<(), DataplaneError> {
        Ok(self.maps.set_no_masquerade(cidrs)?)
    }

    pub fn nat_entries(&self) -> Result<Vec<(FlowKey, NatEntry)>, DataplaneError> {
        Ok(self.maps.nat_entries()?)
    }

    pub fn remove_nat_entry(&mut self, key: &FlowKey) -> Result<bool, DataplaneError> {
        Ok(self.maps.remove_nat_entry(key)?)
    }

    pub fn counters(&self) -> Result<Vec<CounterTotal>, DataplaneError> {
        Ok(self.maps.counters()?)
    }

    pub fn is_attached(&self, ifindex: u32) -> bool {
        self.links.contains_key(&from_pod_on(ifindex))
    }

    /// Registers (or replaces) the endpoint `ip` behind host veth `interface`.
    /// On failure nothing is left half-programmed.
    pub fn add_endpoint(
        &mut self,
        ip: Ipv4Addr,
        interface: &Interface,
        pod_mac: [u8; 6],
    ) -> Result<(), DataplaneError> {
        let endpoint = Endpoint {
            host_ifindex: interface.index,
            pod_mac,
            host_mac: interface.mac,
        };
        let newly_attached = self.attach(names::FROM_POD_PROGRAM, interface, false)?;
        if let Err(error) = self.maps.insert_endpoint(ip, endpoint) {
            if newly_attached {
                self.detach_from_pod_if_unused(interface.index);
            }
            return Err(error.into());
        }
        if let Some(previous) = self.endpoints.insert(ip, endpoint)
            && previous.host_ifindex != interface.index
        {
            self.detach_from_pod_if_unused(previous.host_ifindex);
        }
        Ok(())
    }

    /// Removes the endpoint `ip`; `Ok(false)` when it was not registered.
    pub fn remove_endpoint(&mut self, ip: Ipv4Addr) -> Result<bool, DataplaneError> {
        let removed = self.maps.remove_endpoint(ip)?;
        if let Some(previous) = self.endpoints.remove(&ip) {
            self.detach_from_pod_if_unused(previous.host_ifindex);
        }
        Ok(removed)
    }

    /// Makes the pods of node `ip` reachable through the tunnel, replacing
    /// what was known of that node before.
    pub fn add_remote_node(
        &mut self,
        ip: Ipv4Addr,
        pod_cidr: Ipv4Network,
    ) -> Result<(), DataplaneError> {
        if let Some(previous) = self.remote_nodes.get(&ip).copied()
            && previous != pod_cidr
        {
            self.maps.remove_remote_node(ip, previous)?;
            self.remote_nodes.remove(&ip);
        }
        self.maps.insert_remote_node(ip, pod_cidr)?;
        self.remote_nodes.insert(ip, pod_cidr);
        Ok(())
    }

    /// Forgets node `ip`; `Ok(false)` when it was not known.
    pub fn remove_remote_node(&mut self, ip: Ipv4Addr) -> Result<bool, DataplaneError> {
        let Some(pod_cidr) = self.remote_nodes.remove(&ip) else {
            return Ok(false);
        };
        Ok(self.maps.remove_remote_node(ip, pod_cidr)?)
    }

    /// Attaches the tunnel programs: decapsulation on the uplink's ingress,
    /// the node's own pod-bound traffic on its egress, and the guard on the
    /// VXLAN device.
    pub fn attach_tunnel(
        &mut self,
        vxlan: &Interface,
        uplink: &Interface,
    ) -> Result<(), DataplaneError> {
        self.attach(names::FROM_TUNNEL_PROGRAM, vxlan, false)?;
        self.attach(names::FROM_UPLINK_PROGRAM, uplink, false)?;
        self.attach(names::FROM_HOST_PROGRAM, uplink, true)?;
        Ok(())
    }

    /// Attaches `program` to `interface` unless it already is; `Ok(true)` if it was not.
    fn attach(
        &mut self,
        program: &'static str,
        interface: &Interface,
        egress: bool,
    ) -> Result<bool, DataplaneError> {
        let attachment = Attachment {
            program,
            ifindex: interface.index,
            egress,
        };
        if self.links.contains_key(&attachment) {
            return Ok(false);
        }
        let direction = if egress {
            TcAttachType::Egress
        } else {
            TcAttachType::Ingress
        };
        let link = classifier(&mut self.ebpf, program)
            .attach(&interface.name, direction)
            .map_err(|source| DataplaneError::Attach {
                program,
                interface: interface.name.clone(),
                source,
            })?;
        self.links.insert(attachment, link);
        Ok(true)
    }

    fn detach_from_pod_if_unused(&mut self, ifindex: u32) {
        if self
            .endpoints
            .values()
            .any(|endpoint| endpoint.host_ifindex == ifindex)
        {
            return;
        }
        if let Some(link) = self.links.remove(&from_pod_on(ifindex))
            && let Err(error) = classifier(&mut self.ebpf, names::FROM_POD_PROGRAM).detach(link)
        {
            // The veth is usually gone already (pod deleted), taking the link with it.
            debug!(ifindex, %error, "detaching from-pod program");
        }
    }
}

fn from_pod_on(ifindex: u32) -> Attachment {
    Attachment {
        program: names::FROM_POD_PROGRAM,
        ifindex,
        egress: false,
    }
}
