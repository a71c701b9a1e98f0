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

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

fn same_node_rate(cluster: &Cluster, seconds: u32) -> anyhow::Result<f64> {
    let pods = &cluster.nodes[0].pods;
    iperf3_tcp(&pods[1].netns, pods[1].ip, &pods[0].netns, seconds)
}

pub fn run(binary: &Path, quick: bool) -> anyhow::Result<()> {
    // SAFETY: set before any other thread exists; the harness reads it.
    unsafe { std::env::set_var("DATAPLANE_BIN", binary) };
    let (repetitions, seconds) = if quick { (1, 1) } else { (3, 5) };
    let spec = |forwarding| ClusterSpec {
        nodes: 1,
        pods_per_node: 2,
        forwarding,
    };
    println!("==> building clusters: dataplane, and /32 routes + proxy_arp");
    let with_dataplane = Cluster::new(spec(Forwarding::Dataplane))?;
    let with_kernel = Cluster::new(spec(Forwarding::KernelRoutes))?;

    let mut scenario = Scenario {
        name: "same-node pod-to-pod, iperf3 TCP 1 stream",
        baseline: "/32 routes + proxy_arp",
        dataplane: Vec::new(),
        kernel: Vec::new(),
    };
    for repetition in 1..=repetitions {
        print!("==> repetition {repetition}/{repetitions}: dataplane ");
        std::io::stdout().flush()?;
        scenario
            .dataplane
            .push(same_node_rate(&with_dataplane, seconds)?);
        print!(
            "{:.2} Gbit/s, kernel ",
            scenario.dataplane.last().unwrap() / 1e9
        );
        std::io::stdout().flush()?;
        scenario.kernel.push(same_node_rate(&with_kernel, seconds)?);
        println!("{:.2} Gbit/s", scenario.kernel.last().unwrap() / 1e9);
    }
    report(&[scenario], repetitions, seconds)
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
