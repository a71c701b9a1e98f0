//! The NAT table: connection state the programs write, not desired state.
//! Listing, flushing and garbage collection walk the whole table (a pass
//! takes 0.1-0.2 s when it is full), so they run on a blocking thread of
//! their own and never hold up the state owner, the API or the CNI plugin.

use std::sync::{Arc, Mutex};

use anyhow::anyhow;
use tracing::info;

use crate::{
    api::Connection,
    maps::NatMap,
    nat::{self, Timeouts},
};

/// What the last NAT garbage collection found: the table's pressure.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GcReport {
    pub entries: usize,
    pub removed: usize,
    pub removed_total: u64,
}

struct Table {
    map: Mutex<NatMap>,
    timeouts: Timeouts,
    last_gc: Mutex<GcReport>,
}

/// Shared access to the NAT table. Cheap to clone.
#[derive(Clone)]
pub struct NatTable(Arc<Table>);

impl NatTable {
    pub fn new(map: NatMap, timeouts: Timeouts) -> Self {
        Self(Arc::new(Table {
            map: Mutex::new(map),
            timeouts,
            last_gc: Mutex::new(GcReport::default()),
        }))
    }

    /// The last garbage collection's report (no table walk).
    pub fn last_gc(&self) -> GcReport {
        *self.0.last_gc.lock().expect("no panics while held")
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

    /// Every masqueraded connection, from its pod's side.
    pub async fn connections(&self) -> anyhow::Result<Vec<Connection>> {
        self.with_map(|map, _| {
            let entries = map.entries()?;
            Ok(nat::connections(&entries, nat::monotonic_now_ns()))
        })
        .await
    }

    /// Removes expired connections; returns the report.
    pub async fn collect_garbage(&self) -> anyhow::Result<GcReport> {
        self.with_map(|map, table| {
            let entries = map.entries()?;
            let expired = nat::expired(&entries, nat::monotonic_now_ns(), &table.timeouts);
            let mut removed = 0;
            for key in &expired {
                if map.remove(key)? {
                    removed += 1;
                }
            }
            let mut last = table.last_gc.lock().expect("no panics while held");
            *last = GcReport {
                entries: entries.len() - removed,
                removed,
                removed_total: last.removed_total + removed as u64,
            };
            Ok(*last)
        })
        .await
    }

    /// Removes every entry; returns how many.
    pub async fn flush(&self) -> anyhow::Result<usize> {
        let removed = self
            .with_map(|map, _| {
                let mut removed = 0;
                for (key, _) in map.entries()? {
                    if map.remove(&key)? {
                        removed += 1;
                    }
                }
                Ok(removed)
            })
            .await?;
        info!(removed, "NAT table flushed");
        Ok(removed)
    }
}
