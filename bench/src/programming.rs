// Above 400 lines: one benchmark family with its baselines; setup and rows read together.
//! Programming cost through the agent's real paths, from the event to the
//! maps: a config file reload (SIGHUP), an API call (what the CLI and the CNI
//! plugin send), a Kubernetes Node event. Each change is timed until the
//! agent's answer (or its status) shows it applied, and the cost per change
//! at the full size is compared with the cost at a tenth of it: a ratio of
//! 1 means the cost grows with what changed, not with what is there.

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use dataplane_tests::{
    Cluster, ClusterSpec,
    kube_api::FakeApiServer,
    netns::{Netns, unique_prefix},
};
use dataplane_user::{
    api::{self, Request, Response, Status},
    model::{EndpointSpec, HostInterface, NodeSpec},
};
use ipnetwork::Ipv4Network;
use macaddr::MacAddr6;
use nix::sys::signal::Signal;

use crate::{
    Progress, Settings,
    measure::{Comparison, Measure},
    scale::{Filled, KernelNode, thousands},
};

/// Remote nodes at full size, and the tenth compared with.
const NODES: u32 = 5_000;
const FEW_NODES: u32 = NODES / 10;
/// Endpoints at full size; the first and the last tenth are timed.
const ENDPOINTS: u32 = 50_000;
const ENDPOINT_SLICE: u32 = ENDPOINTS / 10;
/// Single changes timed at each size.
const API_CALLS: u32 = 200;
/// Pause between a reload and the API calls timed after it. For a few
/// hundred milliseconds after a 5,000-node reload every call costs more CPU
/// in both processes (the bench's client too, whose work does not depend on
/// the node count): the reload's aftermath, not the call's cost.
const SETTLE: Duration = Duration::from_secs(1);
const KUBERNETES_EVENTS: u32 = 10;
/// Host veths the lab's endpoints sit behind (several addresses each).
const LAB_VETHS: u32 = 8;
/// The lab node's pod CIDR: room for 50,000 endpoints.
const LAB_POD_CIDR: &str = "10.0.0.0/16";
const LAB_CLUSTER_CIDR: &str = "10.0.0.0/8";

/// Progress steps `run` reports.
pub fn steps(settings: &Settings) -> usize {
    1 + settings.min_repetitions * 4
}

/// Remote node `index`: IP in 198.18.0.0/15, a /24 in 10.16.0.0/12.
fn lab_node(index: u32) -> NodeSpec {
    let [_, _, high, low] = index.to_be_bytes();
    NodeSpec::ipv4(
        Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + index),
        Ipv4Network::new(Ipv4Addr::new(10, 16 + high, low, 0), 24)
            .expect("a /24 is a valid prefix"),
    )
}

/// Endpoint `index`: 10.0.0.1 onwards, behind one of the lab's veths.
fn lab_endpoint(index: u32) -> EndpointSpec {
    let veth = index % LAB_VETHS;
    EndpointSpec {
        ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 1)) + index).into(),
        interface: HostInterface::Name(format!("lab{veth}")),
        mac: MacAddr6::new(0x02, 0, 0, 0, 0, veth as u8 + 1),
        pod: None,
    }
}

/// What a node whose agent follows Kubernetes is called there.
const KUBERNETES_NODE: &str = "lab";

/// Stops the agent of `cluster`'s first node and gives it a Kubernetes
/// source: a fake API server in its namespace that knows the node (at
/// `pod_cidr`), and the config file as `edit` leaves it plus the
/// `[kubernetes]` section. The caller starts the agent again.
pub fn follow_kubernetes(
    cluster: &mut Cluster,
    pod_cidr: &str,
    edit: impl FnOnce(String) -> String,
) -> anyhow::Result<FakeApiServer> {
    let kubeconfig = cluster.workdir().join("kubeconfig");
    let node = &mut cluster.nodes[0];
    let kubernetes = FakeApiServer::start(&node.netns)?;
    kubernetes.write_kubeconfig(&kubeconfig)?;
    kubernetes.apply_node(KUBERNETES_NODE, node.ip, pod_cidr);
    node.stop_agent(Signal::SIGTERM);
    let config = edit(std::fs::read_to_string(&node.config)?)
        + &format!("\n[kubernetes]\nenabled = true\nnode_name = \"{KUBERNETES_NODE}\"\n");
    std::fs::write(&node.config, config)?;
    node.agent_environment
        .push(("KUBECONFIG".into(), kubeconfig.display().to_string()));
    Ok(kubernetes)
}

/// One node whose agent has a pod CIDR big enough, the Kubernetes source on
/// (a local API server) and veths for endpoints.
struct Lab {
    cluster: Cluster,
    kubernetes: FakeApiServer,
    /// The config file without `[[nodes]]`.
    base_config: String,
    socket: PathBuf,
}

impl Lab {
    fn new() -> anyhow::Result<Self> {
        let mut cluster = Cluster::new(ClusterSpec::dataplane(1, 0))?;
        let own_pod_cidr = format!("pod_cidr = \"{}\"", cluster.nodes[0].pod_cidr);
        let kubernetes = follow_kubernetes(&mut cluster, LAB_POD_CIDR, |config| {
            config
                .replace(&own_pod_cidr, &format!("pod_cidr = \"{LAB_POD_CIDR}\""))
                .replace(
                    &format!(
                        "cluster_cidr = \"{}\"",
                        dataplane_tests::cluster::CLUSTER_CIDR
                    ),
                    &format!("cluster_cidr = \"{LAB_CLUSTER_CIDR}\""),
                )
        })?;
        let node = &mut cluster.nodes[0];
        let base_config = std::fs::read_to_string(&node.config)?;
        for veth in 0..LAB_VETHS {
            let (host, peer) = (format!("lab{veth}"), format!("lab{veth}p"));
            node.netns.add_veth(&host, &node.netns, &peer)?;
            node.netns.set_up(&host)?;
            node.netns.set_up(&peer)?;
        }
        node.start_agent()?;
        let socket = node.socket.clone();
        Ok(Self {
            cluster,
            kubernetes,
            base_config,
            socket,
        })
    }

    fn call(&self, request: &Request) -> anyhow::Result<Response> {
        match api::call(&self.socket, request)? {
            Response::Error { message, .. } => bail!("the agent refused {request:?}: {message}"),
            response => Ok(response),
        }
    }

    fn status(&self) -> anyhow::Result<Status> {
        match self.call(&Request::Status)? {
            Response::Status { status } => Ok(*status),
            other => bail!("not a status: {other:?}"),
        }
    }

    /// Waits until the agent's status satisfies `done`.
    fn until(&self, what: &str, done: impl Fn(&Status) -> bool) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !done(&self.status()?) {
            if Instant::now() > deadline {
                bail!(
                    "the agent did not get to {what}; its log:\n{}",
                    self.cluster.nodes[0].agent_log()
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Writes the config file with remote nodes `0..count` and has the agent
    /// reread it (SIGHUP); seconds until its status shows `count` nodes.
    fn reload_nodes(&self, count: u32) -> anyhow::Result<f64> {
        let node = &self.cluster.nodes[0];
        let mut config = self.base_config.clone();
        for index in 0..count {
            let NodeSpec { ip, pod_cidr, .. } = lab_node(index);
            config.push_str(&format!(
                "\n[[nodes]]\nip = \"{ip}\"\npod_cidr = \"{pod_cidr}\"\n"
            ));
        }
        // Renamed into place, so the agent never reads half a file.
        let staged = node.config.with_extension("staged");
        std::fs::write(&staged, config)?;
        let started = Instant::now();
        std::fs::rename(&staged, &node.config)?;
        node.signal_agent(Signal::SIGHUP)?;
        self.until(&format!("{count} remote nodes"), |status| {
            status.remote_nodes == count as usize
        })?;
        Ok(started.elapsed().as_secs_f64())
    }

    /// Mean seconds per `node add` over the API (then removed again), once
    /// the agent has settled after the reload before.
    fn api_node_adds(&self, from: u32) -> anyhow::Result<f64> {
        std::thread::sleep(SETTLE);
        let started = Instant::now();
        for index in from..from + API_CALLS {
            self.call(&Request::AddNode {
                node: lab_node(index),
            })?;
        }
        let seconds = started.elapsed().as_secs_f64() / f64::from(API_CALLS);
        for index in from..from + API_CALLS {
            self.call(&Request::RemoveNode {
                ip: lab_node(index).ip,
            })?;
        }
        Ok(seconds)
    }

    /// Mean seconds from a Node added in the Kubernetes API to the agent
    /// showing it (then deleted again), with `present` nodes there.
    fn kubernetes_node_adds(&self, present: u32) -> anyhow::Result<f64> {
        let mut total = 0.0;
        for index in present..present + KUBERNETES_EVENTS {
            let node = lab_node(index);
            let name = format!("lab-remote-{index}");
            let started = Instant::now();
            self.kubernetes
                .apply_node(&name, node.ip, &node.pod_cidr.to_string());
            self.until("the Kubernetes node", |status| {
                status.remote_nodes == present as usize + 1
            })?;
            total += started.elapsed().as_secs_f64();
            self.kubernetes.delete_node(&name);
            self.until("the Kubernetes node's removal", |status| {
                status.remote_nodes == present as usize
            })?;
        }
        Ok(total / f64::from(KUBERNETES_EVENTS))
    }

    /// Registers `ENDPOINTS` endpoints over the API as the CNI plugin does;
    /// mean seconds per endpoint of the first and of the last tenth. All
    /// are removed again.
    fn endpoint_adds(
        &self,
        progress: &mut Progress,
        repetition: usize,
    ) -> anyhow::Result<[f64; 2]> {
        let mut slices = Vec::new();
        let mut started = Instant::now();
        for index in 0..ENDPOINTS {
            if index % ENDPOINT_SLICE == 0 {
                started = Instant::now();
            }
            self.call(&Request::AddEndpoint {
                endpoint: lab_endpoint(index),
            })?;
            if (index + 1) % ENDPOINT_SLICE == 0 {
                slices.push(started.elapsed().as_secs_f64() / f64::from(ENDPOINT_SLICE));
            }
        }
        let (first, last) = (slices[0], slices[slices.len() - 1]);
        progress.step(
            &format!(
                "run {repetition} programming: {} endpoints over the API",
                thousands(ENDPOINTS)
            ),
            &format!(
                "first {} {}, last {} {} per endpoint",
                thousands(ENDPOINT_SLICE),
                Measure::TimePerChange.show(first),
                thousands(ENDPOINT_SLICE),
                Measure::TimePerChange.show(last)
            ),
        );
        for index in 0..ENDPOINTS {
            self.call(&Request::RemoveEndpoint {
                ip: lab_endpoint(index).ip,
                host_ifindex: None,
            })?;
        }
        Ok([last, first])
    }
}

/// The programming rows: against flannel's netlink programming, and each
/// path's cost per change at full size against a tenth of it.
pub fn run(settings: &Settings, progress: &mut Progress) -> anyhow::Result<Vec<Comparison>> {
    let started = Instant::now();
    let lab = Lab::new().context("the programming lab node")?;
    progress.step(
        "programming: lab node with a /16 pod CIDR, 8 veths, a Kubernetes API",
        &format!("{:.1} s", started.elapsed().as_secs_f64()),
    );
    let (nodes, few) = (thousands(NODES), thousands(FEW_NODES));
    let mut against_flannel = Comparison::new(
        format!("programming {nodes} remote nodes (config file, through the agent)"),
        "kernel routes + neigh + FDB over netlink (flannel)",
        Measure::ProgrammingTime,
    );
    let per_change = |scenario: String, baseline: String| {
        Comparison::new(scenario, baseline, Measure::TimePerChange)
    };
    let mut reload = per_change(
        format!("config reload of {nodes} nodes, per node"),
        format!("the same with {few} nodes"),
    );
    let mut appended = per_change(
        format!("one node appended to a {nodes}-node config file"),
        format!("to a {few}-node file"),
    );
    let mut api_adds = per_change(
        format!("`node add` over the API with {nodes} nodes"),
        format!("with {few} nodes"),
    );
    let mut kubernetes = per_change(
        format!("a Kubernetes Node added with {nodes} nodes"),
        format!("with {few} nodes"),
    );
    let mut endpoints = per_change(
        format!(
            "endpoint registered over the API (CNI ADD) at {}-{} endpoints",
            thousands(ENDPOINTS - ENDPOINT_SLICE),
            thousands(ENDPOINTS)
        ),
        format!("at 0-{} endpoints", thousands(ENDPOINT_SLICE)),
    );
    for repetition in 1..=settings.min_repetitions {
        for (size, ours) in [(FEW_NODES, false), (NODES, true)] {
            lab.reload_nodes(0)?;
            let whole = lab.reload_nodes(size)?;
            let one_more = lab.reload_nodes(size + 1)?;
            let api = lab.api_node_adds(size + 1)?;
            let event = lab.kubernetes_node_adds(size + 1)?;
            let values = [whole / f64::from(size), one_more, api, event];
            for (comparison, value) in [&mut reload, &mut appended, &mut api_adds, &mut kubernetes]
                .into_iter()
                .zip(values)
            {
                if ours {
                    comparison.dataplane.push(value);
                } else {
                    comparison.reference.push(value);
                }
            }
            if ours {
                against_flannel.dataplane.push(whole);
            }
            progress.step(
                &format!(
                    "run {repetition} programming at {} nodes: reload, append, API, Kubernetes",
                    thousands(size)
                ),
                &format!(
                    "{:.0} ms whole ({} per node), {} appended, {} API, {} event",
                    whole * 1e3,
                    Measure::TimePerChange.show(values[0]),
                    Measure::TimePerChange.show(one_more),
                    Measure::TimePerChange.show(api),
                    Measure::TimePerChange.show(event)
                ),
            );
        }
        lab.reload_nodes(0)?;
        let flannel_netns = Netns::create(format!("{}-prog", unique_prefix()))?;
        let mut flannel = KernelNode::vxlan_only(&flannel_netns)?;
        let seconds = crate::scale::seconds_taken(|| {
            flannel.fill(Filled {
                endpoints: 0,
                nodes: NODES,
            })
        })?;
        against_flannel.reference.push(seconds);
        progress.step(
            &format!("run {repetition} programming {nodes} nodes, kernel over netlink"),
            &Measure::ProgrammingTime.show(seconds),
        );
        let [last, first] = lab.endpoint_adds(progress, repetition)?;
        endpoints.dataplane.push(last);
        endpoints.reference.push(first);
    }
    Ok(vec![
        against_flannel,
        reload,
        appended,
        api_adds,
        kubernetes,
        endpoints,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_entries_fit_the_lab_node() {
        let pod_cidr: Ipv4Network = LAB_POD_CIDR.parse().unwrap();
        let cluster: Ipv4Network = LAB_CLUSTER_CIDR.parse().unwrap();
        for index in [0, NODES, NODES + API_CALLS + KUBERNETES_EVENTS] {
            let node = lab_node(index);
            assert!(node.pod_cidr.is_subnet_of(cluster), "{node:?}");
            assert!(!node.pod_cidr.overlaps(pod_cidr), "{node:?}");
        }
        assert_ne!(lab_node(0).pod_cidr, lab_node(256).pod_cidr);
        for index in [0, ENDPOINTS - 1] {
            assert!(ipnetwork::IpNetwork::V4(pod_cidr).contains(lab_endpoint(index).ip));
        }
    }
}
