//! `cargo xtask run` without a config: a demo cluster in network namespaces.

use std::{path::Path, sync::mpsc};

use anyhow::Context as _;
use dataplane_tests::{Cluster, ClusterSpec, Forwarding};

const PODS: usize = 3;

pub fn run(binary: &Path) -> anyhow::Result<()> {
    // SAFETY: set before any other thread exists; the harness reads it.
    unsafe { std::env::set_var("DATAPLANE_BIN", binary) };
    println!("==> building a demo cluster: 1 node, {PODS} pods, dataplane attached");
    let cluster = Cluster::new(ClusterSpec {
        nodes: 1,
        pods_per_node: PODS,
        forwarding: Forwarding::Dataplane,
    })?;
    let node = &cluster.nodes[0];

    println!(
        "\nnode namespace {} (node IP {}, pod CIDR {})",
        node.netns.name(),
        node.ip,
        node.pod_cidr
    );
    println!("  agent API: {}", node.socket.display());
    println!(
        "\n{:<14} {:<18} {:<8} NAMESPACE",
        "POD IP", "POD MAC", "HOST IF"
    );
    for pod in &node.pods {
        println!(
            "{:<14} {:<18} {:<8} {}",
            pod.ip,
            pod.mac,
            pod.host_interface,
            pod.netns.name()
        );
    }

    println!("\nreachability (ping, forwarded by the from-pod TC program):");
    for from in &node.pods {
        for to in node.pods.iter().filter(|to| to.ip != from.ip) {
            let verdict = if from.reaches(to.ip) { "ok" } else { "FAILED" };
            println!("  {} -> {}: {verdict}", from.ip, to.ip);
        }
    }
    println!("\n{}", node.cli(&["counters"])?);
    println!(
        "try:  ip netns exec {} ping {}",
        node.pods[0].netns.name(),
        node.pods[1].ip
    );
    println!(
        "      {} --socket {} endpoint list",
        binary.display(),
        node.socket.display()
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
