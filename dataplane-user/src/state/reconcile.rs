//! Turns the difference between the desired remote nodes and what the maps
//! hold into map writes. Only entries that changed are written; a write that
//! fails is remembered and tried again.

use std::{collections::BTreeSet, net::Ipv4Addr};

use tracing::{info, warn};

use crate::{
    dataplane::{Dataplane, DataplaneError},
    model::NodeSet,
};

#[derive(Debug, Default)]
pub struct Reconciler {
    /// Nodes whose last write failed.
    failed_nodes: BTreeSet<Ipv4Addr>,
}

impl Reconciler {
    /// Brings the entries of `ips` in line with `desired`; the first failure
    /// is returned, every failure is retried later.
    pub fn write_nodes(
        &mut self,
        dataplane: &mut Dataplane,
        desired: &NodeSet,
        ips: &[Ipv4Addr],
    ) -> anyhow::Result<()> {
        let mut first_failure = None;
        for &ip in ips {
            match write_node(dataplane, desired, ip) {
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

    /// Tries the failed writes again.
    pub fn retry_nodes(&mut self, dataplane: &mut Dataplane, desired: &NodeSet) {
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
    desired: &NodeSet,
    ip: Ipv4Addr,
) -> Result<(), DataplaneError> {
    let programmed = dataplane.programmed_node(ip);
    match desired.get(ip) {
        Some(pod_cidr) if programmed != Some(pod_cidr) => {
            dataplane.add_remote_node(ip, pod_cidr)?;
            info!(%ip, %pod_cidr, "node programmed");
        }
        None if programmed.is_some() => {
            dataplane.remove_remote_node(ip)?;
            info!(%ip, "node removed");
        }
        _ => {}
    }
    Ok(())
}
