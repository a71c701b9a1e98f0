// Above 400 lines: each file under tests/ is a binary of its own (built, linked, run apart): one per feature.
//! Egress SNAT to the node IP with connection tracking in BPF, end to end:
//! pods reach the external host behind the gateway, which sees node IPs only.

use std::{
    collections::HashSet,
    hash::{BuildHasher, RandomState},
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Context as _;

use dataplane_tests::{
    Cluster, ClusterSpec, Netns, Node,
    cluster::EXTERNAL_HOST_IP,
    traffic::{in_netns, joined, tcp_round_trip, udp_echo_server, udp_exchange},
};
use nix::sys::signal::Signal;
use socket2::{Domain, Protocol, Socket, Type};

const ECHO_PORT: u16 = 7777;

fn cluster(nodes: usize, pods_per_node: usize) -> Cluster {
    Cluster::new(ClusterSpec::dataplane(nodes, pods_per_node)).expect("building the netns cluster")
}

/// Restarts the agent of `node` with `settings` (`key = value`) in its
/// `[nat]` section, replacing the keys' previous values.
fn reconfigure_nat(node: &mut Node, settings: &[&str]) -> anyhow::Result<()> {
    node.stop_agent(Signal::SIGTERM);
    let key = |line: &str| line.split('=').next().unwrap_or_default().trim().to_owned();
    let replaced: HashSet<String> = settings.iter().map(|setting| key(setting)).collect();
    let config: String = std::fs::read_to_string(&node.config)?
        .lines()
        .filter(|line| !replaced.contains(&key(line)))
        .map(|line| format!("{line}\n"))
        .collect();
    let section = format!("[nat]\n{}\n", settings.join("\n"));
    std::fs::write(&node.config, config.replace("[nat]\n", &section))?;
    node.start_agent()
}

/// A UDP echo server on the external host answering `datagrams` datagrams
/// within `seconds`; yields the sources it saw.
fn external_echo(
    cluster: &Cluster,
    datagrams: usize,
    seconds: u64,
) -> anyhow::Result<JoinHandle<anyhow::Result<Vec<SocketAddr>>>> {
    udp_echo_server(
        &cluster.external,
        EXTERNAL_HOST_IP,
        ECHO_PORT,
        datagrams,
        Duration::from_secs(seconds),
    )
}

fn echo_address() -> SocketAddr {
    SocketAddr::from((EXTERNAL_HOST_IP, ECHO_PORT))
}

#[test]
fn pods_on_two_nodes_reach_the_outside_as_their_node() -> anyhow::Result<()> {
    let cluster = cluster(2, 1);
    let node_ips: HashSet<Ipv4Addr> = cluster.nodes.iter().map(|node| node.ip).collect();
    let udp = external_echo(&cluster, 2, 10)?;
    for node in &cluster.nodes {
        let pod = &node.pods[0];
        pod.ping(EXTERNAL_HOST_IP, 3)?;
        let seen = tcp_round_trip(&cluster.external, EXTERNAL_HOST_IP, &pod.netns, 256 * 1024)?;
        assert_eq!(
            seen.ip(),
            std::net::IpAddr::V4(node.ip),
            "TCP from {} seen as {seen}",
            pod.ip
        );
        joined(in_netns(&pod.netns, move || {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            udp_exchange(&socket, echo_address(), b"hello from a pod")
        }))?;
        assert!(node.counter("masqueraded")? > 0);
        assert!(node.counter("nat_reply_to_pod")? > 0);
    }
    for source in joined(udp)? {
        let SocketAddr::V4(source) = source else {
            unreachable!()
        };
        assert!(node_ips.contains(source.ip()), "UDP seen from {source}");
    }
    // Entirely in BPF: no iptables or nftables rule anywhere on the nodes.
    for node in &cluster.nodes {
        let rules = node.netns.exec(&["nft", "list", "ruleset"])?;
        assert!(
            rules.trim().is_empty(),
            "nftables rules on {}:\n{rules}",
            node.netns.name()
        );
        let saved = node.netns.exec(&["iptables-save"])?;
        assert!(
            !saved.contains("-A "),
            "iptables rules on {}:\n{saved}",
            node.netns.name()
        );
    }
    let listed = cluster.nodes[0].cli(&["nat", "list"])?;
    assert!(
        listed.contains("tcp") && listed.contains("udp") && listed.contains("icmp"),
        "{listed}"
    );
    Ok(())
}

#[test]
fn two_pods_with_the_same_source_port_to_the_same_destination_both_work() -> anyhow::Result<()> {
    let cluster = cluster(1, 2);
    let node = &cluster.nodes[0];
    let server = external_echo(&cluster, 4, 10)?;
    // Both sockets stay open so the two connections exist at the same time.
    let sockets: Vec<_> = node
        .pods
        .iter()
        .map(|pod| {
            joined(in_netns(&pod.netns, || {
                Ok(UdpSocket::bind("0.0.0.0:45000")?)
            }))
        })
        .collect::<anyhow::Result<_>>()?;
    for round in 0..2 {
        for (index, socket) in sockets.iter().enumerate() {
            udp_exchange(
                socket,
                echo_address(),
                format!("pod {index} round {round}").as_bytes(),
            )?;
        }
    }
    let sources: HashSet<SocketAddr> = joined(server)?.into_iter().collect();
    assert_eq!(
        sources.len(),
        2,
        "two distinct translated sources: {sources:?}"
    );
    assert!(
        sources.contains(&SocketAddr::from((node.ip, 45000))),
        "the first keeps its port: {sources:?}"
    );
    Ok(())
}

#[test]
fn five_thousand_concurrent_flows_without_collision_or_lost_reply() -> anyhow::Result<()> {
    const FLOWS_PER_POD: usize = 2500;
    let cluster = cluster(1, 2);
    let node = &cluster.nodes[0];
    let total = FLOWS_PER_POD * node.pods.len();
    let server = external_echo(&cluster, 2 * total, 60)?;
    // Every pod opens its sockets and keeps them: all flows are tracked at once.
    let pods: Vec<_> = node
        .pods
        .iter()
        .enumerate()
        .map(|(pod_index, pod)| {
            in_netns(&pod.netns, move || {
                let sockets: Vec<UdpSocket> = (0..FLOWS_PER_POD)
                    .map(|_| UdpSocket::bind("0.0.0.0:0"))
                    .collect::<Result<_, _>>()?;
                for round in 0..2 {
                    for (index, socket) in sockets.iter().enumerate() {
                        let payload = format!("pod {pod_index} flow {index} round {round}");
                        udp_exchange(socket, echo_address(), payload.as_bytes())?;
                    }
                }
                Ok(sockets.len())
            })
        })
        .collect();
    let exchanged: usize = pods
        .into_iter()
        .map(joined)
        .sum::<anyhow::Result<usize>>()?;
    assert_eq!(exchanged, total);
    let sources: HashSet<SocketAddr> = joined(server)?.into_iter().collect();
    assert_eq!(
        sources.len(),
        total,
        "every flow has its own translated source"
    );
    let status = node.status()?;
    assert!(
        status["nat_entries"].as_u64().unwrap_or(0) >= 2 * total as u64 || {
            // The report is from the last collection; take a fresh one.
            std::thread::sleep(Duration::from_millis(1500));
            node.status()?["nat_entries"].as_u64().unwrap_or(0) >= 2 * total as u64
        }
    );
    assert_eq!(node.counter("drop_nat_exhausted")?, 0);
    assert_eq!(node.counter("drop_nat_no_mapping")?, 0);
    Ok(())
}

#[test]
fn connections_expire_after_their_timeout() -> anyhow::Result<()> {
    let mut cluster = cluster(1, 1);
    reconfigure_nat(&mut cluster.nodes[0], &["udp_timeout_seconds = 2"])?;
    let node = &cluster.nodes[0];
    let server = external_echo(&cluster, 1, 10)?;
    joined(in_netns(&node.pods[0].netns, || {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        udp_exchange(&socket, echo_address(), b"short-lived")
    }))?;
    joined(server)?;
    assert!(node.cli(&["nat", "list"])?.contains("udp"));
    std::thread::sleep(Duration::from_secs(4));
    let listed = node.cli(&["nat", "list"])?;
    assert!(
        !listed.contains("udp"),
        "still tracked after its timeout:\n{listed}"
    );
    assert!(node.status()?["nat_expired_total"].as_u64().unwrap_or(0) >= 2);
    Ok(())
}

#[test]
fn a_tiny_port_range_shows_exhaustion_instead_of_misbehaving() -> anyhow::Result<()> {
    let mut cluster = cluster(1, 1);
    // The whole range for the one pod: exhaustion of the range is the point.
    reconfigure_nat(
        &mut cluster.nodes[0],
        &[
            "port_range = \"40000-40001\"",
            "pod_port_share_percent = 100",
        ],
    )?;
    let node = &cluster.nodes[0];
    let server = external_echo(&cluster, 4, 10)?;
    let outcomes = joined(in_netns(&node.pods[0].netns, || {
        let sockets: Vec<UdpSocket> = (0..3)
            .map(|_| UdpSocket::bind("0.0.0.0:0"))
            .collect::<Result<_, _>>()?;
        let outcomes: Vec<bool> = sockets
            .iter()
            .map(|socket| udp_exchange(socket, echo_address(), b"port please").is_ok())
            .collect();
        // The connections that got a port keep working.
        udp_exchange(&sockets[0], echo_address(), b"still here")?;
        Ok(outcomes)
    }))?;
    drop(server);
    assert_eq!(outcomes, [true, true, false]);
    assert!(node.counter("drop_nat_exhausted")? >= 1);
    Ok(())
}

#[test]
fn unsolicited_inbound_to_the_nat_range_reaches_no_pod() -> anyhow::Result<()> {
    let cluster = cluster(1, 1);
    let node = &cluster.nodes[0];
    let pod = &node.pods[0];
    let received = pod.netns.ipv4_received()?;
    let node_ip = node.ip;
    joined(in_netns(&cluster.external, move || {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        for port in [40000u16, 45000, 60999] {
            socket.send_to(b"knock knock", (node_ip, port))?;
        }
        Ok(())
    }))?;
    std::thread::sleep(Duration::from_millis(200));
    assert!(node.counter("drop_nat_no_mapping")? >= 3);
    assert_eq!(pod.netns.ipv4_received()?, received);
    Ok(())
}

#[test]
fn icmp_fragmentation_needed_from_the_gateway_reaches_the_right_pod() -> anyhow::Result<()> {
    let cluster = cluster(1, 2);
    let node = &cluster.nodes[0];
    // The path beyond the gateway carries at most 1400 bytes.
    cluster.gateway.set_mtu("ext0", 1400)?;
    cluster.external.set_mtu("eth0", 1400)?;
    let (pod, other) = (&node.pods[0], &node.pods[1]);
    other.ping(EXTERNAL_HOST_IP, 1)?;

    let too_big = pod
        .netns
        .ping(EXTERNAL_HOST_IP, 3, &["-M", "do", "-s", "1422"]);
    let message = format!(
        "{:#}",
        too_big.expect_err("a 1450-byte packet crossed a 1400 path")
    );
    assert!(
        message.contains("mtu = 1400") || message.contains("mtu=1400"),
        "{message}"
    );
    let cached = pod.netns.route_to(EXTERNAL_HOST_IP)?;
    assert_eq!(cached.mtu, Some(1400), "{cached:?}");
    let untouched = other.netns.route_to(EXTERNAL_HOST_IP)?;
    assert_eq!(
        untouched.mtu, None,
        "the other pod learned it too: {untouched:?}"
    );
    // TCP adapts to the learned path MTU.
    tcp_round_trip(&cluster.external, EXTERNAL_HOST_IP, &pod.netns, 256 * 1024)?;
    Ok(())
}

#[test]
fn fragmented_datagrams_cross_the_nat_both_ways() -> anyhow::Result<()> {
    let cluster = cluster(1, 1);
    let node = &cluster.nodes[0];
    let pod = &node.pods[0];
    // 3000 bytes: pieces from the pod (MTU 1450) and from the external host
    // (1500), as large DNS answers and UDP applications produce them.
    let server = external_echo(&cluster, 2, 10)?;
    joined(in_netns(&pod.netns, || {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        let counting: Vec<u8> = (0..3000u32).map(|byte| byte as u8).collect();
        udp_exchange(&socket, echo_address(), &counting)?;
        udp_exchange(&socket, echo_address(), &[0x5a; 3000])
    }))?;
    joined(server)?;
    pod.netns.ping(EXTERNAL_HOST_IP, 3, &["-q", "-s", "3000"])?;
    // Three pieces per datagram each way, each translated.
    assert!(node.counter("masqueraded")? >= 15);
    assert!(node.counter("nat_reply_to_pod")? >= 15);
    Ok(())
}

/// Sends a TCP segment with only RST set from `from` (an address of the
/// namespace the calling thread is in) to `to`, at sequence number `seq`:
/// what an off-path host forging a peer's address sends.
fn send_reset(from: SocketAddrV4, to: SocketAddrV4, seq: u32) -> anyhow::Result<()> {
    let mut header = etherparse::TcpHeader::new(from.port(), to.port(), seq, 0);
    header.rst = true;
    header.checksum = header.calc_checksum_ipv4_raw(from.ip().octets(), to.ip().octets(), &[])?;
    let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::TCP))?;
    socket.send_to(&header.to_bytes(), &SocketAddr::V4(to).into())?;
    Ok(())
}

/// Writes `message` on `stream` and reads the echo back.
fn echoed(stream: &mut TcpStream, message: &[u8]) -> anyhow::Result<()> {
    stream.write_all(message)?;
    let mut echo = vec![0; message.len()];
    stream.read_exact(&mut echo)?;
    anyhow::ensure!(echo == message, "wrong echo {echo:?}");
    Ok(())
}

#[test]
fn a_blind_reset_does_not_end_an_idle_masqueraded_connection() -> anyhow::Result<()> {
    let mut cluster = cluster(1, 1);
    // Time at 1/360 scale: the 6 h idle timeout is 60 s, an hour 10 s, and
    // a closing connection is forgotten within 2 s. The default port range
    // (apart from the pod's own ports): a connection forgotten too early
    // comes back on another port, which the server answers with a reset.
    reconfigure_nat(
        &mut cluster.nodes[0],
        &[
            "port_range = \"61000-65535\"",
            "tcp_established_timeout_seconds = 60",
            "tcp_closing_timeout_seconds = 1",
            "gc_interval_seconds = 1",
        ],
    )?;
    let node = &cluster.nodes[0];
    let listener = joined(in_netns(&cluster.external, || {
        Ok(TcpListener::bind((EXTERNAL_HOST_IP, 0))?)
    }))?;
    let SocketAddr::V4(server) = listener.local_addr()? else {
        unreachable!()
    };
    // One connection, echoed until it ends; yields its peer.
    let echo = std::thread::spawn(move || -> anyhow::Result<SocketAddr> {
        let (mut stream, peer) = listener.accept()?;
        let mut buffer = [0; 256];
        loop {
            match stream.read(&mut buffer)? {
                0 => return Ok(peer),
                length => stream.write_all(&buffer[..length])?,
            }
        }
    });
    let mut client = joined(in_netns(&node.pods[0].netns, move || {
        let stream = TcpStream::connect(server)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(stream)
    }))?;
    echoed(&mut client, b"before")?;
    let listed = node.cli(&["nat", "list"])?;
    let translated = listed
        .lines()
        .filter(|line| line.contains("tcp") && line.contains(&server.to_string()))
        .find_map(|line| {
            line.split_whitespace()
                .filter_map(|field| field.parse::<SocketAddrV4>().ok())
                .find(|address| *address.ip() == node.ip)
        })
        .with_context(|| format!("the connection's node address in:\n{listed}"))?;

    let seq = RandomState::new().hash_one(translated) as u32;
    joined(in_netns(&cluster.external, move || {
        send_reset(server, translated, seq)
    }))?;
    std::thread::sleep(Duration::from_secs(10));
    echoed(&mut client, b"after an idle hour")
        .with_context(|| format!("after a reset at sequence {seq}"))?;
    drop(client);
    let peer = joined(echo)?;
    assert_eq!(peer, SocketAddr::V4(translated));
    assert!(node.counter("nat_close_ignored")? >= 1);
    Ok(())
}

/// Opens one UDP flow per source port in `ports` to `destination`, one
/// datagram each, without waiting for answers.
fn flood(pod: &Netns, ports: std::ops::Range<u16>, destination: SocketAddr) -> anyhow::Result<()> {
    joined(in_netns(pod, move || {
        for port in ports {
            UdpSocket::bind(("0.0.0.0", port))?.send_to(b"flood", destination)?;
        }
        Ok(())
    }))
}

#[test]
fn a_flooding_pod_leaves_other_pods_their_new_connections() -> anyhow::Result<()> {
    let mut cluster = cluster(1, 2);
    // The default port range (4,536 ports), half of them per pod toward one
    // destination; 2% of the table (2,621 connections) per pod, so that the
    // table share shows within a test's time.
    reconfigure_nat(
        &mut cluster.nodes[0],
        &[
            "port_range = \"61000-65535\"",
            "pod_port_share_percent = 50",
            "pod_table_share_percent = 2",
        ],
    )?;
    let node = &cluster.nodes[0];
    let (flooder, neighbour) = (&node.pods[0], &node.pods[1]);
    let other_destination = SocketAddr::from((EXTERNAL_HOST_IP, ECHO_PORT + 1));
    let echo = external_echo(&cluster, 100_000, 30)?;
    let _other_echo = udp_echo_server(
        &cluster.external,
        EXTERNAL_HOST_IP,
        ECHO_PORT + 1,
        100_000,
        Duration::from_secs(30),
    )?;
    // More flows to one destination than the range has ports, then more to
    // another than its share of the table leaves.
    flood(&flooder.netns, 20_000..26_000, echo_address())?;
    flood(&flooder.netns, 30_000..31_000, other_destination)?;

    // The neighbour's new connections to both destinations.
    let started = std::time::Instant::now();
    let failed = joined(in_netns(&neighbour.netns, move || {
        let mut failed = 0;
        for destination in [echo_address(), other_destination] {
            for _ in 0..200 {
                let socket = UdpSocket::bind("0.0.0.0:0")?;
                // Sent again once, as a client retransmits: a first packet's
                // bounded port search may miss the free ports among the
                // taken ones now and then; the next one searches afresh.
                let answered =
                    (0..2).any(|_| udp_exchange(&socket, destination, b"new connection").is_ok());
                if !answered {
                    failed += 1;
                }
            }
        }
        Ok(failed)
    }))?;
    let rate = 400.0 / started.elapsed().as_secs_f64();
    let listed = node.cli(&["map", "get", "nat", &flooder.ip.to_string()])?;
    let flooder_row = listed
        .lines()
        .find(|line| {
            line.starts_with(&flooder.ip.to_string()) && line.split_whitespace().count() == 8
        })
        .with_context(|| format!("the flooder's share in:\n{listed}"))?
        .to_string();
    println!(
        "neighbour: 400 new connections during the flood at {rate:.0}/s, {failed} failed; \
         flooder (pod, connections, limit, opened, evicted, refused share/ports/full):\n{flooder_row}"
    );
    drop(echo);
    assert_eq!(failed, 0);
    let fields: Vec<u64> = flooder_row
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let [
        connections,
        limit,
        _opened,
        evicted,
        refused_share,
        refused_ports,
        _full,
    ] = fields[..]
    else {
        anyhow::bail!("{flooder_row}")
    };
    assert_eq!(limit, 2621);
    assert!(connections <= limit, "{flooder_row}");
    // Beyond its share of the ports toward the first destination, each
    // new flow either took the port of one of its own that was never
    // established (answered once, never spoken in again) or was refused.
    assert!(evicted + refused_ports >= 6000 - 2400, "{flooder_row}");
    assert!(refused_share > 0, "{flooder_row}");
    assert!(node.counter("drop_nat_exhausted")? >= refused_ports);
    assert!(node.counter("drop_nat_pod_share")? >= refused_share);
    Ok(())
}
