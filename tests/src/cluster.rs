// Above 400 lines: the cluster builder: nodes, agents and their clean-up in one lifecycle.
//! A cluster in network namespaces.
//!
//! ```text
//!  external (203.0.113.10) ── gateway (203.0.113.1 | 192.0.2.1) ──┐
//!                                                     underlay bridge (192.0.2.0/24)
//!  node i (192.0.2.(10+i), pod CIDR 10.244.i.0/24) ────────────────┘
//!    └─ vp<j> ══ eth0 of pod j (10.244.i.(j+2)/32, default via 169.254.1.1)
//!
//!  a routed node i: behind the gateway as a router, on 198.51.100.(16i+2)/28
//! ```
//! Pods are wired the way a ptp-style main CNI plugin does it. The nodes
//! either run the dataplane agent or the kernel design it replaces.

use std::{
    collections::BTreeMap,
    fs::OpenOptions,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use ipnetwork::{Ipv4Network, Ipv6Network};
use macaddr::MacAddr6;
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use dataplane_user::model::Routing;

use crate::{
    cni::{self, CniNetwork, MainPlugin},
    netlink::NextHop,
    netns::{Netns, reap_stale_namespaces, require_root, run, unique_prefix},
};

pub const GATEWAY_UNDERLAY_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// Every node's pod CIDR lies inside it.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The underlay's MTU, and what VXLAN over IPv4 leaves of it for pods.
pub const UNDERLAY_MTU: u32 = 1500;
pub const VXLAN_POD_MTU: u32 = UNDERLAY_MTU - 50;
/// Nodes' own ephemeral ports, and the SNAT range beside them (never overlapping).
pub const NODE_LOCAL_PORT_RANGE: &str = "32768 39999";
pub const NAT_PORT_RANGE: &str = "40000-60999";
pub const GATEWAY_EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub const EXTERNAL_HOST_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// The pods' default gateway: nothing owns it, the from-pod program answers its ARP.
/// `default` in a routing table.
pub const DEFAULT_ROUTE: Ipv4Network = Ipv4Network::new_checked(Ipv4Addr::UNSPECIFIED, 0).unwrap();
pub const POD_GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// How nodes forward pod traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarding {
    /// The dataplane agent and its BPF programs; the node has no routes to pods,
    /// proxy_arp off and ip_forward 0.
    Dataplane,
    /// The kernel design it replaces: /32 route per pod, proxy_arp on the host
    /// veth, ip_forward 1 (Calico-style); across nodes flannel's vxlan backend:
    /// a `flannel.1` device plus a route, a permanent neighbour and an FDB
    /// entry per remote node.
    KernelRoutes,
    /// The docker/flannel bridge: pods' veths on a `cni0` bridge that owns
    /// the first address of the pod CIDR (pods in one L2 segment), across
    /// nodes flannel's vxlan backend as above.
    Bridge,
}

/// The bridge of `Forwarding::Bridge` nodes.
const BRIDGE: &str = "cni0";

/// The bridge's address: the first host address of the node's pod CIDR.
fn bridge_gateway(pod_cidr: Ipv4Network) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(pod_cidr.network()) + 1)
}

/// How pods are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodWiring {
    /// By hand, ptp-style but without a host-side address: veth, pod IP /32,
    /// default route via 169.254.1.1 (or on `cni0` for `Forwarding::Bridge`).
    Handmade,
    /// Through the real CNI chain a runtime runs: the reference main plugin
    /// with host-local, then `dataplane-cni` (dataplane nodes only).
    Cni(MainPlugin),
}

#[derive(Debug, Clone, Copy)]
pub struct ClusterSpec {
    pub nodes: usize,
    pub pods_per_node: usize,
    pub forwarding: Forwarding,
    pub pods: PodWiring,
    /// The dataplane nodes' `node.routing`.
    pub routing: Routing,
    /// How many of the last nodes sit behind the gateway as a router, each
    /// on a network of its own, instead of on the underlay bridge.
    pub routed_nodes: usize,
    /// Which build the nodes' agents (and CNI plugins) start as.
    pub build: Build,
    /// Dual stack: each dataplane node has an IPv6 pod CIDR
    /// (`node.pod_cidr_ipv6`), an IPv6 address on its uplink, the others'
    /// IPv6 CIDRs, and a CNI chain giving pods both families.
    pub ipv6: bool,
}

/// A build of the dataplane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    /// The one under test.
    Current,
    /// The previous map layout's (what an upgrade starts from).
    PreviousLayout,
}

impl Build {
    pub fn binary(self) -> anyhow::Result<PathBuf> {
        match self {
            Self::Current => dataplane_binary(),
            Self::PreviousLayout => previous_layout_binary(),
        }
    }
}

impl ClusterSpec {
    /// `nodes` nodes of `pods_per_node` pods each, running the dataplane.
    pub fn dataplane(nodes: usize, pods_per_node: usize) -> Self {
        Self::new(nodes, pods_per_node, Forwarding::Dataplane)
    }

    /// Hand-made pods.
    pub fn new(nodes: usize, pods_per_node: usize, forwarding: Forwarding) -> Self {
        Self {
            nodes,
            pods_per_node,
            forwarding,
            pods: PodWiring::Handmade,
            routing: Routing::Tunnel,
            routed_nodes: 0,
            build: Build::Current,
            ipv6: false,
        }
    }

    /// Dual-stack dataplane nodes (see `ipv6`).
    pub fn with_ipv6(self) -> Self {
        Self { ipv6: true, ..self }
    }

    /// Nodes started as the previous map layout's build.
    pub fn starting_as(self, build: Build) -> Self {
        Self { build, ..self }
    }

    /// Dataplane nodes routing as `routing` says.
    pub fn with_routing(self, routing: Routing) -> Self {
        Self { routing, ..self }
    }

    /// The last `count` nodes behind a router.
    pub fn with_routed_nodes(self, count: usize) -> Self {
        Self {
            routed_nodes: count,
            ..self
        }
    }

    /// Pods made through the real CNI chain with `main`.
    pub fn with_real_plugin(self, main: MainPlugin) -> Self {
        Self {
            pods: PodWiring::Cni(main),
            ..self
        }
    }
}

/// The `dataplane` binary under test: `$DATAPLANE_BIN`, else the workspace's debug build.
pub fn dataplane_binary() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("DATAPLANE_BIN").map_or_else(
        || {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../target/debug/dataplane"
            ))
        },
        PathBuf::from,
    );
    if !path.exists() {
        bail!(
            "dataplane binary not found at {} (run the tests with `cargo xtask test`, or set DATAPLANE_BIN)",
            path.display()
        );
    }
    Ok(path)
}

/// The previous map layout's `dataplane`: `$DATAPLANE_PREVIOUS_BIN`, which
/// `cargo xtask test` builds from git (`cargo xtask build --previous-layout`).
pub fn previous_layout_binary() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("DATAPLANE_PREVIOUS_BIN").map(PathBuf::from);
    match path {
        Some(path) if path.exists() => Ok(path),
        _ => bail!(
            "the previous map layout's dataplane binary is not at $DATAPLANE_PREVIOUS_BIN ({path:?}): \
             run the tests with `cargo xtask test`, or build it with `cargo xtask build \
             --previous-layout` and set DATAPLANE_PREVIOUS_BIN"
        ),
    }
}

pub struct Pod {
    pub netns: Netns,
    pub ip: Ipv4Addr,
    pub mac: MacAddr6,
    /// Host side of the pod's veth, in the node's namespace.
    pub host_interface: String,
}

impl Pod {
    /// Pings `destination` `count` times; an error unless every reply came back.
    pub fn ping(&self, destination: Ipv4Addr, count: u32) -> anyhow::Result<()> {
        self.netns
            .ping(destination, count, &["-q"])
            .with_context(|| format!("ping {} -> {destination}", self.ip))
    }

    /// Whether a single ping to `destination` is answered (within one second).
    pub fn reaches(&self, destination: Ipv4Addr) -> bool {
        self.ping(destination, 1).is_ok()
    }
}

struct AgentProcess {
    child: Child,
}

impl AgentProcess {
    fn stop(mut self, signal: Signal) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), signal);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub struct Node {
    // Field order is drop order: pods, then the agent, then the namespace.
    pub pods: Vec<Pod>,
    agent: Option<AgentProcess>,
    pub netns: Netns,
    pub ip: Ipv4Addr,
    pub pod_cidr: Ipv4Network,
    /// Its IPv6 pod CIDR, on a dual-stack cluster.
    pub pod_cidr6: Option<Ipv6Network>,
    /// Its IPv6 address on the uplink, on a dual-stack cluster.
    pub ip6: Option<Ipv6Addr>,
    pub socket: PathBuf,
    pub config: PathBuf,
    log: PathBuf,
    /// Unique prefix for namespaces of pods created later (e.g. through CNI).
    pub pod_prefix: String,
    /// Extra environment for the agent process (e.g. KUBECONFIG).
    pub agent_environment: Vec<(String, String)>,
    /// The CNI chain pods are made with, for `PodWiring::Cni`.
    pub cni: Option<CniNetwork>,
    /// The build its agent and CLI run as.
    pub build: Build,
}

impl Node {
    /// Starts the agent in the node's network namespace without waiting for
    /// it.
    pub fn spawn_agent(&mut self) -> anyhow::Result<()> {
        if self.agent.is_some() {
            bail!("the agent of {} is already running", self.netns.name());
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = self
            .netns
            .command(self.build.binary()?)?
            .args(["agent", "--config"])
            .arg(&self.config)
            .env("DATAPLANE_LOG", "debug")
            .envs(
                self.agent_environment
                    .iter()
                    .map(|(key, value)| (key, value)),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning the agent")?;
        self.agent = Some(AgentProcess { child });
        Ok(())
    }

    /// The running agent's process id.
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(|agent| agent.child.id())
    }

    /// Starts the agent and waits until its API answers.
    pub fn start_agent(&mut self) -> anyhow::Result<()> {
        self.spawn_agent()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.cli(&["endpoint", "list"]).is_ok() {
                return Ok(());
            }
            let exited = self
                .agent
                .as_mut()
                .and_then(|agent| agent.child.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                self.agent = None;
                bail!(
                    "the agent of {} did not come up ({exited:?}); its log:\n{}",
                    self.netns.name(),
                    self.agent_log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Restarts the agent as node "n0" of the API server behind
    /// `kubeconfig`; `nat` is more of the config's `[nat]` section (the
    /// file ends in it).
    pub fn follow_kubernetes(&mut self, kubeconfig: &Path, nat: &str) -> anyhow::Result<()> {
        self.follow_kubernetes_as("n0", kubeconfig, nat)
    }

    /// As `follow_kubernetes`, the agent being the node `node_name`.
    pub fn follow_kubernetes_as(
        &mut self,
        node_name: &str,
        kubeconfig: &Path,
        nat: &str,
    ) -> anyhow::Result<()> {
        self.stop_agent(Signal::SIGTERM);
        let config = std::fs::read_to_string(&self.config)?;
        std::fs::write(
            &self.config,
            format!("{config}{nat}\n[kubernetes]\nenabled = true\nnode_name = \"{node_name}\"\n"),
        )?;
        self.agent_environment
            .push(("KUBECONFIG".into(), kubeconfig.display().to_string()));
        self.start_agent()
    }

    /// Stops the agent (SIGTERM), then starts the build under test in its
    /// place, plugins included, as an upgrade does; returns how long the
    /// node was without an answering agent.
    pub fn upgrade_agent(&mut self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        self.stop_agent(Signal::SIGTERM);
        self.build = Build::Current;
        if let Some(cni) = self.cni.take() {
            self.cni = Some(cni.with_plugins_of(&dataplane_binary()?)?);
        }
        self.start_agent()?;
        Ok(started.elapsed())
    }

    /// Stops the agent with SIGTERM (graceful) or SIGKILL (crash).
    pub fn stop_agent(&mut self, signal: Signal) {
        if let Some(agent) = self.agent.take() {
            agent.stop(signal);
        }
    }

    /// Sends `signal` to the running agent (SIGHUP: reread the config file).
    pub fn signal_agent(&self, signal: Signal) -> anyhow::Result<()> {
        let agent = self.agent.as_ref().context("the agent is not running")?;
        kill(Pid::from_raw(agent.child.id() as i32), signal)?;
        Ok(())
    }

    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `dataplane uninstall` for this node's config, in its namespace.
    pub fn uninstall(&self) -> anyhow::Result<String> {
        let binary = self.build.binary()?.display().to_string();
        let config = self.config.display().to_string();
        self.netns
            .exec(&[&binary, "uninstall", "--config", &config])
    }

    /// The bpffs directory this node's agent pins under.
    pub fn bpf_root(&self) -> anyhow::Result<PathBuf> {
        let config = std::fs::read_to_string(&self.config)?;
        let root = config
            .lines()
            .find_map(|line| line.strip_prefix("bpf_root = "))
            .context("the node's config has a bpf_root")?;
        Ok(PathBuf::from(root.trim_matches('"')))
    }

    /// Starts `dataplane monitor --output json` against the agent with
    /// `args`; its events arrive on the receiver once it has subscribed.
    pub fn monitor(
        &self,
        args: &[&str],
    ) -> anyhow::Result<(Child, std::sync::mpsc::Receiver<serde_json::Value>)> {
        let mut monitor = std::process::Command::new(self.build.binary()?)
            .arg("--socket")
            .arg(&self.socket)
            .args(["--output", "json", "monitor"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let output = monitor.stdout.take().context("no stdout")?;
        let (events, received) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in
                std::io::BufRead::lines(std::io::BufReader::new(output)).map_while(Result::ok)
            {
                if let Ok(event) = serde_json::from_str(&line) {
                    let _ = events.send(event);
                }
            }
        });
        std::thread::sleep(Duration::from_millis(300));
        Ok((monitor, received))
    }

    /// Runs the `dataplane` CLI against this node's agent.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        self.cli_as(self.build, args)
    }

    /// Runs `build`'s `dataplane` CLI against this node's agent.
    pub fn cli_as(&self, build: Build, args: &[&str]) -> anyhow::Result<String> {
        let binary = build.binary()?;
        let socket = self.socket.display().to_string();
        let mut full = vec!["--socket", socket.as_str()];
        full.extend_from_slice(args);
        run(&binary.display().to_string(), &full)
    }

    pub fn register(&self, pod: &Pod) -> anyhow::Result<()> {
        self.register_address(pod, pod.ip.into())
    }

    /// Registers `ip` (of either family) as an address of `pod`.
    pub fn register_address(&self, pod: &Pod, ip: std::net::IpAddr) -> anyhow::Result<()> {
        self.cli(&[
            "endpoint",
            "add",
            "--ip",
            &ip.to_string(),
            "--interface",
            &pod.host_interface,
            "--mac",
            &pod.mac.to_string(),
        ])
        .map(drop)
    }

    pub fn unregister(&self, ip: Ipv4Addr) -> anyhow::Result<()> {
        self.cli(&["endpoint", "del", "--ip", &ip.to_string()])
            .map(drop)
    }

    /// The agent's `status`, as JSON.
    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        let json = self.cli(&["--output", "json", "status"])?;
        let response: serde_json::Value = serde_json::from_str(&json)?;
        Ok(response["status"].clone())
    }

    /// Makes the agent's next start route as `routing` says (a config edit:
    /// the mode is read at start-up).
    pub fn set_routing(&self, routing: Routing) -> anyhow::Result<()> {
        let config = std::fs::read_to_string(&self.config)?;
        let edited: Vec<String> = config
            .lines()
            .map(|line| match line.starts_with("routing = ") {
                true => format!("routing = \"{routing}\""),
                false => line.to_string(),
            })
            .collect();
        std::fs::write(&self.config, edited.join("\n") + "\n")?;
        Ok(())
    }

    /// Tells this node's agent where `other`'s pods are.
    pub fn add_remote_node(&self, other: &Node) -> anyhow::Result<()> {
        self.add_remote_dual_stack_node(other, None)
    }

    /// As `add_remote_node`, with `other`'s IPv6 pod CIDR too when given
    /// (`--pod-cidr` twice).
    pub fn add_remote_dual_stack_node(
        &self,
        other: &Node,
        pod_cidr6: Option<&str>,
    ) -> anyhow::Result<()> {
        let (ip, pod_cidr) = (other.ip.to_string(), other.pod_cidr.to_string());
        let mut args = vec!["node", "add", "--ip", &ip, "--pod-cidr", &pod_cidr];
        if let Some(pod_cidr6) = pod_cidr6 {
            args.extend(["--pod-cidr", pod_cidr6]);
        }
        self.cli(&args).map(drop)
    }

    pub fn remove_remote_node(&self, ip: Ipv4Addr) -> anyhow::Result<()> {
        self.cli(&["node", "del", "--ip", &ip.to_string()])
            .map(drop)
    }

    /// Sets the MTU of every pod's interface and host veth, as a CNI plugin would.
    fn set_pod_mtu(&self, mtu: u32) -> anyhow::Result<()> {
        for pod in &self.pods {
            pod.netns.set_mtu("eth0", mtu)?;
            self.netns.set_mtu(&pod.host_interface, mtu)?;
        }
        Ok(())
    }

    /// Lets `pod` send from `address` as an attacker would: the address on its
    /// interface and its gateway's MAC pinned, since ARP from a spoofed sender
    /// goes unanswered.
    pub fn prepare_spoofing(&self, pod: &Pod, address: Ipv4Addr) -> anyhow::Result<()> {
        let gateway_mac = self.netns.mac_of(&pod.host_interface)?;
        pod.netns
            .set_neighbour("eth0", POD_GATEWAY_IP, gateway_mac)?;
        pod.netns.add_address("eth0", Ipv4Network::from(address))
    }

    /// Packet counts by counter name, summed over CPUs.
    pub fn counters(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        let json = self.cli(&["--output", "json", "counters"])?;
        let response: serde_json::Value = serde_json::from_str(&json)?;
        let counters = response["counters"]
            .as_array()
            .context("counters response without counters")?;
        Ok(counters
            .iter()
            .filter_map(|counter| {
                Some((
                    counter["name"].as_str()?.to_string(),
                    counter["packets"].as_u64()?,
                ))
            })
            .collect())
    }

    /// Packets counted under `name`.
    pub fn counter(&self, name: &str) -> anyhow::Result<u64> {
        self.counters()?
            .get(name)
            .copied()
            .with_context(|| format!("no counter named {name}"))
    }

    /// Adds a pod wired like a ptp main plugin would: veth pair, pod IP /32,
    /// default route via 169.254.1.1. Does not register it with any dataplane.
    pub fn add_pod(&mut self, name: String, ip: Ipv4Addr) -> anyhow::Result<&Pod> {
        let pod = self.plug_pod(name, ip, 32)?;
        pod.netns
            .add_route(POD_GATEWAY_IP.into(), NextHop::Device("eth0"))?;
        pod.netns
            .add_route(DEFAULT_ROUTE, NextHop::GatewayOn(POD_GATEWAY_IP, "eth0"))?;
        self.pods.push(pod);
        Ok(self.pods.last().expect("just pushed"))
    }

    /// Adds a pod through the node's CNI chain, as a runtime would.
    pub fn add_cni_pod(&mut self) -> anyhow::Result<&Pod> {
        self.add_kubernetes_pod(None)
    }

    /// As `add_cni_pod`, the runtime naming the Kubernetes pod (namespace,
    /// name) it is.
    pub fn add_kubernetes_pod(&mut self, name: Option<(&str, &str)>) -> anyhow::Result<&Pod> {
        let network = self
            .cni
            .as_ref()
            .context("this node makes its pods by hand, not through CNI")?;
        let number = self.pods.len();
        let netns = Netns::create(format!("{}{number}", self.pod_prefix))?;
        let result = network.add_named(&format!("pod{number}"), &netns, "eth0", name)?;
        let ip = cni::pod_ip(&result)?;
        let mac = netns.mac_of("eth0")?;
        self.pods.push(Pod {
            netns,
            ip,
            mac,
            host_interface: cni::host_interface(&result)?,
        });
        Ok(self.pods.last().expect("just pushed"))
    }

    /// Adds a pod the docker/flannel bridge way: its veth enslaved to the
    /// node's `cni0` bridge, the pod IP /24 with the bridge as default gateway.
    fn add_bridged_pod(&mut self, name: String, ip: Ipv4Addr) -> anyhow::Result<()> {
        let pod = self.plug_pod(name, ip, self.pod_cidr.prefix())?;
        self.netns.attach_to_bridge(&pod.host_interface, BRIDGE)?;
        pod.netns.add_route(
            DEFAULT_ROUTE,
            NextHop::GatewayOn(bridge_gateway(self.pod_cidr), "eth0"),
        )?;
        self.pods.push(pod);
        Ok(())
    }

    /// A pod namespace joined to this node by a veth pair, `ip`/`prefix` on its eth0.
    fn plug_pod(&self, name: String, ip: Ipv4Addr, prefix: u8) -> anyhow::Result<Pod> {
        let netns = Netns::create(name)?;
        let host_interface = format!("vp{}", self.pods.len());
        self.netns.add_veth(&host_interface, &netns, "eth0")?;
        self.netns.set_up(&host_interface)?;
        netns.set_up("eth0")?;
        netns.add_address("eth0", Ipv4Network::new(ip, prefix)?)?;
        let mac = netns.mac_of("eth0")?;
        Ok(Pod {
            netns,
            ip,
            mac,
            host_interface,
        })
    }

    /// The kernel path for one pod: /32 route and proxy_arp on its host veth.
    fn route_pod_in_kernel(&self, pod: &Pod) -> anyhow::Result<()> {
        self.netns.sysctl(
            &format!("net.ipv4.conf.{}.proxy_arp", pod.host_interface),
            "1",
        )?;
        self.netns
            .add_route(pod.ip.into(), NextHop::Device(&pod.host_interface))
    }
}

/// flannel's `flannel.1` VXLAN device (VNI 1, port 4789, no learning) over
/// `eth0` of `netns`, with the pod MTU, up.
pub fn add_flannel_device(netns: &Netns, local_ip: Ipv4Addr) -> anyhow::Result<()> {
    netns.add_vxlan("flannel.1", "eth0", local_ip, None)?;
    netns.set_mtu("flannel.1", VXLAN_POD_MTU)
}

/// flannel's vxlan backend on every node: one `flannel.1` device, and per
/// remote node a route, a permanent neighbour and an FDB entry.
fn connect_nodes_like_flannel(nodes: &[Node]) -> anyhow::Result<()> {
    let mut macs = Vec::new();
    for node in nodes {
        add_flannel_device(&node.netns, node.ip)?;
        node.netns
            .add_address("flannel.1", node.pod_cidr.network().into())?;
        macs.push(node.netns.mac_of("flannel.1")?);
    }
    for node in nodes {
        let vxlan = node.netns.index_of("flannel.1")?;
        for (other, mac) in nodes
            .iter()
            .zip(&macs)
            .filter(|(other, _)| other.ip != node.ip)
        {
            node.netns
                .add_flannel_node(vxlan, other.ip, other.pod_cidr, *mac)?;
        }
    }
    Ok(())
}

pub struct Cluster {
    // Field order is drop order: nodes (agents, pods) first.
    pub nodes: Vec<Node>,
    pub gateway: Netns,
    pub external: Netns,
    underlay: Netns,
    bpf_root: PathBuf,
    workdir: tempfile::TempDir,
}

impl Cluster {
    pub fn new(spec: ClusterSpec) -> anyhow::Result<Self> {
        require_root()?;
        reap_stale_namespaces();
        let prefix = unique_prefix();
        let workdir = tempfile::Builder::new().prefix(&prefix).tempdir()?;
        if spec.pods != PodWiring::Handmade && spec.forwarding != Forwarding::Dataplane {
            bail!("CNI-made pods are for dataplane clusters");
        }
        let underlay = Netns::create(format!("{prefix}-ul"))?;
        underlay.add_bridge("br0")?;

        let gateway = Netns::create(format!("{prefix}-gw"))?;
        let external = Netns::create(format!("{prefix}-ext"))?;
        plug_into_underlay(&underlay, &gateway, "gw", GATEWAY_UNDERLAY_IP)?;
        gateway.sysctl("net.ipv4.ip_forward", "1")?;
        gateway.add_veth("ext0", &external, "eth0")?;
        gateway.add_address("ext0", Ipv4Network::new(GATEWAY_EXTERNAL_IP, 24)?)?;
        gateway.set_up("ext0")?;
        external.add_address("eth0", Ipv4Network::new(EXTERNAL_HOST_IP, 24)?)?;
        external.set_up("eth0")?;
        external.add_route(DEFAULT_ROUTE, NextHop::Gateway(GATEWAY_EXTERNAL_IP))?;

        let mut cluster = Self {
            nodes: Vec::new(),
            gateway,
            external,
            underlay,
            bpf_root: PathBuf::from(format!("/sys/fs/bpf/{prefix}")),
            workdir,
        };
        for index in 0..spec.nodes {
            cluster.add_node(&prefix, index, spec)?;
        }
        match spec.forwarding {
            Forwarding::Dataplane => {
                for node in &cluster.nodes {
                    for other in cluster.nodes.iter().filter(|other| other.ip != node.ip) {
                        let pod_cidr6 = other.pod_cidr6.map(|cidr| cidr.to_string());
                        node.add_remote_dual_stack_node(other, pod_cidr6.as_deref())?;
                    }
                }
            }
            Forwarding::KernelRoutes | Forwarding::Bridge if spec.nodes > 1 => {
                connect_nodes_like_flannel(&cluster.nodes)?;
            }
            Forwarding::KernelRoutes | Forwarding::Bridge => {}
        }
        Ok(cluster)
    }

    fn add_node(&mut self, prefix: &str, index: usize, spec: ClusterSpec) -> anyhow::Result<()> {
        let octet = u8::try_from(index).context("too many nodes")?;
        let netns = Netns::create(format!("{prefix}-n{index}"))?;
        let (ip, gateway) = if index + spec.routed_nodes >= spec.nodes {
            route_behind_gateway(&self.gateway, &netns, octet)?
        } else {
            let ip = Ipv4Addr::new(192, 0, 2, 10 + octet);
            plug_into_underlay(&self.underlay, &netns, &format!("n{index}"), ip)?;
            (ip, GATEWAY_UNDERLAY_IP)
        };
        netns.add_route(DEFAULT_ROUTE, NextHop::Gateway(gateway))?;
        netns.sysctl("net.ipv4.ip_local_port_range", NODE_LOCAL_PORT_RANGE)?;
        let pod_cidr = Ipv4Network::new(Ipv4Addr::new(10, 244, octet, 0), 24)?;
        let (pod_cidr6, ip6) = if spec.ipv6 {
            let ip6 = Ipv6Addr::new(0xfd00, 0x192, 0, 0, 0, 0, 0, 10 + u16::from(octet));
            netns.sysctl("net.ipv6.conf.eth0.accept_dad", "0")?;
            netns.add_address6("eth0", Ipv6Network::new(ip6, 64)?)?;
            let cidr = Ipv6Addr::new(0xfd00, 0x10, 0x244, u16::from(octet), 0, 0, 0, 0);
            (Some(Ipv6Network::new(cidr, 64)?), Some(ip6))
        } else {
            (None, None)
        };
        let ipv6_setting = pod_cidr6
            .map(|cidr| format!("pod_cidr_ipv6 = \"{cidr}\"\n"))
            .unwrap_or_default();

        let socket = self.workdir.path().join(format!("n{index}.sock"));
        let config = self.workdir.path().join(format!("n{index}.toml"));
        let bpf_root = self.bpf_root.join(format!("n{index}"));
        std::fs::write(
            &config,
            format!(
                "[agent]\napi_socket = \"{}\"\nbpf_root = \"{}\"\n\n[node]\npod_cidr = \"{pod_cidr}\"\n\
                 {ipv6_setting}cluster_cidr = \"{CLUSTER_CIDR}\"\nuplink = \"eth0\"\nrouting = \"{}\"\n\n\
                 [nat]\nport_range = \"{NAT_PORT_RANGE}\"\ngc_interval_seconds = 1\n",
                socket.display(),
                bpf_root.display(),
                spec.routing,
            ),
        )?;
        let mut node = Node {
            pods: Vec::new(),
            agent: None,
            netns,
            ip,
            pod_cidr,
            pod_cidr6,
            ip6,
            socket,
            config,
            log: self.workdir.path().join(format!("n{index}.log")),
            pod_prefix: format!("{prefix}-n{index}c"),
            agent_environment: Vec::new(),
            cni: None,
            build: spec.build,
        };
        if spec.forwarding == Forwarding::Bridge {
            let gateway = Ipv4Network::new(bridge_gateway(pod_cidr), pod_cidr.prefix())?;
            node.netns.add_bridge(BRIDGE)?;
            node.netns.add_address(BRIDGE, gateway)?;
        }
        for pod in (0..spec.pods_per_node).filter(|_| spec.pods == PodWiring::Handmade) {
            let pod_ip = Ipv4Addr::new(10, 244, octet, 2 + u8::try_from(pod)?);
            let name = format!("{prefix}-n{index}p{pod}");
            if spec.forwarding == Forwarding::Bridge {
                node.add_bridged_pod(name, pod_ip)?;
            } else {
                node.add_pod(name, pod_ip)?;
            }
        }
        match spec.forwarding {
            Forwarding::Dataplane => {
                node.start_agent()?;
                let pod_mtu = node.status()?["pod_mtu"]
                    .as_u64()
                    .context("the agent reports no pod MTU")?;
                node.set_pod_mtu(u32::try_from(pod_mtu)?)?;
                for pod in &node.pods {
                    node.register(pod)?;
                }
                if let PodWiring::Cni(main) = spec.pods {
                    let mut network = CniNetwork::chain(
                        main,
                        "pods",
                        &node.netns,
                        &pod_cidr.to_string(),
                        &node.socket,
                        &self.workdir.path().join(format!("n{index}-cni")),
                    )?
                    .with_plugins_of(&spec.build.binary()?)?;
                    if let Some(cidr) = pod_cidr6 {
                        network = network.with_ipv6_range(&cidr.to_string());
                    }
                    node.cni = Some(network);
                    for _ in 0..spec.pods_per_node {
                        node.add_cni_pod()?;
                    }
                }
            }
            Forwarding::KernelRoutes | Forwarding::Bridge => {
                node.set_pod_mtu(VXLAN_POD_MTU)?;
                node.netns.sysctl("net.ipv4.ip_forward", "1")?;
                node.netns.exec(&[
                    "iptables",
                    "-t",
                    "nat",
                    "-A",
                    "POSTROUTING",
                    "-s",
                    CLUSTER_CIDR,
                    "!",
                    "-d",
                    CLUSTER_CIDR,
                    "-j",
                    "MASQUERADE",
                ])?;
                if spec.forwarding == Forwarding::KernelRoutes {
                    for pod in &node.pods {
                        node.route_pod_in_kernel(pod)?;
                    }
                }
            }
        }
        self.nodes.push(node);
        Ok(())
    }

    /// Makes the gateway, a host on the underlay that is not a node, send its
    /// traffic for `pod` as VXLAN to `node`, with the right port and VNI 1 and
    /// frames addressed to the pod: what an attacker on the underlay would try.
    pub fn speak_vxlan_from_gateway(&self, node: &Node, pod: &Pod) -> anyhow::Result<()> {
        let gateway = &self.gateway;
        gateway.add_vxlan("vx0", "eth0", GATEWAY_UNDERLAY_IP, Some(node.ip))?;
        gateway.add_address("vx0", Ipv4Addr::new(10, 244, 0, 250).into())?;
        gateway.add_route(pod.ip.into(), NextHop::Device("vx0"))?;
        gateway.set_neighbour("vx0", pod.ip, pod.mac)?;
        Ok(())
    }

    /// The namespace of the underlay bridge (`br0`) the nodes are plugged into.
    pub fn underlay(&self) -> &Netns {
        &self.underlay
    }

    pub fn workdir(&self) -> &Path {
        self.workdir.path()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.stop_agent(Signal::SIGTERM);
        }
        // Pinned maps outlive the agents by design; these are the test's own.
        let _ = std::fs::remove_dir_all(&self.bpf_root);
    }
}

/// Connects `netns` to the gateway as its router, on a /28 of its own
/// (`index` picks which); returns its IP and its gateway's.
fn route_behind_gateway(
    gateway: &Netns,
    netns: &Netns,
    index: u8,
) -> anyhow::Result<(Ipv4Addr, Ipv4Addr)> {
    let base = index.checked_mul(16).context("too many routed nodes")?;
    let (router, ip) = (
        Ipv4Addr::new(198, 51, 100, base + 1),
        Ipv4Addr::new(198, 51, 100, base + 2),
    );
    let port = format!("r{index}");
    gateway.add_veth(&port, netns, "eth0")?;
    gateway.add_address(&port, Ipv4Network::new(router, 28)?)?;
    gateway.set_up(&port)?;
    netns.add_address("eth0", Ipv4Network::new(ip, 28)?)?;
    netns.set_up("eth0")?;
    Ok((ip, router))
}

/// Connects `netns` to the underlay bridge with `eth0` holding `ip`/24.
fn plug_into_underlay(
    underlay: &Netns,
    netns: &Netns,
    port: &str,
    ip: Ipv4Addr,
) -> anyhow::Result<()> {
    underlay.add_veth(port, netns, "eth0")?;
    underlay.attach_to_bridge(port, "br0")?;
    netns.add_address("eth0", Ipv4Network::new(ip, 24)?)?;
    netns.set_up("eth0")
}
