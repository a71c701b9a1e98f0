//! `cargo xtask bench`: this dataplane against the kernel path it replaces,
//! measured in the same run, interleaved, reported as medians and ratios.

use std::{io::Write as _, path::Path, time::Duration};

use anyhow::Context as _;
use std::{
    net::{Ipv4Addr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use dataplane_tests::{
    Cluster, ClusterSpec, Forwarding,
    cluster::EXTERNAL_HOST_IP,
    traffic::{connection_rate, in_netns, iperf3_tcp, joined},
};

use crate::build::workspace_root;

struct Scenario {
    name: &'static str,
    baseline: &'static str,
    unit: Unit,
    dataplane: Vec<f64>,
    kernel: Vec<f64>,
}

#[derive(Clone, Copy)]
enum Unit {
    BitsPerSecond,
    ConnectionsPerSecond,
}

impl Unit {
    fn show(self, value: f64) -> String {
        match self {
            Unit::BitsPerSecond => format!("{:.2} Gbit/s", value / 1e9),
            Unit::ConnectionsPerSecond => format!("{value:.0} conn/s"),
        }
    }
}

impl Scenario {
    fn new(name: &'static str, baseline: &'static str, unit: Unit) -> Self {
        Self {
            name,
            baseline,
            unit,
            dataplane: Vec::new(),
            kernel: Vec::new(),
        }
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// One iperf3 stream between two pods of `cluster`: `(node, pod)` to `(node, pod)`.
fn pod_to_pod(
    cluster: &Cluster,
    from: (usize, usize),
    to: (usize, usize),
    seconds: u32,
) -> anyhow::Result<f64> {
    let (client, server) = (
        &cluster.nodes[from.0].pods[from.1],
        &cluster.nodes[to.0].pods[to.1],
    );
    iperf3_tcp(&server.netns, server.ip, &client.netns, seconds)
}

/// One iperf3 stream between the host namespaces of the first two nodes.
fn node_to_node(cluster: &Cluster, seconds: u32) -> anyhow::Result<f64> {
    let (client, server) = (&cluster.nodes[0], &cluster.nodes[1]);
    iperf3_tcp(&server.netns, server.ip, &client.netns, seconds)
}

/// Pod 0 of node 0 to the external host behind the gateway.
fn pod_to_external(cluster: &Cluster, seconds: u32) -> anyhow::Result<f64> {
    let pod = &cluster.nodes[0].pods[0];
    iperf3_tcp(&cluster.external, EXTERNAL_HOST_IP, &pod.netns, seconds)
}

fn pod_to_external_connections(cluster: &Cluster, seconds: u32) -> anyhow::Result<f64> {
    let pod = &cluster.nodes[0].pods[0];
    // Short runs: every closed connection holds its SNAT port for the
    // closing timeout, in the kernel's conntrack and in ours.
    let duration = Duration::from_millis(u64::from(seconds) * 400);
    connection_rate(&cluster.external, EXTERNAL_HOST_IP, &pod.netns, duration)
}

/// Same-node iperf3 while pod 1 of node 0 floods an unknown pod address
/// (every packet a counted drop), with a `dataplane monitor` attached or not.
fn under_drop_flood(
    cluster: &Cluster,
    binary: &Path,
    seconds: u32,
    monitor: bool,
) -> anyhow::Result<f64> {
    let node = &cluster.nodes[0];
    let mut watcher = if monitor {
        Some(
            std::process::Command::new(binary)
                .arg("--socket")
                .arg(&node.socket)
                .arg("monitor")
                .stdout(std::process::Stdio::null())
                .spawn()?,
        )
    } else {
        None
    };
    std::thread::sleep(Duration::from_millis(200));
    let stop = Arc::new(AtomicBool::new(false));
    let flooding = Arc::clone(&stop);
    let flooder = in_netns(&node.pods[1].netns, move || {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        let unknown_pod = (Ipv4Addr::new(10, 244, 0, 200), 9);
        let mut sent = 0u64;
        while !flooding.load(Ordering::Relaxed) {
            if socket.send_to(&[0u8; 64], unknown_pod).is_ok() {
                sent += 1;
            }
        }
        Ok(sent)
    });
    let rate = pod_to_pod(cluster, (0, 0), (0, 1), seconds);
    stop.store(true, Ordering::Relaxed);
    let flooded = joined(flooder);
    if let Some(watcher) = &mut watcher {
        let _ = watcher.kill();
        let _ = watcher.wait();
    }
    flooded?;
    rate
}

fn measure(
    label: &str,
    unit: Unit,
    sample: impl FnOnce() -> anyhow::Result<f64>,
    into: &mut Vec<f64>,
) -> anyhow::Result<()> {
    print!(" {label} ");
    std::io::stdout().flush()?;
    let value = sample()?;
    print!("{}", unit.show(value));
    into.push(value);
    Ok(())
}

pub fn run(binary: &Path, quick: bool) -> anyhow::Result<()> {
    // SAFETY: set before any other thread exists; the harness reads it.
    unsafe { std::env::set_var("DATAPLANE_BIN", binary) };
    let (repetitions, seconds) = if quick { (1, 1) } else { (3, 5) };
    let spec = |forwarding| ClusterSpec {
        nodes: 2,
        pods_per_node: 2,
        forwarding,
    };
    println!("==> building two 2-node clusters: this dataplane, and the kernel paths it replaces");
    let with_dataplane = Cluster::new(spec(Forwarding::Dataplane))?;
    let with_kernel = Cluster::new(spec(Forwarding::KernelRoutes))?;

    let bits = Unit::BitsPerSecond;
    let connections = Unit::ConnectionsPerSecond;
    let kernel_nat = "iptables MASQUERADE + kernel conntrack";
    let mut same_node = Scenario::new(
        "same-node pod-to-pod, iperf3 TCP 1 stream",
        "/32 routes + proxy_arp",
        bits,
    );
    let mut cross_node = Scenario::new(
        "cross-node pod-to-pod, iperf3 TCP 1 stream",
        "kernel vxlan, flannel-style routes + neigh + fdb",
        bits,
    );
    let mut cross_node_vs_underlay = Scenario::new(
        "cross-node pod-to-pod, iperf3 TCP 1 stream",
        "node-to-node without overlay (physical limit)",
        bits,
    );
    let mut egress = Scenario::new(
        "egress pod-to-external, iperf3 TCP 1 stream",
        kernel_nat,
        bits,
    );
    let mut egress_connections = Scenario::new(
        "egress new connections/s (connect, 64 B each way, close)",
        kernel_nat,
        connections,
    );
    let mut monitored_flood = Scenario::new(
        "same-node iperf3 during a drop flood, dataplane monitor attached",
        "the same without the monitor",
        bits,
    );
    for repetition in 1..=repetitions {
        print!("==> repetition {repetition}/{repetitions}:");
        let (ours, theirs) = (&with_dataplane, &with_kernel);
        let (local, remote) = ((0, 1), (1, 0));
        measure(
            "same-node dataplane",
            bits,
            || pod_to_pod(ours, (0, 0), local, seconds),
            &mut same_node.dataplane,
        )?;
        measure(
            "kernel",
            bits,
            || pod_to_pod(theirs, (0, 0), local, seconds),
            &mut same_node.kernel,
        )?;
        measure(
            "| cross-node dataplane",
            bits,
            || pod_to_pod(ours, (0, 0), remote, seconds),
            &mut cross_node.dataplane,
        )?;
        measure(
            "flannel",
            bits,
            || pod_to_pod(theirs, (0, 0), remote, seconds),
            &mut cross_node.kernel,
        )?;
        measure(
            "node-to-node",
            bits,
            || node_to_node(ours, seconds),
            &mut cross_node_vs_underlay.kernel,
        )?;
        measure(
            "| egress dataplane",
            bits,
            || pod_to_external(ours, seconds),
            &mut egress.dataplane,
        )?;
        measure(
            "masquerade",
            bits,
            || pod_to_external(theirs, seconds),
            &mut egress.kernel,
        )?;
        let rate = |cluster| pod_to_external_connections(cluster, seconds);
        measure(
            "| new connections dataplane",
            connections,
            || rate(ours),
            &mut egress_connections.dataplane,
        )?;
        measure(
            "masquerade",
            connections,
            || rate(theirs),
            &mut egress_connections.kernel,
        )?;
        let flood = |monitor| under_drop_flood(ours, binary, seconds, monitor);
        measure(
            "| drop flood, monitor on",
            bits,
            || flood(true),
            &mut monitored_flood.dataplane,
        )?;
        measure("off", bits, || flood(false), &mut monitored_flood.kernel)?;
        println!();
    }
    cross_node_vs_underlay.dataplane = cross_node.dataplane.clone();
    report(
        &[
            same_node,
            cross_node,
            cross_node_vs_underlay,
            egress,
            egress_connections,
            monitored_flood,
        ],
        repetitions,
        seconds,
    )
}

fn report(scenarios: &[Scenario], repetitions: usize, seconds: u32) -> anyhow::Result<()> {
    let mut markdown = format!(
        "Median of {repetitions} interleaved run(s) of {seconds} s each.\n\n\
         | scenario | baseline | dataplane / baseline | dataplane | baseline |\n\
         |---|---|---|---|---|\n"
    );
    let mut json = Vec::new();
    for scenario in scenarios {
        let (ours, theirs) = (median(&scenario.dataplane), median(&scenario.kernel));
        markdown.push_str(&format!(
            "| {} | {} | {:.2} | {} | {} |\n",
            scenario.name,
            scenario.baseline,
            ours / theirs,
            scenario.unit.show(ours),
            scenario.unit.show(theirs)
        ));
        json.push(serde_json::json!({
            "scenario": scenario.name,
            "baseline": scenario.baseline,
            "ratio": ours / theirs,
            "unit": match scenario.unit {
                Unit::BitsPerSecond => "bit/s",
                Unit::ConnectionsPerSecond => "connections/s",
            },
            "dataplane_runs": scenario.dataplane,
            "baseline_runs": scenario.kernel,
        }));
    }
    let directory = workspace_root().join("target/bench");
    std::fs::create_dir_all(&directory)?;
    std::fs::write(directory.join("results.md"), &markdown)?;
    std::fs::write(
        directory.join("results.json"),
        serde_json::to_string_pretty(&json)?,
    )
    .context("writing the JSON results")?;
    println!("\n{markdown}\nwritten to {}", directory.display());
    Ok(())
}
