//! `dataplane install-cni`: what a DaemonSet's init container does to hook the
//! dataplane into the node's container runtime. Copies `dataplane-cni` into
//! the CNI bin directory and chains it last in the network configuration:
//! the first existing conflist is extended (or a single-plugin .conf turned
//! into one); without any, a ptp + host-local + dataplane-cni list is written.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use ipnetwork::Ipv4Network;
use serde_json::{Value, json};

pub const PLUGIN_NAME: &str = "dataplane-cni";
const OWN_CONFLIST: &str = "10-dataplane.conflist";

pub struct InstallOptions {
    pub plugin: PathBuf,
    pub bin_dir: PathBuf,
    pub conf_dir: PathBuf,
    pub socket: PathBuf,
    /// Used only when no network configuration exists yet.
    pub pod_cidr: Option<Ipv4Network>,
}

/// Installs the plugin and configuration; returns the conflist written.
pub fn install(options: &InstallOptions) -> anyhow::Result<PathBuf> {
    copy_plugin(&options.plugin, &options.bin_dir)?;
    std::fs::create_dir_all(&options.conf_dir)
        .with_context(|| format!("creating {}", options.conf_dir.display()))?;
    let (path, conflist) = match first_network_config(&options.conf_dir)? {
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let config: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not valid JSON", path.display()))?;
            let entry = json!({"type": PLUGIN_NAME, "socket": options.socket});
            let conflist =
                chained(config, entry).with_context(|| format!("extending {}", path.display()))?;
            // A .conf becomes a .conflist; the runtime would otherwise read the old file first.
            let target = path.with_extension("conflist");
            if target != path {
                std::fs::remove_file(&path)?;
            }
            (target, conflist)
        }
        None => {
            let Some(pod_cidr) = options.pod_cidr else {
                bail!(
                    "{} holds no network configuration to extend: pass --pod-cidr to write one",
                    options.conf_dir.display()
                );
            };
            let conflist = default_conflist(pod_cidr, &options.socket);
            (options.conf_dir.join(OWN_CONFLIST), conflist)
        }
    };
    write_atomically(&path, serde_json::to_string_pretty(&conflist)?.as_bytes())?;
    Ok(path)
}

/// The network written for a node that has none: ptp with host-local
/// addresses from `pod_cidr` (no masquerade: the dataplane does SNAT), then
/// this plugin talking to the agent at `socket`.
pub fn default_conflist(pod_cidr: Ipv4Network, socket: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "dataplane",
        "plugins": [
            {
                "type": "ptp",
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": pod_cidr.to_string()}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": PLUGIN_NAME, "socket": socket},
        ],
    })
}

/// The configuration file the runtime would use: the first .conflist or
/// .conf in name order, as libcni picks it.
fn first_network_config(conf_dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    let mut candidates: Vec<PathBuf> = std::fs::read_dir(conf_dir)
        .with_context(|| format!("listing {}", conf_dir.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            matches!(
                path.extension().and_then(|extension| extension.to_str()),
                Some("conflist" | "conf")
            )
        })
        .collect();
    candidates.sort();
    Ok(candidates.into_iter().next())
}

/// `config` (a conflist or a single plugin's .conf) with `entry` chained last,
/// replacing an earlier dataplane entry.
fn chained(config: Value, entry: Value) -> anyhow::Result<Value> {
    let mut conflist = if config.get("plugins").is_some() {
        config
    } else {
        let Some(name) = config.get("name").cloned() else {
            bail!("neither a conflist nor a plugin configuration (no name)");
        };
        let version = config.get("cniVersion").cloned().unwrap_or(json!("1.0.0"));
        json!({"cniVersion": version, "name": name, "plugins": [config]})
    };
    let plugins = conflist["plugins"]
        .as_array_mut()
        .context("`plugins` is not a list")?;
    plugins.retain(|plugin| plugin["type"] != PLUGIN_NAME);
    plugins.push(entry);
    Ok(conflist)
}

fn copy_plugin(plugin: &Path, bin_dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(bin_dir).with_context(|| format!("creating {}", bin_dir.display()))?;
    let bytes = std::fs::read(plugin).with_context(|| format!("reading {}", plugin.display()))?;
    let target = bin_dir.join(PLUGIN_NAME);
    write_atomically(&target, &bytes)?;
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", target.display()))
}

/// Written beside, then renamed: the runtime never execs or parses half a file.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let temporary = path.with_extension("dataplane-tmp");
    std::fs::write(&temporary, bytes)
        .with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("replacing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(directory: &Path, pod_cidr: Option<&str>) -> InstallOptions {
        let plugin = directory.join("built-plugin");
        std::fs::write(&plugin, b"#!/bin/sh\n").unwrap();
        InstallOptions {
            plugin,
            bin_dir: directory.join("bin"),
            conf_dir: directory.join("net.d"),
            socket: "/run/dataplane/agent.sock".into(),
            pod_cidr: pod_cidr.map(|cidr| cidr.parse().unwrap()),
        }
    }

    fn plugin_types(path: &Path) -> Vec<String> {
        let conflist: Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        conflist["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|plugin| plugin["type"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn writes_a_conflist_when_there_is_none_and_copies_the_plugin() {
        let directory = tempfile::tempdir().unwrap();
        let options = options(directory.path(), Some("10.244.3.0/24"));
        let written = install(&options).unwrap();
        assert_eq!(plugin_types(&written), ["ptp", PLUGIN_NAME]);
        let installed = options.bin_dir.join(PLUGIN_NAME);
        assert_eq!(
            std::fs::metadata(&installed).unwrap().permissions().mode() & 0o777,
            0o755
        );
    }

    #[test]
    fn extends_the_existing_conflist_once() {
        let directory = tempfile::tempdir().unwrap();
        let options = options(directory.path(), None);
        std::fs::create_dir_all(&options.conf_dir).unwrap();
        let existing = options.conf_dir.join("05-bridge.conflist");
        std::fs::write(
            &existing,
            r#"{"cniVersion":"1.0.0","name":"k8s","plugins":[{"type":"bridge"},{"type":"portmap"}]}"#,
        )
        .unwrap();
        assert_eq!(install(&options).unwrap(), existing);
        assert_eq!(install(&options).unwrap(), existing);
        assert_eq!(plugin_types(&existing), ["bridge", "portmap", PLUGIN_NAME]);
    }

    #[test]
    fn turns_a_single_plugin_conf_into_a_conflist() {
        let directory = tempfile::tempdir().unwrap();
        let options = options(directory.path(), None);
        std::fs::create_dir_all(&options.conf_dir).unwrap();
        std::fs::write(
            options.conf_dir.join("10-ptp.conf"),
            r#"{"cniVersion":"0.4.0","name":"k8s","type":"ptp"}"#,
        )
        .unwrap();
        let written = install(&options).unwrap();
        assert_eq!(written, options.conf_dir.join("10-ptp.conflist"));
        assert!(!options.conf_dir.join("10-ptp.conf").exists());
        assert_eq!(plugin_types(&written), ["ptp", PLUGIN_NAME]);
    }

    #[test]
    fn refuses_to_invent_a_network_without_a_pod_cidr() {
        let directory = tempfile::tempdir().unwrap();
        let error = install(&options(directory.path(), None)).unwrap_err();
        assert!(error.to_string().contains("--pod-cidr"), "{error}");
    }
}
