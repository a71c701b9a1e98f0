//! `dataplane monitor`: drops appear live with their reason and addresses.

use std::{
    net::Ipv4Addr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use dataplane_tests::{Cluster, ClusterSpec, cluster::dataplane_binary};
use serde_json::Value;

#[test]
fn spoofing_unknown_pods_and_foreign_vxlan_show_up_with_their_reasons() -> anyhow::Result<()> {
    let cluster = Cluster::new(ClusterSpec::dataplane(1, 2))?;
    let node = &cluster.nodes[0];
    let (attacker, victim) = (&node.pods[0], &node.pods[1]);
    let (mut monitor, received) = node.monitor(&[])?;
    // The agent filters: this client asks for one reason, address and
    // interface, and must see nothing else.
    let unknown = Ipv4Addr::new(10, 244, 0, 200);
    let unknown_text = unknown.to_string();
    let (mut filtered, filtered_events) = node.monitor(&[
        "--reason",
        "drop_unknown_endpoint",
        "--address",
        &unknown_text,
        "--interface",
        &attacker.host_interface,
    ])?;

    // A spoofed source, an unknown pod, VXLAN from a host that is not a node.
    let spoofed = Ipv4Addr::new(10, 244, 0, 99);
    node.prepare_spoofing(attacker, spoofed)?;
    let spoofed_source = spoofed.to_string();
    assert!(
        attacker
            .netns
            .ping(victim.ip, 2, &["-I", &spoofed_source])
            .is_err()
    );
    assert!(attacker.ping(unknown, 2).is_err());
    cluster.speak_vxlan_from_gateway(node, victim)?;
    assert!(cluster.gateway.ping(victim.ip, 2, &[]).is_err());

    let wanted = [
        ("drop_spoofed_source", "source", spoofed.to_string()),
        ("drop_unknown_endpoint", "destination", unknown.to_string()),
        (
            "drop_unknown_tunnel_source",
            "source",
            "192.0.2.1".to_string(),
        ),
    ];
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !wanted.iter().all(|wanted| seen.contains(&wanted.0)) {
        let Ok(event) = received.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        for (reason, field, address) in &wanted {
            let address_field = event[*field].as_str().unwrap_or_default();
            if event["reason"] == *reason
                && address_field.split(':').next() == Some(address.as_str())
            {
                seen.push(*reason);
            }
        }
    }
    let _ = monitor.kill();
    let _ = monitor.wait();
    for (reason, _, _) in wanted {
        assert!(seen.contains(&reason), "no {reason} event; saw {seen:?}");
    }
    let _ = filtered.kill();
    let _ = filtered.wait();
    let filtered: Vec<Value> = filtered_events.try_iter().collect();
    assert!(!filtered.is_empty(), "the filtered monitor saw nothing");
    for event in &filtered {
        assert_eq!(event["reason"], "drop_unknown_endpoint", "{event}");
        assert_eq!(event["destination"], unknown_text.as_str(), "{event}");
    }
    Ok(())
}

#[test]
fn map_list_shows_endpoints_nodes_and_connections_of_a_running_cluster() -> anyhow::Result<()> {
    let cluster = Cluster::new(ClusterSpec::dataplane(2, 1))?;
    let (node, other) = (&cluster.nodes[0], &cluster.nodes[1]);
    let pod = &node.pods[0];
    let external = dataplane_tests::cluster::EXTERNAL_HOST_IP;
    pod.ping(external, 1)?;

    let endpoints = node.cli(&["map", "list", "endpoints"])?;
    assert!(
        endpoints.contains(&pod.ip.to_string()) && endpoints.contains(&pod.host_interface),
        "{endpoints}"
    );
    let nodes = node.cli(&["map", "list", "nodes"])?;
    assert!(
        nodes.contains(&other.ip.to_string()) && nodes.contains(&other.pod_cidr.to_string()),
        "{nodes}"
    );
    let nat = node.cli(&["map", "list", "nat"])?;
    assert!(
        nat.contains("icmp")
            && nat.contains(&pod.ip.to_string())
            && nat.contains(&external.to_string()),
        "{nat}"
    );

    let json: Value = serde_json::from_str(&node.cli(&[
        "--output",
        "json",
        "map",
        "get",
        "nat",
        &external.to_string(),
    ])?)?;
    assert_eq!(
        json["connections"].as_array().map(Vec::len),
        Some(1),
        "{json}"
    );
    let none: Value = serde_json::from_str(&node.cli(&[
        "--output",
        "json",
        "map",
        "get",
        "endpoints",
        "10.244.0.250",
    ])?)?;
    assert_eq!(none["endpoints"].as_array().map(Vec::len), Some(0));

    node.cli(&["map", "flush", "nat"])?;
    assert!(!node.cli(&["map", "list", "nat"])?.contains("icmp"));
    assert!(
        node.cli(&["map", "flush", "endpoints"]).is_err(),
        "only the NAT table is flushed"
    );
    pod.ping(external, 1)?;
    Ok(())
}

#[test]
fn status_shows_attachments_map_fill_and_sources() -> anyhow::Result<()> {
    let cluster = Cluster::new(ClusterSpec::dataplane(2, 1))?;
    let node = &cluster.nodes[0];
    let status = node.status()?;
    let attachments: Vec<&str> = status["attachments"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let pod_veth = format!("from_pod on {} (ingress)", node.pods[0].host_interface);
    for expected in [
        pod_veth.as_str(),
        "from_uplink on eth0 (ingress)",
        "from_host on eth0 (egress)",
        "from_tunnel on dp-vxlan (ingress)",
    ] {
        assert!(
            attachments.contains(&expected),
            "{expected} missing from {attachments:?}"
        );
    }
    let maps = status["maps"].as_array().expect("maps");
    let endpoints = maps
        .iter()
        .find(|map| map["name"] == "ENDPOINTS")
        .expect("ENDPOINTS");
    assert_eq!(
        (
            endpoints["entries"].as_u64(),
            endpoints["capacity"].as_u64()
        ),
        (Some(1), Some(65_536))
    );
    let nodes = maps
        .iter()
        .find(|map| map["name"] == "REMOTE_NODES")
        .expect("REMOTE_NODES");
    assert_eq!(nodes["entries"].as_u64(), Some(1));
    assert!(status["sources"].to_string().contains("config file"));
    let text = node.cli(&["status"])?;
    assert!(
        text.contains("attached:") && text.contains("from_uplink on eth0"),
        "{text}"
    );
    Ok(())
}

#[test]
fn traces_show_forwarded_packets_when_asked() -> anyhow::Result<()> {
    let cluster = Cluster::new(ClusterSpec::dataplane(1, 2))?;
    let node = &cluster.nodes[0];
    let (a, b) = (&node.pods[0], &node.pods[1]);
    let address = a.ip.to_string();
    let (mut monitor, received) = node.monitor(&[
        "--traces",
        "--reason",
        "forwarded_local",
        "--address",
        &address,
    ])?;
    a.ping(b.ip, 3)?;
    let traced = received.recv_timeout(Duration::from_secs(5));
    let _ = monitor.kill();
    let _ = monitor.wait();
    let event = traced.map_err(|_| anyhow::anyhow!("no forwarded_local trace"))?;
    assert_eq!(event["reason"], "forwarded_local");
    assert_eq!(event["drop"], false);
    let ends = [event["source"].as_str(), event["destination"].as_str()];
    assert!(ends.contains(&Some(a.ip.to_string().as_str())), "{event}");
    Ok(())
}

#[test]
fn monitors_that_went_away_leave_the_api_to_others() -> anyhow::Result<()> {
    let cluster = Cluster::new(ClusterSpec::dataplane(1, 1))?;
    let node = &cluster.nodes[0];
    // More than the API serves at once (128), each gone after a moment on
    // a quiet node (no packet event would reveal them gone).
    let mut monitors = Vec::new();
    for _ in 0..140 {
        monitors.push(
            Command::new(dataplane_binary()?)
                .arg("--socket")
                .arg(&node.socket)
                .arg("monitor")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    for mut monitor in monitors {
        let _ = monitor.kill();
        let _ = monitor.wait();
    }
    let started = Instant::now();
    node.status()?;
    // Not a timing: before, the slots stayed taken until the next event,
    // and status gave up after 30 s.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "status waited {:?} for a connection slot",
        started.elapsed()
    );
    Ok(())
}

#[test]
fn a_monitor_the_agent_refuses_fails() -> anyhow::Result<()> {
    let cluster = Cluster::new(ClusterSpec::dataplane(1, 1))?;
    let node = &cluster.nodes[0];
    let output = Command::new(dataplane_binary()?)
        .arg("--socket")
        .arg(&node.socket)
        .args(["monitor", "--interface", "nosuch"])
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("nosuch"), "{stderr}");
    Ok(())
}
