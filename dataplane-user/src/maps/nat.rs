//! The NAT table as the agent sees it: connection halves it lists and
//! collects, and each pod's share of the table.

use std::net::Ipv4Addr;

use dataplane_common::{FlowKey, Ipv4Octets, NatEntry, PodNat, names};

use super::{
    MapsError, access, removed,
    table::{BoxedTable, Table},
};

/// The connection table (written by the programs; the agent only lists and
/// removes entries), with each pod's share of it.
pub struct NatMap {
    pub(super) connections: BoxedTable<FlowKey, NatEntry>,
    /// Written by the programs.
    pub(super) pod_nat: BoxedTable<Ipv4Octets, PodNat>,
    /// Written by the agent: connections it collected, per pod.
    pub(super) pod_closed: BoxedTable<Ipv4Octets, u64>,
}

/// One pod's share of the NAT table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodNatTotals {
    pub pod: Ipv4Addr,
    pub counts: PodNat,
    pub closed: u64,
}

impl PodNatTotals {
    /// Connections the pod holds, as the programs judge its share.
    pub fn holds(&self) -> u64 {
        self.counts
            .opened
            .saturating_sub(self.counts.evicted)
            .saturating_sub(self.closed)
    }
}

impl NatMap {
    /// Every half of every tracked connection.
    pub fn entries(&self) -> Result<Vec<(FlowKey, NatEntry)>, MapsError> {
        self.connections.entries().map_err(access(names::NAT_MAP))
    }

    /// The halves, for walks that keep little of what they see.
    pub fn halves(&self) -> &dyn Table<FlowKey, NatEntry> {
        &*self.connections
    }

    /// Removes one half; `Ok(false)` when it was gone already.
    pub fn remove(&mut self, key: &FlowKey) -> Result<bool, MapsError> {
        removed(self.connections.remove(key), names::NAT_MAP)
    }

    /// Adds `connections` to what the agent collected of `pod`'s (only the
    /// agent writes these, so reading and writing back loses nothing).
    pub fn add_closed(&mut self, pod: Ipv4Octets, connections: u64) -> Result<(), MapsError> {
        let before = self.closed(pod)?;
        self.pod_closed
            .insert(&pod, &(before + connections))
            .map_err(access(names::POD_NAT_CLOSED_MAP))
    }

    /// Forgets the row of `pod` (the programs make it again at its next
    /// connection).
    pub fn remove_row(&mut self, pod: Ipv4Octets) -> Result<(), MapsError> {
        removed(self.pod_nat.remove(&pod), names::POD_NAT_MAP)?;
        removed(self.pod_closed.remove(&pod), names::POD_NAT_CLOSED_MAP)?;
        Ok(())
    }

    /// What the agent collected of `pod`'s connections.
    fn closed(&self, pod: Ipv4Octets) -> Result<u64, MapsError> {
        Ok(self
            .pod_closed
            .get(&pod)
            .map_err(access(names::POD_NAT_CLOSED_MAP))?
            .unwrap_or(0))
    }

    /// Every pod that has opened a masqueraded connection, by address.
    pub fn pods(&self) -> Result<Vec<PodNatTotals>, MapsError> {
        let mut pods = Vec::new();
        for (pod, counts) in self.pod_nat.entries().map_err(access(names::POD_NAT_MAP))? {
            pods.push(PodNatTotals {
                pod: Ipv4Addr::from(pod),
                counts,
                closed: self.closed(pod)?,
            });
        }
        pods.sort_by_key(|totals| totals.pod);
        Ok(pods)
    }
}
