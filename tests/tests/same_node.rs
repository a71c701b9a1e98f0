//! Same-node pod-to-pod forwarding by the from-pod TC program, end to end:
//! real namespaces, veths, agent process and traffic.

use std::net::Ipv4Addr;

use dataplane_tests::{
    Cluster, ClusterSpec,
    cluster::{CLUSTER_CIDR, POD_GATEWAY_IP},
    traffic::iperf3_tcp,
};
use nix::sys::signal::Signal;

fn one_node(pods: usize) -> Cluster {
    Cluster::new(ClusterSpec::dataplane(1, pods)).expect("building the netns cluster")
}

#[test]
fn pods_exchange_ping_and_tcp_with_bpf_as_the_only_forwarder() -> anyhow::Result<()> {
    let cluster = one_node(2);
    let node = &cluster.nodes[0];
    let (a, b) = (&node.pods[0], &node.pods[1]);

    // The kernel cannot be what forwards: no routes to pods, no proxy ARP, no forwarding.
    let routes = node.netns.routes_within(CLUSTER_CIDR.parse()?)?;
    assert!(routes.is_empty(), "node has pod routes: {routes:?}");
    assert_eq!(node.netns.read_sysctl("net.ipv4.ip_forward")?, "0");
    for pod in &node.pods {
        let key = format!("net.ipv4.conf.{}.proxy_arp", pod.host_interface);
        assert_eq!(node.netns.read_sysctl(&key)?, "0");
    }

    a.ping(b.ip, 3)?;
    b.ping(a.ip, 3)?;
    let rate = iperf3_tcp(&b.netns, b.ip, &a.netns, 2)?;
    assert!(rate > 0.0, "iperf3 moved no data");

    let counters = node.counters()?;
    assert!(counters["arp_replied"] >= 2, "{counters:?}");
    assert!(counters["forwarded_local"] >= 12, "{counters:?}");
    // The pods' gateway MAC is the host veth's, learned from the BPF ARP reply.
    assert_eq!(
        a.netns.neighbour_mac(POD_GATEWAY_IP)?,
        Some(node.netns.mac_of(&a.host_interface)?)
    );
    Ok(())
}

#[test]
fn spoofed_source_is_dropped_and_counted() -> anyhow::Result<()> {
    let cluster = one_node(3);
    let node = &cluster.nodes[0];
    let (attacker, victim, impersonated) = (&node.pods[0], &node.pods[1], &node.pods[2]);

    // Another pod's address, then an address in the pod CIDR that nobody owns.
    for spoofed in [impersonated.ip, Ipv4Addr::new(10, 244, 0, 99)] {
        node.prepare_spoofing(attacker, spoofed)?;
        let before = node.counter("drop_spoofed_source")?;
        let received_before = victim.netns.ipv4_received()?;
        let spoofed_source = spoofed.to_string();
        let sent = attacker.netns.ping(victim.ip, 5, &["-I", &spoofed_source]);
        assert!(sent.is_err(), "spoofed ping from {spoofed} was answered");
        let dropped = node.counter("drop_spoofed_source")? - before;
        assert!(dropped >= 5, "only {dropped} spoofed packets counted");
        assert_eq!(
            victim.netns.ipv4_received()?,
            received_before,
            "spoofed packets reached {}",
            victim.ip
        );
    }
    // The attacker's own address still works.
    attacker.ping(victim.ip, 1)?;
    Ok(())
}

#[test]
fn unknown_pod_address_is_dropped_not_leaked() -> anyhow::Result<()> {
    let cluster = one_node(3);
    let node = &cluster.nodes[0];
    let unknown = Ipv4Addr::new(10, 244, 0, 200);
    let before = node.counter("drop_unknown_endpoint")?;
    let received_before: Vec<u64> = node.pods[1..]
        .iter()
        .map(|pod| pod.netns.ipv4_received())
        .collect::<Result<_, _>>()?;

    assert!(node.pods[0].ping(unknown, 5).is_err());

    assert!(node.counter("drop_unknown_endpoint")? >= before + 5);
    for (pod, before) in node.pods[1..].iter().zip(received_before) {
        assert_eq!(
            pod.netns.ipv4_received()?,
            before,
            "{} received leaked packets",
            pod.ip
        );
    }
    Ok(())
}

#[test]
fn removing_an_endpoint_stops_delivery_and_readding_restores_it() -> anyhow::Result<()> {
    let cluster = one_node(2);
    let node = &cluster.nodes[0];
    let (a, b) = (&node.pods[0], &node.pods[1]);
    a.ping(b.ip, 2)?;

    node.unregister(b.ip)?;
    let listed = node.cli(&["endpoint", "list"])?;
    assert!(!listed.contains(&b.ip.to_string()), "{listed}");
    assert!(!a.reaches(b.ip), "{} still reachable after removal", b.ip);
    // Removing again is not an error (CNI DEL must be idempotent).
    node.unregister(b.ip)?;

    node.register(b)?;
    a.ping(b.ip, 2)?;
    b.ping(a.ip, 2)?;
    Ok(())
}

#[test]
fn bad_endpoint_requests_are_refused_and_change_nothing() -> anyhow::Result<()> {
    let cluster = one_node(1);
    let node = &cluster.nodes[0];
    let before = node.cli(&["--output", "json", "endpoint", "list"])?;

    let add = |ip: &str, interface: &str, mac: &str| {
        node.cli(&[
            "endpoint",
            "add",
            "--ip",
            ip,
            "--interface",
            interface,
            "--mac",
            mac,
        ])
    };
    let unknown_interface = add("10.244.0.50", "nosuchveth", "02:00:00:00:00:01").unwrap_err();
    assert!(
        unknown_interface
            .to_string()
            .contains("nosuchveth does not exist"),
        "{unknown_interface:#}"
    );
    let outside = add("10.99.0.5", "vp0", "02:00:00:00:00:01").unwrap_err();
    assert!(
        outside.to_string().contains("outside the node's pod CIDR"),
        "{outside:#}"
    );
    let multicast = add("10.244.0.51", "vp0", "01:00:5e:00:00:01").unwrap_err();
    assert!(multicast.to_string().contains("unicast"), "{multicast:#}");

    assert_eq!(node.cli(&["--output", "json", "endpoint", "list"])?, before);
    Ok(())
}

#[test]
fn endpoints_from_the_config_file_are_programmed_at_start() -> anyhow::Result<()> {
    let mut cluster = one_node(2);
    let node = &mut cluster.nodes[0];
    let (a_ip, b_ip) = (node.pods[0].ip, node.pods[1].ip);
    node.unregister(a_ip)?;
    node.unregister(b_ip)?;
    node.stop_agent(Signal::SIGTERM);

    let mut config = std::fs::read_to_string(&node.config)?;
    for pod in &node.pods {
        config.push_str(&format!(
            "\n[[endpoints]]\nip = \"{}\"\ninterface = \"{}\"\nmac = \"{}\"\n",
            pod.ip, pod.host_interface, pod.mac
        ));
    }
    std::fs::write(&node.config, config)?;
    node.start_agent()?;

    node.pods[0].ping(b_ip, 2)?;
    node.pods[1].ping(a_ip, 2)?;
    Ok(())
}

#[test]
fn a_restarted_agent_adopts_the_pinned_endpoints() -> anyhow::Result<()> {
    let mut cluster = one_node(3);
    let node = &mut cluster.nodes[0];
    node.pods[0].ping(node.pods[1].ip, 1)?;

    // A pod deleted while the agent is down must not be adopted.
    node.stop_agent(Signal::SIGKILL);
    let gone = node.pods.pop().expect("three pods");
    let gone_ip = gone.ip;
    drop(gone);
    node.start_agent()?;

    let listed = node.cli(&["endpoint", "list"])?;
    assert!(!listed.contains(&gone_ip.to_string()), "{listed}");
    let (a, b) = (&node.pods[0], &node.pods[1]);
    assert!(
        listed.contains(&a.ip.to_string()) && listed.contains(&b.ip.to_string()),
        "{listed}"
    );
    a.ping(b.ip, 2)?;
    b.ping(a.ip, 2)?;
    let log = node.agent_log();
    assert!(log.contains("adopted pinned endpoint"), "{log}");
    Ok(())
}
