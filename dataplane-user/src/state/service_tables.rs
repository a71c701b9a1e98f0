//! The tables the programs keep for Service connections: the connection
//! halves of pods' (and outside clients') connections, and what the node's
//! sockets were given. The programs stamp every half with its last packet
//! and state; this expires connections by protocol and state as the NAT
//! table's are (so a table is full only of live connections, and a
//! datagram flow's reply half goes with its flow), and counts both tables.
//! Both are LRU maps as well, so a full table forgets its least recently
//! used entries instead of refusing. Walking them takes a while, so it is
//! done on a blocking thread (with its own handles on the pinned maps), and
//! status and metrics read the last count.

use std::{
    collections::HashMap as StdHashMap,
    path::Path,
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, anyhow};
use aya::maps::{HashMap, MapData};
use dataplane_common::{
    Backend, FlowKey, HAIRPIN_SOURCE, MAX_SERVICE_FLOWS, MAX_SOCKET_FLOWS, ServiceFlow,
    SocketFlowKey, names, service_direction,
};

use crate::{
    maps::{
        removed as removed_entry,
        table::{BoxedTable, Table, open_pinned},
    },
    nat::{self, Half, Timeouts},
};

/// Entries of the two tables at the last count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServiceTablesFill {
    /// Halves of connections to Services (two per connection).
    pub connection_halves: usize,
    /// Entries the node's sockets were given (two per socket and frontend).
    pub socket_entries: usize,
    /// Halves expired since the agent started.
    pub expired_total: u64,
}

impl ServiceTablesFill {
    /// Whether either table is more than nine tenths full.
    pub fn under_pressure(&self) -> bool {
        self.connection_halves * 10 > MAX_SERVICE_FLOWS as usize * 9
            || self.socket_entries * 10 > MAX_SOCKET_FLOWS as usize * 9
    }
}

impl Half for ServiceFlow {
    fn state(&self) -> u8 {
        self.state
    }

    fn last_seen_ns(&self) -> u64 {
        self.last_seen_ns
    }

    fn partner(&self, key: &FlowKey) -> FlowKey {
        if key.direction == service_direction::TO_BACKEND {
            // To the backend: its reply comes from it, to the client (or to
            // the hairpin address when the client is the backend).
            let backend = self.target;
            FlowKey {
                src: backend.address,
                dst: if backend.address == key.src {
                    HAIRPIN_SOURCE
                } else {
                    key.src
                },
                src_port: backend.port,
                dst_port: key.src_port,
                direction: service_direction::TO_CLIENT,
                ..*key
            }
        } else {
            // The reply: the client sent to the frontend it leads back to.
            let frontend = self.target;
            FlowKey {
                src: self.client,
                dst: frontend.address,
                src_port: key.dst_port,
                dst_port: frontend.port,
                direction: service_direction::TO_BACKEND,
                ..*key
            }
        }
    }
}

/// The connection halves, and what the node's sockets were given.
pub struct Tables {
    pub flows: BoxedTable<FlowKey, ServiceFlow>,
    pub sockets: BoxedTable<SocketFlowKey, Backend>,
}

/// Shared access to the tables. Cheap to clone.
#[derive(Clone)]
pub struct ServiceTables {
    tables: Arc<Mutex<Tables>>,
    timeouts: Timeouts,
    last: Arc<Mutex<ServiceTablesFill>>,
}

fn open<K: aya::Pod + Send + Sync + 'static, V: aya::Pod + Send + Sync + 'static>(
    pin_dir: &Path,
    name: &str,
) -> anyhow::Result<BoxedTable<K, V>> {
    let path = pin_dir.join(name);
    let map: HashMap<MapData, K, V> =
        open_pinned(&path).with_context(|| format!("opening {}", path.display()))?;
    Ok(Box::new(map))
}

/// Entries of `table`, counted in a walk (none kept); 0 when it cannot
/// be walked.
fn count<K, V>(table: &dyn Table<K, V>) -> usize {
    let mut entries = 0;
    table
        .visit(&mut |_, _| entries += 1)
        .map_or(0, |()| entries)
}

impl ServiceTables {
    /// Opens the pinned tables under `pin_dir` (the loaded programs' own);
    /// connections expire after `timeouts`.
    pub fn open(pin_dir: &Path, timeouts: Timeouts) -> anyhow::Result<Self> {
        let tables = Tables {
            flows: open(pin_dir, names::SERVICE_FLOWS_MAP)?,
            sockets: open(pin_dir, names::SOCKET_FLOWS_MAP)?,
        };
        Ok(Self::with(tables, timeouts))
    }

    /// The same over any tables (unit tests: fakes).
    pub fn with(tables: Tables, timeouts: Timeouts) -> Self {
        Self {
            tables: Arc::new(Mutex::new(tables)),
            timeouts,
            last: Arc::default(),
        }
    }

    /// The last count (no walk).
    pub fn last(&self) -> ServiceTablesFill {
        *self.last.lock().expect("no panics while held")
    }

    /// Removes the expired connections and counts both tables, on a
    /// blocking thread.
    pub async fn collect_garbage(&self) -> anyhow::Result<ServiceTablesFill> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut tables = this.tables.lock().expect("no panics while held");
            // An entry evicted during the walk ends it early or is skipped:
            // what is left is found at the next pass.
            let walked = nat::expired(&*tables.flows, nat::monotonic_now_ns(), &this.timeouts)
                .map_err(crate::maps::access(names::SERVICE_FLOWS_MAP))?;
            // Both halves of an expired connection are among the expired
            // (a connection is as recent as its most recent half).
            let seen: StdHashMap<FlowKey, u64> = walked
                .expired
                .iter()
                .map(|(key, half)| (*key, half.last_seen_ns))
                .collect();
            let mut removed = 0;
            for (key, half) in &walked.expired {
                // A packet since the walk (a port reused for a new
                // connection) keeps the connection: both halves are read
                // again right before the delete.
                let used_since = |key: &FlowKey| match tables.flows.get(key) {
                    Ok(Some(half)) => seen.get(key) != Some(&half.last_seen_ns),
                    _ => false,
                };
                if used_since(key) || used_since(&half.partner(key)) {
                    continue;
                }
                // One gone meanwhile was made room for by the LRU.
                removed += usize::from(removed_entry(
                    tables.flows.remove(key),
                    names::SERVICE_FLOWS_MAP,
                )?);
            }
            let mut last = this.last.lock().expect("no panics while held");
            *last = ServiceTablesFill {
                connection_halves: walked.halves - removed,
                socket_entries: count(&*tables.sockets),
                expired_total: last.expired_total + removed as u64,
            };
            Ok::<_, crate::maps::MapsError>(*last)
        })
        .await
        .map_err(|error| anyhow!("Service table collection: {error}"))?
        .map_err(Into::into)
    }
}

#[cfg(test)]
mod tests {
    use dataplane_common::conn_state;

    use super::*;
    use crate::nat::tests::expired_count;

    const SECOND: u64 = 1_000_000_000;

    fn backend(address: [u8; 4], port: u16) -> Backend {
        Backend {
            address,
            port: port.to_be_bytes(),
            _pad: [0; 2],
        }
    }

    /// Both halves of a connection of `client` to 10.96.0.10:80 as the
    /// programs write them, its backend `server`.
    fn connection(
        client: [u8; 4],
        server: [u8; 4],
        protocol: u8,
        (forward_state, reply_state): (u8, u8),
        (forward_seen, reply_seen): (u64, u64),
    ) -> Vec<(FlowKey, ServiceFlow)> {
        let forward = FlowKey {
            src: client,
            dst: [10, 96, 0, 10],
            src_port: 40000u16.to_be_bytes(),
            dst_port: 80u16.to_be_bytes(),
            protocol,
            direction: service_direction::TO_BACKEND,
            _pad: [0; 2],
        };
        let to_backend = ServiceFlow {
            target: backend(server, 8080),
            client,
            state: forward_state,
            last_seen_ns: forward_seen,
            ..ServiceFlow::default()
        };
        let reply = to_backend.partner(&forward);
        let to_client = ServiceFlow {
            target: backend([10, 96, 0, 10], 80),
            client,
            state: reply_state,
            last_seen_ns: reply_seen,
            ..ServiceFlow::default()
        };
        assert_eq!(to_client.partner(&reply), forward, "partners are symmetric");
        vec![(forward, to_backend), (reply, to_client)]
    }

    #[test]
    fn halves_pair_up_hairpin_included() {
        let pod = [10, 244, 0, 2];
        let plain = connection(pod, [10, 244, 0, 3], 6, (0, 0), (0, 0));
        assert_eq!(plain[1].0.dst, pod);
        let hairpin = connection(pod, pod, 6, (0, 0), (0, 0));
        assert_eq!(hairpin[1].0.dst, HAIRPIN_SOURCE);
    }

    #[test]
    fn datagram_flows_expire_with_both_halves_and_tcp_by_state() {
        let (pod, server) = ([10, 244, 0, 2], [10, 244, 0, 3]);
        let udp = connection(pod, server, 17, (0, 1), (0, 50 * SECOND));
        let now = 100 * SECOND;
        assert_eq!(expired_count(&udp, now), 0);
        assert_eq!(expired_count(&udp, 111 * SECOND), 2);
        let established = connection(
            pod,
            server,
            6,
            (conn_state::NEW, conn_state::ESTABLISHED),
            (0, 0),
        );
        assert_eq!(expired_count(&established, 3600 * SECOND), 0);
        let unanswered = connection(pod, server, 6, (conn_state::NEW, conn_state::NEW), (0, 0));
        assert_eq!(expired_count(&unanswered, 61 * SECOND), 2);
        let closed = connection(
            pod,
            server,
            6,
            (conn_state::CLOSING, conn_state::ESTABLISHED),
            (0, 0),
        );
        assert_eq!(expired_count(&closed, 11 * SECOND), 2);
    }
}
