//! The loaded dataplane: programs, maps, and where the from-pod program is
//! attached. Keeps an in-memory mirror of the endpoints map so attach and
//! detach decisions need no map scans.

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
};

use aya::{
    Ebpf,
    programs::{TcAttachType, tc::SchedClassifierLinkId},
};
use dataplane_common::Endpoint;
use ipnetwork::Ipv4Network;
use tracing::debug;

use crate::{
    interfaces::Interface,
    loader::from_pod_program,
    maps::{CounterTotal, Maps, MapsError},
};

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("cannot attach the from-pod program to {interface}: {source}")]
    Attach {
        interface: String,
        source: aya::programs::ProgramError,
    },
    #[error(transparent)]
    Maps(#[from] MapsError),
}

pub struct Dataplane {
    ebpf: Ebpf,
    maps: Maps,
    /// tcx links of the from-pod program, by host veth ifindex.
    attachments: HashMap<u32, SchedClassifierLinkId>,
    endpoints: BTreeMap<Ipv4Addr, Endpoint>,
}

impl Dataplane {
    /// Wraps a loaded object. Endpoints already in the (pinned) map are kept
    /// in the mirror but not attached: the caller decides to adopt or drop them.
    pub fn new(mut ebpf: Ebpf) -> Result<Self, DataplaneError> {
        let maps = Maps::take_from(&mut ebpf)?;
        let endpoints = maps.endpoints()?.into_iter().collect();
        Ok(Self {
            ebpf,
            maps,
            attachments: HashMap::new(),
            endpoints,
        })
    }

    pub fn set_pod_cidr(&mut self, pod_cidr: Option<Ipv4Network>) -> Result<(), DataplaneError> {
        Ok(self.maps.set_pod_cidr(pod_cidr)?)
    }

    /// Endpoints as the map holds them now.
    pub fn endpoints(&self) -> Result<Vec<(Ipv4Addr, Endpoint)>, DataplaneError> {
        Ok(self.maps.endpoints()?)
    }

    pub fn counters(&self) -> Result<Vec<CounterTotal>, DataplaneError> {
        Ok(self.maps.counters()?)
    }

    pub fn is_attached(&self, ifindex: u32) -> bool {
        self.attachments.contains_key(&ifindex)
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
        let newly_attached = self.attach(interface)?;
        if let Err(error) = self.maps.insert_endpoint(ip, endpoint) {
            if newly_attached {
                self.detach_if_unused(interface.index);
            }
            return Err(error.into());
        }
        if let Some(previous) = self.endpoints.insert(ip, endpoint)
            && previous.host_ifindex != interface.index
        {
            self.detach_if_unused(previous.host_ifindex);
        }
        Ok(())
    }

    /// Removes the endpoint `ip`; `Ok(false)` when it was not registered.
    pub fn remove_endpoint(&mut self, ip: Ipv4Addr) -> Result<bool, DataplaneError> {
        let removed = self.maps.remove_endpoint(ip)?;
        if let Some(previous) = self.endpoints.remove(&ip) {
            self.detach_if_unused(previous.host_ifindex);
        }
        Ok(removed)
    }

    /// Attaches the from-pod program to `interface`; `Ok(true)` if it was not yet.
    fn attach(&mut self, interface: &Interface) -> Result<bool, DataplaneError> {
        if self.attachments.contains_key(&interface.index) {
            return Ok(false);
        }
        let link = from_pod_program(&mut self.ebpf)
            .attach(&interface.name, TcAttachType::Ingress)
            .map_err(|source| DataplaneError::Attach {
                interface: interface.name.clone(),
                source,
            })?;
        self.attachments.insert(interface.index, link);
        Ok(true)
    }

    fn detach_if_unused(&mut self, ifindex: u32) {
        if self
            .endpoints
            .values()
            .any(|endpoint| endpoint.host_ifindex == ifindex)
        {
            return;
        }
        if let Some(link) = self.attachments.remove(&ifindex)
            && let Err(error) = from_pod_program(&mut self.ebpf).detach(link)
        {
            // The veth is usually gone already (pod deleted), taking the link with it.
            debug!(ifindex, %error, "detaching from-pod program");
        }
    }
}
