//! Upgrades across a map layout change: nodes run the previous layout's
//! build (`cargo xtask test` builds it from git), then the build under test
//! is started on them one after the other while connections of every kind
//! keep exchanging.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use aya::maps::{HashMap, MapData};
use dataplane_common::{FlowKey, MAP_LAYOUT_VERSION, NatEntry, nat_direction};
use dataplane_tests::{
    Cluster, ClusterSpec, Forwarding, MainPlugin, Netns, Node,
    cluster::{Build, EXTERNAL_HOST_IP},
    eventually, ipv6,
    kube_api::Resource,
    netpol::{self, PROBE_TIMEOUT, WATCH_TIMEOUT, followed_node},
    traffic::{EchoServers, Steady, UdpEcho, echo_once, joined, steady_tcp, steady_udp},
};
use dataplane_user::{
    maps::table::open_pinned,
    nat::monotonic_now_ns,
    upgrade::{FROM_VERSION, PreviousNatEntry, previous_nat_connection},
};
use nix::sys::signal::Signal;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 50);
const ECHO_PORT: u16 = 8080;
const EXTERNAL_PORT: u16 = 9000;
const NODE_PORT: u16 = 30053;
const UDP_PORT: u16 = 5353;

/// Established connections of `netns` served on `ECHO_PORT`.
fn served(netns: &Netns) -> anyhow::Result<usize> {
    let listed = netns.exec(&[
        "ss",
        "-Htn",
        "state",
        "established",
        &format!("( sport = :{ECHO_PORT} )"),
    ])?;
    Ok(listed
        .lines()
        .filter(|line| !line.trim().is_empty())
        .count())
}

/// What the operator compares: the node's endpoints, nodes and Services,
/// as the build under test's CLI lists them (before the upgrade too).
fn listings(node: &Node) -> anyhow::Result<Vec<String>> {
    [["endpoint", "list"], ["node", "list"], ["service", "list"]]
        .iter()
        .map(|args| node.cli_as(Build::Current, args))
        .collect()
}

fn pin_dir(node: &Node, version: u32) -> anyhow::Result<std::path::PathBuf> {
    Ok(node.bpf_root()?.join(format!("v{version}")))
}

#[test]
fn upgrading_both_nodes_across_a_map_layout_change_keeps_every_connection() -> anyhow::Result<()> {
    let mut cluster = Cluster::new(
        ClusterSpec::dataplane(2, 2)
            .with_real_plugin(MainPlugin::Ptp)
            .starting_as(Build::PreviousLayout),
    )?;
    // IPv6 on every pod too, through the previous build's API.
    ipv6::wire_pods(&cluster, Forwarding::Dataplane)?;
    let remote_ipv6 = ipv6::pod_ip6(1, 1);
    // Taken out of the nodes, which are upgraded under them (dropped
    // before the cluster all the same).
    let (here, there) = (
        std::mem::take(&mut cluster.nodes[0].pods),
        std::mem::take(&mut cluster.nodes[1].pods),
    );
    let (client, near, far, remote) = (&here[0], &here[1], &there[0], &there[1]);
    let _echo = [
        EchoServers::start(&near.netns, near.ip, [ECHO_PORT], 8, None)?,
        EchoServers::start(&far.netns, far.ip, [ECHO_PORT], 8, None)?,
        EchoServers::start(&remote.netns, remote.ip, [ECHO_PORT], 2, None)?,
        EchoServers::start(&remote.netns, remote_ipv6, [ECHO_PORT], 2, None)?,
        EchoServers::start(
            &cluster.external,
            EXTERNAL_HOST_IP,
            [EXTERNAL_PORT],
            2,
            None,
        )?,
    ];
    let _udp_echo = UdpEcho::start(&far.netns, SocketAddrV4::new(far.ip, UDP_PORT))?;
    // From the config file, the source that names them across restarts.
    let service = format!(
        "\n[[services]]\nname = \"default/upgrade\"\nip = \"{VIP}\"\n\
         session_affinity_seconds = 600\nports = [\n\
         {{ port = 80, backends = [\"{}:{ECHO_PORT}\", \"{}:{ECHO_PORT}\"] }},\n\
         {{ port = 53, protocol = \"udp\", node_port = {NODE_PORT}, \
         backends = [\"{}:{UDP_PORT}\"] }},\n]\n",
        near.ip, far.ip, far.ip
    );
    for node in &cluster.nodes {
        let config = std::fs::read_to_string(&node.config)?;
        std::fs::write(&node.config, config + &service)?;
        node.signal_agent(Signal::SIGHUP)?;
    }
    for node in &cluster.nodes {
        assert!(
            eventually(Duration::from_secs(10), || {
                Ok(node.cli(&["service", "list"])?.contains("default/upgrade"))
            })?,
            "the config file's Service is not served: {}",
            node.agent_log()
        );
    }
    let vip = SocketAddr::from((VIP, 80));

    let stop = Arc::new(AtomicBool::new(false));
    let before_backends = [served(&near.netns)?, served(&far.netns)?];
    let flows = [
        (
            "egress TCP (SNAT)",
            steady_tcp(
                &client.netns,
                SocketAddr::from((EXTERNAL_HOST_IP, EXTERNAL_PORT)),
                stop.clone(),
            )?,
        ),
        (
            "ClusterIP TCP with affinity",
            steady_tcp(&client.netns, vip, stop.clone())?,
        ),
        (
            "pod to pod across nodes",
            steady_tcp(
                &client.netns,
                SocketAddr::from((remote.ip, ECHO_PORT)),
                stop.clone(),
            )?,
        ),
        (
            "pod to pod across nodes over IPv6",
            steady_tcp(
                &client.netns,
                SocketAddr::from((remote_ipv6, ECHO_PORT)),
                stop.clone(),
            )?,
        ),
        (
            "UDP from outside through a node port",
            steady_udp(
                &cluster.external,
                SocketAddr::from((cluster.nodes[0].ip, NODE_PORT)),
                stop.clone(),
            ),
        ),
    ];
    let after_connect = [served(&near.netns)?, served(&far.netns)?];
    let chosen = usize::from(after_connect[1] > before_backends[1]);
    std::thread::sleep(Duration::from_millis(500));
    let listed_before: Vec<Vec<String>> = cluster
        .nodes
        .iter()
        .map(listings)
        .collect::<anyhow::Result<_>>()?;

    let mut without_agent = Vec::new();
    for node in &mut cluster.nodes {
        without_agent.push(node.upgrade_agent()?);
        std::thread::sleep(Duration::from_secs(1));
    }
    stop.store(true, Ordering::Relaxed);
    let mut steady: Vec<(&str, Steady)> = Vec::new();
    for (name, flow) in flows {
        steady.push((name, joined(flow)?));
    }

    let mut longest = Duration::ZERO;
    for (name, flow) in &steady {
        println!(
            "{name}: {} answers, longest gap {:?}, {} datagrams unanswered",
            flow.answered, flow.longest_gap, flow.unanswered
        );
        longest = longest.max(flow.longest_gap);
    }
    println!(
        "upgrade v{FROM_VERSION} -> v{MAP_LAYOUT_VERSION} of both nodes: longest forwarding gap \
         {longest:?} (requests every 10 ms); agents down for {without_agent:?}"
    );
    for (name, flow) in &steady {
        assert_eq!(flow.error, None, "{name} broke");
        assert_eq!(flow.unanswered, 0, "{name} lost datagrams");
        assert!(flow.answered > 100, "{name}: {flow:?}");
    }
    // Affinity carried: new connections from the client keep its backend.
    let landed_before = [served(&near.netns)?, served(&far.netns)?];
    let held = joined(dataplane_tests::traffic::in_netns(
        &client.netns,
        move || {
            let mut held = Vec::new();
            for _ in 0..6 {
                held.push(std::net::TcpStream::connect_timeout(
                    &vip,
                    Duration::from_secs(5),
                )?);
            }
            std::thread::sleep(Duration::from_millis(200));
            Ok(held)
        },
    ))?;
    let landed = [served(&near.netns)?, served(&far.netns)?];
    drop(held);
    assert_eq!(
        landed[chosen] - landed_before[chosen],
        6,
        "new connections left the backend of the client's affinity ({landed_before:?} -> {landed:?})"
    );

    for (node, before) in cluster.nodes.iter().zip(&listed_before) {
        assert_eq!(&listings(node)?, before, "what the agent lists changed");
        let log = node.agent_log();
        assert!(
            log.contains("carried the previous map layout's state"),
            "{log}"
        );
        assert!(
            !log.contains("not carried"),
            "state was lost in the upgrade: {log}"
        );
        assert!(
            !pin_dir(node, FROM_VERSION)?.exists(),
            "the previous layout's pins are left"
        );
    }
    Ok(())
}

/// Reads the `took_ms` of the log's first carrying line.
fn carrying_took_ms(log: &str) -> Option<f64> {
    let line = log
        .lines()
        .find(|line| line.contains("carried the previous map layout's state"))?;
    line.split_whitespace()
        .find_map(|field| field.strip_prefix("took_ms="))?
        .parse()
        .ok()
}

#[test]
fn a_hundred_thousand_connections_of_the_previous_layout_are_carried() -> anyhow::Result<()> {
    const CONNECTIONS: u32 = 100_000;
    let mut cluster = Cluster::new(
        ClusterSpec::dataplane(1, 1)
            .with_real_plugin(MainPlugin::Ptp)
            .starting_as(Build::PreviousLayout),
    )?;
    let node = &mut cluster.nodes[0];
    node.stop_agent(Signal::SIGTERM);
    let node_ip = node.ip.octets();
    let now = monotonic_now_ns();
    let path = pin_dir(node, FROM_VERSION)?.join("NAT");
    let mut old: HashMap<MapData, FlowKey, PreviousNatEntry> = open_pinned(&path)?;
    let filling = Instant::now();
    for index in 0..CONNECTIONS {
        let egress = FlowKey {
            src: [10, 244, 0, 2 + (index % 200) as u8],
            dst: [198, 51, 100, 1 + (index / 20_000) as u8],
            src_port: (1024 + (index / 200) as u16).to_be_bytes(),
            dst_port: 80u16.to_be_bytes(),
            protocol: 6,
            direction: nat_direction::EGRESS,
            _pad: [0; 2],
        };
        let node_port = (40_000 + (index % 20_000) as u16).to_be_bytes();
        for (key, half) in previous_nat_connection(egress, node_ip, node_port, now) {
            old.insert(key, half, 0)?;
        }
    }
    println!(
        "{CONNECTIONS} connections pinned in v{FROM_VERSION} in {:?}",
        filling.elapsed()
    );

    node.upgrade_agent()?;
    let new: HashMap<MapData, FlowKey, NatEntry> =
        open_pinned(&pin_dir(node, MAP_LAYOUT_VERSION)?.join("NAT"))?;
    let halves = new.keys().filter(Result::is_ok).count();
    let log = node.agent_log();
    let took = carrying_took_ms(&log);
    println!(
        "carried {halves} NAT halves ({CONNECTIONS} connections) from v{FROM_VERSION} to \
         v{MAP_LAYOUT_VERSION}: the whole state in {took:?} ms"
    );
    assert!(
        halves >= 2 * CONNECTIONS as usize,
        "{halves} halves carried"
    );
    assert!(took.is_some(), "{log}");
    assert!(!log.contains("not carried"), "{log}");
    // Carried as established: the agent lists them, none expired.
    let listed = node.cli(&["nat", "list"])?;
    assert!(
        listed.contains("198.51.100.5:80"),
        "{}",
        &listed[..listed.len().min(2000)]
    );
    Ok(())
}

#[test]
fn an_isolated_pod_stays_isolated_across_the_upgrade_with_its_api_server_gone() -> anyhow::Result<()>
{
    let (mut cluster, api, kubeconfig) = followed_node(
        ClusterSpec::dataplane(1, 3)
            .with_real_plugin(MainPlugin::Ptp)
            .starting_as(Build::PreviousLayout),
        &["x"],
    )?;
    let pods = std::mem::take(&mut cluster.nodes[0].pods);
    let node = &mut cluster.nodes[0];
    for (name, pod) in ["a", "b", "c"].iter().zip(&pods) {
        api.apply(Resource::Pods, netpol::pod("x", name, pod.ip));
    }
    let (a, b, c) = (&pods[0], &pods[1], &pods[2]);
    let _echo = EchoServers::start(&a.netns, a.ip, [ECHO_PORT], 4, None)?;
    node.follow_kubernetes(&kubeconfig, "")?;
    // One port: an entry of v13's trie, of v14's POLICY_PORTS.
    api.apply(
        Resource::NetworkPolicies,
        netpol::a_takes(
            "from-c",
            serde_json::json!([{"from": [{"podSelector": {"matchLabels": {"pod": "c"}}}],
                                "ports": [{"protocol": "TCP", "port": ECHO_PORT}]}]),
        ),
    );
    let to_a = SocketAddr::from((a.ip, ECHO_PORT));
    let enforced = || {
        Ok(echo_once(&b.netns, to_a, PROBE_TIMEOUT).is_err()
            && echo_once(&c.netns, to_a, PROBE_TIMEOUT).is_ok())
    };
    assert!(
        eventually(WATCH_TIMEOUT, enforced)?,
        "the previous layout's agent does not enforce the policy: {}",
        node.agent_log()
    );

    // The new agent starts with no source of policy: only what was pinned
    // can hold x/a's isolation, from the first packet its programs see.
    drop(api);
    let stop = Arc::new(AtomicBool::new(false));
    let allowed = steady_tcp(&c.netns, to_a, stop.clone())?;
    let (attempts, through) = std::thread::scope(|scope| {
        let prober = scope.spawn(|| {
            let (mut attempts, mut through) = (0, 0);
            while !stop.load(Ordering::Relaxed) {
                attempts += 1;
                if echo_once(&b.netns, to_a, Duration::from_millis(200)).is_ok() {
                    through += 1;
                }
            }
            (attempts, through)
        });
        let upgraded = node.upgrade_agent();
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::Relaxed);
        upgraded.map(|_| prober.join().expect("the prober never panics"))
    })?;
    let allowed = joined(allowed)?;
    println!(
        "x/b's {attempts} attempts through the upgrade: {through} reached x/a; x/c's connection: {allowed:?}"
    );
    assert_eq!(through, 0, "x/a was open during the upgrade");
    assert!(attempts >= 5, "{attempts} attempts");
    assert_eq!(allowed.error, None, "x/c's allowed connection broke");
    assert!(allowed.answered > 100, "{allowed:?}");
    assert!(enforced()?, "not enforced after the upgrade");
    let log = node.agent_log();
    assert!(
        log.contains("carried the previous map layout's state"),
        "{log}"
    );
    assert!(!log.contains("not carried"), "{log}");
    Ok(())
}
