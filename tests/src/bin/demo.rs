//! `cargo xtask run` without a config: a demo cluster in network namespaces,
//! run with the `dataplane` binary at `$DATAPLANE_BIN`. (A binary of the
//! test harness, so that xtask itself builds before anything is installed.)

use std::sync::mpsc;

use anyhow::Context as _;
use dataplane_tests::{
    Cluster, ClusterSpec,
    cluster::{EXTERNAL_HOST_IP, dataplane_binary},
};

const NODES: usize = 2;
const PODS_PER_NODE: usize = 2;

fn main() -> anyhow::Result<()> {
    let binary = dataplane_binary()?;
    println!(
        "==> building a demo cluster: {NODES} nodes, {PODS_PER_NODE} pods each, dataplane attached"
    );
    let cluster = Cluster::new(ClusterSpec::dataplane(NODES, PODS_PER_NODE))?;

    for node in &cluster.nodes {
        println!(
            "\nnode {} (node IP {}, pod CIDR {}), agent API {}",
            node.netns.name(),
            node.ip,
            node.pod_cidr,
            node.socket.display()
        );
        println!(
            "  {:<14} {:<18} {:<8} NAMESPACE",
            "POD IP", "POD MAC", "HOST IF"
        );
        for pod in &node.pods {
            println!(
                "  {:<14} {:<18} {:<8} {}",
                pod.ip,
                pod.mac,
                pod.host_interface,
                pod.netns.name()
            );
        }
    }

    println!("\nreachability (ping; same node by redirect, across nodes by VXLAN, all in BPF):");
    let pods: Vec<_> = cluster.nodes.iter().flat_map(|node| &node.pods).collect();
    for from in &pods {
        let verdicts: Vec<String> = pods
            .iter()
            .filter(|to| to.ip != from.ip)
            .map(|to| {
                format!(
                    "{} {}",
                    to.ip,
                    if from.reaches(to.ip) { "ok" } else { "FAILED" }
                )
            })
            .collect();
        println!("  {} -> {}", from.ip, verdicts.join(", "));
    }
    println!(
        "\nto the external host {EXTERNAL_HOST_IP} behind the gateway (SNAT to the node IP in BPF):"
    );
    for pod in &pods {
        let verdict = if pod.reaches(EXTERNAL_HOST_IP) {
            "ok"
        } else {
            "FAILED"
        };
        println!("  {} -> {EXTERNAL_HOST_IP} {verdict}", pod.ip);
    }
    let first = &cluster.nodes[0];
    println!("\n{}", first.cli(&["status"])?);
    println!("{}", first.cli(&["counters"])?);
    println!(
        "try:  ip netns exec {} ping {}",
        first.pods[0].netns.name(),
        cluster.nodes[1].pods[0].ip
    );
    println!(
        "      {} --socket {} endpoint list",
        binary.display(),
        first.socket.display()
    );
    println!("\nPress Ctrl-C to tear the demo down.");

    let (stop, stopped) = mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = stop.send(());
    })
    .context("installing the Ctrl-C handler")?;
    stopped.recv().context("waiting for Ctrl-C")?;
    println!("\n==> cleaning up");
    drop(cluster);
    Ok(())
}
