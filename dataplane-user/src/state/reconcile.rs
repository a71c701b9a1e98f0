//! Turns the difference between the desired remote nodes and Services and
//! what the maps hold into map writes. Only entries that changed are
//! written; a write that fails is remembered and tried again.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use dataplane_common::{Backend, service_flags};

use tracing::{info, warn};

use crate::{
    dataplane::{Dataplane, DataplaneError, FrontendSettings},
    maps::{ProgrammedNode, backend_entry, service_key},
    model::{Frontend, LocalFacts, NodeSet, Services},
};

/// What the remote nodes' entries should hold: the nodes, how each is
/// reached, and the MACs learned for those on the uplink's network.
pub struct DesiredNodes<'a> {
    pub nodes: &'a NodeSet,
    pub local: &'a LocalFacts,
    pub macs: &'a BTreeMap<Ipv4Addr, [u8; 6]>,
}

impl DesiredNodes<'_> {
    pub fn get(&self, ip: Ipv4Addr) -> Option<ProgrammedNode> {
        let node = self.nodes.get(ip)?;
        Some(ProgrammedNode {
            pod_cidr: node.pod_cidr,
            pod_cidr_ipv6: node.pod_cidr_ipv6,
            path: self.local.path_to(ip),
            mac: self
                .macs
                .get(&ip)
                .copied()
                .filter(|_| self.local.on_uplink_network(ip)),
        })
    }
}

#[derive(Debug, Default)]
pub struct Reconciler {
    /// Nodes whose last write failed.
    failed_nodes: BTreeSet<Ipv4Addr>,
    /// Service frontends whose last write failed.
    failed_frontends: BTreeSet<Frontend>,
}

impl Reconciler {
    /// Brings the entries of `ips` in line with `desired`; the first
    /// failure is returned, every failure is retried later.
    pub fn write_nodes(
        &mut self,
        dataplane: &mut Dataplane,
        desired: &DesiredNodes,
        ips: &[Ipv4Addr],
    ) -> anyhow::Result<()> {
        let mut first_failure = None;
        for &ip in ips {
            match write_node(dataplane, desired.get(ip), ip) {
                Ok(()) => {
                    self.failed_nodes.remove(&ip);
                }
                Err(error) => {
                    self.failed_nodes.insert(ip);
                    first_failure.get_or_insert_with(|| {
                        anyhow::Error::new(error)
                            .context(format!("node {ip} is not programmed yet (retried)"))
                    });
                }
            }
        }
        first_failure.map_or(Ok(()), Err)
    }

    /// Brings the Service frontends `frontends` in line with `desired`, as
    /// `write_nodes` does for nodes.
    pub fn write_services(
        &mut self,
        dataplane: &mut Dataplane,
        desired: &Services,
        frontends: &[Frontend],
    ) -> anyhow::Result<()> {
        let mut first_failure = None;
        for frontend in frontends {
            let target = desired.frontends().get(frontend);
            let backends: Option<BTreeSet<Backend>> =
                target.map(|target| target.backends.iter().copied().map(backend_entry).collect());
            let settings = target.map_or_else(FrontendSettings::default, |target| {
                let mut flags = 0;
                if target.outside_local {
                    flags |= service_flags::OUTSIDE_LOCAL;
                }
                if !target.source_ranges.is_empty() {
                    flags |= service_flags::SOURCE_RANGES;
                }
                FrontendSettings {
                    affinity_seconds: target.affinity_seconds,
                    flags,
                    source_ranges: target.source_ranges.clone(),
                }
            });
            match dataplane.program_service(service_key(frontend), backends.as_ref(), settings) {
                Ok(()) => {
                    self.failed_frontends.remove(frontend);
                    match backends {
                        Some(backends) => {
                            info!(%frontend, backends = backends.len(), "service programmed");
                        }
                        None => info!(%frontend, "service removed"),
                    }
                }
                Err(error) => {
                    self.failed_frontends.insert(*frontend);
                    first_failure.get_or_insert_with(|| {
                        anyhow::Error::new(error).context(format!(
                            "service {frontend} is not programmed yet (retried)"
                        ))
                    });
                }
            }
        }
        first_failure.map_or(Ok(()), Err)
    }

    /// Tries the failed Service writes again.
    pub fn retry_services(&mut self, dataplane: &mut Dataplane, desired: &Services) {
        if self.failed_frontends.is_empty() {
            return;
        }
        let frontends: Vec<Frontend> = self.failed_frontends.iter().copied().collect();
        if let Err(error) = self.write_services(dataplane, desired, &frontends) {
            warn!(
                still_failing = self.failed_frontends.len(),
                "retrying service writes: {error:#}"
            );
        }
    }

    /// Nodes whose last write failed.
    pub fn failed_nodes(&self) -> Vec<Ipv4Addr> {
        self.failed_nodes.iter().copied().collect()
    }

    /// Tries the failed writes again.
    pub fn retry_nodes(&mut self, dataplane: &mut Dataplane, desired: &DesiredNodes) {
        if self.failed_nodes.is_empty() {
            return;
        }
        let ips: Vec<Ipv4Addr> = self.failed_nodes.iter().copied().collect();
        if let Err(error) = self.write_nodes(dataplane, desired, &ips) {
            warn!(
                still_failing = self.failed_nodes.len(),
                "retrying node writes: {error:#}"
            );
        }
    }
}

fn write_node(
    dataplane: &mut Dataplane,
    wanted: Option<ProgrammedNode>,
    ip: Ipv4Addr,
) -> Result<(), DataplaneError> {
    let programmed = dataplane.programmed_node(ip);
    match wanted {
        Some(node) if programmed != Some(node) => {
            dataplane.add_remote_node(ip, node)?;
            info!(%ip, pod_cidr = %node.pod_cidr, path = %node.path,
                  mac = ?node.mac.map(macaddr::MacAddr6::from), "node programmed");
        }
        None if programmed.is_some() => {
            dataplane.remove_remote_node(ip)?;
            info!(%ip, "node removed");
        }
        _ => {}
    }
    Ok(())
}
