//! How full the tables the programs keep for Service connections are: the
//! connection halves of pods' connections and what the node's sockets were
//! given. Both are LRU maps, so a full table does not refuse anything: it
//! forgets the least recently used connections, whose next packets then
//! pick a backend afresh. Walking them takes a while, so it is done on its
//! own thread (with its own handles on the pinned maps), and status and
//! metrics read the last count.

use std::{
    path::Path,
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, anyhow};
use aya::maps::{HashMap, Map, MapData};
use dataplane_common::{
    Backend, FlowKey, MAX_SERVICE_FLOWS, MAX_SOCKET_FLOWS, ServiceFlow, SocketFlowKey, names,
};

/// Entries of the two tables at the last count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServiceTablesFill {
    /// Halves of pods' connections to Services (two per connection).
    pub connection_halves: usize,
    /// Entries the node's sockets were given (two per socket and frontend).
    pub socket_entries: usize,
}

impl ServiceTablesFill {
    /// Whether either table is more than nine tenths full.
    pub fn under_pressure(&self) -> bool {
        self.connection_halves * 10 > MAX_SERVICE_FLOWS as usize * 9
            || self.socket_entries * 10 > MAX_SOCKET_FLOWS as usize * 9
    }
}

struct Tables {
    flows: HashMap<MapData, FlowKey, ServiceFlow>,
    sockets: HashMap<MapData, SocketFlowKey, Backend>,
}

/// Shared access to the count. Cheap to clone.
#[derive(Clone)]
pub struct ServiceTables {
    tables: Arc<Mutex<Tables>>,
    last: Arc<Mutex<ServiceTablesFill>>,
}

fn open<K: aya::Pod, V: aya::Pod>(
    pin_dir: &Path,
    name: &str,
) -> anyhow::Result<HashMap<MapData, K, V>> {
    let path = pin_dir.join(name);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let map = Map::from_map_data(data).with_context(|| format!("map {name}"))?;
    HashMap::try_from(map).with_context(|| format!("map {name}"))
}

impl ServiceTables {
    /// Opens the pinned tables under `pin_dir` (the loaded programs' own).
    pub fn open(pin_dir: &Path) -> anyhow::Result<Self> {
        let tables = Tables {
            flows: open(pin_dir, names::SERVICE_FLOWS_MAP)?,
            sockets: open(pin_dir, names::SOCKET_FLOWS_MAP)?,
        };
        Ok(Self {
            tables: Arc::new(Mutex::new(tables)),
            last: Arc::default(),
        })
    }

    /// The last count (no walk).
    pub fn last(&self) -> ServiceTablesFill {
        *self.last.lock().expect("no panics while held")
    }

    /// Counts the entries of both tables now, on a blocking thread.
    pub async fn count(&self) -> anyhow::Result<ServiceTablesFill> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let tables = this.tables.lock().expect("no panics while held");
            // An entry evicted during the walk ends it early or is skipped:
            // a count, not an inventory.
            let fill = ServiceTablesFill {
                connection_halves: tables.flows.keys().filter(Result::is_ok).count(),
                socket_entries: tables.sockets.keys().filter(Result::is_ok).count(),
            };
            *this.last.lock().expect("no panics while held") = fill;
            fill
        })
        .await
        .map_err(|error| anyhow!("Service table count: {error}"))
    }
}
