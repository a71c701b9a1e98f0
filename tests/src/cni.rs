//! A container runtime's side of CNI, as far as tests need it: the real
//! plugins are executed with the CNI_* environment and the network
//! configuration on stdin, in the node's network namespace, chaining
//! `prevResult` through a conflist; DEL runs the chain in reverse.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::Stdio,
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use dataplane_user::install::default_conflist;

use crate::{cluster::dataplane_binary, netns::Netns};

/// Where Debian's containernetworking-plugins put the reference plugins.
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

/// A plugin's error result: its code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginError {
    pub code: u64,
    pub msg: String,
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CNI error {}: {}", self.code, self.msg)
    }
}

impl std::error::Error for PluginError {}

#[derive(Clone)]
pub struct CniNetwork {
    /// `/run/netns/<node>`: plugins run in the node's network namespace.
    node_netns: String,
    conflist: Value,
    /// CNI_PATH: the reference plugins and the directory of `dataplane-cni`.
    cni_path: String,
}

/// The main plugin that creates the pod's veth and assigns its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MainPlugin {
    /// `ptp`: a veth per pod, the pod CIDR's gateway address on every host veth.
    Ptp,
    /// `bridge`: pod veths on `cni0`, which holds the gateway address.
    Bridge,
}

impl CniNetwork {
    /// ptp + host-local (the node's pod CIDR) + dataplane-cni, spec 1.0.0.
    pub fn ptp_chain(
        node_netns: &Netns,
        pod_cidr: &str,
        socket: &Path,
        state_dir: &Path,
    ) -> anyhow::Result<Self> {
        Self::chain(
            MainPlugin::Ptp,
            "pods",
            node_netns,
            pod_cidr,
            socket,
            state_dir,
        )
    }

    /// The conflist `dataplane install-cni` writes, with `main` as the main
    /// plugin (host-local over `subnet` in both), as the network `name`.
    /// State (IPAM and the plugin's records) goes under `state_dir`.
    pub fn chain(
        main: MainPlugin,
        name: &str,
        node_netns: &Netns,
        subnet: &str,
        socket: &Path,
        state_dir: &Path,
    ) -> anyhow::Result<Self> {
        let plugin_dir = dataplane_binary()?
            .parent()
            .context("the dataplane binary has a directory")?
            .to_path_buf();
        let mut conflist = default_conflist(subnet.parse()?, socket);
        conflist["name"] = name.into();
        let plugins = &mut conflist["plugins"];
        if main == MainPlugin::Bridge {
            for (key, value) in [
                ("type", json!("bridge")),
                ("bridge", json!("cni0")),
                ("isGateway", json!(true)),
            ] {
                plugins[0][key] = value;
            }
        }
        plugins[0]["ipam"]["dataDir"] = json!(state_dir.join("ipam"));
        plugins[1]["dataDir"] = json!(state_dir.join("dataplane"));
        Ok(Self {
            node_netns: node_netns.path(),
            conflist,
            cni_path: format!("{REFERENCE_PLUGINS}:{}", plugin_dir.display()),
        })
    }

    /// The same network with `dataplane-cni` taken from beside `binary`
    /// (another build's).
    pub fn with_plugins_of(mut self, binary: &Path) -> anyhow::Result<Self> {
        let plugin_dir = binary
            .parent()
            .context("the dataplane binary has a directory")?;
        self.cni_path = format!("{REFERENCE_PLUGINS}:{}", plugin_dir.display());
        Ok(self)
    }

    /// The same network handing out IPv6 addresses from `subnet` only, with
    /// an IPv6 default route (an IPv6-only cluster).
    pub fn ipv6_only(mut self, subnet: &str) -> Self {
        let ipam = &mut self.conflist["plugins"][0]["ipam"];
        ipam["ranges"] = json!([[{"subnet": subnet}]]);
        ipam["routes"] = json!([{"dst": "::/0"}]);
        self
    }

    /// The same network with host-local also handing out IPv6 addresses
    /// from `subnet`, and an IPv6 default route (dual stack, as clusters
    /// configure it).
    pub fn with_ipv6_range(mut self, subnet: &str) -> Self {
        let ipam = &mut self.conflist["plugins"][0]["ipam"];
        if let Some(ranges) = ipam["ranges"].as_array_mut() {
            ranges.push(json!([{"subnet": subnet}]));
        }
        if let Some(routes) = ipam["routes"].as_array_mut() {
            routes.push(json!({"dst": "::/0"}));
        }
        self
    }

    /// The same network with its main plugin alone: pods get their veths
    /// and addresses and are registered by nobody.
    pub fn main_plugin_only(mut self) -> Self {
        if let Some(plugins) = self.conflist["plugins"].as_array_mut() {
            plugins.truncate(1);
        }
        self
    }

    fn plugins(&self) -> Vec<Value> {
        self.conflist["plugins"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The stdin of plugin `plugin`: its configuration plus the list's name and version.
    fn plugin_config(&self, plugin: &Value, prev_result: Option<&Value>) -> Value {
        let mut config = plugin.clone();
        config["cniVersion"] = self.conflist["cniVersion"].clone();
        config["name"] = self.conflist["name"].clone();
        if let Some(prev_result) = prev_result {
            config["prevResult"] = prev_result.clone();
        }
        config
    }

    /// Runs `plugin_type` once; its stdout as JSON (Null when empty), or its error.
    pub fn exec(
        &self,
        plugin_type: &str,
        environment: &[(&str, &str)],
        stdin: &str,
    ) -> anyhow::Result<Value> {
        let binary = self
            .cni_path
            .split(':')
            .map(|dir| PathBuf::from(dir).join(plugin_type))
            .find(|path| path.exists())
            .with_context(|| {
                format!(
                    "plugin {plugin_type} not in {} (cargo xtask setup installs it)",
                    self.cni_path
                )
            })?;
        let mut child = crate::netns::command_in(Path::new(&self.node_netns), &binary)?
            .env_clear()
            .env("CNI_PATH", &self.cni_path)
            .envs(environment.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {}", binary.display()))?;
        child
            .stdin
            .take()
            .context("plugin stdin")?
            .write_all(stdin.as_bytes())?;
        let output = child.wait_with_output()?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let parsed: Value = if stdout.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&stdout)
                .with_context(|| format!("{plugin_type} printed {stdout:?}"))?
        };
        if !output.status.success() {
            return Err(PluginError {
                code: parsed["code"].as_u64().unwrap_or(0),
                msg: format!(
                    "{plugin_type}: {} {} {}",
                    parsed["msg"].as_str().unwrap_or_default(),
                    parsed["details"].as_str().unwrap_or_default(),
                    String::from_utf8_lossy(&output.stderr).trim()
                ),
            }
            .into());
        }
        Ok(parsed)
    }

    /// ADD through the whole chain, as a runtime does; on failure the chain
    /// is deleted again. Returns the final result.
    pub fn add(&self, container_id: &str, pod: &Netns, ifname: &str) -> anyhow::Result<Value> {
        self.add_named(container_id, pod, ifname, None)
    }

    /// As `add`, naming the Kubernetes pod (namespace, name) in CNI_ARGS as
    /// kubelet's runtimes do.
    pub fn add_named(
        &self,
        container_id: &str,
        pod: &Netns,
        ifname: &str,
        kubernetes_pod: Option<(&str, &str)>,
    ) -> anyhow::Result<Value> {
        let netns = pod.path();
        let args = kubernetes_pod.map(|(namespace, name)| {
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}")
        });
        let mut result: Option<Value> = None;
        for plugin in self.plugins() {
            let plugin_type = plugin["type"].as_str().unwrap_or_default().to_string();
            let stdin = self.plugin_config(&plugin, result.as_ref()).to_string();
            let mut environment = environment("ADD", container_id, &netns, ifname).to_vec();
            if let Some(args) = &args {
                environment.push(("CNI_ARGS", args));
            }
            match self.exec(&plugin_type, &environment, &stdin) {
                Ok(output) => result = Some(output),
                Err(error) => {
                    let _ = self.del(container_id, &netns, ifname, result.as_ref());
                    return Err(error);
                }
            }
        }
        result.context("empty conflist")
    }

    /// DEL through the chain in reverse; every plugin must succeed.
    pub fn del(
        &self,
        container_id: &str,
        netns: &str,
        ifname: &str,
        prev_result: Option<&Value>,
    ) -> anyhow::Result<()> {
        for plugin in self.plugins().iter().rev() {
            let plugin_type = plugin["type"].as_str().unwrap_or_default();
            let stdin = self.plugin_config(plugin, prev_result).to_string();
            let environment = environment("DEL", container_id, netns, ifname);
            self.exec(plugin_type, &environment, &stdin)?;
        }
        Ok(())
    }

    /// Runs only `dataplane-cni` with `command` and a raw stdin.
    pub fn dataplane_plugin(
        &self,
        environment: &[(&str, &str)],
        stdin: &str,
    ) -> anyhow::Result<Value> {
        self.exec("dataplane-cni", environment, stdin)
    }

    /// The dataplane plugin's configuration as the runtime would pass it.
    pub fn dataplane_config(&self, prev_result: Option<&Value>) -> Value {
        let plugin = self
            .plugins()
            .into_iter()
            .find(|plugin| plugin["type"] == "dataplane-cni")
            .unwrap_or_default();
        self.plugin_config(&plugin, prev_result)
    }
}

/// The CNI_* variables of a command on one attachment.
pub fn environment<'a>(
    command: &'a str,
    container_id: &'a str,
    netns: &'a str,
    ifname: &'a str,
) -> [(&'a str, &'a str); 4] {
    [
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", container_id),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", ifname),
    ]
}

/// The first IPv4 address of a CNI result.
pub fn pod_ip(result: &Value) -> anyhow::Result<std::net::Ipv4Addr> {
    let address = result["ips"][0]["address"]
        .as_str()
        .context("result without ips[0].address")?;
    let ip = address.split('/').next().unwrap_or_default();
    ip.parse().with_context(|| format!("{address} is not IPv4"))
}

/// The host side of the pod's veth in a CNI result: the last interface
/// outside any sandbox (ptp lists it first; bridge lists the bridge, then it).
pub fn host_interface(result: &Value) -> anyhow::Result<String> {
    result["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|interface| interface["sandbox"].as_str().unwrap_or_default().is_empty())
        .filter_map(|interface| interface["name"].as_str())
        .next_back()
        .map(str::to_string)
        .with_context(|| format!("no host interface in {result}"))
}

/// Fails unless `error` is a CNI error with `code`.
pub fn expect_code(result: anyhow::Result<Value>, code: u64) -> anyhow::Result<PluginError> {
    let error = match result {
        Ok(output) => bail!("expected CNI error {code}, got success: {output}"),
        Err(error) => error,
    };
    let plugin_error = error
        .downcast::<PluginError>()
        .map_err(|error| error.context(format!("expected CNI error {code}")))?;
    if plugin_error.code != code {
        bail!("expected CNI error {code}, got {plugin_error}");
    }
    Ok(plugin_error)
}
