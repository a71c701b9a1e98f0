//! The NAT table: connection state the programs write, not desired state.
//! Listing, flushing and garbage collection walk the whole table (a pass
//! takes 0.1-0.2 s when it is full), so they run on a blocking thread of
//! their own and never hold up the state owner, the API or the CNI plugin.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use anyhow::anyhow;
use dataplane_common::{FlowKey, Ipv4Octets, nat_direction};
use tracing::info;

use crate::{
    api::{Connection, PodNatUsage},
    maps::NatMap,
    nat::{self, Timeouts},
};

/// What the last NAT garbage collection found: the table's pressure, in
/// all and per pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GcReport {
    pub entries: usize,
    pub removed: usize,
    pub removed_total: u64,
    pub pods: Vec<PodNatUsage>,
}

struct Table {
    map: Mutex<NatMap>,
    timeouts: Timeouts,
    /// Connections one pod may hold (as the programs were configured).
    pod_limit: u64,
    last_gc: Mutex<GcReport>,
}

/// Removes `keys`; counts each connection whose egress half it removed
/// toward its pod's collected ones (the programs count what they evict).
fn remove_connections<'a>(
    map: &mut NatMap,
    keys: impl IntoIterator<Item = &'a FlowKey>,
) -> anyhow::Result<usize> {
    let mut removed = 0;
    let mut closed: HashMap<Ipv4Octets, u64> = HashMap::new();
    for key in keys {
        if map.remove(key)? {
            removed += 1;
            if key.direction == nat_direction::EGRESS {
                *closed.entry(key.src).or_default() += 1;
            }
        }
    }
    for (pod, connections) in closed {
        map.add_closed(pod, connections)?;
    }
    Ok(removed)
}

/// Each pod's share of the table as the maps hold it now.
fn pod_usage(map: &NatMap, limit: u64) -> anyhow::Result<Vec<PodNatUsage>> {
    Ok(map
        .pods()?
        .into_iter()
        .map(|totals| PodNatUsage {
            pod: totals.pod,
            connections: totals.holds(),
            limit,
            opened: totals.counts.opened,
            evicted: totals.counts.evicted,
            refused_share: totals.counts.refused_share,
            refused_ports: totals.counts.refused_ports,
            refused_full: totals.counts.refused_full,
        })
        .collect())
}

/// Shared access to the NAT table. Cheap to clone.
#[derive(Clone)]
pub struct NatTable(Arc<Table>);

impl NatTable {
    pub fn new(map: NatMap, timeouts: Timeouts, pod_limit: u64) -> Self {
        Self(Arc::new(Table {
            map: Mutex::new(map),
            timeouts,
            pod_limit,
            last_gc: Mutex::new(GcReport::default()),
        }))
    }

    /// The last garbage collection's report (no table walk).
    pub fn last_gc(&self) -> GcReport {
        self.0.last_gc.lock().expect("no panics while held").clone()
    }

    /// Runs `work` on the table on a blocking thread.
    async fn with_map<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut NatMap, &Table) -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let table = Arc::clone(&self.0);
        tokio::task::spawn_blocking(move || {
            let mut map = table.map.lock().expect("no panics while held");
            work(&mut map, &table)
        })
        .await
        .map_err(|error| anyhow!("NAT table task: {error}"))?
    }

    /// Every masqueraded connection, from its pod's side, and each pod's
    /// share of the table.
    pub async fn connections(&self) -> anyhow::Result<(Vec<Connection>, Vec<PodNatUsage>)> {
        self.with_map(|map, table| {
            let entries = map.entries()?;
            Ok((
                nat::connections(&entries, nat::monotonic_now_ns()),
                pod_usage(map, table.pod_limit)?,
            ))
        })
        .await
    }

    /// Removes expired connections; returns the report.
    pub async fn collect_garbage(&self) -> anyhow::Result<GcReport> {
        self.with_map(|map, table| {
            let entries = map.entries()?;
            let expired = nat::expired(&entries, nat::monotonic_now_ns(), &table.timeouts);
            let removed = remove_connections(map, &expired)?;
            let pods = pod_usage(map, table.pod_limit)?;
            let mut last = table.last_gc.lock().expect("no panics while held");
            *last = GcReport {
                entries: entries.len() - removed,
                removed,
                removed_total: last.removed_total + removed as u64,
                pods,
            };
            Ok(last.clone())
        })
        .await
    }

    /// Removes every entry; returns how many.
    pub async fn flush(&self) -> anyhow::Result<usize> {
        let removed = self
            .with_map(|map, _| {
                let keys: Vec<FlowKey> = map.entries()?.into_iter().map(|(key, _)| key).collect();
                remove_connections(map, &keys)
            })
            .await?;
        info!(removed, "NAT table flushed");
        Ok(removed)
    }
}
