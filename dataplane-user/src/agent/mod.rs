//! The node agent: checks its config, loads the dataplane, hands it to the
//! state owner and runs the sources and servers around it until
//! SIGINT/SIGTERM.

mod bootstrap;
mod events;
mod health_checks;
mod healthz;
mod reload;
mod server;
mod supervise;

use std::{path::Path, time::Duration};

use anyhow::bail;
use dataplane_common::MAX_NAT_ENTRIES;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{debug, info, warn};

use crate::{
    api::{self, Request},
    config::Config,
    host,
    interfaces::{Interfaces, VXLAN_DEVICE},
    kubernetes, metrics,
    state::{NatTable, ServiceTables, StateHandle},
};
use supervise::Supervisor;

/// Removes what agents with this config created: the whole bpf_root (pinned
/// links, which detaches the programs, and maps of every layout version),
/// the VXLAN device and the API socket.
pub async fn uninstall(config_path: &Path) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    if api::call(&config.agent.api_socket, &Request::Status).is_ok() {
        bail!(
            "an agent is running on {}: stop it first",
            config.agent.api_socket.display()
        );
    }
    let root = &config.agent.bpf_root;
    match std::fs::remove_dir_all(root) {
        Ok(()) => info!(path = %root.display(), "removed pinned links, programs and maps"),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => {
            return Err(anyhow::Error::new(error).context(format!("removing {}", root.display())));
        }
    }
    let interfaces = Interfaces::connect()?;
    if interfaces.delete(VXLAN_DEVICE).await? {
        info!(device = VXLAN_DEVICE, "removed the VXLAN device");
    }
    let _ = std::fs::remove_file(&config.agent.api_socket);
    let mut lock = config.agent.api_socket.clone().into_os_string();
    lock.push(".lock");
    let _ = std::fs::remove_file(lock);
    Ok(())
}

/// Runs the agent with the config file at `config_path` until SIGINT/SIGTERM.
pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let _lock = bootstrap::lock_bpf_root(&config.agent.bpf_root)?;
    let _socket_lock = bootstrap::lock_api_socket(&config.agent.api_socket)?;
    let (mut owner, _uplink_claim) = bootstrap::start(&config).await?;
    let ring = owner.take_events();
    let masquerading = owner.masquerading();
    let node_ip = owner.node_ip();
    let nat = owner.nat_table();
    let service_tables = owner.service_tables();
    let checks = owner.health_checks();
    let policies = owner.policies();
    let mut tasks = Supervisor::new();
    let (state, owner) = StateHandle::start(owner);
    tasks.essential("state owner", async move {
        owner.await;
        Ok(())
    });
    let listener = server::bind(&config.agent.api_socket)?;
    info!(socket = %config.agent.api_socket.display(), "agent ready");

    let packet_events = tokio::sync::broadcast::channel(4096).0;
    if let Some(ring) = ring {
        let events = packet_events.clone();
        let policies = policies.clone();
        tasks.essential("packet event relay", async move {
            events::relay(ring, events, policies).await;
            Ok(())
        });
    }
    let api = server::serve(listener, state.clone(), nat.clone(), packet_events);
    tasks.essential("API server", async move {
        api.await;
        Ok(())
    });
    {
        let (state, path, config) = (state.clone(), config_path.to_owned(), config.clone());
        tasks.restarting("config file source", move || {
            let reload = reload::follow_config_file(state.clone(), path.clone(), config.clone());
            async move {
                reload.await;
                Ok(())
            }
        });
    }
    if let Some(address) = config.agent.metrics_address {
        let state = state.clone();
        tasks.restarting("metrics server", move || {
            metrics::serve(state.clone(), address)
        });
    }
    {
        let state = state.clone();
        tasks.restarting("node links and addresses source", move || {
            let follow = host::follow(state.clone());
            async move {
                follow.await;
                Ok(())
            }
        });
    }
    if config.kubernetes.enabled {
        let node_name = kubernetes::node_name(&config.kubernetes)?;
        let state_for_nodes = state.clone();
        tasks.restarting("Kubernetes Nodes source", move || {
            let follow =
                kubernetes::follow_nodes(state_for_nodes.clone(), node_name.clone(), node_ip);
            async move {
                follow.await;
                Ok(())
            }
        });
        let services_state = state.clone();
        tasks.restarting("Kubernetes Services source", move || {
            let follow = kubernetes::follow_services(services_state.clone());
            async move {
                follow.await;
                Ok(())
            }
        });
        let policy_state = state.clone();
        tasks.restarting("Kubernetes NetworkPolicy source", move || {
            let follow = kubernetes::follow_policies(policies.clone(), policy_state.clone());
            async move {
                follow.await;
                Ok(())
            }
        });
    }
    tasks.restarting("load balancer health checks", move || {
        let serve = health_checks::serve(checks.clone());
        async move {
            serve.await;
            Ok(())
        }
    });
    if config.agent.healthz_port != 0 {
        let (state, port) = (state.clone(), config.agent.healthz_port);
        tasks.restarting("proxy health server", move || {
            healthz::serve(state.clone(), port)
        });
    }
    let gc_interval = Duration::from_secs(config.nat.gc_interval_seconds.max(1));
    tasks.restarting("Service connection expiry", move || {
        let collect = collect_service_garbage_forever(service_tables.clone(), gc_interval);
        async move {
            collect.await;
            Ok(())
        }
    });
    if masquerading {
        let state = state.clone();
        tasks.restarting("NAT garbage collection", move || {
            let collect = collect_nat_garbage_forever(nat.clone(), state.clone(), gc_interval);
            async move {
                collect.await;
                Ok(())
            }
        });
    }

    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let ended = tokio::select! {
        _ = terminate.recv() => None,
        _ = interrupt.recv() => None,
        why = tasks.ended() => Some(why),
    };
    info!("agent stopping");
    // The socket path is ours; a failure to remove it only leaves a stale file.
    let _ = std::fs::remove_file(&config.agent.api_socket);
    match ended {
        None => Ok(()),
        Some(why) => Err(why.context(
            "an essential task of the agent ended (the pinned programs keep forwarding \
             until it is started again)",
        )),
    }
}

/// Says once when a table crosses 90% full and once when it is back under
/// (collections every second would repeat it every second).
#[derive(Default)]
struct FillWarning {
    full: bool,
}

impl FillWarning {
    fn update(&mut self, full: bool, table: &str, consequence: &str) {
        match (self.full, full) {
            (false, true) => warn!("the {table} is over 90% full; {consequence}"),
            (true, false) => info!("the {table} is under 90% full again"),
            _ => {}
        }
        self.full = full;
    }
}

/// Expires Service connections as often as the NAT table is collected,
/// warning when a table is nearly full (an LRU map forgets its least
/// recently used connections then).
async fn collect_service_garbage_forever(tables: ServiceTables, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    let mut warning = FillWarning::default();
    loop {
        ticks.tick().await;
        let collected = tables.collect_garbage().await;
        crate::memory::release_free_memory();
        match collected {
            Ok(fill) => warning.update(
                fill.under_pressure(),
                "Service connection table",
                "idle connections are forgotten first",
            ),
            Err(error) => warn!("counting the Service connection tables: {error:#}"),
        }
    }
}

async fn collect_nat_garbage_forever(nat: NatTable, state: StateHandle, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    let mut warning = FillWarning::default();
    loop {
        ticks.tick().await;
        let collected = match state.pod_addresses().await {
            Ok(pods) => nat.collect_garbage(pods).await,
            Err(error) => Err(error),
        };
        crate::memory::release_free_memory();
        match collected {
            Ok(report) => {
                if report.removed > 0 {
                    debug!(
                        entries = report.entries,
                        removed = report.removed,
                        "NAT garbage collected"
                    );
                }
                warning.update(
                    report.entries * 10 > MAX_NAT_ENTRIES as usize * 9,
                    "NAT table",
                    "new connections will start failing",
                );
            }
            Err(error) => warn!("NAT garbage collection: {error:#}"),
        }
    }
}
