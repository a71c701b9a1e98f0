//! The node agent: loads the dataplane, programs it from the config file and
//! serves the local API until SIGINT/SIGTERM.

use std::{
    net::Ipv4Addr,
    os::unix::fs::PermissionsExt as _,
    path::Path,
    sync::{Arc, Mutex, MutexGuard},
};

use anyhow::{Context as _, bail};
use ipnetwork::Ipv4Network;
use macaddr::MacAddr6;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    signal::unix::{SignalKind, signal},
};
use tracing::{info, warn};

use crate::{
    api::{CounterEntry, EndpointEntry, Request, Response},
    config::{Config, EndpointSpec, validate_endpoint},
    dataplane::Dataplane,
    interfaces::Interfaces,
    loader,
};

pub struct Agent {
    dataplane: Mutex<Dataplane>,
    interfaces: Interfaces,
    pod_cidr: Option<Ipv4Network>,
}

impl Agent {
    /// Loads the programs, adopts endpoints pinned by an earlier run and
    /// applies the endpoints of the config file.
    pub async fn start(config: &Config) -> anyhow::Result<Self> {
        loader::ensure_bpffs_mounted()?;
        let pin_dir = loader::pin_directory(&config.agent.bpf_root);
        let ebpf = loader::load(&pin_dir)?;
        info!(pin_dir = %pin_dir.display(), "eBPF programs loaded");

        let mut dataplane = Dataplane::new(ebpf)?;
        dataplane.set_pod_cidr(config.node.pod_cidr)?;
        let agent = Self {
            dataplane: Mutex::new(dataplane),
            interfaces: Interfaces::connect()?,
            pod_cidr: config.node.pod_cidr,
        };
        agent.adopt_pinned_endpoints().await?;
        for endpoint in &config.endpoints {
            agent
                .add_endpoint(endpoint)
                .await
                .with_context(|| format!("endpoint {} from the config file", endpoint.ip))?;
        }
        Ok(agent)
    }

    fn dataplane(&self) -> MutexGuard<'_, Dataplane> {
        // A panic while holding the lock leaves the maps consistent (each
        // operation is a single syscall or rolls back), so poisoning is moot.
        self.dataplane
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Re-attaches to endpoints left in the pinned map by a previous agent;
    /// drops entries whose veth is gone (pod deleted while the agent was down).
    async fn adopt_pinned_endpoints(&self) -> anyhow::Result<()> {
        let pinned = self.dataplane().endpoints()?;
        for (ip, endpoint) in pinned {
            match self.interfaces.by_index(endpoint.host_ifindex).await? {
                Some(interface) => {
                    self.dataplane()
                        .add_endpoint(ip, &interface, endpoint.pod_mac)?;
                    info!(%ip, interface = %interface.name, "adopted pinned endpoint");
                }
                None => {
                    self.dataplane().remove_endpoint(ip)?;
                    warn!(%ip, ifindex = endpoint.host_ifindex, "removed pinned endpoint whose veth is gone");
                }
            }
        }
        Ok(())
    }

    pub async fn add_endpoint(&self, spec: &EndpointSpec) -> anyhow::Result<()> {
        if let Err((field, problem)) = validate_endpoint(spec, self.pod_cidr) {
            bail!("endpoint field `{field}`: {problem}");
        }
        let Some(interface) = self.interfaces.by_name(&spec.interface).await? else {
            bail!(
                "interface {} does not exist in the agent's network namespace",
                spec.interface
            );
        };
        self.dataplane()
            .add_endpoint(spec.ip, &interface, spec.mac.into_array())?;
        info!(ip = %spec.ip, interface = %spec.interface, mac = %spec.mac, "endpoint added");
        Ok(())
    }

    pub fn remove_endpoint(&self, ip: Ipv4Addr) -> anyhow::Result<bool> {
        let removed = self.dataplane().remove_endpoint(ip)?;
        info!(%ip, removed, "endpoint removed");
        Ok(removed)
    }

    async fn list_endpoints(&self) -> anyhow::Result<Vec<EndpointEntry>> {
        let endpoints = self.dataplane().endpoints()?;
        let mut entries = Vec::with_capacity(endpoints.len());
        for (ip, endpoint) in endpoints {
            let interface = self.interfaces.by_index(endpoint.host_ifindex).await?;
            entries.push(EndpointEntry {
                ip,
                host_ifindex: endpoint.host_ifindex,
                interface: interface.map(|interface| interface.name),
                pod_mac: MacAddr6::from(endpoint.pod_mac),
                host_mac: MacAddr6::from(endpoint.host_mac),
                attached: self.dataplane().is_attached(endpoint.host_ifindex),
            });
        }
        entries.sort_by_key(|entry| entry.ip);
        Ok(entries)
    }

    fn counters(&self) -> anyhow::Result<Vec<CounterEntry>> {
        Ok(self
            .dataplane()
            .counters()?
            .into_iter()
            .map(|total| CounterEntry {
                name: total.counter.name().to_string(),
                drop: total.counter.is_drop(),
                packets: total.value.packets,
                bytes: total.value.bytes,
            })
            .collect())
    }

    pub async fn handle(&self, request: Request) -> Response {
        let result = match request {
            Request::AddEndpoint { endpoint } => self
                .add_endpoint(&endpoint)
                .await
                .map(|()| Response::Done { changed: true }),
            Request::RemoveEndpoint { ip } => self
                .remove_endpoint(ip)
                .map(|changed| Response::Done { changed }),
            Request::ListEndpoints => self
                .list_endpoints()
                .await
                .map(|endpoints| Response::Endpoints { endpoints }),
            Request::Counters => self
                .counters()
                .map(|counters| Response::Counters { counters }),
        };
        result.unwrap_or_else(|error| Response::Error {
            message: format!("{error:#}"),
        })
    }
}

/// Runs the agent with the config file at `config_path` until SIGINT/SIGTERM.
pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let agent = Arc::new(Agent::start(&config).await?);
    let listener = bind(&config.agent.api_socket)?;
    info!(socket = %config.agent.api_socket.display(), "agent ready");

    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = accepted.context("accepting an API connection")?;
                tokio::spawn(serve_connection(stream, Arc::clone(&agent)));
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    info!("agent stopping");
    // The socket path is ours; a failure to remove it only leaves a stale file.
    let _ = std::fs::remove_file(&config.agent.api_socket);
    Ok(())
}

fn bind(socket: &Path) -> anyhow::Result<UnixListener> {
    if let Some(parent) = socket.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    // A socket left by an agent that was killed would make bind fail.
    match std::fs::remove_file(socket) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            return Err(error).with_context(|| format!("removing stale {}", socket.display()));
        }
        _ => {}
    }
    let listener = UnixListener::bind(socket)
        .with_context(|| format!("binding the API socket {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

async fn serve_connection(stream: UnixStream, agent: Arc<Agent>) {
    let (reader, mut writer) = stream.into_split();
    let mut lines = BufReader::new(reader).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let response = match serde_json::from_str::<Request>(&line) {
            Ok(request) => agent.handle(request).await,
            Err(error) => Response::Error {
                message: format!("malformed request: {error}"),
            },
        };
        let mut answer = serde_json::to_string(&response).expect("responses serialize");
        answer.push('\n');
        if writer.write_all(answer.as_bytes()).await.is_err() {
            break;
        }
    }
}
