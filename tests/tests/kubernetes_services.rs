// Above 400 lines: each file under tests/ is a binary of its own; the upstream cases over one API server fixture.
//! Services as kube-proxy does them, driven the way a cluster drives them:
//! Service and EndpointSlice objects from a Kubernetes API server (a local
//! one speaking real Kubernetes JSON), pods made by the real `ptp` plugin,
//! IPv6 left on. Named after the upstream e2e `[sig-network] Services`
//! cases where there is one: rolling updates drain, terminating endpoints
//! serve where nothing is ready, one tenant's objects never hold up the
//! others, rejections reach outside clients, labels kube-proxy honours.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use aya::maps::{HashMap, Map, MapData};
use dataplane_common::{FlowKey, MAP_LAYOUT_VERSION, MAX_SERVICE_FLOWS, ServiceFlow, names};
use dataplane_tests::{
    Cluster, ClusterSpec, Netns, NextHop,
    cluster::{Node, Pod},
    cni::MainPlugin,
    eventually,
    kube_api::{FakeApiServer, Resource},
    traffic::{EchoServers, http_get, in_netns, joined, udp_echo_server},
};
use ipnetwork::Ipv4Network;
use serde_json::{Value, json};

/// How long a change in the API may take to reach the maps.
const WATCH_TIMEOUT: Duration = Duration::from_secs(10);
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const BACKEND_PORT: u16 = 8080;

/// One node whose agent follows a Kubernetes API server, `pods` pods from
/// the real `ptp` chain.
struct Lab {
    cluster: Cluster,
    api: FakeApiServer,
}

impl Lab {
    /// `nat` is more of the config's `[nat]` section.
    fn new(pods: usize, nat: &str) -> anyhow::Result<Self> {
        let mut cluster =
            Cluster::new(ClusterSpec::dataplane(1, pods).with_real_plugin(MainPlugin::Ptp))?;
        let kubeconfig: PathBuf = cluster.workdir().join("kubeconfig");
        let node = &mut cluster.nodes[0];
        let api = FakeApiServer::start(&node.netns)?;
        api.write_kubeconfig(&kubeconfig)?;
        api.apply_node("n0", node.ip, &node.pod_cidr.to_string());
        node.follow_kubernetes(&kubeconfig, nat)?;
        Ok(Self { cluster, api })
    }

    fn node(&self) -> &Node {
        &self.cluster.nodes[0]
    }

    fn pod(&self, index: usize) -> &Pod {
        &self.node().pods[index]
    }

    /// Waits until `map list services` satisfies `wanted`.
    fn until_programmed(&self, wanted: impl Fn(&str) -> bool) -> anyhow::Result<()> {
        let node = self.node();
        let programmed = eventually(WATCH_TIMEOUT, || {
            Ok(wanted(&node.cli(&["map", "list", "services"])?))
        })?;
        anyhow::ensure!(
            programmed,
            "not programmed in {WATCH_TIMEOUT:?}: {}\n{}",
            node.cli(&["map", "list", "services"])?,
            node.agent_log()
        );
        Ok(())
    }
}

/// Service `namespace/name` at `cluster_ip`, port 80/tcp to the target
/// port named "http"; `extra` merged into its `spec` and `metadata`.
fn service(namespace: &str, name: &str, cluster_ip: Ipv4Addr, extra: Value) -> Value {
    let mut object = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace,
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"type": "ClusterIP", "clusterIP": cluster_ip.to_string(),
                 "clusterIPs": [cluster_ip.to_string()],
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP",
                            "targetPort": "http"}]},
    });
    for part in ["metadata", "spec"] {
        if let Some(fields) = extra.get(part).and_then(Value::as_object) {
            for (key, value) in fields {
                object[part][key] = value.clone();
            }
        }
    }
    object
}

/// An endpoint's conditions as a slice states them.
#[derive(Clone, Copy)]
enum Condition {
    Ready,
    /// Serving and terminating (graceful termination under way).
    Terminating,
}

/// The EndpointSlice of Service `namespace/name`: each address at port 8080.
fn slice(namespace: &str, name: &str, endpoints: &[(Ipv4Addr, Condition)]) -> Value {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(ip, condition)| {
            let (ready, terminating) = match condition {
                Condition::Ready => (true, false),
                Condition::Terminating => (false, true),
            };
            json!({"addresses": [ip.to_string()],
                   "conditions": {"ready": ready, "serving": true, "terminating": terminating}})
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": format!("{name}-a"), "namespace": namespace,
                     "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": BACKEND_PORT, "protocol": "TCP"}],
    })
}

/// Established TCP connections to port 8080 in `netns`.
fn connections_served(netns: &Netns) -> anyhow::Result<usize> {
    let listed = netns.exec(&["ss", "-Htn", "state", "established", "( sport = :8080 )"])?;
    Ok(listed
        .lines()
        .filter(|line| !line.trim().is_empty())
        .count())
}

/// 64-byte requests, answered by `EchoServers` with the same bytes (never
/// its last-request pattern).
const REQUEST: [u8; 64] = [1; 64];

/// One request/answer over `stream`.
fn exchange(stream: &mut TcpStream) -> std::io::Result<()> {
    use std::io::{Read as _, Write as _};
    stream.write_all(&REQUEST)?;
    let mut answer = [0; 64];
    stream.read_exact(&mut answer)?;
    if answer != REQUEST {
        return Err(std::io::Error::other("a wrong answer"));
    }
    Ok(())
}

/// What one streaming connection did: its exchanges, its first error.
type Streamed = (usize, Option<String>);

/// `count` connections from `client` to `frontend` that each exchange a
/// request every 20 ms until `stop`.
fn streaming_clients(
    client: &Netns,
    frontend: SocketAddr,
    count: usize,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<anyhow::Result<Vec<Streamed>>> {
    in_netns(client, move || {
        let mut streams = Vec::new();
        for _ in 0..count {
            let stream = TcpStream::connect_timeout(&frontend, Duration::from_secs(5))?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            stream.set_nodelay(true)?;
            streams.push((stream, 0usize, None));
        }
        while !stop.load(Ordering::Relaxed) {
            for (stream, exchanges, failed) in &mut streams {
                if failed.is_none() {
                    match exchange(stream) {
                        Ok(()) => *exchanges += 1,
                        Err(error) => *failed = Some(format!("after {exchanges}: {error}")),
                    }
                }
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(streams
            .into_iter()
            .map(|(_, exchanges, failed)| (exchanges, failed))
            .collect())
    })
}

/// Opens `count` new connections from `client` to `frontend`, each
/// answered once, and counts where they landed: the increase of each of
/// `servers`' established connections while they are open.
fn where_new_connections_land(
    client: &Netns,
    frontend: SocketAddr,
    count: usize,
    servers: &[&Pod],
) -> anyhow::Result<Vec<usize>> {
    let before: Vec<usize> = servers
        .iter()
        .map(|pod| connections_served(&pod.netns))
        .collect::<anyhow::Result<_>>()?;
    let held = joined(in_netns(client, move || {
        let mut held = Vec::new();
        for _ in 0..count {
            let mut stream = TcpStream::connect_timeout(&frontend, Duration::from_secs(5))?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            exchange(&mut stream)?;
            held.push(stream);
        }
        Ok(held)
    }))?;
    let after: Vec<usize> = servers
        .iter()
        .map(|pod| connections_served(&pod.netns))
        .collect::<anyhow::Result<_>>()?;
    drop(held);
    Ok(after
        .iter()
        .zip(before)
        .map(|(after, before)| after.saturating_sub(before))
        .collect())
}

#[test]
fn a_rolling_update_resets_no_connection_and_new_ones_reach_only_ready_endpoints()
-> anyhow::Result<()> {
    // A Deployment's rolling update as the EndpointSlice controller shows
    // it: a new pod gets ready, an old one turns serving+terminating, then
    // goes; twice. Graceful termination relies on kube-proxy's keeping the
    // connections of departed endpoints.
    let lab = Lab::new(5, "")?;
    let pods: Vec<&Pod> = (0..5).map(|index| lab.pod(index)).collect();
    let (client, old, new) = (pods[0], [pods[1], pods[2]], [pods[3], pods[4]]);
    let _servers: Vec<EchoServers> = pods[1..]
        .iter()
        .map(|pod| EchoServers::start(&pod.netns, pod.ip, [BACKEND_PORT], 24, None))
        .collect::<anyhow::Result<_>>()?;
    let backend = |pod: &Pod| format!("{}:{BACKEND_PORT}", pod.ip);
    lab.api.apply(
        Resource::Services,
        service("shop", "web", CLUSTER_IP, json!({})),
    );
    let apply = |endpoints: &[(&Pod, Condition)]| {
        let endpoints: Vec<(Ipv4Addr, Condition)> = endpoints
            .iter()
            .map(|(pod, condition)| (pod.ip, *condition))
            .collect();
        lab.api
            .apply(Resource::EndpointSlices, slice("shop", "web", &endpoints));
    };
    use Condition::{Ready, Terminating};
    apply(&[(old[0], Ready), (old[1], Ready)]);
    lab.until_programmed(|map| map.contains(&backend(old[0])) && map.contains(&backend(old[1])))?;

    let frontend = SocketAddr::from((CLUSTER_IP, 80));
    let long_lived = 8;
    let stop = Arc::new(AtomicBool::new(false));
    let streams = streaming_clients(&client.netns, frontend, long_lived, Arc::clone(&stop));
    thread::sleep(Duration::from_millis(500));

    let all = [old[0], old[1], new[0], new[1]];
    for (step, (leaving, arriving)) in [(old[0], new[0]), (old[1], new[1])].into_iter().enumerate()
    {
        let staying = if step == 0 { old[1] } else { new[0] };
        apply(&[(leaving, Ready), (staying, Ready), (arriving, Ready)]);
        lab.until_programmed(|map| map.contains(&backend(arriving)))?;
        apply(&[(leaving, Terminating), (staying, Ready), (arriving, Ready)]);
        lab.until_programmed(|map| !map.contains(&backend(leaving)))?;
        // New connections go to ready endpoints only.
        let landed = where_new_connections_land(&client.netns, frontend, 12, &all)?;
        let on_leaving = landed[all.iter().position(|pod| pod.ip == leaving.ip).unwrap()];
        assert_eq!(on_leaving, 0, "step {step}: {landed:?}");
        assert_eq!(landed.iter().sum::<usize>(), 12, "{landed:?}");
        apply(&[(staying, Ready), (arriving, Ready)]);
        thread::sleep(Duration::from_millis(500));
        let landed = where_new_connections_land(&client.netns, frontend, 12, &all)?;
        let on_leaving = landed[all.iter().position(|pod| pod.ip == leaving.ip).unwrap()];
        assert_eq!(on_leaving, 0, "step {step}, removed: {landed:?}");
    }
    thread::sleep(Duration::from_millis(500));
    // The long-lived connections, all to the departed pods, still exchange.
    let draining: usize = old
        .iter()
        .map(|pod| connections_served(&pod.netns))
        .sum::<anyhow::Result<usize>>()?;
    assert_eq!(draining, long_lived, "every old connection still open");
    stop.store(true, Ordering::Relaxed);
    let outcomes = joined(streams)?;
    for (exchanges, failed) in &outcomes {
        assert_eq!(failed, &None, "{outcomes:?}");
        assert!(*exchanges > 50, "{outcomes:?}");
    }
    Ok(())
}

#[test]
fn should_fallback_to_local_terminating_endpoints_when_there_are_no_ready_endpoints_with_traffic_policy_local()
-> anyhow::Result<()> {
    // One endpoint ready on another node, this node's only one terminating:
    // internalTrafficPolicy Local (pods) and externalTrafficPolicy Local
    // (outside clients, address kept) use the local terminating one; the
    // load balancer's health check says 503 so it drains the node.
    let lab = Lab::new(2, "")?;
    let (client, terminating) = (lab.pod(0), lab.pod(1));
    let elsewhere = Ipv4Addr::new(10, 244, 7, 7);
    lab.api.apply(
        Resource::Services,
        service(
            "shop",
            "local",
            CLUSTER_IP,
            json!({"spec": {"type": "NodePort", "internalTrafficPolicy": "Local",
                "externalTrafficPolicy": "Local", "healthCheckNodePort": 32100,
                "ports": [{"name": "http", "port": 80, "protocol": "TCP",
                           "targetPort": "http", "nodePort": 30100}]}}),
        ),
    );
    lab.api.apply(
        Resource::EndpointSlices,
        slice(
            "shop",
            "local",
            &[
                (elsewhere, Condition::Ready),
                (terminating.ip, Condition::Terminating),
            ],
        ),
    );
    let local = format!("{}:{BACKEND_PORT}", terminating.ip);
    lab.until_programmed(|map| map.contains(&local))?;
    let _server = EchoServers::start(&terminating.netns, terminating.ip, [BACKEND_PORT], 8, None)?;
    let landed = where_new_connections_land(
        &client.netns,
        SocketAddr::from((CLUSTER_IP, 80)),
        4,
        &[terminating],
    )?;
    assert_eq!(landed, [4], "the pod's connections reach the local one");

    let node = lab.node();
    let cluster = &lab.cluster;
    let node_port = SocketAddr::from((node.ip, 30100));
    let landed = where_new_connections_land(&cluster.external, node_port, 3, &[terminating])?;
    assert_eq!(landed, [3], "outside clients too");
    let (status, body) = http_get(&cluster.external, SocketAddr::from((node.ip, 32100)), "/")?;
    assert_eq!(status, 503, "no ready local endpoint: {body}");
    assert!(body.contains(r#""localEndpoints":0"#), "{body}");
    Ok(())
}

#[test]
fn should_be_rejected_when_no_endpoints_exist_also_for_clients_outside_the_cluster()
-> anyhow::Result<()> {
    let lab = Lab::new(1, "")?;
    let node = lab.node();
    lab.api.apply(
        Resource::Services,
        service(
            "shop",
            "empty",
            CLUSTER_IP,
            json!({"spec": {"type": "NodePort", "externalIPs": ["198.51.100.9"],
                "ports": [{"name": "http", "port": 80, "protocol": "TCP",
                           "targetPort": "http", "nodePort": 30101}]}}),
        ),
    );
    lab.until_programmed(|map| map.contains(":30101"))?;
    let cluster = &lab.cluster;
    cluster.gateway.add_route(
        Ipv4Network::new(Ipv4Addr::new(198, 51, 100, 9), 32)?,
        NextHop::Gateway(node.ip),
    )?;
    for frontend in [
        SocketAddr::from((node.ip, 30101)),
        SocketAddr::from(([198, 51, 100, 9], 80)),
    ] {
        let outcome = joined(in_netns(&cluster.external, move || {
            let started = Instant::now();
            let connected = TcpStream::connect_timeout(&frontend, Duration::from_secs(3));
            Ok((
                connected.map(drop).map_err(|error| error.kind()),
                started.elapsed(),
            ))
        }))?;
        assert_eq!(
            outcome.0,
            Err(std::io::ErrorKind::ConnectionRefused),
            "{frontend}: refused, not timed out ({:?})",
            outcome.1
        );
    }
    assert!(node.counter("drop_service_no_backend")? >= 2);
    Ok(())
}

#[test]
fn should_implement_service_kubernetes_io_headless() -> anyhow::Result<()> {
    let lab = Lab::new(2, "")?;
    let server = lab.pod(1);
    lab.api.apply(
        Resource::EndpointSlices,
        slice("shop", "web", &[(server.ip, Condition::Ready)]),
    );
    let labelled = json!({"metadata": {"labels": {"service.kubernetes.io/headless": ""}}});
    lab.api.apply(
        Resource::Services,
        service("shop", "web", CLUSTER_IP, labelled),
    );
    // A Service programmed beside it shows the watch got that far.
    lab.api.apply(
        Resource::Services,
        service("shop", "other", Ipv4Addr::new(10, 96, 0, 11), json!({})),
    );
    lab.until_programmed(|map| map.contains("10.96.0.11"))?;
    let node = lab.node();
    assert!(
        !node
            .cli(&["map", "list", "services"])?
            .contains("10.96.0.10"),
        "the labelled Service is left alone"
    );
    // The label removed: served.
    lab.api.apply(
        Resource::Services,
        service("shop", "web", CLUSTER_IP, json!({})),
    );
    lab.until_programmed(|map| map.contains("10.96.0.10"))?;
    Ok(())
}

#[test]
fn one_tenants_conflicting_or_invalid_services_never_hold_up_the_others() -> anyhow::Result<()> {
    let lab = Lab::new(3, "")?;
    let (first, second) = (lab.pod(1), lab.pod(2));
    let shared_external = json!({"spec": {"externalIPs": ["198.51.100.7"]}});
    let mut older = service("a", "old", CLUSTER_IP, shared_external.clone());
    older["metadata"]["creationTimestamp"] = json!("2025-06-01T00:00:00Z");
    let younger = service("b", "young", Ipv4Addr::new(10, 96, 0, 11), shared_external);
    // A ClusterIP inside the pod CIDR is refused (it would hide pods).
    let invalid = service("c", "bad", Ipv4Addr::new(10, 244, 0, 200), json!({}));
    for object in [younger, older, invalid] {
        lab.api.apply(Resource::Services, object);
    }
    lab.api.apply(
        Resource::EndpointSlices,
        slice("a", "old", &[(first.ip, Condition::Ready)]),
    );
    lab.api.apply(
        Resource::EndpointSlices,
        slice("b", "young", &[(second.ip, Condition::Ready)]),
    );
    let (first_backend, second_backend) = (
        format!("{}:{BACKEND_PORT}", first.ip),
        format!("{}:{BACKEND_PORT}", second.ip),
    );
    lab.until_programmed(|map| map.contains(&first_backend) && map.contains(&second_backend))?;
    // The frontend both claim leads to the older Service's backend.
    let node = lab.node();
    let programmed = node.cli(&["map", "list", "services"])?;
    let shared_line = programmed
        .lines()
        .find(|line| line.contains("198.51.100.7:80"))
        .unwrap_or_default();
    assert!(
        shared_line.contains(&first_backend) && !shared_line.contains(&second_backend),
        "{programmed}"
    );
    // Later changes of every kind still apply.
    lab.api.apply(
        Resource::Services,
        service("d", "late", Ipv4Addr::new(10, 96, 0, 12), json!({})),
    );
    lab.api.apply(
        Resource::EndpointSlices,
        slice("a", "old", &[(second.ip, Condition::Ready)]),
    );
    lab.until_programmed(|map| map.contains("10.96.0.12") && !map.contains(&first_backend))?;
    let listed = node.cli(&["service", "list"])?;
    assert!(
        listed.contains("not served at 198.51.100.7:80/tcp: Service a/old's (older)"),
        "{listed}"
    );
    assert!(
        listed.contains("c/bad") && listed.contains("REFUSED") && listed.contains("pod CIDR"),
        "{listed}"
    );
    let log = node.agent_log();
    assert_eq!(
        log.matches("Kubernetes services listed").count(),
        1,
        "listed once, no relist loop: {log}"
    );
    Ok(())
}

#[test]
fn what_changed_while_the_watches_were_expired_is_applied_by_the_relisting() -> anyhow::Result<()> {
    let lab = Lab::new(3, "")?;
    let (first, second) = (lab.pod(1), lab.pod(2));
    let other_ip = Ipv4Addr::new(10, 96, 0, 11);
    for (name, ip) in [("web", CLUSTER_IP), ("api", other_ip)] {
        lab.api
            .apply(Resource::Services, service("shop", name, ip, json!({})));
        lab.api.apply(
            Resource::EndpointSlices,
            slice("shop", name, &[(first.ip, Condition::Ready)]),
        );
    }
    lab.until_programmed(|map| map.contains("10.96.0.10") && map.contains("10.96.0.11"))?;
    // The API server's history compacted: no watch can resume, every one
    // lists again and finds one Service gone and another's endpoint moved.
    lab.api.expire_history();
    lab.api.delete(Resource::Services, "shop/api");
    lab.api.apply(
        Resource::EndpointSlices,
        slice("shop", "web", &[(second.ip, Condition::Ready)]),
    );
    let moved = format!("{}:{BACKEND_PORT}", second.ip);
    lab.until_programmed(|map| !map.contains("10.96.0.11") && map.contains(&moved))?;
    let _servers: Vec<EchoServers> = [first, second]
        .iter()
        .map(|pod| EchoServers::start(&pod.netns, pod.ip, [BACKEND_PORT], 4, None))
        .collect::<anyhow::Result<_>>()?;
    let frontend = SocketAddr::from((CLUSTER_IP, 80));
    let landed = where_new_connections_land(&lab.pod(0).netns, frontend, 4, &[first, second])?;
    assert_eq!(
        landed,
        [0, 4],
        "new connections reach the moved endpoint only"
    );
    let log = lab.node().agent_log();
    assert!(log.contains("Kubernetes services relisted"), "{log}");
    assert_eq!(
        log.matches("Kubernetes services listed").count(),
        1,
        "{log}"
    );
    Ok(())
}

#[test]
fn a_datagram_flows_reply_half_goes_with_the_flow() -> anyhow::Result<()> {
    // kube-proxy's conntrack entry of a UDP flow is gone 30 s after its
    // last datagram; then the same client port talking to the backend
    // directly is answered by the backend's own address.
    let lab = Lab::new(2, "udp_timeout_seconds = 2\n")?;
    let (client, server) = (lab.pod(0), lab.pod(1));
    lab.api.apply(
        Resource::Services,
        service(
            "shop",
            "dns",
            CLUSTER_IP,
            json!({"spec": {"ports": [{"name": "http", "port": 53, "protocol": "UDP"}]}}),
        ),
    );
    let mut udp_slice = slice("shop", "dns", &[(server.ip, Condition::Ready)]);
    udp_slice["ports"] = json!([{"name": "http", "port": 5353, "protocol": "UDP"}]);
    lab.api.apply(Resource::EndpointSlices, udp_slice);
    lab.until_programmed(|map| map.contains(&format!("{}:5353", server.ip)))?;
    let echo = udp_echo_server(&server.netns, server.ip, 5353, 2, Duration::from_secs(20))?;
    let socket = joined(in_netns(&client.netns, || {
        let socket = UdpSocket::bind("0.0.0.0:41000")?;
        socket.set_read_timeout(Some(Duration::from_secs(3)))?;
        Ok(socket)
    }))?;
    let ask = |to: SocketAddr| -> anyhow::Result<SocketAddr> {
        socket.send_to(b"query", to)?;
        let mut answer = [0; 16];
        Ok(socket.recv_from(&mut answer)?.1)
    };
    assert_eq!(
        ask(SocketAddr::from((CLUSTER_IP, 53)))?,
        SocketAddr::from((CLUSTER_IP, 53))
    );
    // Expired (2 s idle, collected every second).
    let node = lab.node();
    let tracked = |count: usize| {
        eventually(WATCH_TIMEOUT, || {
            Ok(node
                .cli(&["map", "list", "services"])?
                .contains(&format!("connection entries tracked: {count}")))
        })
    };
    assert!(tracked(2)?, "both halves counted");
    let expired = tracked(0)?;
    assert!(expired, "{}", node.cli(&["map", "list", "services"])?);
    let direct = SocketAddr::from(SocketAddrV4::new(server.ip, 5353));
    assert_eq!(ask(direct)?, direct, "answered as itself");
    joined(echo)?;
    Ok(())
}

#[test]
fn an_endpoint_change_is_in_force_at_once_with_the_connection_table_full() -> anyhow::Result<()> {
    // A change costs what it touches: nothing walks the connections.
    let lab = Lab::new(3, "")?;
    let (first, second) = (lab.pod(1), lab.pod(2));
    lab.api.apply(
        Resource::Services,
        service("shop", "web", CLUSTER_IP, json!({})),
    );
    lab.api.apply(
        Resource::EndpointSlices,
        slice("shop", "web", &[(first.ip, Condition::Ready)]),
    );
    let first_backend = format!("{}:{BACKEND_PORT}", first.ip);
    lab.until_programmed(|map| map.contains(&first_backend))?;
    // Fill the table with connections of clients to the frontend's backend.
    let node = lab.node();
    let pin = node
        .bpf_root()?
        .join(format!("v{MAP_LAYOUT_VERSION}"))
        .join(names::SERVICE_FLOWS_MAP);
    let mut flows: HashMap<MapData, FlowKey, ServiceFlow> =
        HashMap::try_from(Map::LruHashMap(MapData::from_pin(&pin)?))?;
    let now = dataplane_user::nat::monotonic_now_ns();
    for index in 0..MAX_SERVICE_FLOWS {
        let key = FlowKey {
            src: [10, 244, 0, 100],
            dst: CLUSTER_IP.octets(),
            src_port: ((index % 60_000) as u16 + 1).to_be_bytes(),
            dst_port: [(index / 60_000) as u8, 80],
            protocol: 6,
            direction: 0,
            _pad: [0; 2],
        };
        let flow = ServiceFlow {
            target: dataplane_common::Backend {
                address: first.ip.octets(),
                port: BACKEND_PORT.to_be_bytes(),
                _pad: [0; 2],
            },
            client: [10, 244, 0, 100],
            state: 1,
            last_seen_ns: now,
            ..ServiceFlow::default()
        };
        flows.insert(key, flow, 0)?;
    }
    let started = Instant::now();
    lab.api.apply(
        Resource::EndpointSlices,
        slice("shop", "web", &[(second.ip, Condition::Ready)]),
    );
    lab.until_programmed(|map| !map.contains(&first_backend))?;
    eprintln!("endpoint change in force after {:?}", started.elapsed());
    assert!(
        flows.keys().filter(Result::is_ok).count() > MAX_SERVICE_FLOWS as usize / 2,
        "the established connections were kept"
    );
    Ok(())
}

#[test]
fn topology_aware_routing_prefers_endpoints_hinted_for_the_nodes_zone() -> anyhow::Result<()> {
    // trafficDistribution: PreferClose; the EndpointSlice controller hints
    // each endpoint for a zone, and kube-proxy on a node of zone-a uses
    // zone-a's only (all of them when any lacks a hint).
    let lab = Lab::new(3, "")?;
    let (client, near, far) = (lab.pod(0), lab.pod(1), lab.pod(2));
    let node = lab.node();
    lab.api.apply(
        Resource::Nodes,
        json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "n0", "labels": {"topology.kubernetes.io/zone": "zone-a"}},
            "spec": {"podCIDR": node.pod_cidr.to_string(),
                     "podCIDRs": [node.pod_cidr.to_string()]},
            "status": {"addresses": [{"type": "InternalIP", "address": node.ip.to_string()}]},
        }),
    );
    lab.api.apply(
        Resource::Services,
        service(
            "shop",
            "web",
            CLUSTER_IP,
            json!({"spec": {"trafficDistribution": "PreferClose"}}),
        ),
    );
    let mut hinted = slice(
        "shop",
        "web",
        &[(near.ip, Condition::Ready), (far.ip, Condition::Ready)],
    );
    hinted["endpoints"][0]["hints"] = json!({"forZones": [{"name": "zone-a"}]});
    hinted["endpoints"][1]["hints"] = json!({"forZones": [{"name": "zone-b"}]});
    lab.api.apply(Resource::EndpointSlices, hinted.clone());
    let (near_backend, far_backend) = (
        format!("{}:{BACKEND_PORT}", near.ip),
        format!("{}:{BACKEND_PORT}", far.ip),
    );
    lab.until_programmed(|map| map.contains(&near_backend) && !map.contains(&far_backend))?;
    let _servers: Vec<EchoServers> = [near, far]
        .iter()
        .map(|pod| EchoServers::start(&pod.netns, pod.ip, [BACKEND_PORT], 10, None))
        .collect::<anyhow::Result<_>>()?;
    let landed = where_new_connections_land(
        &client.netns,
        SocketAddr::from((CLUSTER_IP, 80)),
        10,
        &[near, far],
    )?;
    assert_eq!(landed, [10, 0], "all to the zone's endpoint");
    // A hint missing: every endpoint serves.
    hinted["endpoints"][1]
        .as_object_mut()
        .expect("an endpoint object")
        .remove("hints");
    lab.api.apply(Resource::EndpointSlices, hinted);
    lab.until_programmed(|map| map.contains(&near_backend) && map.contains(&far_backend))?;
    Ok(())
}

#[test]
fn load_balancer_source_ranges_admit_only_the_clients_in_them() -> anyhow::Result<()> {
    // "should only allow access from service loadbalancer source ranges":
    // the load balancer's IP serves clients in the ranges; the node port
    // and the ClusterIP are not limited by them.
    let lab = Lab::new(2, "")?;
    let (node, server) = (lab.node(), lab.pod(1));
    let load_balancer = Ipv4Addr::new(198, 51, 100, 50);
    let balanced = |ranges: Value| {
        let mut object = service(
            "shop",
            "lb",
            CLUSTER_IP,
            json!({"spec": {"type": "LoadBalancer", "loadBalancerSourceRanges": ranges,
                "ports": [{"name": "http", "port": 80, "protocol": "TCP",
                           "targetPort": "http", "nodePort": 30102}]}}),
        );
        object["status"] =
            json!({"loadBalancer": {"ingress": [{"ip": load_balancer.to_string()}]}});
        object
    };
    lab.api
        .apply(Resource::Services, balanced(json!(["100.64.0.0/10"])));
    lab.api.apply(
        Resource::EndpointSlices,
        slice("shop", "lb", &[(server.ip, Condition::Ready)]),
    );
    // The frontend with its backend: the Service and its slice are two
    // events, and a frontend without a backend refuses for that reason.
    lab.until_programmed(|map| {
        map.contains(&load_balancer.to_string()) && map.contains(&server.ip.to_string())
    })?;
    let _server = EchoServers::start(&server.netns, server.ip, [BACKEND_PORT], 8, None)?;
    let cluster = &lab.cluster;
    cluster.gateway.add_route(
        Ipv4Network::new(load_balancer, 32)?,
        NextHop::Gateway(node.ip),
    )?;
    let reaches = |frontend: SocketAddr| {
        joined(in_netns(&cluster.external, move || {
            Ok(TcpStream::connect_timeout(&frontend, Duration::from_secs(1)).is_ok())
        }))
    };
    let at_load_balancer = SocketAddr::from((load_balancer, 80));
    assert!(
        !reaches(at_load_balancer)?,
        "the outside host is not in 100.64.0.0/10"
    );
    assert!(
        node.counter("drop_service_source_range")? >= 1,
        "{:?}",
        node.counters()?
    );
    assert!(
        reaches(SocketAddr::from((node.ip, 30102)))?,
        "the node port is not limited"
    );
    // Its range added: served.
    lab.api.apply(
        Resource::Services,
        balanced(json!(["100.64.0.0/10", "203.0.113.0/24"])),
    );
    let admitted = eventually(WATCH_TIMEOUT, || reaches(at_load_balancer))?;
    assert!(admitted, "{}", node.agent_log());
    Ok(())
}

#[test]
fn a_port_with_more_endpoints_than_a_frontend_holds_is_served_by_the_first_65536()
-> anyhow::Result<()> {
    // A DaemonSet's Service on a large cluster: 70,000 endpoints in 70
    // slices of 1,000 (the most one holds). Never dropped for its size:
    // the first 65,536 serve.
    let lab = Lab::new(1, "")?;
    lab.api.apply(
        Resource::Services,
        service("kube-system", "big", CLUSTER_IP, json!({})),
    );
    let total: u32 = 70_000;
    for first in (0..total).step_by(1000) {
        let endpoints: Vec<(Ipv4Addr, Condition)> = (first..first + 1000)
            .map(|index| {
                let address = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + index);
                (address, Condition::Ready)
            })
            .collect();
        let mut object = slice("kube-system", "big", &endpoints);
        object["metadata"]["name"] = json!(format!("big-{first}"));
        lab.api.apply(Resource::EndpointSlices, object);
    }
    let node = lab.node();
    let backend_slots = || -> anyhow::Result<u64> {
        let status = node.status()?;
        let maps = status["maps"].as_array().cloned().unwrap_or_default();
        Ok(maps
            .iter()
            .find(|map| map["name"] == "BACKENDS")
            .and_then(|map| map["entries"].as_u64())
            .unwrap_or(0))
    };
    let max = u64::from(dataplane_common::MAX_BACKENDS_PER_SERVICE);
    let served = eventually(Duration::from_secs(60), || Ok(backend_slots()? == max))?;
    assert!(served, "{} slots; {}", backend_slots()?, node.agent_log());
    assert!(
        node.agent_log()
            .contains("more endpoints than one frontend holds"),
        "warned"
    );
    // Still followed: below the limit, every endpoint serves.
    for first in (0..total - 60_000).step_by(1000) {
        lab.api.delete(
            Resource::EndpointSlices,
            &format!("kube-system/big-{first}"),
        );
    }
    let followed = eventually(Duration::from_secs(60), || Ok(backend_slots()? == 60_000))?;
    assert!(followed, "{} slots", backend_slots()?);
    Ok(())
}

#[test]
fn the_node_answers_kube_proxys_health_probe_for_load_balancers() -> anyhow::Result<()> {
    // Cloud load balancers probe kube-proxy's port 10256 for Services with
    // externalTrafficPolicy: Cluster.
    let lab = Lab::new(1, "")?;
    let (node, outside) = (lab.node(), &lab.cluster.external);
    let healthz = SocketAddr::from((node.ip, 10256));
    let (status, body) = http_get(outside, healthz, "/healthz")?;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body)?;
    assert!(
        answer["lastUpdated"]
            .as_str()
            .is_some_and(|at| !at.is_empty()),
        "{body}"
    );
    assert_eq!(answer["nodeEligible"], json!(true));
    assert_eq!(http_get(outside, healthz, "/livez")?.0, 200);
    assert_eq!(http_get(outside, healthz, "/other")?.0, 404);
    Ok(())
}
