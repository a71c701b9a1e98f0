// Above 400 lines: each file under tests/ is a binary of its own; one packet case per test, fixtures shared.
//! Services run by the kernel on hand-built packets (BPF_PROG_TEST_RUN): a
//! connection to a frontend goes to one backend and stays there, replies
//! come back from the frontend (locally, through the tunnel, hairpin), a
//! frontend without backends is refused, a departed backend's TCP
//! connections drain while new connections and datagram flows move on, and
//! what is not a frontend is left alone.

use std::net::Ipv4Addr;

use std::collections::BTreeSet;

use aya::maps::{HashMap, Map};
use dataplane_common::{
    Affinity, AffinityKey, Backend, FlowKey, HAIRPIN_SOURCE, Ipv4Cidr, NODE_PORT_ADDRESS,
    NodeConfig, OUTSIDE_CLIENTS, ServiceFlow, ServiceKey, conn_state, frontend_scope, names,
    service_direction, service_flags,
};
use dataplane_tests::test_run::*;
use ipnetwork::Ipv4Network;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const CLIENT_PORT: u16 = 40123;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
const TCP_SYN_ACK: u8 = 0x12;

fn frontend(port: u16, protocol: u8) -> ServiceKey {
    ServiceKey {
        address: VIP.octets(),
        port: port.to_be_bytes(),
        protocol,
        scope: frontend_scope::EVERYONE,
    }
}

fn backend(ip: Ipv4Addr, port: u16) -> Backend {
    Backend {
        address: ip.octets(),
        port: port.to_be_bytes(),
        _pad: [0; 2],
    }
}

/// A fixture whose node has the frontend VIP:80/tcp with `backends`.
fn with_service(backends: &[Backend]) -> Fixture {
    with_sticky_service(backends, 0)
}

/// The same with ClientIP session affinity of `affinity_seconds`.
fn with_sticky_service(backends: &[Backend], affinity_seconds: u32) -> Fixture {
    let mut fixture = Fixture::new().unwrap();
    fixture
        .maps
        .services
        .program(frontend(80, 6), 1, (&[], backends), affinity_seconds, 0)
        .unwrap();
    fixture
        .maps
        .set_node_config(NodeConfig {
            services: 1,
            ..node_config()
        })
        .unwrap();
    fixture
}

/// Pod B moved onto the device test runs use, so its packets can be sent.
fn with_pod_b_on_the_test_device(fixture: &mut Fixture) {
    fixture
        .maps
        .insert_endpoint(
            POD_B_IP.into(),
            endpoint(LOOPBACK_IFINDEX, POD_B_MAC, HOST_B_MAC),
        )
        .unwrap();
}

fn from_a_to_vip(flags: u8) -> Vec<u8> {
    ipv4_packet(
        POD_A_IP,
        VIP,
        6,
        &tcp((POD_A_IP, CLIENT_PORT), (VIP, 80), flags),
    )
}

#[test]
fn a_connection_goes_to_one_backend_and_stays_there() {
    let backends = [backend(POD_B_IP, 8080), backend(POD_A_IP, 8080)];
    let mut fixture = with_service(&backends);
    let mut chosen = Vec::new();
    for round in 0..20u16 {
        let packet = ipv4_packet(
            POD_A_IP,
            VIP,
            6,
            &tcp((POD_A_IP, CLIENT_PORT + round), (VIP, 80), TCP_SYN),
        );
        let (verdict, out) = fixture.run(&packet);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_checksums_valid(&out);
        let (_, (ip, port)) = addresses(&out);
        assert_eq!(port, 8080);
        assert!(ip == POD_A_IP || ip == POD_B_IP, "{ip}");
        // Every later packet of the connection goes where its first went.
        for _ in 0..5 {
            let later = ipv4_packet(
                POD_A_IP,
                VIP,
                6,
                &tcp((POD_A_IP, CLIENT_PORT + round), (VIP, 80), TCP_ACK),
            );
            let (_, out) = fixture.run(&later);
            assert_eq!(addresses(&out).1, (ip, 8080));
        }
        chosen.push(ip);
    }
    assert!(
        chosen.contains(&POD_A_IP) && chosen.contains(&POD_B_IP),
        "both backends chosen over 20 connections: {chosen:?}"
    );
    assert_eq!(fixture.counter("service_to_backend"), 120);
}

#[test]
fn the_backend_sees_the_client_and_the_client_sees_the_frontend() {
    let mut fixture = with_service(&[backend(POD_B_IP, 8080)]);
    let (verdict, out) = fixture.run(&from_a_to_vip(TCP_SYN));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(
        addresses(&out),
        ((POD_A_IP, CLIENT_PORT), (POD_B_IP, 8080)),
        "the client's own address is kept"
    );
    assert_eq!((&out[0..6], &out[6..12]), (&POD_B_MAC[..], &HOST_B_MAC[..]));
    assert_eq!(out[14 + 8], 63, "one routing hop");
    assert_eq!(fixture.counter("forwarded_local"), 1);

    with_pod_b_on_the_test_device(&mut fixture);
    let reply = ipv4_packet(
        POD_B_IP,
        POD_A_IP,
        6,
        &tcp((POD_B_IP, 8080), (POD_A_IP, CLIENT_PORT), TCP_SYN_ACK),
    );
    let (verdict, back) = fixture.run(&reply);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(addresses(&back), ((VIP, 80), (POD_A_IP, CLIENT_PORT)));
    assert_eq!(
        (&back[0..6], &back[6..12]),
        (&POD_A_MAC[..], &HOST_A_MAC[..])
    );
    assert_checksums_valid(&back);
    assert_eq!(fixture.counter("service_to_client"), 1);

    // Pod B's own connections to pod A are not touched.
    let direct = ipv4_packet(
        POD_B_IP,
        POD_A_IP,
        6,
        &tcp((POD_B_IP, 8081), (POD_A_IP, CLIENT_PORT), TCP_SYN),
    );
    let (_, out) = fixture.run(&direct);
    assert_eq!(addresses(&out).0, (POD_B_IP, 8081));
}

#[test]
fn a_remote_backend_is_reached_through_the_tunnel_and_answers_from_the_frontend() {
    let mut fixture = with_service(&[backend(REMOTE_POD_IP, 8080)]);
    let (verdict, out) = fixture.run(&from_a_to_vip(TCP_SYN));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(fixture.counter("encapsulated"), 1);
    let inner = &out[50..];
    assert_eq!(
        addresses(inner),
        ((POD_A_IP, CLIENT_PORT), (REMOTE_POD_IP, 8080))
    );
    assert_checksums_valid(inner);

    let reply = ipv4_packet(
        REMOTE_POD_IP,
        POD_A_IP,
        6,
        &tcp((REMOTE_POD_IP, 8080), (POD_A_IP, CLIENT_PORT), TCP_SYN_ACK),
    );
    let (verdict, back) = fixture.run_program(
        names::FROM_UPLINK_PROGRAM,
        &vxlan_frame(REMOTE_NODE_IP, VNI, &reply),
    );
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(addresses(&back), ((VIP, 80), (POD_A_IP, CLIENT_PORT)));
    assert_checksums_valid(&back);
    assert_eq!(fixture.counter("decapsulated_to_pod"), 1);
    assert_eq!(fixture.counter("service_to_client"), 1);
}

#[test]
fn a_pod_reaches_itself_through_its_service() {
    let mut fixture = with_service(&[backend(POD_A_IP, 8080)]);
    let (verdict, out) = fixture.run(&from_a_to_vip(TCP_SYN));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    // From an address that is not its own, or its stack drops it as martian.
    assert_eq!(
        addresses(&out),
        (
            (Ipv4Addr::from(HAIRPIN_SOURCE), CLIENT_PORT),
            (POD_A_IP, 8080)
        )
    );
    assert_checksums_valid(&out);

    let reply = ipv4_packet(
        POD_A_IP,
        Ipv4Addr::from(HAIRPIN_SOURCE),
        6,
        &tcp(
            (POD_A_IP, 8080),
            (Ipv4Addr::from(HAIRPIN_SOURCE), CLIENT_PORT),
            TCP_SYN_ACK,
        ),
    );
    let (verdict, back) = fixture.run(&reply);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(addresses(&back), ((VIP, 80), (POD_A_IP, CLIENT_PORT)));
    assert_checksums_valid(&back);
    assert_eq!(fixture.counter("masqueraded"), 0);
}

#[test]
fn a_frontend_without_backends_refuses_at_once() {
    let mut fixture = with_service(&[]);
    let packet = from_a_to_vip(TCP_SYN);
    let (verdict, reply) = fixture.run(&packet);
    assert_eq!(verdict, TC_ACT_REDIRECT, "sent back to the pod");
    let icmp = icmp_error_to_pod_a(&reply, &packet);
    assert_eq!((icmp[0], icmp[1]), (3, 3), "port unreachable");
    assert_eq!(fixture.counter("drop_service_no_backend"), 1);
    assert_eq!(fixture.counter("masqueraded"), 0);
}

#[test]
fn a_departed_backends_tcp_connections_drain_while_new_ones_and_datagrams_move() {
    let (gone, stays) = (backend(POD_B_IP, 8080), backend(REMOTE_POD_IP, 8080));
    let mut fixture = with_service(&[gone]);
    let (_, out) = fixture.run(&from_a_to_vip(TCP_SYN));
    assert_eq!(addresses(&out).1, (POD_B_IP, 8080));
    let to_vip_udp = ipv4_packet(
        POD_A_IP,
        VIP,
        17,
        &udp((POD_A_IP, CLIENT_PORT), (VIP, 53), true),
    );
    fixture
        .maps
        .services
        .program(frontend(53, 17), 2, (&[], &[gone]), 0, 0)
        .unwrap();
    let (_, out) = fixture.run(&to_vip_udp);
    assert_eq!(addresses(&out).1, (POD_B_IP, 8080));

    // The backend leaves both frontends (terminating, or removed): one
    // slot and one serving entry each, nothing walked.
    let services = &mut fixture.maps.services;
    services
        .program(frontend(80, 6), 1, (&[gone], &[stays]), 0, 0)
        .unwrap();
    services
        .program(frontend(53, 17), 2, (&[gone], &[stays]), 0, 0)
        .unwrap();
    // The TCP connection under way keeps its backend until it ends.
    for _ in 0..3 {
        let (_, out) = fixture.run(&from_a_to_vip(TCP_ACK));
        assert_eq!(addresses(&out).1, (POD_B_IP, 8080), "drains");
    }
    // A new connection from the same port (the old one ended) and the
    // datagram flow go to a backend that serves.
    let (_, out) = fixture.run(&from_a_to_vip(TCP_SYN));
    assert_eq!(addresses(&out[50..]).1, (REMOTE_POD_IP, 8080));
    let (_, out) = fixture.run(&to_vip_udp);
    assert_eq!(addresses(&out[50..]).1, (REMOTE_POD_IP, 8080));
    // And stays there.
    let (_, out) = fixture.run(&from_a_to_vip(TCP_ACK));
    assert_eq!(addresses(&out[50..]).1, (REMOTE_POD_IP, 8080));
}

#[test]
fn connection_halves_record_their_last_packet_and_state() {
    let mut fixture = with_service(&[backend(POD_B_IP, 8080)]);
    fixture.run(&from_a_to_vip(TCP_SYN));
    let flows: HashMap<_, FlowKey, ServiceFlow> = HashMap::try_from(Map::LruHashMap(
        fixture.pinned_map(names::SERVICE_FLOWS_MAP).unwrap(),
    ))
    .unwrap();
    let halves = |flows: &HashMap<_, FlowKey, ServiceFlow>| {
        let mut halves: Vec<(u8, u8, u64)> = flows
            .iter()
            .map(|entry| entry.unwrap())
            .map(|(key, flow)| (key.direction, flow.state, flow.last_seen_ns))
            .collect();
        halves.sort();
        halves
    };
    let opened = halves(&flows);
    assert_eq!(opened.len(), 2);
    assert!(
        opened
            .iter()
            .all(|(_, state, seen)| *state == conn_state::NEW && *seen > 0)
    );

    with_pod_b_on_the_test_device(&mut fixture);
    let answer = ipv4_packet(
        POD_B_IP,
        POD_A_IP,
        6,
        &tcp((POD_B_IP, 8080), (POD_A_IP, CLIENT_PORT), TCP_SYN_ACK),
    );
    fixture.run(&answer);
    let answered = halves(&flows);
    assert_eq!(
        answered[1].1,
        conn_state::ESTABLISHED,
        "the backend answered"
    );
    assert!(answered[1].2 > opened[1].2);

    // The pod's FIN ends it (its source is checked at its veth).
    const TCP_FIN_ACK: u8 = 0x11;
    fixture.run(&from_a_to_vip(TCP_FIN_ACK));
    assert_eq!(halves(&flows)[0].1, conn_state::CLOSING);
    // A new connection from the same port starts afresh: it does not
    // inherit the closing timeout.
    fixture.run(&from_a_to_vip(TCP_SYN));
    assert_eq!(halves(&flows)[0].1, conn_state::NEW);
    fixture.run(&answer);
    assert_eq!(halves(&flows)[1].1, conn_state::ESTABLISHED);
}

/// The agent collects a closed connection's halves one at a time and the
/// LRU evicts them one at a time: a SYN reusing the port while its backend
/// serves keeps the backend and must bring the reply half back, or the
/// backend's SYN-ACK reaches the client from the backend's address and the
/// connection never opens (found by the Services benchmark: one connect in
/// about a thousand timed out after an endpoint change).
#[test]
fn a_syn_reusing_a_port_whose_reply_half_was_collected_is_answered_from_the_frontend() {
    let mut fixture = with_service(&[backend(POD_B_IP, 8080)]);
    fixture.run(&from_a_to_vip(TCP_SYN));
    let mut flows: HashMap<_, FlowKey, ServiceFlow> = HashMap::try_from(Map::LruHashMap(
        fixture.pinned_map(names::SERVICE_FLOWS_MAP).unwrap(),
    ))
    .unwrap();
    let reply_half = flows
        .keys()
        .map(|key| key.unwrap())
        .find(|key| key.direction == service_direction::TO_CLIENT)
        .unwrap();
    flows.remove(&reply_half).unwrap();

    let (_, out) = fixture.run(&from_a_to_vip(TCP_SYN));
    assert_eq!(addresses(&out).1, (POD_B_IP, 8080), "the backend kept");
    with_pod_b_on_the_test_device(&mut fixture);
    let answer = ipv4_packet(
        POD_B_IP,
        POD_A_IP,
        6,
        &tcp((POD_B_IP, 8080), (POD_A_IP, CLIENT_PORT), TCP_SYN_ACK),
    );
    let (_, back) = fixture.run(&answer);
    assert_eq!(addresses(&back), ((VIP, 80), (POD_A_IP, CLIENT_PORT)));
    assert_checksums_valid(&back);
}

#[test]
fn what_is_not_a_frontend_is_left_alone() {
    let mut fixture = with_service(&[backend(POD_B_IP, 8080)]);
    // Another port, and UDP to the frontend's port: to the world, masqueraded.
    let other_port = ipv4_packet(
        POD_A_IP,
        VIP,
        6,
        &tcp((POD_A_IP, CLIENT_PORT), (VIP, 81), TCP_SYN),
    );
    let (_, out) = fixture.run(&other_port);
    assert_eq!(addresses(&out).1, (VIP, 81));
    let udp_packet = ipv4_packet(
        POD_A_IP,
        VIP,
        17,
        &udp((POD_A_IP, CLIENT_PORT), (VIP, 80), true),
    );
    let (_, out) = fixture.run(&udp_packet);
    assert_eq!(addresses(&out).1, (VIP, 80));
    assert_eq!(fixture.counter("masqueraded"), 2);
    assert_eq!(fixture.counter("service_to_backend"), 0);

    // With the Service CIDR known, an address in it at a port no Service
    // has, and one no Service has, are refused instead.
    fixture
        .maps
        .set_node_config(NodeConfig {
            services: 1,
            service_cidr: Ipv4Cidr::new([10, 96, 0, 0], 12),
            ..node_config()
        })
        .unwrap();
    let nobody = Ipv4Addr::new(10, 96, 0, 77);
    for packet in [
        other_port,
        ipv4_packet(
            POD_A_IP,
            nobody,
            6,
            &tcp((POD_A_IP, CLIENT_PORT), (nobody, 80), TCP_SYN),
        ),
    ] {
        let (verdict, reply) = fixture.run(&packet);
        assert_eq!(verdict, TC_ACT_REDIRECT, "sent back to the pod");
        let icmp = icmp_error_to_pod_a(&reply, &packet);
        assert_eq!((icmp[0], icmp[1]), (3, 3), "port unreachable");
    }
    assert_eq!(fixture.counter("drop_service_unknown"), 2);
    assert_eq!(fixture.counter("masqueraded"), 2);
}

/// Now on the clock the programs stamp entries with (CLOCK_MONOTONIC).
fn boot_time_now_ns() -> u64 {
    dataplane_user::nat::monotonic_now_ns()
}

/// The backend a new connection from pod A's port `port` goes to.
fn backend_of_new_connection(fixture: &mut Fixture, port: u16) -> Ipv4Addr {
    let packet = ipv4_packet(POD_A_IP, VIP, 6, &tcp((POD_A_IP, port), (VIP, 80), TCP_SYN));
    let (verdict, out) = fixture.run(&packet);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    // Local backends are delivered as is, remote ones encapsulated.
    let frame = if out.len() > packet.len() {
        &out[50..]
    } else {
        &out[..]
    };
    addresses(frame).1.0
}

#[test]
fn with_client_ip_affinity_a_clients_connections_stick_until_it_is_idle_too_long() {
    let backends = [backend(POD_B_IP, 8080), backend(REMOTE_POD_IP, 8080)];
    let mut fixture = with_sticky_service(&backends, 60);
    let first = backend_of_new_connection(&mut fixture, CLIENT_PORT);
    for port in 1..20 {
        assert_eq!(
            backend_of_new_connection(&mut fixture, CLIENT_PORT + port),
            first,
            "every new connection of the client goes to its first one's backend"
        );
    }

    // An affinity last used at boot is 60 s stale: new connections choose
    // afresh (both backends over 20 of them, each time from a stale entry).
    let mut affinities: HashMap<_, AffinityKey, Affinity> = HashMap::try_from(Map::LruHashMap(
        fixture.pinned_map(names::AFFINITY_MAP).unwrap(),
    ))
    .unwrap();
    let key = AffinityKey {
        service_id: 1,
        client: POD_A_IP.octets(),
    };
    let mut chosen = BTreeSet::new();
    for port in 100..120 {
        let stale = Affinity {
            backend: backends[0],
            last_used_ns: 0,
        };
        affinities.insert(key, stale, 0).unwrap();
        chosen.insert(backend_of_new_connection(&mut fixture, CLIENT_PORT + port));
    }
    assert_eq!(chosen.len(), 2, "{chosen:?}");

    // A fresh affinity to a backend that no longer serves is not followed:
    // new connections go to the one that does.
    fixture
        .maps
        .services
        .program(frontend(80, 6), 1, (&backends, &backends[1..]), 60, 0)
        .unwrap();
    for port in 200..210 {
        let fresh = Affinity {
            backend: backends[0],
            last_used_ns: boot_time_now_ns(),
        };
        affinities.insert(key, fresh, 0).unwrap();
        assert_eq!(
            backend_of_new_connection(&mut fixture, CLIENT_PORT + port),
            REMOTE_POD_IP
        );
    }
}

#[test]
fn a_direct_connection_on_the_four_tuple_an_old_service_connection_used_is_left_alone() {
    // The client's port of a closed connection to the frontend comes round
    // again for a connection straight to the backend (the kernel reuses a
    // port toward another destination at once): the backend's answers must
    // reach the client from the backend, not dressed as the frontend's.
    for (backend_ip, from_uplink) in [(POD_B_IP, false), (REMOTE_POD_IP, true)] {
        let mut fixture = with_service(&[backend(backend_ip, 8080)]);
        fixture.run(&from_a_to_vip(TCP_SYN));
        let direct = ipv4_packet(
            POD_A_IP,
            backend_ip,
            6,
            &tcp((POD_A_IP, CLIENT_PORT), (backend_ip, 8080), TCP_SYN),
        );
        let (verdict, out) = fixture.run(&direct);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let sent = if from_uplink { &out[50..] } else { &out[..] };
        assert_eq!(
            addresses(sent),
            ((POD_A_IP, CLIENT_PORT), (backend_ip, 8080))
        );
        let answer = ipv4_packet(
            backend_ip,
            POD_A_IP,
            6,
            &tcp((backend_ip, 8080), (POD_A_IP, CLIENT_PORT), TCP_SYN_ACK),
        );
        let (verdict, back) = if from_uplink {
            fixture.run_program(
                names::FROM_UPLINK_PROGRAM,
                &vxlan_frame(REMOTE_NODE_IP, VNI, &answer),
            )
        } else {
            with_pod_b_on_the_test_device(&mut fixture);
            fixture.run(&answer)
        };
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(
            addresses(&back),
            ((backend_ip, 8080), (POD_A_IP, CLIENT_PORT)),
            "backend {backend_ip}"
        );
        assert_eq!(fixture.counter("service_to_client"), 0);
    }
}

#[test]
fn a_backend_at_the_nodes_own_address_answers_from_the_frontend() {
    let mut fixture = with_service(&[backend(NODE_IP, 6443)]);
    let (verdict, out) = fixture.run(&from_a_to_vip(TCP_SYN));
    assert_eq!(verdict, TC_ACT_OK, "up the node's stack");
    assert_eq!(addresses(&out), ((POD_A_IP, CLIENT_PORT), (NODE_IP, 6443)));
    assert_checksums_valid(&out);

    // The node's stack answers by its route to the pod, out of the pod's
    // host veth: to-pod translates the answer, and lets it go on.
    let answer = ipv4_packet(
        NODE_IP,
        POD_A_IP,
        6,
        &tcp((NODE_IP, 6443), (POD_A_IP, CLIENT_PORT), TCP_SYN_ACK),
    );
    let (verdict, back) = fixture.run_program(names::TO_POD_PROGRAM, &answer);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(addresses(&back), ((VIP, 80), (POD_A_IP, CLIENT_PORT)));
    assert_checksums_valid(&back);
    assert_eq!(fixture.counter("service_to_client"), 1);

    // The node's other packets to the pod pass as they are.
    let probe = ipv4_packet(
        NODE_IP,
        POD_A_IP,
        6,
        &tcp((NODE_IP, 50000), (POD_A_IP, 8080), TCP_SYN),
    );
    let (verdict, out) = fixture.run_program(names::TO_POD_PROGRAM, &probe);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out, probe);
}

/// The frontend VIP:53/udp with `backend`, and pod A's datagram to it as
/// the backend got it.
fn udp_to_the_frontend(backend_at: Backend) -> (Fixture, Vec<u8>) {
    let mut fixture = with_service(&[]);
    fixture
        .maps
        .services
        .program(frontend(53, 17), 2, (&[], &[backend_at]), 0, 0)
        .unwrap();
    let datagram = udp((POD_A_IP, CLIENT_PORT), (VIP, 53), true);
    let (verdict, sent) = fixture.run(&ipv4_packet(POD_A_IP, VIP, 17, &datagram));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    (fixture, sent)
}

/// Checks an ICMP error delivered to pod A about its datagram to VIP:53:
/// from `outer_source`, quoting the datagram as pod A sent it.
fn assert_error_restored(back: &[u8], outer_source: Ipv4Addr) {
    assert_checksums_valid(back);
    assert_eq!(&back[26..30], &outer_source.octets());
    assert_eq!(&back[30..34], &POD_A_IP.octets());
    let quoted = &back[34 + 8..];
    assert_eq!(checksum(&quoted[..20]), 0, "quoted header checksum");
    assert_eq!(
        (&quoted[12..16], &quoted[16..20]),
        (&POD_A_IP.octets()[..], &VIP.octets()[..])
    );
    assert_eq!(
        (
            u16::from_be_bytes([quoted[20], quoted[21]]),
            u16::from_be_bytes([quoted[22], quoted[23]])
        ),
        (CLIENT_PORT, 53)
    );
}

#[test]
fn icmp_errors_about_a_service_packet_reach_the_client_about_the_frontend() {
    // A backend on this node with nothing on the port: port unreachable,
    // which must come from the frontend and quote it, or the client's
    // socket never hears of it.
    let (mut fixture, sent) = udp_to_the_frontend(backend(POD_B_IP, 5353));
    with_pod_b_on_the_test_device(&mut fixture);
    let error = icmp(3, 3, [0; 4], &sent[14..14 + 28]);
    let (verdict, back) = fixture.run(&ipv4_packet(POD_B_IP, POD_A_IP, 1, &error));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_error_restored(&back, VIP);
    assert_eq!(fixture.counter("service_to_client"), 1);

    // A backend on another node, its error through the tunnel.
    let (mut fixture, sent) = udp_to_the_frontend(backend(REMOTE_POD_IP, 5353));
    let error = icmp(3, 3, [0; 4], &sent[50 + 14..50 + 14 + 28]);
    let (verdict, back) = fixture.run_program(
        names::FROM_UPLINK_PROGRAM,
        &vxlan_frame(
            REMOTE_NODE_IP,
            VNI,
            &ipv4_packet(REMOTE_POD_IP, POD_A_IP, 1, &error),
        ),
    );
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_error_restored(&back, VIP);

    // A backend outside the cluster, reached through SNAT: a router on the
    // way answers the masqueraded datagram, the NAT restores the client's
    // address and port in the quote, Services the frontend; the router
    // keeps its own address as the source.
    let (mut fixture, sent) = udp_to_the_frontend(backend(EXTERNAL_IP, 53));
    assert_eq!(addresses(&sent).0.0, NODE_IP, "masqueraded");
    let router = Ipv4Addr::new(192, 0, 2, 1);
    let error = icmp(11, 0, [0; 4], &sent[14..14 + 28]);
    let (verdict, back) = fixture.run_program(
        names::FROM_UPLINK_PROGRAM,
        &on_uplink(ipv4_packet(router, NODE_IP, 1, &error)),
    );
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_error_restored(&back, router);
}

const NODE_PORT: u16 = 30080;
const OUTSIDE_CLIENT_PORT: u16 = 51234;

/// A fixture whose node serves `backends` at its node IP's NODE_PORT.
fn with_node_port(backends: &[Backend]) -> Fixture {
    let mut fixture = with_service(&[]);
    let key = ServiceKey {
        address: NODE_PORT_ADDRESS,
        ..frontend(NODE_PORT, 6)
    };
    fixture
        .maps
        .services
        .program(key, 3, (&[], backends), 0, 0)
        .unwrap();
    fixture
}

/// An outside client's TCP segment to the node port, as the uplink gets it.
fn from_outside_to_the_node_port(flags: u8) -> Vec<u8> {
    on_uplink(ipv4_packet(
        EXTERNAL_IP,
        NODE_IP,
        6,
        &tcp(
            (EXTERNAL_IP, OUTSIDE_CLIENT_PORT),
            (NODE_IP, NODE_PORT),
            flags,
        ),
    ))
}

/// Checks an answer sent out of the uplink to the outside client: from the
/// node port, checksums valid.
fn assert_answered_from_the_node_port(verdict: u32, out: &[u8]) {
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(
        addresses(out),
        ((NODE_IP, NODE_PORT), (EXTERNAL_IP, OUTSIDE_CLIENT_PORT))
    );
    assert_checksums_valid(out);
}

#[test]
fn an_outside_client_reaches_a_node_port_and_its_answers_come_from_it() {
    // A backend on this node: the client is masqueraded to the node IP, so
    // the answer comes back here wherever the backend is.
    let mut fixture = with_node_port(&[backend(POD_B_IP, 8080)]);
    let (verdict, out) = fixture.run_program(
        names::FROM_UPLINK_PROGRAM,
        &from_outside_to_the_node_port(TCP_SYN),
    );
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let ((source, node_port), destination) = addresses(&out);
    assert_eq!(source, NODE_IP);
    assert!((NAT_PORT_MIN..=NAT_PORT_MAX).contains(&node_port));
    assert_eq!(destination, (POD_B_IP, 8080));
    assert_checksums_valid(&out);
    assert_eq!(fixture.counter("routed_to_pod"), 1);

    with_pod_b_on_the_test_device(&mut fixture);
    let answer = ipv4_packet(
        POD_B_IP,
        NODE_IP,
        6,
        &tcp((POD_B_IP, 8080), (NODE_IP, node_port), TCP_SYN_ACK),
    );
    let (verdict, back) = fixture.run(&answer);
    assert_answered_from_the_node_port(verdict, &back);
    assert_eq!(fixture.counter("service_reply_to_outside"), 1);

    // A backend on another node: through the tunnel, and its answer back
    // through it.
    let mut fixture = with_node_port(&[backend(REMOTE_POD_IP, 8080)]);
    let (verdict, out) = fixture.run_program(
        names::FROM_UPLINK_PROGRAM,
        &from_outside_to_the_node_port(TCP_SYN),
    );
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(fixture.counter("encapsulated"), 1);
    let ((source, node_port), destination) = addresses(&out[50..]);
    assert_eq!((source, destination), (NODE_IP, (REMOTE_POD_IP, 8080)));
    assert_checksums_valid(&out[50..]);
    let answer = ipv4_packet(
        REMOTE_POD_IP,
        NODE_IP,
        6,
        &tcp((REMOTE_POD_IP, 8080), (NODE_IP, node_port), TCP_SYN_ACK),
    );
    let (verdict, back) = fixture.run_program(
        names::FROM_UPLINK_PROGRAM,
        &vxlan_frame(REMOTE_NODE_IP, VNI, &answer),
    );
    assert_answered_from_the_node_port(verdict, &back);

    // The node's own traffic passes as it is, also from the tunnel.
    let ssh = on_uplink(ipv4_packet(
        EXTERNAL_IP,
        NODE_IP,
        6,
        &tcp((EXTERNAL_IP, OUTSIDE_CLIENT_PORT), (NODE_IP, 22), TCP_SYN),
    ));
    let (verdict, out) = fixture.run_program(names::FROM_UPLINK_PROGRAM, &ssh);
    assert_eq!((verdict, out), (TC_ACT_OK, ssh));
    let probe = ipv4_packet(
        REMOTE_POD_IP,
        NODE_IP,
        6,
        &tcp((REMOTE_POD_IP, 50000), (NODE_IP, 10250), TCP_SYN),
    );
    let (verdict, _) = fixture.run_program(
        names::FROM_UPLINK_PROGRAM,
        &vxlan_frame(REMOTE_NODE_IP, VNI, &probe),
    );
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(fixture.counter("decapsulated_to_host"), 1);
}

#[test]
fn with_external_traffic_policy_local_outside_clients_keep_their_address() {
    // The node port's entry for everyone has a backend here and one on
    // another node; outside clients get only this node's, unmasqueraded.
    let mut fixture = with_node_port(&[backend(REMOTE_POD_IP, 8080)]);
    let everyone = ServiceKey {
        address: NODE_PORT_ADDRESS,
        ..frontend(NODE_PORT, 6)
    };
    let outside = ServiceKey {
        scope: frontend_scope::OUTSIDE_LOCAL,
        ..everyone
    };
    let both = [backend(REMOTE_POD_IP, 8080), backend(POD_B_IP, 8080)];
    let services = &mut fixture.maps.services;
    services
        .program(
            everyone,
            3,
            (&both[..1], &both),
            0,
            service_flags::OUTSIDE_LOCAL,
        )
        .unwrap();
    services
        .program(outside, 4, (&[], &both[1..]), 0, 0)
        .unwrap();
    fixture
        .maps
        .set_node_config(NodeConfig {
            services: 1,
            outside_local: 1,
            ..node_config()
        })
        .unwrap();
    for _ in 0..8 {
        let (verdict, out) = fixture.run_program(
            names::FROM_UPLINK_PROGRAM,
            &from_outside_to_the_node_port(TCP_SYN),
        );
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(
            addresses(&out),
            ((EXTERNAL_IP, OUTSIDE_CLIENT_PORT), (POD_B_IP, 8080)),
            "this node's backend, the client's own address"
        );
        assert_checksums_valid(&out);
    }
    // The backend answers the client itself: from the node port, not masqueraded.
    with_pod_b_on_the_test_device(&mut fixture);
    let answer = ipv4_packet(
        POD_B_IP,
        EXTERNAL_IP,
        6,
        &tcp(
            (POD_B_IP, 8080),
            (EXTERNAL_IP, OUTSIDE_CLIENT_PORT),
            TCP_SYN_ACK,
        ),
    );
    let (verdict, back) = fixture.run(&answer);
    assert_answered_from_the_node_port(verdict, &back);
    assert_eq!(fixture.counter("masqueraded"), 0);
    // Its other traffic out is masqueraded as before.
    let own = ipv4_packet(
        POD_B_IP,
        EXTERNAL_IP,
        6,
        &tcp((POD_B_IP, 8081), (EXTERNAL_IP, 443), TCP_SYN),
    );
    let (_, out) = fixture.run(&own);
    assert_eq!(addresses(&out).0.0, NODE_IP);

    // Without a backend here, outside clients are dropped.
    fixture
        .maps
        .services
        .program(outside, 4, (&both[1..], &[]), 0, 0)
        .unwrap();
    let (verdict, _) = fixture.run_program(
        names::FROM_UPLINK_PROGRAM,
        &from_outside_to_the_node_port(TCP_SYN),
    );
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(fixture.counter("drop_service_no_local_backend"), 1);
}

#[test]
fn a_fragmented_datagram_to_a_frontend_reaches_the_backend_whole_and_its_answer_too() {
    let (mut fixture, _) = udp_to_the_frontend(backend(POD_B_IP, 5353));
    let payload: Vec<u8> = (0..200u8).collect();
    let datagram = ipv4_packet(
        POD_A_IP,
        VIP,
        17,
        &udp_frame((POD_A_IP, 40999), (VIP, 53), &payload)[34..],
    );
    let pieces = fragments(&datagram, 64, 0x4242);
    assert_eq!(pieces.len(), 4);
    let out = run_pieces(&mut fixture, names::FROM_POD_PROGRAM, &pieces);
    for piece in &out {
        assert_eq!(
            &piece[30..34],
            &POD_B_IP.octets(),
            "every piece to the backend"
        );
    }
    let whole = reassembled(&out);
    assert_checksums_valid(&whole);
    assert_eq!(addresses(&whole), ((POD_A_IP, 40999), (POD_B_IP, 5353)));

    // The backend's fragmented answer comes back from the frontend.
    with_pod_b_on_the_test_device(&mut fixture);
    let answer = ipv4_packet(
        POD_B_IP,
        POD_A_IP,
        17,
        &udp_frame((POD_B_IP, 5353), (POD_A_IP, 40999), &payload)[34..],
    );
    let back = run_pieces(
        &mut fixture,
        names::FROM_POD_PROGRAM,
        &fragments(&answer, 64, 0x0777),
    );
    for piece in &back {
        assert_eq!(
            &piece[26..30],
            &VIP.octets(),
            "every piece from the frontend"
        );
    }
    let whole = reassembled(&back);
    assert_checksums_valid(&whole);
    assert_eq!(addresses(&whole), ((VIP, 53), (POD_A_IP, 40999)));

    // A later piece whose first never came goes as it is.
    let stray = fragments(&datagram, 64, 0x0999).remove(2);
    let (_, out) = fixture.run(&stray);
    assert_eq!(&out[30..34], &VIP.octets());
}

#[test]
fn an_outside_client_of_a_node_port_without_endpoints_is_refused_at_once() {
    // "should be rejected when no endpoints exist", for a client outside
    // the cluster: kube-proxy REJECTs at node ports and external IPs too.
    let mut fixture = with_node_port(&[]);
    let packet = from_outside_to_the_node_port(TCP_SYN);
    let (verdict, reply) = fixture.run_program(names::FROM_UPLINK_PROGRAM, &packet);
    assert_eq!(verdict, TC_ACT_REDIRECT, "sent back out of the uplink");
    assert_eq!(
        (&reply[0..6], &reply[6..12]),
        (&packet[6..12], &packet[0..6]),
        "back to the frame's sender"
    );
    let ip = &reply[14..34];
    assert_eq!(
        (ip[9], &ip[12..16], &ip[16..20]),
        (1, &NODE_IP.octets()[..], &EXTERNAL_IP.octets()[..])
    );
    let icmp = &reply[34..];
    assert_eq!((icmp[0], icmp[1]), (3, 3), "port unreachable");
    assert_eq!(
        &icmp[8..],
        &packet[14..14 + 28],
        "quotes the client's packet"
    );
    assert_checksums_valid(&reply);
    assert_eq!(fixture.counter("drop_service_no_backend"), 1);
    assert_eq!(fixture.counter("masqueraded"), 0);
}

#[test]
fn a_load_balancer_ip_with_source_ranges_takes_new_connections_only_from_them() {
    let load_balancer = Ipv4Addr::new(203, 0, 113, 50);
    let mut fixture = with_service(&[]);
    let key = ServiceKey {
        address: load_balancer.octets(),
        ..frontend(80, 6)
    };
    let to_load_balancer = |port: u16| {
        ipv4_packet(
            POD_A_IP,
            load_balancer,
            6,
            &tcp((POD_A_IP, port), (load_balancer, 80), TCP_SYN),
        )
    };
    let elsewhere: Ipv4Network = "198.51.100.0/24".parse().unwrap();
    let pods: Ipv4Network = "10.244.0.0/24".parse().unwrap();
    let services = &mut fixture.maps.services;
    services
        .set_source_ranges(4, (&[], &[elsewhere]), true)
        .unwrap();
    services
        .program(
            key,
            4,
            (&[], &[backend(POD_B_IP, 8080)]),
            0,
            service_flags::SOURCE_RANGES,
        )
        .unwrap();
    let (verdict, _) = fixture.run(&to_load_balancer(CLIENT_PORT));
    assert_eq!(verdict, TC_ACT_SHOT, "pod A is outside the ranges");
    assert_eq!(fixture.counter("drop_service_source_range"), 1);

    fixture
        .maps
        .services
        .set_source_ranges(4, (&[elsewhere], &[elsewhere, pods]), true)
        .unwrap();
    let (verdict, out) = fixture.run(&to_load_balancer(CLIENT_PORT + 1));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(addresses(&out).1, (POD_B_IP, 8080), "in a range: served");
    // A range taken away keeps the connection under way (its flow is kept).
    fixture
        .maps
        .services
        .set_source_ranges(4, (&[elsewhere, pods], &[elsewhere]), false)
        .unwrap();
    let later = ipv4_packet(
        POD_A_IP,
        load_balancer,
        6,
        &tcp((POD_A_IP, CLIENT_PORT + 1), (load_balancer, 80), TCP_ACK),
    );
    assert_eq!(fixture.run(&later).0, TC_ACT_REDIRECT);
    assert_eq!(
        fixture.run(&to_load_balancer(CLIENT_PORT + 2)).0,
        TC_ACT_SHOT
    );
}

#[test]
fn node_ports_serve_only_frames_for_this_node_at_its_own_addresses() {
    // A switch flooding a frame for another host, and a frame for another
    // node's address sent to this node's MAC: the kernel's to discard,
    // never served (before, both nodes answered the same SYN).
    let mut fixture = with_node_port(&[backend(POD_B_IP, 8080)]);
    let flooded = for_another_host(ipv4_packet(
        EXTERNAL_IP,
        NODE_IP,
        6,
        &tcp(
            (EXTERNAL_IP, OUTSIDE_CLIENT_PORT),
            (NODE_IP, NODE_PORT),
            TCP_SYN,
        ),
    ));
    let (verdict, out) = fixture.run_program(names::FROM_UPLINK_PROGRAM, &flooded);
    assert_eq!((verdict, out), (TC_ACT_OK, flooded));
    let to_another_node = on_uplink(ipv4_packet(
        EXTERNAL_IP,
        REMOTE_NODE_IP,
        6,
        &tcp(
            (EXTERNAL_IP, OUTSIDE_CLIENT_PORT),
            (REMOTE_NODE_IP, NODE_PORT),
            TCP_SYN,
        ),
    ));
    let (verdict, out) = fixture.run_program(names::FROM_UPLINK_PROGRAM, &to_another_node);
    assert_eq!((verdict, out), (TC_ACT_OK, to_another_node));
    assert_eq!(fixture.counter("service_to_backend"), 0);
    assert_eq!(fixture.counter("masqueraded"), 0);
    // The same SYN for this node is served.
    let (verdict, _) = fixture.run_program(
        names::FROM_UPLINK_PROGRAM,
        &from_outside_to_the_node_port(TCP_SYN),
    );
    assert_eq!(verdict, TC_ACT_REDIRECT);
}

#[test]
fn node_ports_give_martian_sources_no_backend_and_no_nat_state() {
    let mut fixture = with_node_port(&[backend(POD_B_IP, 8080)]);
    let martians = [
        Ipv4Addr::new(0, 0, 0, 0),
        Ipv4Addr::new(0, 1, 2, 3),
        Ipv4Addr::new(127, 0, 0, 1),
        Ipv4Addr::new(224, 0, 0, 1),
        Ipv4Addr::new(240, 0, 0, 1),
        Ipv4Addr::BROADCAST,
        NODE_IP,
    ];
    for source in martians {
        let syn = on_uplink(ipv4_packet(
            source,
            NODE_IP,
            6,
            &tcp((source, OUTSIDE_CLIENT_PORT), (NODE_IP, NODE_PORT), TCP_SYN),
        ));
        let (verdict, _) = fixture.run_program(names::FROM_UPLINK_PROGRAM, &syn);
        assert_eq!(verdict, TC_ACT_SHOT, "{source}");
    }
    assert_eq!(
        fixture.counter("drop_martian_source"),
        martians.len() as u64
    );
    assert_eq!(fixture.counter("masqueraded"), 0);
    assert_eq!(fixture.counter("service_to_backend"), 0);
}

/// `client`'s TCP segment to the node port, as the uplink gets it.
fn from_client_to_the_node_port(
    client: (Ipv4Addr, u16),
    flags: u8,
    numbers: (u32, u32),
) -> Vec<u8> {
    on_uplink(ipv4_packet(
        client.0,
        NODE_IP,
        6,
        &tcp_segment(client, (NODE_IP, NODE_PORT), flags, numbers, 1000),
    ))
}

#[test]
fn spoofed_syns_at_a_node_port_hold_no_port_nor_row_a_client_needs() {
    // The fixture's NAT range has 4 ports toward the backend.
    let mut fixture = with_node_port(&[backend(POD_B_IP, 8080)]);
    with_pod_b_on_the_test_device(&mut fixture);
    let client = (EXTERNAL_IP, OUTSIDE_CLIENT_PORT);
    let (verdict, out) = fixture.run_program(
        names::FROM_UPLINK_PROGRAM,
        &from_client_to_the_node_port(client, TCP_SYN, (1000, 0)),
    );
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let ((_, port), _) = addresses(&out);
    let answer = |fixture: &mut Fixture, flags, numbers| {
        let segment = tcp_segment((POD_B_IP, 8080), (NODE_IP, port), flags, numbers, 1000);
        let (verdict, _) = fixture.run(&ipv4_packet(POD_B_IP, NODE_IP, 6, &segment));
        assert_eq!(verdict, TC_ACT_REDIRECT);
    };
    answer(&mut fixture, TCP_SYN_ACK, (5000, 1001));
    let (verdict, _) = fixture.run_program(
        names::FROM_UPLINK_PROGRAM,
        &from_client_to_the_node_port(client, TCP_ACK, (1001, 5001)),
    );
    assert_eq!(verdict, TC_ACT_REDIRECT);

    // 40 spoofed sources, each a SYN the backend answers; the half-open
    // connections give their ports up once older than a handshake (20 ms).
    for index in 0..40u32 {
        std::thread::sleep(std::time::Duration::from_millis(25));
        let spoofed = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 51, 100, 0)) + index);
        let (verdict, out) = fixture.run_program(
            names::FROM_UPLINK_PROGRAM,
            &from_client_to_the_node_port((spoofed, 1024), TCP_SYN, (7, 0)),
        );
        assert_eq!(verdict, TC_ACT_REDIRECT, "SYN {index}");
        let ((_, spoofed_port), _) = addresses(&out);
        let syn_ack = tcp((POD_B_IP, 8080), (NODE_IP, spoofed_port), TCP_SYN_ACK);
        fixture.run(&ipv4_packet(POD_B_IP, NODE_IP, 6, &syn_ack));
    }
    assert_eq!(fixture.counter("drop_nat_exhausted"), 0);
    // The established client kept its port, and one row counts every
    // outside client.
    let (verdict, out) = fixture.run_program(
        names::FROM_UPLINK_PROGRAM,
        &from_client_to_the_node_port(client, TCP_ACK, (1001, 5001)),
    );
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(addresses(&out).0, (NODE_IP, port));
    let nat = fixture.maps.take_nat().unwrap();
    let rows = nat.pods().unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].pod.octets(), OUTSIDE_CLIENTS);
    assert_eq!(rows[0].counts.opened, 41);
    assert_eq!(rows[0].counts.evicted, 41 - 4);

    // Three forged resets in the client's name, off the window the backend
    // offered, leave its connection established.
    for seq in [123_456_789, 3_000_000_000, 1001 + 100_000] {
        fixture.run_program(
            names::FROM_UPLINK_PROGRAM,
            &from_client_to_the_node_port(client, TCP_RST, (seq, 0)),
        );
    }
    assert_eq!(fixture.counter("nat_close_ignored"), 3);
    let egress = nat
        .entries()
        .unwrap()
        .into_iter()
        .find(|(key, _)| key.src == EXTERNAL_IP.octets())
        .unwrap()
        .1;
    assert_eq!((egress.state, egress.assured), (conn_state::ESTABLISHED, 1));
}

#[test]
fn a_fragmented_datagram_from_outside_to_a_node_port_reaches_the_backend_whole_and_its_answer_too()
{
    let mut fixture = with_service(&[]);
    let key = ServiceKey {
        address: NODE_PORT_ADDRESS,
        ..frontend(NODE_PORT, 17)
    };
    fixture
        .maps
        .services
        .program(key, 3, (&[], &[backend(POD_B_IP, 5353)]), 0, 0)
        .unwrap();
    let client = (EXTERNAL_IP, OUTSIDE_CLIENT_PORT);
    let payload: Vec<u8> = (0..200u8).collect();
    let datagram = ipv4_packet(
        client.0,
        NODE_IP,
        17,
        &udp_frame(client, (NODE_IP, NODE_PORT), &payload)[34..],
    );
    let pieces: Vec<Vec<u8>> = fragments(&datagram, 64, 0x4343)
        .into_iter()
        .map(on_uplink)
        .collect();
    assert_eq!(pieces.len(), 4);
    let out = run_pieces(&mut fixture, names::FROM_UPLINK_PROGRAM, &pieces);
    for piece in &out {
        assert_eq!(
            (&piece[26..30], &piece[30..34]),
            (&NODE_IP.octets()[..], &POD_B_IP.octets()[..]),
            "every piece to the backend, from the node"
        );
    }
    let whole = reassembled(&out);
    assert_checksums_valid(&whole);
    let ((_, node_port), to) = addresses(&whole);
    assert_eq!(to, (POD_B_IP, 5353));

    // The backend's fragmented answer goes back to the client whole, from
    // the node port.
    with_pod_b_on_the_test_device(&mut fixture);
    let answer = ipv4_packet(
        POD_B_IP,
        NODE_IP,
        17,
        &udp_frame((POD_B_IP, 5353), (NODE_IP, node_port), &payload)[34..],
    );
    let back = run_pieces(
        &mut fixture,
        names::FROM_POD_PROGRAM,
        &fragments(&answer, 64, 0x0778),
    );
    for piece in &back {
        assert_eq!(
            (&piece[26..30], &piece[30..34]),
            (&NODE_IP.octets()[..], &EXTERNAL_IP.octets()[..]),
            "every piece from the node to the client"
        );
    }
    let whole = reassembled(&back);
    assert_checksums_valid(&whole);
    assert_eq!(addresses(&whole), ((NODE_IP, NODE_PORT), client));
}
