//! A stand-in for kube-apiserver's Node endpoints (there is none on these
//! machines): real Kubernetes JSON for list and watch of /api/v1/nodes,
//! watches resumable from a resourceVersion, and the power to drop them.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Write as _},
    net::{Ipv4Addr, TcpListener, TcpStream},
    path::Path,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::Duration,
};

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::{netns::Netns, traffic::in_netns};

#[derive(Default)]
struct State {
    nodes: BTreeMap<String, Value>,
    version: u64,
    /// Every change as (resourceVersion, watch event), for resuming watches.
    events: Vec<(u64, Value)>,
    /// Bumped to end every open watch.
    watch_generation: u64,
}

/// The state, and a signal to open watches that it changed.
#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

pub struct FakeApiServer {
    state: Arc<Shared>,
    stop: Arc<AtomicBool>,
    pub port: u16,
}

impl FakeApiServer {
    /// Listens on 127.0.0.1 inside `netns` (where the agent runs).
    pub fn start(netns: &Netns) -> anyhow::Result<Self> {
        let state = Arc::new(Shared::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (port_sender, port) = mpsc::channel();
        let (shared, stopping) = (Arc::clone(&state), Arc::clone(&stop));
        drop(in_netns(netns, move || {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
            port_sender.send(listener.local_addr()?.port())?;
            listener.set_nonblocking(true)?;
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((connection, _)) => {
                        let (state, stop) = (Arc::clone(&shared), Arc::clone(&stopping));
                        thread::spawn(move || serve(connection, &state, &stop));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
            Ok(())
        }));
        let port = port
            .recv_timeout(Duration::from_secs(5))
            .context("fake API server did not start")?;
        Ok(Self { state, stop, port })
    }

    /// A kubeconfig pointing at this server.
    pub fn write_kubeconfig(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(
            path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://127.0.0.1:{}\n\
                 contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\n\
                 users:\n- name: fake\n  user: {{}}\n",
                self.port
            ),
        )?;
        Ok(())
    }

    fn change(&self, name: &str, kind: &str, node: Option<Value>) {
        let mut state = self.state.state.lock().unwrap();
        self.state.changed.notify_all();
        state.version += 1;
        let version = state.version;
        let object = match node {
            Some(mut node) => {
                node["metadata"]["resourceVersion"] = json!(version.to_string());
                state.nodes.insert(name.to_string(), node.clone());
                node
            }
            None => {
                let mut node = state
                    .nodes
                    .remove(name)
                    .unwrap_or_else(|| json!({"metadata": {"name": name}}));
                node["metadata"]["resourceVersion"] = json!(version.to_string());
                node
            }
        };
        state
            .events
            .push((version, json!({"type": kind, "object": object})));
    }

    /// Creates or updates Node `name` with InternalIP `ip` and pod CIDR `pod_cidr`.
    pub fn apply_node(&self, name: &str, ip: Ipv4Addr, pod_cidr: &str) {
        let exists = self.state.state.lock().unwrap().nodes.contains_key(name);
        let node = json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name},
            "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
            "status": {"addresses": [{"type": "InternalIP", "address": ip.to_string()}]},
        });
        self.change(name, if exists { "MODIFIED" } else { "ADDED" }, Some(node));
    }

    pub fn delete_node(&self, name: &str) {
        self.change(name, "DELETED", None);
    }

    /// Ends every open watch, as an API server restart or a load balancer would.
    pub fn drop_watches(&self) {
        self.state.state.lock().unwrap().watch_generation += 1;
        self.state.changed.notify_all();
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.drop_watches();
    }
}

fn serve(connection: TcpStream, state: &Shared, stop: &AtomicBool) {
    let _ = connection.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(&connection);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    // Headers are not needed: skip to the blank line.
    let mut header = String::new();
    while reader.read_line(&mut header).is_ok_and(|read| read > 2) {
        header.clear();
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or_default();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let parameter = |name: &str| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix(&format!("{name}=")))
            .map(str::to_string)
    };
    let mut connection = &connection;
    if path != "/api/v1/nodes" {
        let _ = connection
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    }
    if parameter("watch").is_some_and(|watch| watch == "true" || watch == "1") {
        let from: u64 = parameter("resourceVersion")
            .and_then(|version| version.parse().ok())
            .unwrap_or(0);
        watch(connection, state, stop, from);
        return;
    }
    let body = {
        let state = state.state.lock().unwrap();
        json!({
            "apiVersion": "v1",
            "kind": "NodeList",
            "metadata": {"resourceVersion": state.version.to_string()},
            "items": state.nodes.values().cloned().collect::<Vec<_>>(),
        })
        .to_string()
    };
    let _ = write!(
        connection,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// Streams events after `from` as chunked JSON lines until the watch is dropped.
fn watch(mut connection: &TcpStream, shared: &Shared, stop: &AtomicBool, mut from: u64) {
    let generation = shared.state.lock().unwrap().watch_generation;
    if connection
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        .is_err()
    {
        return;
    }
    while !stop.load(Ordering::Relaxed) {
        let (pending, dropped) = {
            let state = shared.state.lock().unwrap();
            let pending: Vec<(u64, Value)> = state
                .events
                .iter()
                .filter(|(version, _)| *version > from)
                .cloned()
                .collect();
            (pending, state.watch_generation != generation)
        };
        for (version, event) in pending {
            let line = format!("{event}\n");
            if write!(connection, "{:x}\r\n{line}\r\n", line.len()).is_err() {
                return;
            }
            from = version;
        }
        if dropped {
            let _ = connection.write_all(b"0\r\n\r\n");
            return;
        }
        // Woken by the next change (the timeout only rechecks `stop`).
        let state = shared.state.lock().unwrap();
        if state.version == from && state.watch_generation == generation {
            drop(
                shared
                    .changed
                    .wait_timeout(state, Duration::from_millis(100)),
            );
        }
    }
}
