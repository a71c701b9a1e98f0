//! Turns the difference between the desired state and what the maps hold
//! into map writes and attachments. Only entries that changed are written;
//! a write that fails is remembered and tried again.

use std::{
    collections::{BTreeSet, HashSet},
    net::Ipv4Addr,
};

use dataplane_common::{Endpoint, NodeConfig};
use tracing::{info, warn};

use crate::{
    dataplane::{Dataplane, DataplaneError},
    interfaces::Interface,
    model::{EndpointSpec, NodeSet, NodeSpec},
};

pub struct Reconciler {
    dataplane: Dataplane,
    /// Nodes whose last write failed.
    failed_nodes: BTreeSet<Ipv4Addr>,
}

impl Reconciler {
    pub fn new(dataplane: Dataplane) -> Self {
        Self {
            dataplane,
            failed_nodes: BTreeSet::new(),
        }
    }

    pub fn dataplane(&self) -> &Dataplane {
        &self.dataplane
    }

    pub fn dataplane_mut(&mut self) -> &mut Dataplane {
        &mut self.dataplane
    }

    /// The remote nodes the maps hold.
    pub fn programmed_nodes(&self) -> impl Iterator<Item = NodeSpec> + '_ {
        self.dataplane
            .programmed_nodes()
            .map(|(ip, pod_cidr)| NodeSpec { ip, pod_cidr })
    }

    /// Brings the entries of `ips` in line with `desired`; the first failure
    /// is returned, every failure is retried later.
    pub fn write_nodes(&mut self, desired: &NodeSet, ips: &[Ipv4Addr]) -> anyhow::Result<()> {
        let mut first_failure = None;
        for &ip in ips {
            match self.write_node(desired, ip) {
                Ok(()) => {
                    self.failed_nodes.remove(&ip);
                }
                Err(error) => {
                    self.failed_nodes.insert(ip);
                    first_failure.get_or_insert_with(|| {
                        anyhow::anyhow!("node {ip} is not programmed yet (retried): {error}")
                    });
                }
            }
        }
        first_failure.map_or(Ok(()), Err)
    }

    fn write_node(&mut self, desired: &NodeSet, ip: Ipv4Addr) -> Result<(), DataplaneError> {
        let programmed = self.dataplane.programmed_node(ip);
        match desired.get(ip) {
            Some(pod_cidr) if programmed != Some(pod_cidr) => {
                self.dataplane.add_remote_node(ip, pod_cidr)?;
                info!(%ip, %pod_cidr, "node programmed");
            }
            None if programmed.is_some() => {
                self.dataplane.remove_remote_node(ip)?;
                info!(%ip, "node removed");
            }
            _ => {}
        }
        Ok(())
    }

    /// Tries the failed writes again.
    pub fn retry_nodes(&mut self, desired: &NodeSet) {
        if self.failed_nodes.is_empty() {
            return;
        }
        let ips: Vec<Ipv4Addr> = self.failed_nodes.iter().copied().collect();
        if let Err(error) = self.write_nodes(desired, &ips) {
            warn!(
                still_failing = self.failed_nodes.len(),
                "retrying node writes: {error:#}"
            );
        }
    }

    pub fn endpoint(&self, ip: Ipv4Addr) -> Option<Endpoint> {
        self.dataplane.endpoint(ip)
    }

    pub fn endpoints_behind(&self, ifindex: u32) -> Vec<Ipv4Addr> {
        self.dataplane.endpoints_behind(ifindex)
    }

    /// Every host veth an endpoint is behind.
    pub fn endpoint_interfaces(&self) -> Vec<u32> {
        let ifindexes: HashSet<u32> = self
            .dataplane
            .programmed_endpoints()
            .map(|(_, endpoint)| endpoint.host_ifindex)
            .collect();
        ifindexes.into_iter().collect()
    }

    /// Endpoints as the pinned map holds them, before any are adopted.
    pub fn pinned_endpoints(&self) -> Result<Vec<(Ipv4Addr, Endpoint)>, DataplaneError> {
        self.dataplane.endpoints()
    }

    pub fn adopt_endpoint(
        &mut self,
        ip: Ipv4Addr,
        interface: &Interface,
        endpoint: Endpoint,
    ) -> Result<(), DataplaneError> {
        self.dataplane.add_endpoint(ip, interface, endpoint.pod_mac)
    }

    pub fn add_endpoint(
        &mut self,
        endpoint: &EndpointSpec,
        interface: &Interface,
    ) -> Result<(), DataplaneError> {
        self.dataplane
            .add_endpoint(endpoint.ip, interface, endpoint.mac.into_array())
    }

    pub fn remove_endpoint(&mut self, ip: Ipv4Addr) -> Result<bool, DataplaneError> {
        self.dataplane.remove_endpoint(ip)
    }

    pub fn set_host_addresses(
        &mut self,
        addresses: BTreeSet<Ipv4Addr>,
    ) -> Result<bool, DataplaneError> {
        self.dataplane.set_host_addresses(addresses)
    }

    pub fn set_node_config(&mut self, config: NodeConfig) -> Result<(), DataplaneError> {
        self.dataplane.set_node_config(config)
    }
}
