//! `cargo xtask bench`: this dataplane against the kernel path it replaces,
//! measured in the same run, interleaved, reported as medians and ratios.

use std::{io::Write as _, path::Path};

use anyhow::Context as _;
use dataplane_tests::{Cluster, ClusterSpec, Forwarding, traffic::iperf3_tcp};

use crate::build::workspace_root;

struct Scenario {
    name: &'static str,
    baseline: &'static str,
    dataplane: Vec<f64>,
    kernel: Vec<f64>,
}

impl Scenario {
    fn new(name: &'static str, baseline: &'static str) -> Self {
        Self {
            name,
            baseline,
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

fn measure(
    label: &str,
    sample: impl FnOnce() -> anyhow::Result<f64>,
    into: &mut Vec<f64>,
) -> anyhow::Result<()> {
    print!(" {label} ");
    std::io::stdout().flush()?;
    let rate = sample()?;
    print!("{:.2}", rate / 1e9);
    into.push(rate);
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

    let mut same_node = Scenario::new(
        "same-node pod-to-pod, iperf3 TCP 1 stream",
        "/32 routes + proxy_arp",
    );
    let mut cross_node = Scenario::new(
        "cross-node pod-to-pod, iperf3 TCP 1 stream",
        "kernel vxlan, flannel-style routes + neigh + fdb",
    );
    let mut cross_node_vs_underlay = Scenario::new(
        "cross-node pod-to-pod, iperf3 TCP 1 stream",
        "node-to-node without overlay (physical limit)",
    );
    for repetition in 1..=repetitions {
        print!("==> repetition {repetition}/{repetitions} (Gbit/s):");
        measure(
            "same-node dataplane",
            || pod_to_pod(&with_dataplane, (0, 0), (0, 1), seconds),
            &mut same_node.dataplane,
        )?;
        measure(
            "kernel",
            || pod_to_pod(&with_kernel, (0, 0), (0, 1), seconds),
            &mut same_node.kernel,
        )?;
        measure(
            "| cross-node dataplane",
            || pod_to_pod(&with_dataplane, (0, 0), (1, 0), seconds),
            &mut cross_node.dataplane,
        )?;
        measure(
            "flannel",
            || pod_to_pod(&with_kernel, (0, 0), (1, 0), seconds),
            &mut cross_node.kernel,
        )?;
        measure(
            "node-to-node",
            || node_to_node(&with_dataplane, seconds),
            &mut cross_node_vs_underlay.kernel,
        )?;
        println!();
    }
    cross_node_vs_underlay.dataplane = cross_node.dataplane.clone();
    report(
        &[same_node, cross_node, cross_node_vs_underlay],
        repetitions,
        seconds,
    )
}

fn report(scenarios: &[Scenario], repetitions: usize, seconds: u32) -> anyhow::Result<()> {
    let mut markdown = format!(
        "Median of {repetitions} interleaved run(s) of {seconds} s each.\n\n\
         | scenario | baseline | dataplane / baseline | dataplane Gbit/s | baseline Gbit/s |\n\
         |---|---|---|---|---|\n"
    );
    let mut json = Vec::new();
    for scenario in scenarios {
        let (ours, theirs) = (median(&scenario.dataplane), median(&scenario.kernel));
        markdown.push_str(&format!(
            "| {} | {} | {:.2} | {:.2} | {:.2} |\n",
            scenario.name,
            scenario.baseline,
            ours / theirs,
            ours / 1e9,
            theirs / 1e9
        ));
        json.push(serde_json::json!({
            "scenario": scenario.name,
            "baseline": scenario.baseline,
            "ratio": ours / theirs,
            "dataplane_bits_per_second": scenario.dataplane,
            "baseline_bits_per_second": scenario.kernel,
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
