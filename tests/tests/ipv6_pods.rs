//! IPv6 on one node, end to end: pods from the real `ptp` plugin with a
//! dual-stack host-local (an IPv4 and an IPv6 range), each address
//! registered through the agent's CLI (the CNI plugin still refuses IPv6:
//! beyond the node it is not forwarded yet). Neighbour discovery for the
//! gateway answered by the programs, pods reaching each other, their
//! gateway and the node over IPv6, and nothing else.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use anyhow::Context as _;
use dataplane_tests::{
    Cluster, ClusterSpec, MainPlugin, Netns, Node,
    cni::host_interface,
    eventually,
    netns::unique_prefix,
    traffic::{EchoServers, echo_once},
};
use serde_json::Value;

const ECHO_PORT: u16 = 8080;

/// Node `index`'s IPv6 pod CIDR, and the gateway host-local gives its pods.
fn ipv6_range(index: usize) -> (String, IpAddr) {
    let range: ipnetwork::Ipv6Network = format!("fd00:10:244:{index:x}::/64")
        .parse()
        .expect("a network");
    let gateway = format!("fd00:10:244:{index:x}::1")
        .parse()
        .expect("an address");
    // As the agent writes it back (`node list`).
    (range.to_string(), gateway)
}

/// A pod of the real chain with both families, registered by address.
struct DualStackPod {
    netns: Netns,
    ipv4: IpAddr,
    ipv6: IpAddr,
}

/// The addresses of a CNI result, by family.
fn addresses(result: &Value) -> anyhow::Result<(IpAddr, IpAddr)> {
    let ips: Vec<IpAddr> = result["ips"]
        .as_array()
        .context("a result with ips")?
        .iter()
        .filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok())
        .collect();
    let ipv4 = ips
        .iter()
        .find(|ip| ip.is_ipv4())
        .context("an IPv4 address")?;
    let ipv6 = ips
        .iter()
        .find(|ip| ip.is_ipv6())
        .context("an IPv6 address")?;
    Ok((*ipv4, *ipv6))
}

/// A pod made by `ptp` alone (dual-stack host-local, IPv6 from `range`),
/// then each of its addresses registered through `dataplane endpoint add`.
fn dual_stack_pod(node: &Node, name: &str, range: &str) -> anyhow::Result<DualStackPod> {
    let network = node
        .cni
        .clone()
        .context("the node makes its pods through CNI")?
        .with_ipv6_range(range)
        .main_plugin_only();
    let netns = Netns::create(format!("{}{name}", unique_prefix()))?;
    let result = network.add(name, &netns, "eth0")?;
    let (ipv4, ipv6) = addresses(&result)?;
    let interface = host_interface(&result)?;
    let mac = netns.mac_of("eth0")?.to_string();
    for ip in [ipv4, ipv6] {
        node.cli(&[
            "endpoint",
            "add",
            "--ip",
            &ip.to_string(),
            "--interface",
            &interface,
            "--mac",
            &mac,
        ])?;
    }
    Ok(DualStackPod { netns, ipv4, ipv6 })
}

/// A TCP exchange from `a` to `b` over IPv6, and `b` pinged over IPv4 as
/// before.
fn tcp_over_ipv6_and_ipv4_as_before(a: &DualStackPod, b: &DualStackPod) -> anyhow::Result<()> {
    let _echo = EchoServers::start(&b.netns, b.ipv6, [ECHO_PORT], 2, None)?;
    echo_once(
        &a.netns,
        SocketAddr::new(b.ipv6, ECHO_PORT),
        Duration::from_secs(3),
    )?;
    a.netns.ping(b.ipv4, 3, &[])
}

#[test]
fn dual_stack_pods_reach_each_other_their_gateway_and_the_node_over_ipv6() -> anyhow::Result<()> {
    let cluster = Cluster::new(ClusterSpec::dataplane(1, 0).with_real_plugin(MainPlugin::Ptp))?;
    let node = &cluster.nodes[0];
    let (range, gateway) = ipv6_range(0);
    let a = dual_stack_pod(node, "v6a", &range)?;
    let b = dual_stack_pod(node, "v6b", &range)?;
    let listed = node.cli(&["endpoint", "list"])?;
    for pod in [&a, &b] {
        for ip in [pod.ipv4, pod.ipv6] {
            assert!(
                listed.contains(&ip.to_string()),
                "{ip} not listed: {listed}"
            );
        }
    }

    // The gateway: its neighbour solicitation answered by from-pod, its
    // echo request handed to the node (the gateway is the node's address).
    assert!(
        eventually(Duration::from_secs(10), || Ok(a
            .netns
            .ping(gateway, 3, &[])
            .is_ok()))?,
        "pod A cannot ping its IPv6 gateway: {}",
        node.agent_log()
    );
    assert!(node.counter("ndp_answered")? > 0);

    // Pod to pod over IPv6, the hop limit decremented once, and TCP.
    let forwarded = node.counter("forwarded_local")?;
    let output = a
        .netns
        .exec(&["ping", "-c", "3", "-W", "1", &b.ipv6.to_string()])?;
    assert!(output.contains("ttl=63"), "{output}");
    assert!(node.counter("forwarded_local")? >= forwarded + 6);
    tcp_over_ipv6_and_ipv4_as_before(&a, &b)?;

    // The node reaches its pods over IPv6 (kubelet's probes).
    node.netns.ping(a.ipv6, 3, &[])?;

    // Beyond the node, IPv6 is not forwarded yet: dropped, and counted.
    let not_forwarded = node.counter("drop_ipv6_not_forwarded")?;
    assert!(
        a.netns
            .ping("2001:db8::1".parse::<IpAddr>()?, 1, &[])
            .is_err()
    );
    assert!(node.counter("drop_ipv6_not_forwarded")? > not_forwarded);

    // An address removed is no pod's any more: B's IPv6 stops, IPv4 stays.
    node.cli(&["endpoint", "del", "--ip", &b.ipv6.to_string()])?;
    assert!(a.netns.ping(b.ipv6, 1, &[]).is_err());
    a.netns.ping(b.ipv4, 1, &[])?;
    Ok(())
}

#[test]
fn dual_stack_pods_on_two_nodes_reach_each_other_over_ipv6_through_the_tunnel() -> anyhow::Result<()>
{
    let mut cluster = Cluster::new(ClusterSpec::dataplane(2, 0).with_real_plugin(MainPlugin::Ptp))?;
    // Each node told the other's IPv6 pod CIDR too (`--pod-cidr` twice).
    for (index, node) in cluster.nodes.iter().enumerate() {
        let other = 1 - index;
        let (range, _) = ipv6_range(other);
        let peer = &cluster.nodes[other];
        node.add_remote_dual_stack_node(peer, Some(&range))?;
        let listed = node.cli(&["node", "list"])?;
        assert!(listed.contains(&range), "{listed}");
    }
    let a = dual_stack_pod(&cluster.nodes[0], "x6a", &ipv6_range(0).0)?;
    let b = dual_stack_pod(&cluster.nodes[1], "x6b", &ipv6_range(1).0)?;

    // Through the tunnel: one hop on each node.
    let reached = eventually(Duration::from_secs(10), || {
        Ok(a.netns.ping(b.ipv6, 1, &[]).is_ok())
    })?;
    assert!(
        reached,
        "pod A cannot reach pod B on the other node over IPv6: {}",
        cluster.nodes[0].agent_log()
    );
    let output = a
        .netns
        .exec(&["ping", "-c", "3", "-W", "1", &b.ipv6.to_string()])?;
    assert!(output.contains("ttl=62"), "{output}");
    assert!(cluster.nodes[0].counter("encapsulated")? >= 3);
    assert!(cluster.nodes[1].counter("decapsulated_to_pod")? >= 3);
    tcp_over_ipv6_and_ipv4_as_before(&a, &b)?;

    // Agents killed and started again adopt what they pinned: the pods'
    // IPv6 addresses, the other node's IPv6 CIDR.
    let listed_before: Vec<String> = cluster
        .nodes
        .iter()
        .map(|node| node.cli(&["node", "list"]))
        .collect::<anyhow::Result<_>>()?;
    for node in &mut cluster.nodes {
        node.stop_agent(nix::sys::signal::Signal::SIGKILL);
        a.netns.ping(b.ipv6, 1, &[])?;
        node.start_agent()?;
    }
    for (node, before) in cluster.nodes.iter().zip(&listed_before) {
        assert_eq!(&node.cli(&["node", "list"])?, before);
        let endpoints = node.cli(&["endpoint", "list"])?;
        assert!(endpoints.contains("fd00:10:244:"), "{endpoints}");
    }
    a.netns.ping(b.ipv6, 3, &[])?;

    // The node forgets the other's IPv6 CIDR (`--pod-cidr` once): IPv6 to
    // its pods stops, IPv4 goes on.
    cluster.nodes[0].add_remote_node(&cluster.nodes[1])?;
    assert!(a.netns.ping(b.ipv6, 1, &[]).is_err());
    a.netns.ping(b.ipv4, 1, &[])?;
    Ok(())
}
