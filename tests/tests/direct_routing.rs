// Above 400 lines: each file under tests/ is a binary of its own (built, linked, run apart): one per feature.
//! Direct routing (`node.routing`): pod packets to nodes on the uplink's
//! network leave unencapsulated, that node's IP the next hop, and are taken
//! on arrival only in frames from the owning node's MAC; in auto mode a node
//! behind a router stays on the tunnel. Pods are made by the real `ptp`
//! plugin, IPv6 left on, nodes added through the agent's API.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use dataplane_tests::{
    Cluster, ClusterSpec, MainPlugin, Netns, Node, Pod,
    cluster::{EXTERNAL_HOST_IP, UNDERLAY_MTU, VXLAN_POD_MTU},
    traffic::{Capture, EchoServers, in_netns, joined, send_frames, tcp_round_trip},
};
use dataplane_user::model::Routing;
use etherparse::PacketBuilder;
use nix::sys::signal::Signal;

/// Bytes per TCP round trip: many full-sized segments each way.
const TCP_BYTES: usize = 256 * 1024;

fn ptp_cluster(nodes: usize, routing: Routing) -> ClusterSpec {
    ClusterSpec::dataplane(nodes, 1)
        .with_real_plugin(MainPlugin::Ptp)
        .with_routing(routing)
}

fn build(spec: ClusterSpec) -> Cluster {
    Cluster::new(spec).expect("building the netns cluster")
}

/// The `node list` line of the node at `ip`.
fn listed(node: &Node, ip: Ipv4Addr) -> anyhow::Result<String> {
    let list = node.cli(&["node", "list"])?;
    list.lines()
        .find(|line| line.starts_with(&format!("{ip} ")))
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("{ip} is not in the node list:\n{list}"))
}

/// Echo requests from `from` to `to` in a capture.
fn echo_requests(lines: &[String], from: Ipv4Addr, to: Ipv4Addr) -> usize {
    let needle = format!("{from} > {to}: ICMP echo request");
    lines.iter().filter(|line| line.contains(&needle)).count()
}

#[test]
fn direct_mode_sends_pod_packets_unencapsulated_between_nodes_on_one_bridge() -> anyhow::Result<()>
{
    let cluster = build(ptp_cluster(2, Routing::Direct));
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let (pod, remote) = (&a.pods[0], &b.pods[0]);

    // No 50-byte tax: pods get the underlay's MTU.
    let status = a.status()?;
    assert_eq!(status["routing"], "direct");
    assert_eq!(status["direct_nodes"], 1);
    assert_eq!(status["pod_mtu"], UNDERLAY_MTU);
    assert_eq!(pod.netns.mtu_of("eth0")?, UNDERLAY_MTU);
    // The path, and the MAC the node's packets must come from.
    let line = listed(a, b.ip)?;
    assert!(line.contains("direct"), "{line}");
    let b_mac = b.netns.mac_of("eth0")?.to_string().to_lowercase();
    assert!(
        line.to_lowercase().contains(&b_mac),
        "{line} (expected {b_mac})"
    );

    let capture = Capture::start(&b.netns, "eth0")?;
    pod.ping(remote.ip, 3)?;
    tcp_round_trip(&remote.netns, remote.ip, &pod.netns, TCP_BYTES)?;
    // The largest packet the underlay carries, DF set.
    let largest = (UNDERLAY_MTU - 28).to_string();
    pod.netns
        .ping(remote.ip, 1, &["-q", "-M", "do", "-s", &largest])?;
    // Host to a remote pod (kubelet on a's side), pod to a remote node.
    a.netns.ping(remote.ip, 2, &["-q"])?;
    pod.ping(b.ip, 2)?;
    let lines = capture.finish()?;

    let tunnelled: Vec<&String> = lines
        .iter()
        .filter(|line| line.contains("VXLAN") || line.contains(".4789:"))
        .collect();
    assert!(tunnelled.is_empty(), "VXLAN on the wire: {tunnelled:?}");
    assert!(echo_requests(&lines, pod.ip, remote.ip) >= 4, "{lines:#?}");
    assert!(echo_requests(&lines, a.ip, remote.ip) >= 2, "{lines:#?}");
    assert!(echo_requests(&lines, pod.ip, b.ip) >= 2, "{lines:#?}");

    for node in [a, b] {
        assert!(node.counter("forwarded_direct")? > 0);
        assert!(node.counter("direct_to_pod")? > 0);
        assert_eq!(node.counter("encapsulated")?, 0);
        assert_eq!(node.counter("drop_direct_unverified")?, 0);
    }
    assert!(b.counter("direct_to_host")? >= 2);
    // Egress SNAT is the same in every mode.
    pod.ping(EXTERNAL_HOST_IP, 1)?;

    // A node removed at runtime: its pods are unreachable, and what it
    // still sends is refused, both counted; added again, all is back.
    a.remove_remote_node(b.ip)?;
    let unknown = a.counter("drop_unknown_node")?;
    assert!(!pod.reaches(remote.ip));
    let refused = a.counter("drop_unknown_node")?;
    assert!(refused > unknown);
    assert!(remote.ping(pod.ip, 2).is_err());
    assert!(a.counter("drop_unknown_node")? >= refused + 2);
    a.add_remote_node(b)?;
    pod.ping(remote.ip, 2)?;
    remote.ping(pod.ip, 2)?;
    Ok(())
}

#[test]
fn auto_mode_goes_direct_to_neighbours_and_tunnels_across_a_router() -> anyhow::Result<()> {
    let cluster = build(ptp_cluster(3, Routing::Auto).with_routed_nodes(1));
    let (a, b, routed) = (&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]);

    assert!(listed(a, b.ip)?.contains("direct"));
    assert!(listed(a, routed.ip)?.contains("tunnel"));
    assert!(listed(routed, a.ip)?.contains("tunnel"));
    assert!(listed(routed, b.ip)?.contains("tunnel"));
    let status = a.status()?;
    assert_eq!(
        (
            status["direct_nodes"].as_u64(),
            status["tunnelled_nodes"].as_u64()
        ),
        (Some(1), Some(1))
    );
    // Mixing paths: the smallest of them.
    assert_eq!(status["pod_mtu"], VXLAN_POD_MTU);
    assert_eq!(routed.status()?["pod_mtu"], VXLAN_POD_MTU);

    let pods: Vec<&Pod> = cluster.nodes.iter().flat_map(|node| &node.pods).collect();
    for from in &pods {
        for to in pods.iter().filter(|to| to.ip != from.ip) {
            from.ping(to.ip, 1)?;
            tcp_round_trip(&to.netns, to.ip, &from.netns, TCP_BYTES)
                .map_err(|error| error.context(format!("TCP {} -> {}", from.ip, to.ip)))?;
        }
    }
    for node in &cluster.nodes {
        for pod in &pods {
            node.netns
                .ping(pod.ip, 1, &["-q"])
                .map_err(|error| error.context(format!("{} -> {}", node.ip, pod.ip)))?;
        }
    }
    // Both paths at once on the nodes that mix them; only the tunnel on the routed one.
    for node in [a, b] {
        assert!(node.counter("forwarded_direct")? > 0);
        assert!(node.counter("encapsulated")? > 0);
        assert!(node.counter("decapsulated_to_pod")? > 0);
    }
    assert_eq!(routed.counter("forwarded_direct")?, 0);
    Ok(())
}

/// An echo request to `to` as `from_mac` puts it on the wire to `node`.
fn spoofed_echo(node: &Node, from_mac: [u8; 6], from: Ipv4Addr, to: Ipv4Addr) -> Vec<u8> {
    let node_mac = node
        .netns
        .mac_of("eth0")
        .expect("the node's MAC")
        .into_array();
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(from_mac, node_mac)
        .ipv4(from.octets(), to.octets(), 64)
        .icmpv4_echo_request(7, 1)
        .write(&mut frame, &[0; 32])
        .expect("an echo request fits");
    frame
}

#[test]
fn unencapsulated_pod_sources_not_from_their_node_are_dropped_and_counted() -> anyhow::Result<()> {
    let cluster = build(ptp_cluster(3, Routing::Direct));
    let (a, b, c) = (&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]);
    let target = &a.pods[0];
    let b_pod = b.pods[0].ip;
    // Through the dataplane once, so every neighbour entry is there.
    b.pods[0].ping(target.ip, 1)?;
    c.pods[0].ping(target.ip, 1)?;

    let attempts = [
        // Another host on the underlay, speaking for b's pods.
        (
            "the gateway",
            &cluster.gateway,
            "eth0",
            cluster.gateway.mac_of("eth0")?,
        ),
        // A real node, c, speaking for pods it does not own (b's), sent
        // from the underlay's bridge with c's MAC: c's own programs would
        // refuse to send it.
        ("node c", cluster.underlay(), "br0", c.netns.mac_of("eth0")?),
    ];
    for (who, netns, interface, mac) in attempts {
        let received = target.netns.ipv4_received()?;
        let refused = a.counter("drop_direct_unverified")?;
        let frame = spoofed_echo(a, mac.into_array(), b_pod, target.ip);
        send_frames(netns, interface, frame, 5)?;
        thread::sleep(Duration::from_millis(300));
        assert!(
            a.counter("drop_direct_unverified")? >= refused + 5,
            "{who}'s spoofed packets were not counted"
        );
        assert_eq!(
            target.netns.ipv4_received()?,
            received,
            "{who}'s spoofed packets reached the pod"
        );
    }
    // The same frame from b's MAC is b speaking for its own pods: delivered.
    let delivered = a.counter("direct_to_pod")?;
    let frame = spoofed_echo(a, b.netns.mac_of("eth0")?.into_array(), b_pod, target.ip);
    send_frames(cluster.underlay(), "br0", frame, 2)?;
    thread::sleep(Duration::from_millis(300));
    assert!(a.counter("direct_to_pod")? >= delivered + 2);
    // A pod address of this node itself never comes from the underlay.
    let spoofed = a.counter("drop_spoofed_source")?;
    let own = a.pods[0].ip;
    let frame = spoofed_echo(a, b.netns.mac_of("eth0")?.into_array(), own, a.ip);
    send_frames(cluster.underlay(), "br0", frame, 2)?;
    thread::sleep(Duration::from_millis(300));
    assert!(a.counter("drop_spoofed_source")? >= spoofed + 2);
    Ok(())
}

/// A TCP connection from `client` to the echo server at `server` that
/// exchanges 64 bytes every 50 ms until `stop`; yields the rounds and the
/// slowest one (a read waits at most 3 s: longer fails).
fn keep_talking(
    client: &Netns,
    server: SocketAddr,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<anyhow::Result<(usize, Duration)>> {
    in_netns(client, move || {
        let mut stream = TcpStream::connect_timeout(&server, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        let (mut rounds, mut slowest) = (0, Duration::ZERO);
        let mut echoed = [0; 64];
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            stream.write_all(&[8; 64])?;
            stream
                .read_exact(&mut echoed)
                .with_context(|| format!("round {rounds}"))?;
            slowest = slowest.max(started.elapsed());
            rounds += 1;
            thread::sleep(Duration::from_millis(50));
        }
        stream.shutdown(Shutdown::Write)?;
        Ok((rounds, slowest))
    })
}

#[test]
fn a_routing_change_across_agent_restarts_keeps_an_established_connection() -> anyhow::Result<()> {
    let mut cluster = build(ptp_cluster(2, Routing::Tunnel));
    let remote = &cluster.nodes[1].pods[0];
    let port = 7000;
    let _server = EchoServers::start(&remote.netns, remote.ip, [port], 1, None)?;
    let stop = Arc::new(AtomicBool::new(false));
    let talk = keep_talking(
        &cluster.nodes[0].pods[0].netns,
        SocketAddr::from((remote.ip, port)),
        stop.clone(),
    );
    thread::sleep(Duration::from_secs(1));
    // Each node in turn: its agent stopped, its routing changed, started
    // again; in between, one node sends directly and the other through the
    // tunnel, and each takes what the other sends.
    for index in [0, 1] {
        let node = &mut cluster.nodes[index];
        node.stop_agent(Signal::SIGTERM);
        node.set_routing(Routing::Direct)?;
        node.start_agent()?;
        thread::sleep(Duration::from_secs(2));
    }
    stop.store(true, Ordering::Relaxed);
    let (rounds, slowest) = joined(talk)?;
    assert!(rounds > 50, "{rounds} rounds");
    assert!(slowest < Duration::from_secs(1), "a round took {slowest:?}");

    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    assert!(listed(a, b.ip)?.contains("direct"));
    assert!(listed(b, a.ip)?.contains("direct"));
    assert!(a.counter("forwarded_direct")? > 0);
    assert!(b.counter("direct_to_pod")? > 0);
    a.pods[0].ping(b.pods[0].ip, 1)?;
    Ok(())
}

#[test]
fn nodes_that_do_not_forward_route_directly_too() -> anyhow::Result<()> {
    // Hand-made pods: the nodes keep ip_forward 0 (the ptp plugin turns it
    // on), where the kernel's FIB lookup for BPF refuses to answer.
    let cluster = build(ClusterSpec::dataplane(2, 1).with_routing(Routing::Direct));
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    for node in [a, b] {
        assert_eq!(node.netns.read_sysctl("net.ipv4.ip_forward")?.trim(), "0");
    }
    let (pod, remote) = (&a.pods[0], &b.pods[0]);
    pod.ping(remote.ip, 2)?;
    remote.ping(pod.ip, 2)?;
    tcp_round_trip(&remote.netns, remote.ip, &pod.netns, TCP_BYTES)?;
    let sent = a.counter("forwarded_direct")?;
    a.netns.ping(remote.ip, 2, &["-q"])?;
    assert!(
        a.counter("forwarded_direct")? >= sent + 2,
        "the node's own packets went through the tunnel"
    );
    assert_eq!(a.counter("encapsulated")? + b.counter("encapsulated")?, 0);
    assert_eq!(b.counter("drop_direct_unverified")?, 0);
    Ok(())
}

/// An ARP reply on the wire to `node` that says `claimed` is at `mac`.
fn forged_arp_reply(node: &Node, mac: [u8; 6], claimed: Ipv4Addr) -> anyhow::Result<Vec<u8>> {
    let node_mac = node.netns.mac_of("eth0")?.into_array();
    let reply = etherparse::ArpEthIpv4Packet {
        operation: etherparse::ArpOperation::REPLY,
        sender_mac: mac,
        sender_ipv4: claimed.octets(),
        target_mac: node_mac,
        target_ipv4: node.ip.octets(),
    };
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(mac, node_mac)
        .arp(reply.into())
        .write(&mut frame)?;
    Ok(frame)
}

/// The gateway, a host on the underlay, tells node a (a few times, past the
/// kernel's one-second lock on a fresh entry) that node b is at its MAC.
fn forge_b_at_the_gateway(cluster: &Cluster) -> anyhow::Result<()> {
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let frame = forged_arp_reply(a, cluster.gateway.mac_of("eth0")?.into_array(), b.ip)?;
    for _ in 0..3 {
        send_frames(&cluster.gateway, "eth0", frame.clone(), 1)?;
        thread::sleep(Duration::from_millis(700));
    }
    Ok(())
}

#[test]
fn a_forged_arp_reply_for_a_node_is_seen_and_with_pinned_macs_refused() -> anyhow::Result<()> {
    let mut cluster = build(ptp_cluster(2, Routing::Direct));
    let b_mac = cluster.nodes[1].netns.mac_of("eth0")?.to_string();
    let (b_ip, b_pod) = (cluster.nodes[1].ip, cluster.nodes[1].pods[0].ip);
    cluster.nodes[0].pods[0].ping(b_pod, 1)?;
    let gateway_mac = cluster.gateway.mac_of("eth0")?.to_string();

    // Following ARP (the default), node a takes the gateway for b: the
    // change is warned about, counted and listed.
    forge_b_at_the_gateway(&cluster)?;
    let a = &cluster.nodes[0];
    let line = listed(a, b_ip)?;
    assert!(
        line.contains(&gateway_mac) && line.trim_end().ends_with(" 1"),
        "{line}"
    );
    assert!(a.agent_log().contains("a node's MAC changed on the uplink"));

    // Pinned: the MAC first learned stays, in the kernel's neighbour table
    // too, so b's pods stay reached at b and the gateway gets nothing.
    let a = &mut cluster.nodes[0];
    a.stop_agent(Signal::SIGTERM);
    let config = std::fs::read_to_string(&a.config)?;
    std::fs::write(
        &a.config,
        config.replace("[node]\n", "[node]\npeer_macs = \"pinned\"\n"),
    )?;
    a.start_agent()?;
    // What was learned before stays too, the forged MAC here: the node is
    // removed and added to learn it afresh.
    let a = &cluster.nodes[0];
    let a_pod = &a.pods[0];
    a.remove_remote_node(b_ip)?;
    a.add_remote_node(&cluster.nodes[1])?;
    a_pod.ping(b_pod, 1)?;
    assert!(listed(a, b_ip)?.contains(&b_mac), "{}", listed(a, b_ip)?);
    let capture = Capture::start(&cluster.gateway, "eth0")?;
    forge_b_at_the_gateway(&cluster)?;
    a_pod.ping(b_pod, 3)?;
    let frames = capture.finish()?;
    assert_eq!(echo_requests(&frames, a_pod.ip, b_pod), 0, "{frames:#?}");
    let line = listed(a, b_ip)?;
    assert!(line.contains(&b_mac), "{line}");
    let neighbours = a.netns.exec(&["ip", "neigh", "show", &b_ip.to_string()])?;
    assert!(
        neighbours.contains(&b_mac.to_lowercase()) && neighbours.contains("PERMANENT"),
        "{neighbours}"
    );
    Ok(())
}
