// Above 400 lines: each file under tests/ is a binary of its own (built, linked, run apart): one per feature.
//! Services end to end, on pods made by the real `ptp` plugin across two
//! nodes running the agent: what Kubernetes' `[sig-network] Services`
//! conformance tests check of a ClusterIP, replicated in namespaces
//! (basic and multi-port endpoints, source address kept, rejection without
//! endpoints, hairpin, UDP kept across a backend change), with Services
//! given through the CLI as an operator without Kubernetes does.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    time::{Duration, Instant},
};

use dataplane_common::HAIRPIN_SOURCE;
use dataplane_tests::{
    Cluster, ClusterSpec, Netns, NextHop,
    cluster::{EXTERNAL_HOST_IP, Node, Pod},
    cni::MainPlugin,
    traffic::{
        http_get, in_netns, joined, tcp_echo_server, tcp_exchange, udp_echo_server, udp_exchange,
    },
};
use dataplane_user::model::Routing;
use ipnetwork::Ipv4Network;
use nix::sys::signal::Signal;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const BACKEND_PORT: u16 = 8080;

fn two_nodes() -> Cluster {
    Cluster::new(ClusterSpec::dataplane(2, 2).with_real_plugin(MainPlugin::Ptp))
        .expect("building the netns cluster")
}

/// `dataplane service add` on `node`: `ports` as the CLI takes them.
fn add_service(node: &Node, name: &str, ports: &[String]) -> anyhow::Result<String> {
    let vip = VIP.to_string();
    let mut args = vec!["service", "add", "--name", name, "--ip", &vip];
    for port in ports {
        args.extend(["--port", port]);
    }
    node.cli(&args)
}

fn backend(pod: &Pod, port: u16) -> String {
    format!("{}:{port}", pod.ip)
}

/// A UDP socket of `netns` (it stays there, whichever thread uses it).
fn udp_socket_of(netns: &Netns) -> anyhow::Result<UdpSocket> {
    joined(in_netns(netns, || Ok(UdpSocket::bind("0.0.0.0:0")?)))
}

#[test]
fn a_cluster_ip_serves_its_endpoints_on_every_port_and_keeps_the_client_address()
-> anyhow::Result<()> {
    let cluster = two_nodes();
    let node = &cluster.nodes[0];
    let client = &node.pods[0];
    let (local, remote, dns) = (
        &node.pods[1],
        &cluster.nodes[1].pods[0],
        &cluster.nodes[1].pods[1],
    );
    add_service(
        node,
        "default/web",
        &[
            format!(
                "80/tcp={},{}",
                backend(local, BACKEND_PORT),
                backend(remote, BACKEND_PORT)
            ),
            format!("53/udp={}", backend(dns, 5353)),
        ],
    )?;

    // Each backend echoes what it gets; 16 connections reach both (all on
    // one would happen once in 32,768 runs).
    let connections = 16;
    let mut servers = Vec::new();
    for pod in [local, remote] {
        let address = SocketAddrV4::new(pod.ip, BACKEND_PORT);
        servers.push(tcp_echo_server(&pod.netns, address, connections, Duration::from_secs(2))?.1);
    }
    for _ in 0..connections {
        tcp_exchange(&client.netns, SocketAddr::from((VIP, 80)), 64 * 1024)?;
    }
    let mut peers = Vec::new();
    for server in servers {
        let seen = joined(server)?;
        assert!(!seen.is_empty(), "a backend got no connection: {peers:?}");
        peers.extend(seen);
    }
    assert_eq!(peers.len(), connections);
    for peer in &peers {
        assert_eq!(
            peer.ip(),
            client.ip,
            "the backend sees the client's own address"
        );
    }

    // The UDP port goes to its own backend, and the answer comes from the Service.
    let dns_server = udp_echo_server(&dns.netns, dns.ip, 5353, 1, Duration::from_secs(5))?;
    udp_exchange(
        &udp_socket_of(&client.netns)?,
        SocketAddr::from((VIP, 53)),
        b"query",
    )?;
    assert_eq!(joined(dns_server)?[0].ip(), client.ip);

    assert!(node.counter("service_to_backend")? >= connections as u64);
    assert!(node.counter("service_to_client")? >= connections as u64);
    let listed = node.cli(&["service", "list"])?;
    assert!(
        listed.contains("default/web") && listed.contains("53/udp"),
        "{listed}"
    );
    let programmed = node.cli(&["map", "list", "services"])?;
    assert!(
        programmed.contains(&backend(remote, BACKEND_PORT)),
        "{programmed}"
    );
    Ok(())
}

#[test]
fn with_client_ip_affinity_every_connection_of_a_client_reaches_one_backend() -> anyhow::Result<()>
{
    let cluster = two_nodes();
    let node = &cluster.nodes[0];
    let client = &node.pods[0];
    let (local, remote) = (&node.pods[1], &cluster.nodes[1].pods[0]);
    let vip = VIP.to_string();
    let ports = format!(
        "80/tcp={},{}",
        backend(local, BACKEND_PORT),
        backend(remote, BACKEND_PORT)
    );
    node.cli(&[
        "service",
        "add",
        "--name",
        "default/sticky",
        "--ip",
        &vip,
        "--port",
        &ports,
        "--affinity-seconds",
        "60",
    ])?;
    let connections = 12;
    let mut servers = Vec::new();
    for pod in [local, remote] {
        let address = SocketAddrV4::new(pod.ip, BACKEND_PORT);
        servers.push(tcp_echo_server(&pod.netns, address, connections, Duration::from_secs(2))?.1);
    }
    for _ in 0..connections {
        tcp_exchange(&client.netns, SocketAddr::from((VIP, 80)), 1024)?;
    }
    let served: Vec<usize> = servers
        .into_iter()
        .map(|server| joined(server).map(|peers| peers.len()))
        .collect::<Result<_, _>>()?;
    assert!(
        served == [connections, 0] || served == [0, connections],
        "connections per backend: {served:?}"
    );
    let listed = node.cli(&["service", "list"])?;
    assert!(
        listed.contains("session affinity ClientIP, 60 s"),
        "{listed}"
    );
    Ok(())
}

#[test]
fn services_keep_working_while_the_agent_is_down_and_after_it_restarts() -> anyhow::Result<()> {
    let mut cluster = two_nodes();
    let node = &mut cluster.nodes[0];
    let server_ip = node.pods[1].ip;
    add_service(
        node,
        "default/web",
        &[format!("80/tcp={server_ip}:{BACKEND_PORT}")],
    )?;
    let exchange_through_the_service = |node: &Node| -> anyhow::Result<()> {
        let (client, server) = (&node.pods[0], &node.pods[1]);
        let address = SocketAddrV4::new(server.ip, BACKEND_PORT);
        let (_, echo) = tcp_echo_server(&server.netns, address, 1, Duration::from_secs(5))?;
        tcp_exchange(&client.netns, SocketAddr::from((VIP, 80)), 16 * 1024)?;
        assert_eq!(joined(echo)?[0].ip(), client.ip);
        Ok(())
    };
    exchange_through_the_service(node)?;

    // Killed: the pinned programs and maps go on translating.
    node.stop_agent(Signal::SIGKILL);
    exchange_through_the_service(node)?;

    // Restarted: the pinned frontend is kept until a source names it.
    node.start_agent()?;
    exchange_through_the_service(node)?;
    let programmed = node.cli(&["map", "list", "services"])?;
    assert!(
        programmed.contains(&format!("{server_ip}:{BACKEND_PORT}")),
        "{programmed}"
    );
    let listed = node.cli(&["service", "list"])?;
    assert!(listed.contains("pinned"), "{listed}");
    Ok(())
}

#[test]
fn a_service_without_endpoints_rejects_at_once() -> anyhow::Result<()> {
    let cluster = two_nodes();
    let node = &cluster.nodes[0];
    add_service(node, "default/empty", &["80/tcp=".to_string()])?;
    let started = Instant::now();
    let refused = joined(in_netns(&node.pods[0].netns, || {
        let error = std::net::TcpStream::connect_timeout(
            &SocketAddr::from((VIP, 80)),
            Duration::from_secs(5),
        )
        .expect_err("nothing can accept");
        Ok(error.kind())
    }))?;
    assert_eq!(refused, std::io::ErrorKind::ConnectionRefused);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused after {:?}, not at once",
        started.elapsed()
    );
    assert!(node.counter("drop_service_no_backend")? >= 1);
    Ok(())
}

#[test]
fn a_pod_reaches_itself_through_its_service() -> anyhow::Result<()> {
    let cluster = two_nodes();
    let node = &cluster.nodes[0];
    let pod = &node.pods[0];
    add_service(
        node,
        "default/self",
        &[format!("80/tcp={}", backend(pod, BACKEND_PORT))],
    )?;
    let address = SocketAddrV4::new(pod.ip, BACKEND_PORT);
    let (_, server) = tcp_echo_server(&pod.netns, address, 1, Duration::from_secs(5))?;
    tcp_exchange(&pod.netns, SocketAddr::from((VIP, 80)), 16 * 1024)?;
    let peers = joined(server)?;
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].ip(), Ipv4Addr::from(HAIRPIN_SOURCE));
    Ok(())
}

#[test]
fn udp_traffic_follows_the_service_when_its_server_pod_is_replaced() -> anyhow::Result<()> {
    let cluster = two_nodes();
    let node = &cluster.nodes[0];
    let (client, old, new) = (&node.pods[0], &node.pods[1], &cluster.nodes[1].pods[0]);
    add_service(
        node,
        "default/dns",
        &[format!("53/udp={}", backend(old, 5353))],
    )?;
    // One client socket throughout: the same flow, as a resolver's is.
    let socket = udp_socket_of(&client.netns)?;
    let frontend = SocketAddr::from((VIP, 53));
    let old_server = udp_echo_server(&old.netns, old.ip, 5353, 1, Duration::from_secs(5))?;
    udp_exchange(&socket, frontend, b"before")?;
    joined(old_server)?;

    // The server pod is replaced by one elsewhere; the flow's next datagram
    // must reach it, not the departed one (kubernetes#48370).
    add_service(
        node,
        "default/dns",
        &[format!("53/udp={}", backend(new, 5353))],
    )?;
    let new_server = udp_echo_server(&new.netns, new.ip, 5353, 1, Duration::from_secs(5))?;
    udp_exchange(&socket, frontend, b"after")?;
    assert_eq!(joined(new_server)?[0].ip(), client.ip);
    Ok(())
}

#[test]
fn the_nodes_own_sockets_reach_services_and_see_only_the_frontend() -> anyhow::Result<()> {
    let cluster = two_nodes();
    let node = &cluster.nodes[0];
    let (local, remote) = (&node.pods[1], &cluster.nodes[1].pods[0]);
    add_service(
        node,
        "default/web",
        &[
            format!(
                "80/tcp={},{}",
                backend(local, BACKEND_PORT),
                backend(remote, BACKEND_PORT)
            ),
            format!("53/udp={}", backend(remote, 5353)),
        ],
    )?;
    add_service(node, "default/empty", &["81/tcp=".to_string()])?;
    // Echo servers on both TCP backends for `connections` connections.
    let serve = |connections: usize| -> anyhow::Result<Vec<_>> {
        [local, remote]
            .into_iter()
            .map(|pod| {
                let address = SocketAddrV4::new(pod.ip, BACKEND_PORT);
                Ok(tcp_echo_server(&pod.netns, address, connections, Duration::from_secs(2))?.1)
            })
            .collect()
    };

    // TCP from the node (kubelet's probes, hostNetwork pods) reaches both
    // backends, and a connected socket names the frontend as its peer.
    let connections = 16;
    let servers = serve(connections)?;
    let frontend = SocketAddr::from((VIP, 80));
    for _ in 0..connections {
        tcp_exchange(&node.netns, frontend, 16 * 1024)?;
    }
    for server in servers {
        assert!(!joined(server)?.is_empty(), "a backend got no connection");
    }
    let servers = serve(1)?;
    let named = joined(in_netns(&node.netns, move || {
        let stream = std::net::TcpStream::connect_timeout(&frontend, Duration::from_secs(5))?;
        Ok(stream.peer_addr()?)
    }))?;
    assert_eq!(named, frontend, "getpeername shows the frontend");
    servers
        .into_iter()
        .try_for_each(|server| joined(server).map(drop))?;

    // UDP, unconnected (sendto/recvfrom: the answer comes from the
    // frontend) and connected.
    let dns = SocketAddr::from((VIP, 53));
    let unconnected = udp_socket_of(&node.netns)?;
    let server = udp_echo_server(&remote.netns, remote.ip, 5353, 2, Duration::from_secs(5))?;
    udp_exchange(&unconnected, dns, b"sendto")?;
    let connected = udp_socket_of(&node.netns)?;
    connected.connect(dns)?;
    assert_eq!(connected.peer_addr()?, dns);
    udp_exchange(&connected, dns, b"connected")?;
    assert_eq!(joined(server)?.len(), 2);

    // A frontend without backends refuses at once: EPERM from connect.
    let started = Instant::now();
    let refused = joined(in_netns(&node.netns, || {
        let error = std::net::TcpStream::connect_timeout(
            &SocketAddr::from((VIP, 81)),
            Duration::from_secs(5),
        )
        .expect_err("nothing can accept");
        Ok(error.kind())
    }))?;
    assert_eq!(refused, std::io::ErrorKind::PermissionDenied);
    assert!(started.elapsed() < Duration::from_secs(1));

    // The hooks see every socket of the machine but translate the node's
    // only: a pod's connection is still translated at its veth.
    let at_sockets = node.counter("service_host_socket")?;
    assert!(at_sockets >= connections as u64 + 4, "{at_sockets}");
    let per_packet = node.counter("service_to_backend")?;
    let servers = serve(1)?;
    tcp_exchange(&node.pods[0].netns, frontend, 1024)?;
    servers
        .into_iter()
        .try_for_each(|server| joined(server).map(drop))?;
    assert_eq!(node.counter("service_host_socket")?, at_sockets);
    assert!(node.counter("service_to_backend")? > per_packet);

    // The UDP backend is replaced: the node's socket's next datagram
    // reaches the new one (its record of the departed one is cleared).
    add_service(
        node,
        "default/web",
        &[format!("53/udp={}", backend(local, 5353))],
    )?;
    let server = udp_echo_server(&local.netns, local.ip, 5353, 1, Duration::from_secs(5))?;
    udp_exchange(&unconnected, dns, b"after")?;
    assert_eq!(joined(server)?.len(), 1);
    Ok(())
}

#[test]
fn a_backend_at_a_nodes_own_address_serves_pods_of_every_node() -> anyhow::Result<()> {
    // The API server behind `kubernetes.default` listens on the
    // control-plane node's address; its pods and other nodes' pods reach it.
    let cluster = two_nodes();
    let control_plane = &cluster.nodes[0];
    let api_server = SocketAddrV4::new(control_plane.ip, 6443);
    for node in &cluster.nodes {
        add_service(
            node,
            "default/kubernetes",
            &[format!("443/tcp={api_server}")],
        )?;
    }
    let (_, server) = tcp_echo_server(&control_plane.netns, api_server, 2, Duration::from_secs(5))?;
    let clients = [&cluster.nodes[0].pods[0], &cluster.nodes[1].pods[0]];
    for client in clients {
        tcp_exchange(&client.netns, SocketAddr::from((VIP, 443)), 16 * 1024)?;
    }
    let peers: Vec<Ipv4Addr> = joined(server)?
        .iter()
        .map(|peer| match peer.ip() {
            std::net::IpAddr::V4(ip) => ip,
            other => panic!("{other}"),
        })
        .collect();
    assert_eq!(peers, clients.map(|client| client.ip));
    Ok(())
}

#[test]
fn a_backends_icmp_error_reaches_the_clients_socket_as_the_frontends() -> anyhow::Result<()> {
    // Nothing listens on the backend's port: its port unreachable must name
    // the frontend, or the client's connected socket never hears of it.
    let cluster = two_nodes();
    let node = &cluster.nodes[0];
    let client = &node.pods[0];
    for backend_pod in [&node.pods[1], &cluster.nodes[1].pods[0]] {
        add_service(
            node,
            "default/closed",
            &[format!("53/udp={}", backend(backend_pod, 5353))],
        )?;
        let socket = udp_socket_of(&client.netns)?;
        socket.connect(SocketAddr::from((VIP, 53)))?;
        socket.set_read_timeout(Some(Duration::from_secs(2)))?;
        socket.send(b"anyone?")?;
        let error = socket
            .recv(&mut [0u8; 16])
            .expect_err("nothing answers on the backend's port");
        assert_eq!(
            error.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "backend {}: {error}",
            backend_pod.ip
        );
    }
    Ok(())
}

#[test]
fn node_ports_and_external_ips_serve_outside_clients_through_every_node() -> anyhow::Result<()> {
    outside_clients_through_every_node(Routing::Tunnel)
}

#[test]
fn node_ports_and_external_ips_serve_outside_clients_with_direct_routing() -> anyhow::Result<()> {
    outside_clients_through_every_node(Routing::Direct)
}

/// kube-proxy's externalTrafficPolicy Cluster: any node's IP at the node
/// port, and an external IP routed to a node, reach every backend; the
/// client is masqueraded to the node it came through. With nodes routing
/// as `routing` says.
fn outside_clients_through_every_node(routing: Routing) -> anyhow::Result<()> {
    let cluster = Cluster::new(
        ClusterSpec::dataplane(2, 2)
            .with_real_plugin(MainPlugin::Ptp)
            .with_routing(routing),
    )?;
    let (local, remote) = (&cluster.nodes[0].pods[1], &cluster.nodes[1].pods[0]);
    let external_ip = Ipv4Addr::new(198, 51, 100, 77);
    for node in &cluster.nodes {
        node.cli(&[
            "service",
            "add",
            "--name",
            "default/web",
            "--ip",
            &VIP.to_string(),
            "--port",
            &format!(
                "80/tcp:30080={},{}",
                backend(local, BACKEND_PORT),
                backend(remote, BACKEND_PORT)
            ),
            "--port",
            &format!("53/udp:30053={}", backend(remote, 5353)),
            "--external-ip",
            &external_ip.to_string(),
        ])?;
    }
    cluster.gateway.add_route(
        Ipv4Network::new(external_ip, 32)?,
        NextHop::Gateway(cluster.nodes[0].ip),
    )?;
    let node_ips: Vec<Ipv4Addr> = cluster.nodes.iter().map(|node| node.ip).collect();
    let frontends = [
        SocketAddr::from((node_ips[0], 30080)),
        SocketAddr::from((node_ips[1], 30080)),
        SocketAddr::from((external_ip, 80)),
    ];
    let rounds = 8;
    let connections = rounds * frontends.len();
    let mut servers = Vec::new();
    for pod in [local, remote] {
        let address = SocketAddrV4::new(pod.ip, BACKEND_PORT);
        servers.push(tcp_echo_server(&pod.netns, address, connections, Duration::from_secs(2))?.1);
    }
    for _ in 0..rounds {
        for frontend in frontends {
            tcp_exchange(&cluster.external, frontend, 16 * 1024)?;
        }
    }
    let mut peers = Vec::new();
    for server in servers {
        let seen = joined(server)?;
        assert!(!seen.is_empty(), "a backend got no connection");
        peers.extend(seen);
    }
    assert_eq!(peers.len(), connections);
    for peer in &peers {
        assert!(
            node_ips.iter().any(|ip| peer.ip() == *ip),
            "{peer}: masqueraded to a node IP"
        );
    }

    // UDP at a node port, answered from it.
    let server = udp_echo_server(&remote.netns, remote.ip, 5353, 1, Duration::from_secs(5))?;
    udp_exchange(
        &udp_socket_of(&cluster.external)?,
        SocketAddr::from((node_ips[0], 30053)),
        b"query",
    )?;
    joined(server)?;

    // A pod reaches the other node's node port too (translated on its own
    // node, as at its own node's).
    let mut servers = Vec::new();
    for pod in [local, remote] {
        let address = SocketAddrV4::new(pod.ip, BACKEND_PORT);
        servers.push(tcp_echo_server(&pod.netns, address, rounds, Duration::from_secs(2))?.1);
    }
    for _ in 0..rounds {
        tcp_exchange(
            &cluster.nodes[0].pods[0].netns,
            SocketAddr::from((node_ips[1], 30080)),
            4096,
        )?;
    }
    let served: usize = servers
        .into_iter()
        .map(|server| joined(server).map(|peers| peers.len()))
        .sum::<anyhow::Result<usize>>()?;
    assert_eq!(served, rounds);
    let node = &cluster.nodes[0];
    assert!(node.counter("service_reply_to_outside")? > 0);
    // Between the nodes, the way `routing` says.
    let direct = node.counter("forwarded_direct")? > 0;
    let tunnelled = node.counter("encapsulated")? > 0;
    assert_eq!(
        (direct, tunnelled),
        (routing == Routing::Direct, routing == Routing::Tunnel)
    );
    let listed = node.cli(&["service", "list"])?;
    assert!(
        listed.contains("80/tcp:30080") && listed.contains(&external_ip.to_string()),
        "{listed}"
    );
    Ok(())
}

#[test]
fn with_external_traffic_policy_local_outside_clients_reach_the_nodes_own_backends_as_themselves()
-> anyhow::Result<()> {
    let cluster = two_nodes();
    let (first, second) = (&cluster.nodes[0].pods[1], &cluster.nodes[1].pods[0]);
    for node in &cluster.nodes {
        node.cli(&[
            "service",
            "add",
            "--name",
            "default/ingress",
            "--ip",
            &VIP.to_string(),
            "--port",
            &format!(
                "80/tcp:30081={},{}",
                backend(first, BACKEND_PORT),
                backend(second, BACKEND_PORT)
            ),
            "--port",
            &format!("81/tcp:30082={}", backend(first, BACKEND_PORT)),
            "--external-traffic-local",
            "--health-check-node-port",
            "32000",
        ])?;
        node.cli(&[
            "service",
            "add",
            "--name",
            "default/first-only",
            "--ip",
            "10.96.0.11",
            "--port",
            &format!("80/tcp:30083={}", backend(first, BACKEND_PORT)),
            "--external-traffic-local",
            "--health-check-node-port",
            "32001",
        ])?;
    }
    // Load balancers' health checks, as kube-proxy answers them.
    for (node, first_only_status) in cluster.nodes.iter().zip([200, 503]) {
        let (status, body) = http_get(&cluster.external, SocketAddr::from((node.ip, 32000)), "/")?;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(r#""localEndpoints":1"#), "{body}");
        assert!(body.contains(r#""name":"ingress""#), "{body}");
        let (status, body) = http_get(&cluster.external, SocketAddr::from((node.ip, 32001)), "/")?;
        assert_eq!(status, first_only_status, "{}: {body}", node.ip);
    }
    // Each node sends its outside clients to its own backend, which sees
    // the client's own address.
    let rounds = 6;
    for (node, own) in cluster.nodes.iter().zip([first, second]) {
        let address = SocketAddrV4::new(own.ip, BACKEND_PORT);
        let (_, server) = tcp_echo_server(&own.netns, address, rounds, Duration::from_secs(2))?;
        for _ in 0..rounds {
            tcp_exchange(&cluster.external, SocketAddr::from((node.ip, 30081)), 4096)?;
        }
        let peers = joined(server)?;
        assert_eq!(
            peers.len(),
            rounds,
            "all through {} to its own backend",
            node.ip
        );
        assert!(
            peers.iter().all(|peer| peer.ip() == EXTERNAL_HOST_IP),
            "{peers:?}: the client's own address"
        );
    }
    // A node without a backend of the port drops its outside clients.
    let second_node = &cluster.nodes[1];
    let frontend = SocketAddr::from((second_node.ip, 30082));
    let refused = joined(in_netns(&cluster.external, move || {
        Ok(std::net::TcpStream::connect_timeout(&frontend, Duration::from_secs(1)).is_err())
    }))?;
    assert!(refused, "no backend of port 81 on the second node");
    assert!(second_node.counter("drop_service_no_local_backend")? >= 1);
    // Pods still reach the other node's backend at the node port of their
    // own node (the Local policy is for outside clients). 16 connections,
    // each to a random backend: all to one of the two 1 time in 32,768.
    let connections = 16;
    let address = SocketAddrV4::new(second.ip, BACKEND_PORT);
    let (_, server) = tcp_echo_server(&second.netns, address, connections, Duration::from_secs(2))?;
    let (_, local_server) = tcp_echo_server(
        &first.netns,
        SocketAddrV4::new(first.ip, BACKEND_PORT),
        connections,
        Duration::from_secs(2),
    )?;
    for _ in 0..connections {
        tcp_exchange(
            &cluster.nodes[0].pods[0].netns,
            SocketAddr::from((cluster.nodes[0].ip, 30081)),
            1024,
        )?;
    }
    joined(local_server)?;
    assert!(!joined(server)?.is_empty(), "the other node's backend too");
    Ok(())
}

#[test]
fn a_node_port_keeps_session_affinity_and_follows_a_cycled_udp_server() -> anyhow::Result<()> {
    // Conformance: session affinity for a NodePort Service, and UDP through
    // a node port when the server pod cycles.
    let cluster = two_nodes();
    let node = &cluster.nodes[0];
    let (local, remote) = (&node.pods[1], &cluster.nodes[1].pods[0]);
    let node_port = SocketAddr::from((node.ip, 30090));
    node.cli(&[
        "service",
        "add",
        "--name",
        "default/sticky",
        "--ip",
        &VIP.to_string(),
        "--port",
        &format!(
            "80/tcp:30090={},{}",
            backend(local, BACKEND_PORT),
            backend(remote, BACKEND_PORT)
        ),
        "--affinity-seconds",
        "600",
    ])?;
    let connections = 10;
    let mut servers = Vec::new();
    for pod in [local, remote] {
        let address = SocketAddrV4::new(pod.ip, BACKEND_PORT);
        servers.push(tcp_echo_server(&pod.netns, address, connections, Duration::from_secs(2))?.1);
    }
    for _ in 0..connections {
        tcp_exchange(&cluster.external, node_port, 1024)?;
    }
    let served: Vec<usize> = servers
        .into_iter()
        .map(|server| joined(server).map(|peers| peers.len()))
        .collect::<anyhow::Result<_>>()?;
    assert!(
        served.contains(&connections),
        "one backend got all {connections}: {served:?}"
    );

    let udp_port = |backend_pod: &Pod| format!("53/udp:30053={}", backend(backend_pod, 5353));
    add_service(node, "default/dns", &[udp_port(local)])?;
    let socket = udp_socket_of(&cluster.external)?;
    let frontend = SocketAddr::from((node.ip, 30053));
    let server = udp_echo_server(&local.netns, local.ip, 5353, 1, Duration::from_secs(5))?;
    udp_exchange(&socket, frontend, b"before")?;
    joined(server)?;
    add_service(node, "default/dns", &[udp_port(remote)])?;
    let server = udp_echo_server(&remote.netns, remote.ip, 5353, 1, Duration::from_secs(5))?;
    udp_exchange(&socket, frontend, b"after")?;
    assert_eq!(
        joined(server)?.len(),
        1,
        "the same client socket reaches the new server"
    );
    Ok(())
}
