//! The datapath keeps forwarding while the agent is down: programs, links and
//! maps stay pinned, and a restarted agent adopts them.

use std::{process::Child, time::Duration};

use dataplane_tests::{
    Cluster, ClusterSpec, Netns,
    cluster::EXTERNAL_HOST_IP,
    traffic::{received_bits_per_second, wait_until_listening},
};
use nix::sys::signal::Signal;

const STREAM_SECONDS: &str = "8";

/// An iperf3 stream from `client` to `server_ip` in `server`, running in the background.
fn stream(
    server: &Netns,
    server_ip: std::net::Ipv4Addr,
    client: &Netns,
) -> anyhow::Result<(Child, Child)> {
    let server_process = server.spawn(&["iperf3", "--server", "--one-off", "--port", "5201"])?;
    wait_until_listening(server, "5201")?;
    let client_process = client.spawn_captured(&[
        "iperf3",
        "--client",
        &server_ip.to_string(),
        "--port",
        "5201",
        "--time",
        STREAM_SECONDS,
        "--json",
    ])?;
    Ok((server_process, client_process))
}

fn finish(stream: (Child, Child)) -> anyhow::Result<f64> {
    let (mut server, client) = stream;
    let output = client.wait_with_output()?;
    let _ = server.wait();
    received_bits_per_second(&String::from_utf8_lossy(&output.stdout))
}

/// Longest silence between consecutive replies in `ping -D` output, in seconds.
fn longest_gap(ping_output: &str) -> f64 {
    let stamps: Vec<f64> = ping_output
        .lines()
        .filter(|line| line.contains("bytes from"))
        .filter_map(|line| line.strip_prefix('[')?.split(']').next()?.parse().ok())
        .collect();
    stamps
        .windows(2)
        .map(|pair| pair[1] - pair[0])
        .fold(0.0, f64::max)
}

#[test]
fn killing_and_restarting_every_agent_keeps_streams_and_connections_alive() -> anyhow::Result<()> {
    let mut cluster = Cluster::new(ClusterSpec::dataplane(2, 1))?;
    let (here, there) = (&cluster.nodes[0].pods[0], &cluster.nodes[1].pods[0]);
    let cross_node = stream(&there.netns, there.ip, &here.netns)?;
    let egress = stream(&cluster.external, EXTERNAL_HOST_IP, &there.netns)?;
    let pinger = here.netns.spawn_captured(&[
        "ping",
        "-D",
        "-i",
        "0.01",
        "-w",
        STREAM_SECONDS,
        &there.ip.to_string(),
    ])?;

    std::thread::sleep(Duration::from_secs(2));
    for node in &mut cluster.nodes {
        node.stop_agent(Signal::SIGKILL);
    }
    std::thread::sleep(Duration::from_secs(1));
    for node in &mut cluster.nodes {
        node.start_agent()?;
    }

    let cross_rate = finish(cross_node)?;
    let egress_rate = finish(egress)?;
    let ping_output = String::from_utf8_lossy(&pinger.wait_with_output()?.stdout).into_owned();
    let gap = longest_gap(&ping_output);
    println!(
        "with every agent SIGKILLed for 1 s: cross-node {:.2} Gbit/s, egress {:.2} Gbit/s, \
         longest ping gap {:.0} ms",
        cross_rate / 1e9,
        egress_rate / 1e9,
        gap * 1000.0
    );
    assert!(cross_rate > 0.0 && egress_rate > 0.0);
    assert!(
        gap < 0.5,
        "forwarding paused for {gap:.3} s while the agents were down"
    );
    for node in &cluster.nodes {
        assert!(node.agent_log().contains("adopted pinned endpoint"));
    }
    Ok(())
}

#[test]
fn a_stopped_agent_keeps_forwarding_until_uninstall_removes_everything() -> anyhow::Result<()> {
    let mut cluster = Cluster::new(ClusterSpec::dataplane(1, 2))?;
    let node = &mut cluster.nodes[0];
    node.stop_agent(Signal::SIGTERM);
    let (a, b) = (&node.pods[0], &node.pods[1]);
    a.ping(b.ip, 2)?;
    a.ping(EXTERNAL_HOST_IP, 2)?;

    node.uninstall()?;
    assert!(!node.bpf_root()?.exists(), "pins left behind");
    assert!(
        node.netns.ip(&["link", "show", "dp-vxlan"]).is_err(),
        "VXLAN device left behind"
    );
    assert!(!a.reaches(b.ip), "programs still attached after uninstall");
    // Uninstalling twice is fine; with the agent running it is refused.
    node.uninstall()?;
    node.start_agent()?;
    let refused = node
        .uninstall()
        .expect_err("uninstall while the agent runs");
    assert!(refused.to_string().contains("stop it first"), "{refused:#}");
    Ok(())
}

#[test]
fn pins_of_another_layout_version_are_removed_once_the_new_programs_run() -> anyhow::Result<()> {
    let mut cluster = Cluster::new(ClusterSpec::dataplane(1, 2))?;
    let node = &mut cluster.nodes[0];
    node.stop_agent(Signal::SIGTERM);
    // What an agent of an older layout would have left (bpffs takes directories only).
    let old = node.bpf_root()?.join("v1");
    std::fs::create_dir_all(old.join("links"))?;
    node.start_agent()?;
    assert!(!old.exists(), "pins of layout v1 left in place");
    assert!(node.agent_log().contains("another map layout version"));
    node.pods[0].ping(node.pods[1].ip, 1)?;
    Ok(())
}
