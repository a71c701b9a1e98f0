//! The NAT table: connection state the programs write, not desired state.
//! Listing, flushing and garbage collection walk the whole table (a pass
//! takes 0.1-0.2 s when it is full), so they run on a blocking thread of
//! their own and never hold up the state owner, the API or the CNI plugin.

use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
    sync::{Arc, Mutex},
};

use anyhow::anyhow;
use dataplane_common::{FlowKey, Ipv4Octets, NatEntry, OUTSIDE_CLIENTS, names, nat_direction};
use tracing::info;

use crate::{
    api::{Connection, PodNatUsage},
    maps::{self, NatMap},
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

/// Removes the halves `entries`; counts each connection whose egress half it
/// removed toward its row's collected ones (the programs count what they
/// evict).
fn remove_connections<'a>(
    map: &mut NatMap,
    entries: impl IntoIterator<Item = &'a (FlowKey, NatEntry)>,
) -> anyhow::Result<usize> {
    let mut removed = 0;
    let mut closed: HashMap<Ipv4Octets, u64> = HashMap::new();
    for (key, entry) in entries {
        if map.remove(key)? {
            removed += 1;
            if key.direction == nat_direction::EGRESS {
                *closed.entry(row(key, entry)).or_default() += 1;
            }
        }
    }
    for (pod, connections) in closed {
        map.add_closed(pod, connections)?;
    }
    Ok(removed)
}

/// The `POD_NAT` row the connection of the egress half `key` is counted in.
fn row(key: &FlowKey, to_node: &NatEntry) -> Ipv4Octets {
    if to_node.outside_client != 0 {
        OUTSIDE_CLIENTS
    } else {
        key.src
    }
}

/// Removes the rows of addresses that are no pod of this node (any more)
/// and hold nothing: a pod's row lives while the pod does or its
/// connections do, so the rows never outgrow the node's pods. Returns how
/// many went.
fn remove_idle_rows(map: &mut NatMap, pods: &HashSet<Ipv4Addr>) -> anyhow::Result<usize> {
    let mut removed = 0;
    for totals in map.pods()? {
        let kept = pods.contains(&totals.pod) || totals.pod.octets() == OUTSIDE_CLIENTS;
        if !kept && totals.holds() == 0 {
            map.remove_row(totals.pod.octets())?;
            removed += 1;
        }
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

    /// Removes expired connections, and the rows of addresses that are not
    /// among `pods` (this node's) and hold nothing; returns the report.
    pub async fn collect_garbage(&self, pods: HashSet<Ipv4Addr>) -> anyhow::Result<GcReport> {
        self.with_map(move |map, table| {
            let walked = nat::expired(map.halves(), nat::monotonic_now_ns(), &table.timeouts)
                .map_err(maps::access(names::NAT_MAP))?;
            let removed = remove_connections(map, &walked.expired)?;
            remove_idle_rows(map, &pods)?;
            let pods = pod_usage(map, table.pod_limit)?;
            let mut last = table.last_gc.lock().expect("no panics while held");
            *last = GcReport {
                entries: walked.halves - removed,
                removed,
                removed_total: last.removed_total + removed as u64,
                pods,
            };
            Ok(last.clone())
        })
        .await
    }

    /// Removes every entry, and the rows of addresses that are not among
    /// `pods`; returns how many entries.
    pub async fn flush(&self, pods: HashSet<Ipv4Addr>) -> anyhow::Result<usize> {
        let removed = self
            .with_map(move |map, _| {
                let removed = remove_connections(map, &map.entries()?)?;
                remove_idle_rows(map, &pods)?;
                Ok(removed)
            })
            .await?;
        info!(removed, "NAT table flushed");
        Ok(removed)
    }
}
