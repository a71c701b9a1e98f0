//! Pods made the way a runtime makes them: Debian's real `ptp` and `bridge`
//! plugins with host-local, `dataplane-cni` chained last, IPv6 left on in
//! every namespace. Both put the pod CIDR's gateway address on the node (ptp
//! on every host veth, bridge on `cni0`), so the node's own packets to its
//! pods leave with that address: every path is checked with it.

use std::{net::Ipv4Addr, time::Duration};

use dataplane_tests::{
    Cluster, ClusterSpec, MainPlugin, Node, cluster::EXTERNAL_HOST_IP, eventually,
    traffic::tcp_round_trip,
};

/// Another address of the node, outside every pod range, added after start.
const EXTRA_HOST_ADDRESS: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

fn cluster(main: MainPlugin) -> Cluster {
    Cluster::new(ClusterSpec::dataplane(2, 2).with_real_plugin(main))
        .expect("building the netns cluster")
}

/// The pod CIDR's gateway address, which both plugins give the node.
fn gateway(node: &Node) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(node.pod_cidr.network()) + 1)
}

/// How long a change of the node may take to reach the maps.
const FOLLOW_TIMEOUT: Duration = Duration::from_secs(2);

fn every_path_works(main: MainPlugin) -> anyhow::Result<()> {
    let cluster = cluster(main);
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let (pod, neighbour, remote) = (&a.pods[0], &a.pods[1], &b.pods[0]);

    // Pod to pod, same node and across nodes.
    pod.ping(neighbour.ip, 2)?;
    tcp_round_trip(&neighbour.netns, neighbour.ip, &pod.netns, 256 * 1024)?;
    pod.ping(remote.ip, 2)?;
    tcp_round_trip(&remote.netns, remote.ip, &pod.netns, 256 * 1024)?;

    // The node to its own pods (kubelet probes), from the source the kernel
    // picks (the gateway address) and from the node IP; TCP as a probe does.
    let route = a.netns.route_to(pod.ip)?;
    assert_eq!(
        route.source,
        Some(gateway(a)),
        "the plugin makes the gateway address the source: {route:?}"
    );
    for pod in &a.pods {
        a.netns.ping(pod.ip, 2, &[])?;
        a.netns.ping(pod.ip, 2, &["-I", &a.ip.to_string()])?;
        a.netns.ping(pod.ip, 2, &["-I", &gateway(a).to_string()])?;
        tcp_round_trip(&pod.netns, pod.ip, &a.netns, 64 * 1024)?;
    }
    // The node to pods of other nodes, from its IP and its gateway address.
    a.netns.ping(remote.ip, 2, &[])?;
    a.netns
        .ping(remote.ip, 2, &["-I", &gateway(a).to_string()])?;
    tcp_round_trip(&remote.netns, remote.ip, &a.netns, 64 * 1024)?;

    // Pods to their node (any of its addresses) and to other nodes.
    pod.ping(gateway(a), 2)?;
    pod.ping(a.ip, 2)?;
    pod.ping(b.ip, 2)?;
    pod.ping(gateway(b), 2)?;
    tcp_round_trip(&a.netns, gateway(a), &pod.netns, 64 * 1024)?;

    // An address the node gains while running works at once, both ways.
    a.netns.add_address("lo", EXTRA_HOST_ADDRESS.into())?;
    assert!(
        eventually(FOLLOW_TIMEOUT, || Ok(pod.reaches(EXTRA_HOST_ADDRESS)))?,
        "a pod reaches the node's new address"
    );
    a.netns
        .ping(pod.ip, 2, &["-I", &EXTRA_HOST_ADDRESS.to_string()])?;
    tcp_round_trip(&a.netns, EXTRA_HOST_ADDRESS, &pod.netns, 64 * 1024)?;
    // To a remote pod the node must speak from an address that node can
    // answer through the tunnel: anything else is refused here, counted.
    let unroutable = a.counter("drop_host_source_unroutable")?;
    assert!(
        a.netns
            .ping(remote.ip, 1, &["-I", &EXTRA_HOST_ADDRESS.to_string()])
            .is_err()
    );
    assert!(a.counter("drop_host_source_unroutable")? > unroutable);
    a.netns.delete_address("lo", EXTRA_HOST_ADDRESS)?;
    assert!(
        eventually(FOLLOW_TIMEOUT, || Ok(!pod.reaches(EXTRA_HOST_ADDRESS)))?,
        "a removed address is no longer the node's"
    );

    // Egress to the world, masqueraded.
    pod.ping(EXTERNAL_HOST_IP, 2)?;
    let seen = tcp_round_trip(&cluster.external, EXTERNAL_HOST_IP, &pod.netns, 64 * 1024)?;
    assert_eq!(seen.ip(), a.ip, "the external host sees the node IP");

    for node in &cluster.nodes {
        assert_eq!(
            node.counter("drop_unknown_endpoint")?,
            0,
            "nothing meant for the node was dropped as an unknown pod"
        );
    }
    Ok(())
}

#[test]
fn ptp_pods_reach_everything_and_their_node_reaches_them() -> anyhow::Result<()> {
    every_path_works(MainPlugin::Ptp)
}

#[test]
fn bridge_pods_reach_everything_and_their_node_reaches_them() -> anyhow::Result<()> {
    every_path_works(MainPlugin::Bridge)
}

/// A veth deleted without a CNI DEL (runtime crash, `ip link del`) takes its
/// endpoint with it at once; the address then works on a new veth.
#[test]
fn an_endpoint_goes_with_its_veth_and_its_address_can_come_back() -> anyhow::Result<()> {
    let mut cluster = cluster(MainPlugin::Ptp);
    let node = &mut cluster.nodes[0];
    let (gone_ip, gone_mac, gone_veth) = {
        let pod = &node.pods[1];
        (pod.ip, pod.mac, pod.host_interface.clone())
    };
    node.netns.delete_link(&gone_veth)?;
    let listed = |node: &Node| -> anyhow::Result<bool> {
        Ok(node
            .cli(&["endpoint", "list"])?
            .contains(&gone_ip.to_string()))
    };
    assert!(
        eventually(FOLLOW_TIMEOUT, || Ok(!listed(node)?))?,
        "the endpoint of a deleted veth is removed without a restart"
    );

    // The same address on a fresh veth, registered the way an operator would.
    let returned = node.add_pod(format!("{}back", node.pod_prefix), gone_ip)?;
    let (veth, mac) = (returned.host_interface.clone(), returned.mac);
    assert_ne!(mac, gone_mac);
    node.cli(&[
        "endpoint",
        "add",
        "--ip",
        &gone_ip.to_string(),
        "--interface",
        &veth,
        "--mac",
        &mac.to_string(),
    ])?;
    node.pods[0].ping(gone_ip, 2)?;
    Ok(())
}
