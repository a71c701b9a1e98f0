//! Cross-node pod traffic through the VXLAN tunnel, driven only by the node
//! maps, end to end in a netns cluster.

use dataplane_tests::{
    Cluster, ClusterSpec,
    cluster::{CLUSTER_CIDR, VXLAN_POD_MTU},
    traffic::tcp_round_trip,
};

/// Bytes per TCP round trip: many full-sized segments each way.
const TCP_BYTES: usize = 256 * 1024;

fn cluster(nodes: usize, pods_per_node: usize) -> Cluster {
    Cluster::new(ClusterSpec::dataplane(nodes, pods_per_node)).expect("building the netns cluster")
}

/// No per-node kernel state: no pod routes, no static neighbours, no FDB.
fn assert_no_per_node_kernel_state(cluster: &Cluster) -> anyhow::Result<()> {
    for node in &cluster.nodes {
        let routes = node.netns.routes_within(CLUSTER_CIDR.parse()?)?;
        assert!(
            routes.is_empty(),
            "{} has pod routes: {routes:?}",
            node.netns.name()
        );
        let neighbours = node.netns.permanent_neighbours()?;
        assert!(neighbours.is_empty(), "static neighbours: {neighbours:?}");
        assert_eq!(
            node.netns.fdb_entry_count("dp-vxlan")?,
            0,
            "FDB entries on dp-vxlan"
        );
    }
    Ok(())
}

#[test]
fn every_pod_reaches_every_pod_across_three_nodes() -> anyhow::Result<()> {
    let cluster = cluster(3, 2);
    let pods: Vec<_> = cluster.nodes.iter().flat_map(|node| &node.pods).collect();
    for from in &pods {
        for to in pods.iter().filter(|to| to.ip != from.ip) {
            from.ping(to.ip, 1)?;
            tcp_round_trip(&to.netns, to.ip, &from.netns, TCP_BYTES)
                .map_err(|error| error.context(format!("TCP {} -> {}", from.ip, to.ip)))?;
        }
    }
    assert_no_per_node_kernel_state(&cluster)?;
    for node in &cluster.nodes {
        assert!(node.counter("encapsulated")? > 0);
        assert!(node.counter("decapsulated_to_pod")? > 0);
        assert_eq!(node.counter("drop_unknown_tunnel_source")?, 0);
    }
    Ok(())
}

#[test]
fn nodes_reach_every_pod_and_pods_reach_every_node() -> anyhow::Result<()> {
    let cluster = cluster(3, 2);
    for node in &cluster.nodes {
        for pod in cluster.nodes.iter().flat_map(|node| &node.pods) {
            node.netns
                .ping(pod.ip, 1, &["-q"])
                .map_err(|error| error.context(format!("{} -> {}", node.ip, pod.ip)))?;
            tcp_round_trip(&pod.netns, pod.ip, &node.netns, TCP_BYTES)
                .map_err(|error| error.context(format!("TCP {} -> {}", node.ip, pod.ip)))?;
            pod.ping(node.ip, 1)?;
            tcp_round_trip(&node.netns, node.ip, &pod.netns, TCP_BYTES)
                .map_err(|error| error.context(format!("TCP {} -> {}", pod.ip, node.ip)))?;
        }
    }
    assert_no_per_node_kernel_state(&cluster)?;
    Ok(())
}

#[test]
fn nodes_removed_and_added_at_runtime() -> anyhow::Result<()> {
    let cluster = cluster(3, 1);
    let (first, third) = (&cluster.nodes[0], &cluster.nodes[2]);
    let (here, there) = (&first.pods[0], &third.pods[0]);
    here.ping(there.ip, 1)?;

    // The first node forgets the third: its pods become unreachable, and
    // packets for them are dropped and counted, never sent anywhere else.
    first.remove_remote_node(third.ip)?;
    let listed = first.cli(&["node", "list"])?;
    assert!(!listed.contains(&third.ip.to_string()), "{listed}");
    let dropped = first.counter("drop_unknown_node")?;
    assert!(here.ping(there.ip, 3).is_err());
    assert!(first.counter("drop_unknown_node")? >= dropped + 3);
    // The third node still sends to the first, which now refuses its tunnel traffic.
    let refused = first.counter("drop_unknown_tunnel_source")?;
    assert!(there.ping(here.ip, 3).is_err());
    assert!(first.counter("drop_unknown_tunnel_source")? >= refused + 3);
    // Removing again is not an error.
    first.remove_remote_node(third.ip)?;

    first.add_remote_node(third)?;
    here.ping(there.ip, 2)?;
    there.ping(here.ip, 2)?;
    tcp_round_trip(&there.netns, there.ip, &here.netns, TCP_BYTES)?;
    Ok(())
}

#[test]
fn vxlan_from_an_address_that_is_not_a_node_is_dropped_and_counted() -> anyhow::Result<()> {
    let cluster = cluster(1, 1);
    let node = &cluster.nodes[0];
    let pod = &node.pods[0];
    let gateway = &cluster.gateway;
    cluster.speak_vxlan_from_gateway(node, pod)?;

    let before = node.counter("drop_unknown_tunnel_source")?;
    let received = pod.netns.ipv4_received()?;
    assert!(gateway.ping(pod.ip, 5, &[]).is_err());
    assert!(node.counter("drop_unknown_tunnel_source")? >= before + 5);
    assert_eq!(
        pod.netns.ipv4_received()?,
        received,
        "injected packets reached the pod"
    );
    Ok(())
}

#[test]
fn pod_mtu_leaves_room_for_vxlan_and_oversized_packets_get_frag_needed() -> anyhow::Result<()> {
    let cluster = cluster(2, 1);
    let (node, other) = (&cluster.nodes[0], &cluster.nodes[1]);
    assert_eq!(node.status()?["pod_mtu"], VXLAN_POD_MTU);
    let (pod, remote) = (&node.pods[0], &other.pods[0]);
    assert_eq!(pod.netns.mtu_of("eth0")?, VXLAN_POD_MTU);

    // The largest packet that fits goes through with DF set...
    let largest = (VXLAN_POD_MTU - 28).to_string();
    pod.netns
        .ping(remote.ip, 1, &["-M", "do", "-s", &largest])?;
    // ...and a pod with a wrong MTU is told the path MTU instead of black-holed.
    pod.netns.set_mtu("eth0", 1500)?;
    node.netns.set_mtu(&pod.host_interface, 1500)?;
    let too_big = pod.netns.ping(remote.ip, 3, &["-M", "do", "-s", "1472"]);
    let message = format!(
        "{:#}",
        too_big.expect_err("a 1500-byte packet crossed a 1450 path")
    );
    assert!(
        message.contains(&format!("mtu = {VXLAN_POD_MTU}"))
            || message.contains(&format!("mtu={VXLAN_POD_MTU}")),
        "{message}"
    );
    let cached = pod.netns.route_to(remote.ip)?;
    assert_eq!(cached.mtu, Some(VXLAN_POD_MTU), "{cached:?}");
    // TCP adapts to the learned path MTU.
    tcp_round_trip(&remote.netns, remote.ip, &pod.netns, TCP_BYTES)?;
    Ok(())
}

#[test]
fn nodes_from_the_config_file_are_programmed_at_start() -> anyhow::Result<()> {
    let mut cluster = cluster(2, 1);
    let (other_ip, other_cidr, remote_pod) = {
        let other = &cluster.nodes[1];
        (other.ip, other.pod_cidr, other.pods[0].ip)
    };
    let node = &mut cluster.nodes[0];
    node.remove_remote_node(other_ip)?;
    node.stop_agent(nix::sys::signal::Signal::SIGTERM);
    let mut config = std::fs::read_to_string(&node.config)?;
    config.push_str(&format!(
        "\n[[nodes]]\nip = \"{other_ip}\"\npod_cidr = \"{other_cidr}\"\n"
    ));
    std::fs::write(&node.config, config)?;
    node.start_agent()?;

    assert!(
        node.cli(&["node", "list"])?
            .contains(&other_cidr.to_string())
    );
    node.pods[0].ping(remote_pod, 2)?;
    Ok(())
}

/// Polls `check` for up to five seconds.
fn eventually(mut check: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<bool> {
    for _ in 0..50 {
        if check()? {
            return Ok(true);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Ok(false)
}

#[test]
fn editing_the_config_file_adds_and_removes_nodes_without_a_restart() -> anyhow::Result<()> {
    let cluster = cluster(3, 1);
    let (node, other, from_api) = (&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]);
    let (pod, remote_pod) = (&node.pods[0], &other.pods[0]);
    node.remove_remote_node(other.ip)?;
    assert!(!pod.reaches(remote_pod.ip));
    let original = std::fs::read_to_string(&node.config)?;
    let listed = || -> anyhow::Result<bool> {
        Ok(node.cli(&["node", "list"])?.contains(&other.ip.to_string()))
    };

    let with_node = format!(
        "{original}\n[[nodes]]\nip = \"{}\"\npod_cidr = \"{}\"\n",
        other.ip, other.pod_cidr
    );
    std::fs::write(&node.config, &with_node)?;
    assert!(
        eventually(listed)?,
        "the node from the edited file was not added"
    );
    pod.ping(remote_pod.ip, 2)?;

    // A broken edit is reported and changes nothing.
    std::fs::write(
        &node.config,
        format!("{with_node}\n[[nodes]]\nip = \"not an address\"\n"),
    )?;
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(listed()?, "a broken config file removed a node");
    assert!(node.agent_log().contains("config file change refused"));

    std::fs::write(&node.config, &original)?;
    assert!(
        eventually(|| Ok(!listed()?))?,
        "the node removed from the file is still there"
    );
    assert!(!pod.reaches(remote_pod.ip));
    // The file owns only the nodes it listed: the one added through the API stays.
    assert!(
        node.cli(&["node", "list"])?
            .contains(&from_api.ip.to_string())
    );
    pod.ping(from_api.pods[0].ip, 1)?;
    Ok(())
}
