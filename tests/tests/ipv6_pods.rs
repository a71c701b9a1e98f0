// Above 400 lines: every IPv6 path end to end on dual-stack nodes, over one set of helpers.
//! IPv6 end to end on dual-stack nodes (`node.pod_cidr_ipv6`, an IPv6
//! address on the uplink): pods from the real chain, `ptp` with a
//! dual-stack host-local (an IPv4 and an IPv6 range) then `dataplane-cni`,
//! which registers both addresses. Neighbour discovery for the gateway
//! answered by the programs, pods reaching each other (on one node and
//! through the tunnel), their gateway and the node over IPv6, the ICMPv6
//! errors a router sends (time exceeded, packet too big, no route) from
//! the node's IPv6 address, and nothing else.

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
    traffic::{EchoServers, echo_once, iperf3_tcp},
};
use dataplane_user::model::Routing;
use serde_json::Value;

const ECHO_PORT: u16 = 8080;

/// The gateway host-local gives the pods of `node` (its IPv6 range's first
/// address).
fn ipv6_gateway(node: &Node) -> anyhow::Result<IpAddr> {
    let cidr = node.pod_cidr6.context("a dual-stack node")?;
    Ok(IpAddr::V6((u128::from(cidr.network()) + 1).into()))
}

/// A pod of the real chain with both families.
struct DualStackPod {
    netns: Netns,
    /// Its veth's peer on the node.
    host_interface: String,
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

/// A pod made by the node's chain (dual-stack host-local, `ptp`, then
/// `dataplane-cni` registering both addresses).
fn dual_stack_pod(node: &Node, name: &str) -> anyhow::Result<DualStackPod> {
    let network = node
        .cni
        .as_ref()
        .context("the node makes its pods through CNI")?;
    let netns = Netns::create(format!("{}{name}", unique_prefix()))?;
    let result = network.add(name, &netns, "eth0")?;
    let (ipv4, ipv6) = addresses(&result)?;
    Ok(DualStackPod {
        netns,
        host_interface: host_interface(&result)?,
        ipv4,
        ipv6,
    })
}

/// What `ping` prints from the pod (whether or not every reply came back).
fn ping_output(pod: &DualStackPod, args: &[&str]) -> anyhow::Result<String> {
    let output = pod
        .netns
        .command("ping")?
        .args(["-c", "1", "-W", "1"])
        .args(args)
        .output()?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
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

/// One dual-stack node whose pods come from `main` (then `dataplane-cni`).
fn pods_on_one_node_over_ipv6(main: MainPlugin) -> anyhow::Result<()> {
    let cluster = Cluster::new(
        ClusterSpec::dataplane(1, 0)
            .with_real_plugin(main)
            .with_ipv6(),
    )?;
    let node = &cluster.nodes[0];
    let node_ipv6 = node.ip6.context("a dual-stack node")?.to_string();
    let gateway = ipv6_gateway(node)?;
    let a = dual_stack_pod(node, "v6a")?;
    let b = dual_stack_pod(node, "v6b")?;
    // "should create pod, add ipv6 and ipv4 ip to pod ips": both registered,
    // and in the maps of their family.
    let listed = node.cli(&["endpoint", "list"])?;
    let in_maps = node.cli(&["map", "list", "endpoints"])?;
    for pod in [&a, &b] {
        for ip in [pod.ipv4, pod.ipv6] {
            assert!(
                listed.contains(&ip.to_string()) && in_maps.contains(&ip.to_string()),
                "{ip} not listed: {listed}\n{in_maps}"
            );
        }
    }
    let status = node.cli(&["status"])?;
    let pod_cidr6 = node.pod_cidr6.context("a dual-stack node")?.to_string();
    assert!(
        status.contains(&pod_cidr6) && status.contains(&node_ipv6),
        "{status}"
    );

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

    // "should be able to reach pod on ipv4 and ipv6 ip": the hop limit
    // decremented once, and TCP.
    let forwarded = node.counter("forwarded_local")?;
    let output = a
        .netns
        .exec(&["ping", "-c", "3", "-W", "1", &b.ipv6.to_string()])?;
    assert!(output.contains("ttl=63"), "{output}");
    assert!(node.counter("forwarded_local")? >= forwarded + 6);
    tcp_over_ipv6_and_ipv4_as_before(&a, &b)?;

    // The node reaches its pods over IPv6 (kubelet's probes).
    node.netns.ping(a.ipv6, 3, &[])?;

    // A pod sending from another pod's IPv6 address gets nothing through.
    let b_ipv6 = b.ipv6.to_string();
    a.netns.exec(&[
        "ip",
        "-6",
        "addr",
        "add",
        &format!("{b_ipv6}/128"),
        "dev",
        "eth0",
        "nodad",
    ])?;
    let spoofed = node.counter("drop_spoofed_source")?;
    assert!(a.netns.ping(gateway, 1, &["-I", &b_ipv6]).is_err());
    assert!(node.counter("drop_spoofed_source")? > spoofed);
    a.netns.exec(&[
        "ip",
        "-6",
        "addr",
        "del",
        &format!("{b_ipv6}/128"),
        "dev",
        "eth0",
    ])?;

    // A link-local gateway (solicited from the pod's link-local address):
    // answered by from-pod too, and B reached through it.
    let via_link_local = [
        "ip", "-6", "route", "replace", &b_ipv6, "via", "fe80::1", "dev", "eth0",
    ];
    a.netns.exec(&via_link_local)?;
    a.netns.ping(b.ipv6, 3, &[])?;
    a.netns.exec(&["ip", "-6", "route", "del", &b_ipv6])?;

    // The hop limit running out here: time exceeded, from the node's IPv6
    // address (traceroute from a pod shows the node).
    let output = ping_output(&a, &["-t", "1", &b.ipv6.to_string()])?;
    assert!(
        output.contains(&format!("From {node_ipv6}")) && output.contains("Time exceeded"),
        "{output}"
    );

    // Beyond the node IPv6 is not forwarded yet: prohibited, answered at
    // once (a connection fails instead of waiting out its retries).
    let not_forwarded = node.counter("drop_ipv6_not_forwarded")?;
    let output = ping_output(&a, &["2001:db8::1"])?;
    assert!(
        output.contains(&format!("From {node_ipv6}"))
            && output.contains("Destination unreachable: Administratively prohibited"),
        "{output}"
    );
    assert!(node.counter("drop_ipv6_not_forwarded")? > not_forwarded);
    let world = SocketAddr::new("2001:db8::1".parse()?, 80);
    let refused = echo_once(&a.netns, world, Duration::from_secs(5))
        .expect_err("no route to the world over IPv6");
    assert!(
        format!("{refused:#}").contains("Permission denied"),
        "{refused:#}"
    );

    // An address removed is no pod's any more: B's IPv6 stops, IPv4 stays.
    node.cli(&["endpoint", "del", "--ip", &b.ipv6.to_string()])?;
    assert!(a.netns.ping(b.ipv6, 1, &[]).is_err());
    a.netns.ping(b.ipv4, 1, &[])?;
    Ok(())
}

#[test]
fn dual_stack_pods_of_ptp_reach_each_other_their_gateway_and_the_node_over_ipv6()
-> anyhow::Result<()> {
    pods_on_one_node_over_ipv6(MainPlugin::Ptp)
}

#[test]
fn dual_stack_pods_of_bridge_reach_each_other_their_gateway_and_the_node_over_ipv6()
-> anyhow::Result<()> {
    pods_on_one_node_over_ipv6(MainPlugin::Bridge)
}

#[test]
fn ipv6_only_pods_reach_each_other_their_gateway_and_the_node() -> anyhow::Result<()> {
    let cluster = Cluster::new(
        ClusterSpec::dataplane(1, 0)
            .with_real_plugin(MainPlugin::Ptp)
            .with_ipv6(),
    )?;
    let node = &cluster.nodes[0];
    let cidr = node.pod_cidr6.context("a dual-stack node")?;
    let network = node
        .cni
        .clone()
        .context("the node makes its pods through CNI")?
        .ipv6_only(&cidr.to_string());
    let mut pods = Vec::new();
    for name in ["o6a", "o6b"] {
        let netns = Netns::create(format!("{}{name}", unique_prefix()))?;
        let result = network.add(name, &netns, "eth0")?;
        let ips = result["ips"].as_array().context("a result with ips")?;
        assert_eq!(ips.len(), 1, "one address: {result}");
        let ip: IpAddr = ips[0]["address"]
            .as_str()
            .and_then(|address| address.split('/').next()?.parse().ok())
            .context("an address")?;
        assert!(ip.is_ipv6(), "{result}");
        pods.push((netns, ip));
    }
    let ((a, _), (b, b_ip)) = (&pods[0], &pods[1]);
    let listed = node.cli(&["endpoint", "list"])?;
    assert!(listed.contains(&b_ip.to_string()), "{listed}");
    assert!(
        eventually(Duration::from_secs(10), || Ok(a
            .ping(ipv6_gateway(node)?, 1, &[])
            .is_ok()))?,
        "an IPv6-only pod cannot ping its gateway: {}",
        node.agent_log()
    );
    a.ping(*b_ip, 3, &[])?;
    let _echo = EchoServers::start(b, *b_ip, [ECHO_PORT], 2, None)?;
    echo_once(a, SocketAddr::new(*b_ip, ECHO_PORT), Duration::from_secs(3))?;
    node.netns.ping(*b_ip, 3, &[])?;
    Ok(())
}

#[test]
fn dual_stack_pods_on_two_nodes_reach_each_other_over_ipv6_through_the_tunnel() -> anyhow::Result<()>
{
    let mut cluster = Cluster::new(
        ClusterSpec::dataplane(2, 0)
            .with_real_plugin(MainPlugin::Ptp)
            .with_ipv6(),
    )?;
    // Each node was told the other's IPv6 pod CIDR too (`--pod-cidr` twice).
    for (index, node) in cluster.nodes.iter().enumerate() {
        let other = cluster.nodes[1 - index].pod_cidr6.context("dual stack")?;
        let listed = node.cli(&["node", "list"])?;
        assert!(listed.contains(&other.to_string()), "{listed}");
    }
    let a = dual_stack_pod(&cluster.nodes[0], "x6a")?;
    let b = dual_stack_pod(&cluster.nodes[1], "x6b")?;

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
    // Bulk TCP over IPv6 through the tunnel (segmentation offloads on).
    let rate = iperf3_tcp(&b.netns, b.ipv6, &a.netns, 2)?;
    assert!(rate > 0.0, "iperf3 moved no data over IPv6");

    // A pod whose link is larger than the tunnel (its MTU raised past what
    // the CNI plugin set): a packet too big from the node (IPv6 routers
    // never fragment), after which the pod's stack fits its packets to the
    // path and they reach B.
    let node = &cluster.nodes[0];
    let node_ipv6 = node.ip6.context("a dual-stack node")?;
    a.netns.set_mtu("eth0", 1500)?;
    node.netns.set_mtu(&a.host_interface, 1500)?;
    let b_ipv6 = b.ipv6.to_string();
    let output = ping_output(&a, &["-s", "1452", "-M", "do", &b_ipv6])?;
    assert!(
        output.contains(&format!("From {node_ipv6}"))
            && output.contains("Packet too big: mtu=1450"),
        "{output}"
    );
    a.netns
        .exec(&["ping", "-c", "2", "-W", "1", "-s", "1452", &b_ipv6])
        .context("once the path MTU is learned")?;

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

#[test]
fn dual_stack_pods_on_two_nodes_reached_directly_reach_each_other_over_ipv6_unencapsulated()
-> anyhow::Result<()> {
    let cluster = Cluster::new(
        ClusterSpec::dataplane(2, 0)
            .with_real_plugin(MainPlugin::Ptp)
            .with_routing(Routing::Direct)
            .with_ipv6(),
    )?;
    let a = dual_stack_pod(&cluster.nodes[0], "d6a")?;
    let b = dual_stack_pod(&cluster.nodes[1], "d6b")?;
    let (sender, receiver) = (&cluster.nodes[0], &cluster.nodes[1]);
    // Each node learns the other's MAC from its neighbour table first
    // (tunnelled meanwhile).
    let reached = eventually(Duration::from_secs(10), || {
        Ok(a.netns.ping(b.ipv6, 1, &[]).is_ok() && sender.counter("forwarded_direct")? > 0)
    })?;
    assert!(
        reached,
        "pod A does not reach pod B directly over IPv6: {}",
        sender.agent_log()
    );
    let (encapsulated, direct_to_pod) = (
        sender.counter("encapsulated")?,
        receiver.counter("direct_to_pod")?,
    );
    let output = a
        .netns
        .exec(&["ping", "-c", "3", "-W", "1", &b.ipv6.to_string()])?;
    assert!(output.contains("ttl=62"), "{output}");
    assert_eq!(sender.counter("encapsulated")?, encapsulated, "no VXLAN");
    assert!(receiver.counter("direct_to_pod")? >= direct_to_pod + 3);
    tcp_over_ipv6_and_ipv4_as_before(&a, &b)?;
    let rate = iperf3_tcp(&b.netns, b.ipv6, &a.netns, 2)?;
    assert!(rate > 0.0, "iperf3 moved no data over IPv6");
    assert_eq!(sender.counter("encapsulated")?, encapsulated, "no VXLAN");
    Ok(())
}
