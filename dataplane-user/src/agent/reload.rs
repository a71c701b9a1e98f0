//! The config file as a source: a changed file is applied as a whole or not
//! at all, and one the agent could not start with is refused.

use std::path::PathBuf;

use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use super::bootstrap;
use crate::{
    config::Config,
    interfaces::Interfaces,
    state::{Command, StateHandle},
};

/// How often the config file is checked for changes.
const POLL_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Watches the config file for as long as the agent runs: every second, and
/// at once on SIGHUP (what `kill -HUP` and config management tools send).
pub async fn follow_config_file(state: StateHandle, path: PathBuf, mut applied: Config) {
    let mut ticks = tokio::time::interval(POLL_INTERVAL);
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => Some(hangups),
        Err(error) => {
            warn!("SIGHUP will not reload the config file: {error}");
            None
        }
    };
    let mut seen = std::fs::read(&path).unwrap_or_default();
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            Some(()) = async { hangups.as_mut()?.recv().await } => {
                info!(path = %path.display(), "SIGHUP: rereading the config file");
            }
        }
        let Ok(bytes) = tokio::fs::read(&path).await else {
            continue;
        };
        if bytes == seen {
            continue;
        }
        seen = bytes;
        match reload(&state, &path, &seen, &applied).await {
            Ok(config) => applied = config,
            Err(error) => warn!(path = %path.display(), "config file change refused: {error:#}"),
        }
    }
}

/// Checks the new file as the agent would at start-up, then hands its
/// nodes and endpoints to the owner in one command.
async fn reload(
    state: &StateHandle,
    path: &std::path::Path,
    bytes: &[u8],
    applied: &Config,
) -> anyhow::Result<Config> {
    let text = std::str::from_utf8(bytes)
        .map_err(|error| anyhow::anyhow!("the file is not UTF-8: {error}"))?;
    if text.trim().is_empty() {
        // An editor truncating before it writes; an empty file configures nothing.
        anyhow::bail!("the file is empty; waiting for its contents");
    }
    let config = Config::parse(text, path)?;
    let restart_only =
        config.node != applied.node || config.nat != applied.nat || config.agent != applied.agent;
    if restart_only {
        bootstrap::check(&config, &Interfaces::connect()?)
            .await
            .map_err(|error| error.context("the agent could not start with this config"))?;
    }
    state
        .ask(|reply| Command::ApplyConfigFile {
            nodes: config.nodes.clone(),
            endpoints: config.endpoints.clone(),
            services: config.services.clone(),
            reply,
        })
        .await?;
    info!(
        nodes = config.nodes.len(),
        endpoints = config.endpoints.len(),
        services = config.services.len(),
        "config file reloaded"
    );
    if restart_only {
        warn!("changes to [agent], [node] or [nat] take effect at the next agent start");
    }
    Ok(config)
}
