//! The datapath keeps forwarding while the agent is down: programs, links and
//! maps stay pinned, and a restarted agent adopts them.

use std::{
    process::Child,
    time::{Duration, Instant},
};

use dataplane_tests::{
    Cluster, ClusterSpec, Netns, Node,
    cluster::EXTERNAL_HOST_IP,
    cni::MainPlugin,
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
    stream_for(server, server_ip, client, STREAM_SECONDS)
}

fn stream_for(
    server: &Netns,
    server_ip: std::net::Ipv4Addr,
    client: &Netns,
    seconds: &str,
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
        seconds,
        "--json",
    ])?;
    Ok((server_process, client_process))
}

fn finish(stream: (Child, Child)) -> anyhow::Result<f64> {
    finish_with_report(stream).map(|(rate, _)| rate)
}

/// The received rate and the whole `iperf3 --json` report.
fn finish_with_report(stream: (Child, Child)) -> anyhow::Result<(f64, serde_json::Value)> {
    let (mut server, client) = stream;
    let output = client.wait_with_output()?;
    let _ = server.wait();
    let json = String::from_utf8_lossy(&output.stdout);
    Ok((
        received_bits_per_second(&json)?,
        serde_json::from_str(&json)?,
    ))
}

/// `(transmitted, received)` from ping's summary line.
fn ping_counts(ping_output: &str) -> Option<(u64, u64)> {
    let summary = ping_output
        .lines()
        .find(|line| line.contains("packets transmitted"))?;
    let mut numbers = summary
        .split(|c: char| !c.is_ascii_digit())
        .filter(|part| !part.is_empty())
        .map(|part| part.parse::<u64>().ok());
    Some((numbers.next()??, numbers.next()??))
}

fn vxlan_index(node: &Node) -> anyhow::Result<u32> {
    node.netns.index_of("dp-vxlan")
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
fn an_agent_killed_while_it_takes_over_pinned_links_leaves_no_moment_without_a_program()
-> anyhow::Result<()> {
    const SECONDS: &str = "12";
    let mut cluster = Cluster::new(ClusterSpec::dataplane(2, 2).with_real_plugin(MainPlugin::Ptp))?;
    let vxlan_before = vxlan_index(&cluster.nodes[0])?;
    // How long a start takes here: the kills are spread over it.
    let node = &mut cluster.nodes[0];
    node.stop_agent(Signal::SIGKILL);
    let started = Instant::now();
    node.start_agent()?;
    let start_time = started.elapsed();

    let (here, neighbour, there) = (
        &cluster.nodes[0].pods[0],
        &cluster.nodes[0].pods[1],
        &cluster.nodes[1].pods[0],
    );
    let cross_node = stream_for(&there.netns, there.ip, &here.netns, SECONDS)?;
    let ping = |to: std::net::Ipv4Addr| {
        here.netns
            .spawn_captured(&["ping", "-i", "0.01", "-w", SECONDS, &to.to_string()])
    };
    let pingers = [ping(there.ip)?, ping(neighbour.ip)?];
    std::thread::sleep(Duration::from_secs(1));

    // Killed at points all through its start: loading, taking over the
    // tunnel and endpoint links, programming the maps.
    let node = &mut cluster.nodes[0];
    for tenth in [1, 2, 3, 4, 5, 6, 7, 8, 9] {
        node.stop_agent(Signal::SIGKILL);
        node.spawn_agent()?;
        std::thread::sleep(start_time * tenth / 10);
    }
    node.stop_agent(Signal::SIGKILL);
    node.start_agent()?;

    let (rate, report) = finish_with_report(cross_node)?;
    let idle_intervals = report["intervals"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|interval| interval["sum"]["bytes"].as_f64() == Some(0.0))
        .count();
    for pinger in pingers {
        let output = String::from_utf8_lossy(&pinger.wait_with_output()?.stdout).into_owned();
        let (sent, received) = ping_counts(&output).expect("ping prints its summary");
        println!("ping at 10 ms across 10 agent kills: {received} of {sent} answered");
        assert!(sent >= 500, "{output}");
        assert_eq!(
            sent, received,
            "pings lost while the agent was killed: {output}"
        );
    }
    println!(
        "iperf3 cross-node across the kills: {:.2} Gbit/s, {idle_intervals} idle intervals, \
         start of the agent {start_time:?}",
        rate / 1e9
    );
    assert_eq!(idle_intervals, 0, "the stream stalled");
    assert!(
        cluster.nodes[0]
            .agent_log()
            .contains("adopted pinned endpoint")
    );
    assert_eq!(
        vxlan_index(&cluster.nodes[0])?,
        vxlan_before,
        "dp-vxlan was recreated instead of kept"
    );
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
        node.netns.interface("dp-vxlan")?.is_none(),
        "VXLAN device left behind"
    );
    assert!(!a.reaches(b.ip), "programs still attached after uninstall");
    // Uninstalling twice is fine; with the agent running it is refused.
    node.uninstall()?;
    node.start_agent()?;
    let refused = node
        .uninstall()
        .expect_err("uninstall while the agent runs");
    assert!(
        format!("{refused:#}").contains("stop it first"),
        "{refused:#}"
    );
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

#[test]
fn a_pinned_link_no_endpoint_claims_is_removed_when_the_agent_starts() -> anyhow::Result<()> {
    let mut cluster = Cluster::new(ClusterSpec::dataplane(1, 2))?;
    let node = &mut cluster.nodes[0];
    node.stop_agent(Signal::SIGKILL);
    // What an agent killed between removing an endpoint and its links leaves.
    let gone = node.pods[1].ip;
    let path = node
        .bpf_root()?
        .join(format!("v{}", dataplane_common::MAP_LAYOUT_VERSION))
        .join(dataplane_common::names::ENDPOINTS_MAP);
    let mut endpoints: aya::maps::HashMap<aya::maps::MapData, [u8; 4], dataplane_common::Endpoint> =
        dataplane_user::maps::table::open_pinned(&path)?;
    endpoints.remove(&gone.octets())?;
    node.start_agent()?;
    let status = node.status()?;
    let attached: Vec<String> = status["attachments"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.as_str().map(ToOwned::to_owned))
        .collect();
    let stale = &node.pods[1].host_interface;
    assert!(
        !attached.iter().any(|entry| entry.contains(stale.as_str())),
        "programs left on {stale}: {attached:?}"
    );
    let kept = &node.pods[0].host_interface;
    assert!(
        attached.iter().any(|entry| entry.contains(kept.as_str())),
        "{attached:?}"
    );
    node.pods[0].ping(node.ip, 1)?;
    Ok(())
}
