//! What floods from outside and from hostile pods leave legitimate clients,
//! end to end on pods from the real `ptp` chain: an off-path host spoofing
//! SYNs from random addresses at a node port, and two pods sending bare
//! SYNs to an outside host's every port, each at the highest rate one
//! thread sends, for 30 s. Meanwhile and afterwards, without a restart, a
//! pod opens connections to the outside, an outside client to the node
//! port and a pod to the ClusterIP. And slow clients holding connections
//! to a health check port while a load balancer probes it.

use std::{
    io::Write as _,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use aya::maps::{HashMap, Map, MapData};
use dataplane_common::{Ipv4Octets, MAP_LAYOUT_VERSION, PodNat, names};
use dataplane_tests::{
    Cluster, ClusterSpec, Netns,
    cluster::EXTERNAL_HOST_IP,
    cni::MainPlugin,
    traffic::{EchoServers, SynFlood, echo_once, http_get, in_netns, joined},
};
use ipnetwork::Ipv4Network;

const FLOOD: Duration = Duration::from_secs(30);
/// Legitimate connections of each kind, during the flood and after it.
const ATTEMPTS: u32 = 100;
/// A client's patience: its SYN is retransmitted once within it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const NODE_PORT: u16 = 30080;
const BACKEND_PORT: u16 = 8080;
const OUTSIDE_PORT: u16 = 80;

/// Successes of each kind of legitimate connection, in `legit`'s order,
/// `ATTEMPTS` rounds at least `spacing` apart.
fn attempts(legit: &[(&str, &Netns, SocketAddr)], spacing: Duration) -> Vec<u32> {
    let mut succeeded = vec![0; legit.len()];
    for _ in 0..ATTEMPTS {
        let round = Instant::now();
        for (kind, (name, netns, address)) in legit.iter().enumerate() {
            match echo_once(netns, *address, CONNECT_TIMEOUT) {
                Ok(()) => succeeded[kind] += 1,
                Err(error) => eprintln!("{name}: {error:#}"),
            }
        }
        thread::sleep(spacing.saturating_sub(round.elapsed()));
    }
    succeeded
}

/// The rows of the node's NAT accounting map.
fn nat_rows(cluster: &Cluster) -> anyhow::Result<usize> {
    let path = cluster.nodes[0]
        .bpf_root()?
        .join(format!("v{MAP_LAYOUT_VERSION}"))
        .join(names::POD_NAT_MAP);
    let rows: HashMap<MapData, Ipv4Octets, PodNat> =
        HashMap::try_from(Map::HashMap(MapData::from_pin(path)?))?;
    Ok(rows.keys().count())
}

#[test]
fn legitimate_clients_keep_connecting_through_spoofed_syn_floods() -> anyhow::Result<()> {
    let cluster = Cluster::new(ClusterSpec::dataplane(1, 4).with_real_plugin(MainPlugin::Ptp))?;
    let node = &cluster.nodes[0];
    let [backend, hostile_a, hostile_b, client] = [0, 1, 2, 3].map(|index| &node.pods[index]);
    node.cli(&[
        "service",
        "add",
        "--name",
        "default/web",
        "--ip",
        &CLUSTER_IP.to_string(),
        "--port",
        &format!("80/tcp:{NODE_PORT}={}:{BACKEND_PORT}", backend.ip),
    ])?;
    let _backend = EchoServers::start(&backend.netns, backend.ip, [BACKEND_PORT], 4, None)?;
    let _outside =
        EchoServers::start(&cluster.external, EXTERNAL_HOST_IP, [OUTSIDE_PORT], 4, None)?;
    let legit = [
        (
            "egress",
            &client.netns,
            SocketAddr::from((EXTERNAL_HOST_IP, OUTSIDE_PORT)),
        ),
        (
            "node port",
            &cluster.external,
            SocketAddr::from((node.ip, NODE_PORT)),
        ),
        (
            "ClusterIP",
            &client.netns,
            SocketAddr::from((CLUSTER_IP, 80)),
        ),
    ];
    for (name, netns, address) in &legit {
        echo_once(netns, *address, CONNECT_TIMEOUT)
            .map_err(|error| error.context(format!("{name} before the flood")))?;
    }

    let spoofed = SynFlood {
        interface: "eth0",
        next_hop_mac: node.netns.mac_of("eth0")?.into_array(),
        sources: Ipv4Network::new(Ipv4Addr::new(100, 64, 0, 0), 10)?,
        destination: node.ip,
        ports: NODE_PORT..=NODE_PORT,
        duration: FLOOD,
    }
    .start(&cluster.gateway)?;
    let mut from_pods = Vec::new();
    for pod in [hostile_a, hostile_b] {
        from_pods.push(
            SynFlood {
                interface: "eth0",
                next_hop_mac: node.netns.mac_of(&pod.host_interface)?.into_array(),
                sources: Ipv4Network::new(pod.ip, 32)?,
                destination: EXTERNAL_HOST_IP,
                ports: 1..=65535,
                duration: FLOOD,
            }
            .start(&pod.netns)?,
        );
    }
    let during = attempts(&legit, FLOOD / ATTEMPTS);
    let spoofed_sent = joined(spoofed)?;
    let pods_sent: Vec<u64> = from_pods
        .into_iter()
        .map(joined)
        .collect::<Result<_, _>>()?;
    let counters = node.counters()?;
    let after = attempts(&legit, Duration::ZERO);
    let rows = nat_rows(&cluster)?;

    let seconds = FLOOD.as_secs();
    eprintln!(
        "flood: {spoofed_sent} spoofed SYNs at the node port ({}/s), {pods_sent:?} from the \
         two pods ({:?}/s); legitimate connections of {:?} out of {ATTEMPTS}: {during:?} \
         during, {after:?} after; NAT rows {rows}; counters: {:?}",
        spoofed_sent / seconds,
        pods_sent
            .iter()
            .map(|sent| sent / seconds)
            .collect::<Vec<_>>(),
        legit.map(|(name, _, _)| name),
        [
            "nat_evicted",
            "drop_nat_pod_share",
            "drop_nat_table_full",
            "drop_nat_exhausted",
            "masqueraded",
        ]
        .map(|name| (name, counters.get(name).copied().unwrap_or(0))),
    );
    assert!(
        spoofed_sent > 100_000 && pods_sent.iter().all(|sent| *sent > 100_000),
        "the floods were floods"
    );
    assert!(counters["nat_evicted"] > 0, "the floods filled the table");
    for (name, (during, after)) in legit
        .iter()
        .map(|kind| kind.0)
        .zip(during.iter().zip(&after))
    {
        assert!(
            *during >= ATTEMPTS - 1 && *after >= ATTEMPTS - 1,
            "{name}: {during} during, {after} after"
        );
    }
    // Spoofed sources made no rows: the node's pods and one for outside clients.
    assert!(rows <= node.pods.len() + 1, "{rows} NAT rows");
    Ok(())
}

#[test]
fn slow_clients_keep_no_load_balancer_probe_from_a_health_check_port() -> anyhow::Result<()> {
    let cluster = Cluster::new(ClusterSpec::dataplane(1, 1))?;
    let node = &cluster.nodes[0];
    node.cli(&[
        "service",
        "add",
        "--name",
        "default/lb",
        "--ip",
        &CLUSTER_IP.to_string(),
        "--port",
        &format!("80/tcp:{NODE_PORT}={}:{BACKEND_PORT}", node.pods[0].ip),
        "--external-traffic-local",
        "--health-check-node-port",
        "32000",
    ])?;
    let check = SocketAddr::from((node.ip, 32000));
    assert_eq!(http_get(&cluster.gateway, check, "/")?.0, 200);
    // An outside host opens 64 connections and sends each the start of a
    // request, never its end, for as long as the probes run.
    let hold = Duration::from_secs(8);
    let slow = in_netns(&cluster.external, move || {
        let mut held = Vec::new();
        for _ in 0..64 {
            if let Ok(mut stream) = TcpStream::connect_timeout(&check, Duration::from_secs(1)) {
                let _ = stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n");
                held.push(stream);
            }
        }
        thread::sleep(hold);
        Ok(held.len())
    });
    thread::sleep(Duration::from_millis(500));
    // A load balancer's probes, from another host, every half second.
    let mut answered = 0;
    let started = Instant::now();
    for _ in 0..12 {
        let probe = Instant::now();
        if http_get(&cluster.gateway, check, "/").is_ok_and(|(status, _)| status == 200)
            && probe.elapsed() < Duration::from_secs(1)
        {
            answered += 1;
        }
        thread::sleep(Duration::from_millis(500).saturating_sub(probe.elapsed()));
    }
    assert!(
        started.elapsed() < hold,
        "the probes ran while the connections were held"
    );
    let opened = joined(slow)?;
    assert!(opened > 0);
    assert_eq!(answered, 12, "probes answered within a second");
    Ok(())
}
