//! The node agent: checks its config, loads the dataplane, hands it to the
//! state owner and runs the sources and servers around it until
//! SIGINT/SIGTERM.

mod bootstrap;
mod events;
mod health_checks;
mod healthz;
mod reload;
mod server;

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
    let state = StateHandle::spawn(owner);
    let listener = server::bind(&config.agent.api_socket)?;
    info!(socket = %config.agent.api_socket.display(), "agent ready");

    let packet_events = tokio::sync::broadcast::channel(4096).0;
    if let Some(ring) = ring {
        tokio::spawn(events::relay(ring, packet_events.clone()));
    }
    tokio::spawn(server::serve(
        listener,
        state.clone(),
        nat.clone(),
        packet_events,
    ));
    tokio::spawn(reload::follow_config_file(
        state.clone(),
        config_path.to_owned(),
        config.clone(),
    ));
    if let Some(address) = config.agent.metrics_address {
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(error) = metrics::serve(state, address).await {
                warn!("metrics: {error:#}");
            }
        });
    }
    tokio::spawn(host::follow(state.clone()));
    if config.kubernetes.enabled {
        let node_name = kubernetes::node_name(&config.kubernetes)?;
        tokio::spawn(kubernetes::follow_nodes(state.clone(), node_name, node_ip));
        tokio::spawn(kubernetes::follow_services(state.clone()));
    }
    tokio::spawn(health_checks::serve(checks));
    if config.agent.healthz_port != 0 {
        let (state, port) = (state.clone(), config.agent.healthz_port);
        tokio::spawn(async move {
            if let Err(error) = healthz::serve(state, port).await {
                warn!("proxy health server: {error:#}");
            }
        });
    }
    tokio::spawn(collect_service_garbage_forever(
        service_tables,
        Duration::from_secs(config.nat.gc_interval_seconds.max(1)),
    ));
    if masquerading {
        tokio::spawn(collect_nat_garbage_forever(
            nat,
            state.clone(),
            Duration::from_secs(config.nat.gc_interval_seconds.max(1)),
        ));
    }

    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    info!("agent stopping");
    // The socket path is ours; a failure to remove it only leaves a stale file.
    let _ = std::fs::remove_file(&config.agent.api_socket);
    Ok(())
}

/// Expires Service connections as often as the NAT table is collected,
/// warning when a table is nearly full (an LRU map forgets its least
/// recently used connections then).
async fn collect_service_garbage_forever(tables: ServiceTables, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    loop {
        ticks.tick().await;
        match tables.collect_garbage().await {
            Ok(fill) if fill.under_pressure() => warn!(
                ?fill,
                "a Service connection table is over 90% full; idle connections are forgotten first"
            ),
            Ok(_) => {}
            Err(error) => warn!("counting the Service connection tables: {error:#}"),
        }
    }
}

async fn collect_nat_garbage_forever(nat: NatTable, state: StateHandle, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    loop {
        ticks.tick().await;
        let collected = match state.pod_addresses().await {
            Ok(pods) => nat.collect_garbage(pods).await,
            Err(error) => Err(error),
        };
        match collected {
            Ok(report) => {
                if report.removed > 0 {
                    debug!(
                        entries = report.entries,
                        removed = report.removed,
                        "NAT garbage collected"
                    );
                }
                if report.entries * 10 > MAX_NAT_ENTRIES as usize * 9 {
                    warn!("the NAT table is over 90% full; new connections will start failing");
                }
            }
            Err(error) => warn!("NAT garbage collection: {error:#}"),
        }
    }
}
