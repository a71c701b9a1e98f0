// Above 400 lines: each file under tests/ is a binary of its own; one packet case per test, fixtures shared.
//! Egress SNAT and reverse translation run by the kernel on hand-built
//! packets (BPF_PROG_TEST_RUN): rewritten addresses and ports, every checksum,
//! port choice, exhaustion, unsolicited traffic, fragments, blind resets and
//! each pod's share of the ports and of the table.

use std::{net::Ipv4Addr, time::Duration};

use dataplane_common::NatEntry;
use dataplane_common::{
    NodeConfig, PORT_SHARE_WHOLE, conn_state, names, nat_direction, pod_may_use_port,
};
use dataplane_tests::test_run::*;
use dataplane_user::maps::NatMap;

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
const TCP_SYN_ACK: u8 = 0x12;

fn run_egress(fixture: &mut Fixture, protocol: u8, l4: &[u8]) -> (u32, Vec<u8>) {
    fixture.run(&ipv4_packet(POD_A_IP, EXTERNAL_IP, protocol, l4))
}

#[test]
fn tcp_is_masqueraded_keeping_a_free_port_and_valid_checksums() {
    let mut fixture = Fixture::new().unwrap();
    let syn = tcp((POD_A_IP, NAT_PORT_MIN + 1), (EXTERNAL_IP, 80), TCP_SYN);
    let (verdict, out) = run_egress(&mut fixture, 6, &syn);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(
        addresses(&out),
        ((NODE_IP, NAT_PORT_MIN + 1), (EXTERNAL_IP, 80)),
        "original port kept"
    );
    assert_eq!(out[14 + 8], 63, "one routing hop");
    assert_checksums_valid(&out);
    assert_eq!(&out[34 + 20..], b"payload!");
    assert_eq!(fixture.counter("masqueraded"), 1);

    // The reply is translated back to the pod, checksums intact.
    let reply = tcp((EXTERNAL_IP, 80), (NODE_IP, NAT_PORT_MIN + 1), TCP_SYN_ACK);
    let (verdict, back) = fixture.run_program(
        names::FROM_UPLINK_PROGRAM,
        &on_uplink(ipv4_packet(EXTERNAL_IP, NODE_IP, 6, &reply)),
    );
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(
        addresses(&back),
        ((EXTERNAL_IP, 80), (POD_A_IP, NAT_PORT_MIN + 1))
    );
    assert_eq!(
        (&back[0..6], &back[6..12]),
        (&POD_A_MAC[..], &HOST_A_MAC[..])
    );
    assert_checksums_valid(&back);
    assert_eq!(fixture.counter("nat_reply_to_pod"), 1);
}

#[test]
fn ports_outside_the_range_are_translated_into_it_and_stay_per_connection() {
    let mut fixture = Fixture::new().unwrap();
    let syn = tcp((POD_A_IP, 33333), (EXTERNAL_IP, 443), TCP_SYN);
    let (_, first) = run_egress(&mut fixture, 6, &syn);
    let ((_, port), _) = addresses(&first);
    assert!((NAT_PORT_MIN..=NAT_PORT_MAX).contains(&port), "{port}");
    // Later packets of the same connection use the same port.
    let (_, again) = run_egress(
        &mut fixture,
        6,
        &tcp((POD_A_IP, 33333), (EXTERNAL_IP, 443), 0x10),
    );
    assert_eq!(addresses(&again).0, (NODE_IP, port));
    assert_checksums_valid(&again);
}

#[test]
fn udp_checksums_are_updated_and_a_zero_checksum_stays_zero() {
    let mut fixture = Fixture::new().unwrap();
    let (verdict, out) = run_egress(
        &mut fixture,
        17,
        &udp((POD_A_IP, 5353), (EXTERNAL_IP, 53), true),
    );
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(addresses(&out).0.0, NODE_IP);
    assert_checksums_valid(&out);

    let (verdict, out) = run_egress(
        &mut fixture,
        17,
        &udp((POD_A_IP, 5354), (EXTERNAL_IP, 53), false),
    );
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(
        &out[34 + 6..34 + 8],
        &[0, 0],
        "no checksum stays no checksum"
    );
    assert_eq!(checksum(&out[14..34]), 0);
}

#[test]
fn icmp_echo_uses_the_identifier_as_the_port() {
    let mut fixture = Fixture::new().unwrap();
    let request = icmp(8, 0, [0x12, 0x34, 0, 1], b"ping data");
    let (verdict, out) = run_egress(&mut fixture, 1, &request);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let id = u16::from_be_bytes([out[38], out[39]]);
    assert!(
        (NAT_PORT_MIN..=NAT_PORT_MAX).contains(&id),
        "identifier {id:#x} translated into the range"
    );
    assert_checksums_valid(&out);

    let reply = icmp(0, 0, [out[38], out[39], 0, 1], b"ping data");
    let (verdict, back) = fixture.run_program(
        names::FROM_UPLINK_PROGRAM,
        &on_uplink(ipv4_packet(EXTERNAL_IP, NODE_IP, 1, &reply)),
    );
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(&back[30..34], &POD_A_IP.octets());
    assert_eq!(
        &back[38..40],
        &[0x12, 0x34],
        "the pod's own identifier again"
    );
    assert_checksums_valid(&back);
}

#[test]
fn icmp_errors_about_a_translated_packet_reach_the_pod_restored() {
    let mut fixture = Fixture::new().unwrap();
    let datagram = udp((POD_A_IP, 5353), (EXTERNAL_IP, 53), true);
    let (_, sent) = run_egress(&mut fixture, 17, &datagram);
    // A router answers the translated packet: fragmentation needed, MTU 1400.
    let quoted = &sent[14..14 + 28];
    let error = icmp(3, 4, [0, 0, 0x05, 0x78], quoted);
    let router = Ipv4Addr::new(192, 0, 2, 1);
    let (verdict, back) = fixture.run_program(
        names::FROM_UPLINK_PROGRAM,
        &on_uplink(ipv4_packet(router, NODE_IP, 1, &error)),
    );
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(
        &back[30..34],
        &POD_A_IP.octets(),
        "outer destination is the pod"
    );
    assert_checksums_valid(&back);
    let restored = &back[34 + 8..];
    assert_eq!(
        &restored[12..16],
        &POD_A_IP.octets(),
        "quoted source is the pod again"
    );
    assert_eq!(
        u16::from_be_bytes([restored[20], restored[21]]),
        5353,
        "quoted source port too"
    );
    assert_eq!(checksum(&restored[..20]), 0, "quoted header checksum");
    assert_eq!(fixture.counter("nat_reply_to_pod"), 1);
}

#[test]
fn a_full_port_range_is_reported_as_exhaustion() {
    let mut fixture = Fixture::new().unwrap();
    let ports = usize::from(NAT_PORT_MAX - NAT_PORT_MIN + 1);
    // Established flows: none gives its port up.
    for source_port in 0..ports as u16 {
        let flow = ((POD_A_IP, 1000 + source_port), (EXTERNAL_IP, 53));
        assert!(open_established_udp(&mut fixture, flow.0, flow.1).is_some());
    }
    let (verdict, _) = run_egress(
        &mut fixture,
        17,
        &udp((POD_A_IP, 2000), (EXTERNAL_IP, 53), true),
    );
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(fixture.counter("drop_nat_exhausted"), 1);
    // Another destination has all ports free again.
    let (verdict, _) = run_egress(
        &mut fixture,
        17,
        &udp((POD_A_IP, 2000), (EXTERNAL_IP, 54), true),
    );
    assert_eq!(verdict, TC_ACT_REDIRECT);
    // Existing connections are untouched.
    let (verdict, _) = run_egress(
        &mut fixture,
        17,
        &udp((POD_A_IP, 1000), (EXTERNAL_IP, 53), true),
    );
    assert_eq!(verdict, TC_ACT_REDIRECT);
}

#[test]
fn unsolicited_traffic_to_the_nat_range_is_dropped_and_other_traffic_passes() {
    let mut fixture = Fixture::new().unwrap();
    let knock = on_uplink(ipv4_packet(
        EXTERNAL_IP,
        NODE_IP,
        17,
        &udp((EXTERNAL_IP, 53), (NODE_IP, NAT_PORT_MIN), true),
    ));
    assert_eq!(
        fixture.run_program(names::FROM_UPLINK_PROGRAM, &knock).0,
        TC_ACT_SHOT
    );
    assert_eq!(fixture.counter("drop_nat_no_mapping"), 1);

    let ssh = on_uplink(ipv4_packet(
        EXTERNAL_IP,
        NODE_IP,
        6,
        &tcp((EXTERNAL_IP, 50000), (NODE_IP, 22), TCP_SYN),
    ));
    let (verdict, out) = fixture.run_program(names::FROM_UPLINK_PROGRAM, &ssh);
    assert_eq!(
        (verdict, out),
        (TC_ACT_OK, ssh),
        "the node's own traffic is not NAT's business"
    );
}

#[test]
fn protocols_nat_cannot_translate_are_dropped() {
    let mut fixture = Fixture::new().unwrap();
    let (verdict, _) = run_egress(&mut fixture, 47, &[0u8; 16]);
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(fixture.counter("drop_nat_unsupported"), 1);
}

#[test]
fn fragmented_datagrams_are_translated_both_ways_and_going_out_in_any_order() {
    let mut fixture = Fixture::new().unwrap();
    let payload: Vec<u8> = (0..200u8).collect();
    let datagram = udp_frame((POD_A_IP, 5353), (EXTERNAL_IP, 53), &payload);
    let mut pieces = fragments(&datagram, 64, 0x4242);
    assert_eq!(pieces.len(), 4);
    // The pod's later pieces first: they need nothing the first one leaves.
    pieces.rotate_left(1);
    let out = run_pieces(&mut fixture, names::FROM_POD_PROGRAM, &pieces);
    for piece in &out {
        assert_eq!(&piece[26..30], &NODE_IP.octets(), "source is the node");
    }
    for (sent, piece) in pieces.iter().zip(&out).take(3) {
        assert_eq!(&piece[34..], &sent[34..], "a later piece's bytes untouched");
    }
    let whole = reassembled(&out);
    assert_checksums_valid(&whole);
    let ((_, port), _) = addresses(&whole);
    assert!((NAT_PORT_MIN..=NAT_PORT_MAX).contains(&port), "{port}");
    assert_eq!(fixture.counter("masqueraded"), 4);

    // A fragmented answer: the first piece records where the rest go.
    let answer = on_uplink(ipv4_packet(
        EXTERNAL_IP,
        NODE_IP,
        17,
        &udp_frame((EXTERNAL_IP, 53), (NODE_IP, port), &payload)[34..],
    ));
    let pieces = fragments(&answer, 64, 0x0777);
    let back = run_pieces(&mut fixture, names::FROM_UPLINK_PROGRAM, &pieces);
    for piece in &back {
        assert_eq!(&piece[30..34], &POD_A_IP.octets(), "to the pod");
        assert_eq!(&piece[0..6], &POD_A_MAC);
    }
    let whole = reassembled(&back);
    assert_checksums_valid(&whole);
    assert_eq!(addresses(&whole).1, (POD_A_IP, 5353));
    assert_eq!(fixture.counter("nat_reply_to_pod"), 4);

    // A later piece of another datagram (its first not seen), and one of the
    // node's own: to the node's stack, untouched.
    for id in [0x0778, 0x0999] {
        let stray = fragments(&answer, 64, id).remove(2);
        let (verdict, out) = fixture.run_program(names::FROM_UPLINK_PROGRAM, &stray);
        assert_eq!((verdict, out), (TC_ACT_OK, stray));
    }
    // The last piece can be shorter than a UDP header.
    let short = on_uplink(ipv4_packet(EXTERNAL_IP, NODE_IP, 17, &[0; 195]));
    let tail = fragments(&short, 192, 0x0777).remove(1);
    assert_eq!(tail.len(), 14 + 20 + 3);
    let (verdict, out) = fixture.run_program(names::FROM_UPLINK_PROGRAM, &tail);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(&out[30..34], &POD_A_IP.octets());
}

/// The state of the connection whose reply half is keyed by a packet from
/// `remote` to the node's `port` (TCP), as the programs left it.
fn reply_state(nat: &NatMap, remote: (Ipv4Addr, u16), port: u16) -> u8 {
    nat.entries()
        .unwrap()
        .into_iter()
        .find(|(key, _)| {
            key.direction == nat_direction::REPLY
                && key.src == remote.0.octets()
                && key.src_port == remote.1.to_be_bytes()
                && key.dst_port == port.to_be_bytes()
        })
        .map(|(_, entry)| entry.state)
        .expect("the connection is tracked")
}

#[test]
fn a_reply_fin_or_reset_closes_only_when_it_fits_what_the_pod_sent() {
    let mut fixture = Fixture::new().unwrap();
    let nat = fixture.maps.take_nat().unwrap();
    let (pod, server) = ((POD_A_IP, 40001), (EXTERNAL_IP, 443));
    let from_pod = |fixture: &mut Fixture, flags, numbers| {
        let (verdict, _) = run_egress(fixture, 6, &tcp_segment(pod, server, flags, numbers, 1000));
        assert_eq!(verdict, TC_ACT_REDIRECT);
    };
    let from_server = |fixture: &mut Fixture, flags, numbers| {
        let segment = tcp_segment(server, (NODE_IP, pod.1), flags, numbers, 0xffff);
        let (verdict, _) = fixture.run_program(
            names::FROM_UPLINK_PROGRAM,
            &on_uplink(ipv4_packet(EXTERNAL_IP, NODE_IP, 6, &segment)),
        );
        // Delivered either way: the pod's stack judges it too (RFC 5961).
        assert_eq!(verdict, TC_ACT_REDIRECT);
    };
    // Handshake and 8 bytes each way: the pod acknowledged up to 5009 and
    // offers a window of 1000.
    from_pod(&mut fixture, TCP_SYN, (1000, 0));
    from_server(&mut fixture, TCP_SYN_ACK, (5000, 1001));
    from_pod(&mut fixture, TCP_ACK, (1001, 5009));
    assert_eq!(reply_state(&nat, server, pod.1), conn_state::ANSWERED);

    // Blind: a sequence number outside the window, an acknowledgement that
    // is not what the pod sent.
    for (flags, numbers) in [
        (TCP_RST, (5009 + 100_000, 0)),
        (TCP_RST | TCP_ACK, (3_000_000_000, 12345)),
        (TCP_FIN | TCP_ACK, (4_999, 7)),
    ] {
        from_server(&mut fixture, flags, numbers);
        assert_eq!(
            reply_state(&nat, server, pod.1),
            conn_state::ANSWERED,
            "flags {flags:#x} at {numbers:?}"
        );
    }
    assert_eq!(fixture.counter("nat_close_ignored"), 3);

    // Within the window the pod offered: believed.
    from_server(&mut fixture, TCP_RST, (5009 + 500, 0));
    assert_eq!(reply_state(&nat, server, pod.1), conn_state::CLOSING);
    assert_eq!(fixture.counter("nat_close_ignored"), 3);

    // A refused connection: the reset acknowledges exactly the pod's SYN (and
    // the 8 bytes every segment built here carries).
    let refused = (POD_A_IP, 40002);
    let (_, out) = run_egress(
        &mut fixture,
        6,
        &tcp_segment(refused, server, TCP_SYN, (7000, 0), 1000),
    );
    let ((_, port), _) = addresses(&out);
    let reset = tcp_segment(server, (NODE_IP, port), TCP_RST | TCP_ACK, (0, 7009), 0);
    fixture.run_program(
        names::FROM_UPLINK_PROGRAM,
        &on_uplink(ipv4_packet(EXTERNAL_IP, NODE_IP, 6, &reset)),
    );
    assert_eq!(reply_state(&nat, server, port), conn_state::CLOSING);
    assert_eq!(fixture.counter("nat_close_ignored"), 3);
}

/// A UDP datagram from `pod` (registered on the test device) to `dst`; the
/// node port it left on, or `None` when it was dropped.
fn open_udp(fixture: &mut Fixture, pod: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Option<u16> {
    let (verdict, out) = fixture.run(&ipv4_packet(pod.0, dst.0, 17, &udp(pod, dst, true)));
    (verdict == TC_ACT_REDIRECT).then(|| addresses(&out).0.1)
}

/// A UDP flow from `pod` to `dst`, answered and spoken in again: established.
fn open_established_udp(
    fixture: &mut Fixture,
    pod: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
) -> Option<u16> {
    let port = open_udp(fixture, pod, dst)?;
    answer_udp(fixture, dst, port);
    assert_eq!(open_udp(fixture, pod, dst), Some(port));
    Some(port)
}

/// Pod B moved onto the device test runs use, beside pod A.
fn with_pod_b_on_the_test_device(fixture: &mut Fixture) {
    fixture
        .maps
        .insert_endpoint(
            POD_B_IP.into(),
            endpoint(LOOPBACK_IFINDEX, POD_B_MAC, HOST_B_MAC),
        )
        .unwrap();
}

#[test]
fn a_pod_gets_its_share_of_the_ports_toward_a_destination_and_others_the_rest() {
    let mut fixture = Fixture::new().unwrap();
    with_pod_b_on_the_test_device(&mut fixture);
    let (min, max) = (40000, 40255);
    let half = PORT_SHARE_WHOLE / 2;
    fixture
        .maps
        .set_node_config(NodeConfig {
            nat_port_min: min,
            nat_port_max: max,
            pod_port_share: half,
            ..node_config()
        })
        .unwrap();
    let share_of = |pod: Ipv4Addr| {
        (min..=max)
            .filter(|port| pod_may_use_port(pod.octets(), *port, half))
            .count()
    };
    // Pod A floods the destination with new flows (source ports outside the
    // range: each is translated).
    let dns = (EXTERNAL_IP, 53);
    let taken: Vec<u16> = (0..400)
        .filter_map(|flow| open_established_udp(&mut fixture, (POD_A_IP, 1000 + flow), dns))
        .collect();
    assert!(
        taken.len() <= share_of(POD_A_IP) && taken.len() * 10 >= share_of(POD_A_IP) * 9,
        "{} of {}",
        taken.len(),
        share_of(POD_A_IP)
    );
    assert!(
        taken
            .iter()
            .all(|port| pod_may_use_port(POD_A_IP.octets(), *port, half))
    );
    let refused = fixture.counter("drop_nat_exhausted");
    assert_eq!(refused, 400 - taken.len() as u64);
    // Pod B still reaches the same destination, on ports A may not use.
    // A first packet's bounded search (32 candidates, a quarter of them
    // free and B's here) fails now and then, as a client's retransmission
    // then finds: up to 3 tries per flow, as its stack would send.
    for flow in 0..20 {
        let port = (0..3)
            .find_map(|_| open_udp(&mut fixture, (POD_B_IP, 1000 + flow), dns))
            .expect("pod B finds a free port");
        assert!(!taken.contains(&port));
    }
    let nat = fixture.maps.take_nat().unwrap();
    let pods = nat.pods().unwrap();
    let a = pods.iter().find(|totals| totals.pod == POD_A_IP).unwrap();
    assert_eq!(a.counts.opened, taken.len() as u64);
    assert_eq!(a.counts.refused_ports, refused);
}

#[test]
fn a_pod_holding_its_share_of_the_table_is_refused_until_the_agent_collects() {
    let mut fixture = Fixture::new().unwrap();
    with_pod_b_on_the_test_device(&mut fixture);
    fixture
        .maps
        .set_node_config(NodeConfig {
            pod_connection_limit: 3,
            ..node_config()
        })
        .unwrap();
    // Each to another destination: ports are not what runs out.
    let to = |port: u16| (EXTERNAL_IP, port);
    for flow in 0..3 {
        assert!(open_udp(&mut fixture, (POD_A_IP, 1000), to(53 + flow)).is_some());
    }
    assert_eq!(open_udp(&mut fixture, (POD_A_IP, 1000), to(60)), None);
    assert_eq!(fixture.counter("drop_nat_pod_share"), 1);
    // Its existing connections carry on; other pods are not held back.
    assert!(open_udp(&mut fixture, (POD_A_IP, 1000), to(53)).is_some());
    assert!(open_udp(&mut fixture, (POD_B_IP, 1000), to(60)).is_some());

    // Once the agent collected one of them, there is room for one more.
    let mut nat = fixture.maps.take_nat().unwrap();
    nat.add_closed(POD_A_IP.octets(), 1).unwrap();
    assert!(open_udp(&mut fixture, (POD_A_IP, 1000), to(60)).is_some());
    assert_eq!(open_udp(&mut fixture, (POD_A_IP, 1000), to(61)), None);
    let a = nat
        .pods()
        .unwrap()
        .into_iter()
        .find(|totals| totals.pod == POD_A_IP)
        .unwrap();
    assert_eq!((a.holds(), a.counts.refused_share), (3, 2));
}

/// The egress half of the connection `pod` opened to `remote`.
fn egress_half(nat: &NatMap, pod: (Ipv4Addr, u16), remote: (Ipv4Addr, u16)) -> Option<NatEntry> {
    nat.entries()
        .unwrap()
        .into_iter()
        .find(|(key, _)| {
            key.direction == nat_direction::EGRESS
                && (key.src, key.src_port) == (pod.0.octets(), pod.1.to_be_bytes())
                && (key.dst, key.dst_port) == (remote.0.octets(), remote.1.to_be_bytes())
        })
        .map(|(_, entry)| entry)
}

/// A UDP answer from `remote` to the node's `port`, as the uplink gets it.
fn answer_udp(fixture: &mut Fixture, remote: (Ipv4Addr, u16), port: u16) {
    let answer = udp(remote, (NODE_IP, port), true);
    let (verdict, _) = fixture.run_program(
        names::FROM_UPLINK_PROGRAM,
        &on_uplink(ipv4_packet(remote.0, NODE_IP, 17, &answer)),
    );
    assert_eq!(verdict, TC_ACT_REDIRECT);
}

#[test]
fn a_full_table_evicts_the_oldest_connection_never_established() {
    let mut fixture = Fixture::new().unwrap();
    with_pod_b_on_the_test_device(&mut fixture);
    fixture
        .maps
        .set_node_config(NodeConfig {
            nat_port_min: 10000,
            nat_port_max: 65000,
            ..node_config()
        })
        .unwrap();
    // Pod A's flows fill the table (at most 20,000 per destination, so its
    // ports do not run out first). The first is established (answered, and
    // the pod spoke again); the second only answered: half open.
    let flow = |index: u32| {
        let (source, destination) = (1 + index % 20_000, 1 + index / 20_000);
        ((POD_A_IP, source as u16), (EXTERNAL_IP, destination as u16))
    };
    let (pod, remote) = flow(0);
    let port = open_udp(&mut fixture, pod, remote).unwrap();
    answer_udp(&mut fixture, remote, port);
    assert_eq!(open_udp(&mut fixture, pod, remote), Some(port));
    let (pod, remote) = flow(1);
    let port = open_udp(&mut fixture, pod, remote).unwrap();
    answer_udp(&mut fixture, remote, port);
    let connections = dataplane_common::MAX_NAT_CONNECTIONS;
    for index in 2..connections {
        let (pod, remote) = flow(index);
        assert!(
            open_udp(&mut fixture, pod, remote).is_some(),
            "flow {index}"
        );
    }
    assert_eq!(fixture.counter("nat_evicted"), 0);

    // Full: each of pod B's new connections takes the place of the oldest
    // flow never established, answered or not; the established one stays.
    for flow in 0..2 {
        assert!(open_udp(&mut fixture, (POD_B_IP, 1000 + flow), (EXTERNAL_IP, 53)).is_some());
    }
    assert_eq!(fixture.counter("nat_evicted"), 2);
    assert_eq!(fixture.counter("drop_nat_table_full"), 0);
    let nat = fixture.maps.take_nat().unwrap();
    let tracked = |(pod, remote)| egress_half(&nat, pod, remote).is_some();
    assert!(tracked(flow(0)), "the established flow stays");
    assert!(!tracked(flow(1)), "the half-open flow went first");
    assert!(!tracked(flow(2)), "then the oldest unanswered one");
    assert!(tracked(flow(3)));
    let a = nat
        .pods()
        .unwrap()
        .into_iter()
        .find(|totals| totals.pod == POD_A_IP)
        .unwrap();
    assert_eq!(a.counts.evicted, 2);
}

#[test]
fn a_connection_is_established_only_when_the_opener_speaks_after_the_answer() {
    let mut fixture = Fixture::new().unwrap();
    let nat = fixture.maps.take_nat().unwrap();
    let (pod, server) = ((POD_A_IP, 40001), (EXTERNAL_IP, 443));
    let state = |nat: &NatMap| {
        let egress = egress_half(nat, pod, server).expect("tracked");
        (
            egress.state,
            reply_state(nat, server, pod.1),
            egress.assured,
        )
    };
    run_egress(
        &mut fixture,
        6,
        &tcp_segment(pod, server, TCP_SYN, (1000, 0), 1000),
    );
    assert_eq!(state(&nat), (conn_state::NEW, conn_state::NEW, 0));
    // A retransmitted SYN and the answer: half open, still evictable.
    run_egress(
        &mut fixture,
        6,
        &tcp_segment(pod, server, TCP_SYN, (1000, 0), 1000),
    );
    let syn_ack = tcp_segment(server, (NODE_IP, pod.1), TCP_SYN_ACK, (5000, 1001), 0xffff);
    fixture.run_program(
        names::FROM_UPLINK_PROGRAM,
        &on_uplink(ipv4_packet(EXTERNAL_IP, NODE_IP, 6, &syn_ack)),
    );
    assert_eq!(state(&nat), (conn_state::NEW, conn_state::ANSWERED, 0));
    let listed = dataplane_user::nat::connections(&nat.entries().unwrap(), 0);
    assert_eq!(
        listed[0].state,
        dataplane_user::api::ConnectionState::Answered
    );
    // The pod's ACK completes the handshake.
    run_egress(
        &mut fixture,
        6,
        &tcp_segment(pod, server, TCP_ACK, (1001, 5001), 1000),
    );
    assert_eq!(
        state(&nat),
        (conn_state::ESTABLISHED, conn_state::ANSWERED, 1)
    );

    // A pod's second datagram before any answer leaves its flow new.
    let dns = (EXTERNAL_IP, 53);
    let port = open_udp(&mut fixture, (POD_A_IP, 1053), dns).unwrap();
    open_udp(&mut fixture, (POD_A_IP, 1053), dns).unwrap();
    let udp_state = |nat: &NatMap| {
        let egress = egress_half(nat, (POD_A_IP, 1053), dns).unwrap();
        (egress.state, egress.assured)
    };
    assert_eq!(udp_state(&nat), (conn_state::NEW, 0));
    answer_udp(&mut fixture, dns, port);
    assert_eq!(udp_state(&nat), (conn_state::NEW, 0));
    open_udp(&mut fixture, (POD_A_IP, 1053), dns).unwrap();
    assert_eq!(udp_state(&nat), (conn_state::ESTABLISHED, 1));
}

#[test]
fn an_openers_fin_or_reset_closes_only_when_it_fits_what_the_other_side_sent() {
    let mut fixture = Fixture::new().unwrap();
    let nat = fixture.maps.take_nat().unwrap();
    let (pod, server) = ((POD_A_IP, 40001), (EXTERNAL_IP, 443));
    let from_pod = |fixture: &mut Fixture, flags, numbers| {
        let (verdict, _) = run_egress(fixture, 6, &tcp_segment(pod, server, flags, numbers, 1000));
        // Sent on either way: the server's stack judges it too (RFC 5961).
        assert_eq!(verdict, TC_ACT_REDIRECT);
    };
    let egress_state = |nat: &NatMap| egress_half(nat, pod, server).unwrap().state;
    // Handshake and 8 bytes each way: the server acknowledged up to 1009
    // and offers a window of 2000.
    from_pod(&mut fixture, TCP_SYN, (1000, 0));
    let answer = |fixture: &mut Fixture, flags, numbers| {
        let segment = tcp_segment(server, (NODE_IP, pod.1), flags, numbers, 2000);
        fixture.run_program(
            names::FROM_UPLINK_PROGRAM,
            &on_uplink(ipv4_packet(EXTERNAL_IP, NODE_IP, 6, &segment)),
        );
    };
    answer(&mut fixture, TCP_SYN_ACK, (5000, 1001));
    from_pod(&mut fixture, TCP_ACK, (1001, 5009));
    answer(&mut fixture, TCP_ACK, (5009, 1009));
    assert_eq!(egress_state(&nat), conn_state::ESTABLISHED);

    // Blind, in the pod's name (as anyone can send in an outside client's):
    // outside the window, or acknowledging what the server never sent.
    for (flags, numbers) in [
        (TCP_RST, (1009 + 100_000, 0)),
        (TCP_RST | TCP_ACK, (3_000_000_000, 12345)),
        (TCP_FIN | TCP_ACK, (999, 7)),
    ] {
        from_pod(&mut fixture, flags, numbers);
        assert_eq!(
            egress_state(&nat),
            conn_state::ESTABLISHED,
            "flags {flags:#x} at {numbers:?}"
        );
    }
    assert_eq!(fixture.counter("nat_close_ignored"), 3);
    // Within the window the server offered: believed.
    from_pod(&mut fixture, TCP_FIN | TCP_ACK, (1009 + 1500, 0));
    assert_eq!(egress_state(&nat), conn_state::CLOSING);
    assert_eq!(fixture.counter("nat_close_ignored"), 3);
}

/// Pod A's TCP connection from `source_port` to the server, answered (and
/// completed when `complete`): the node port it got.
fn open_tcp(fixture: &mut Fixture, source_port: u16, complete: bool) -> u16 {
    let server = (EXTERNAL_IP, 80);
    let (verdict, out) = run_egress(fixture, 6, &tcp((POD_A_IP, source_port), server, TCP_SYN));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let ((_, port), _) = addresses(&out);
    let syn_ack = tcp(server, (NODE_IP, port), TCP_SYN_ACK);
    fixture.run_program(
        names::FROM_UPLINK_PROGRAM,
        &on_uplink(ipv4_packet(EXTERNAL_IP, NODE_IP, 6, &syn_ack)),
    );
    if complete {
        run_egress(fixture, 6, &tcp((POD_A_IP, source_port), server, TCP_ACK));
    }
    port
}

#[test]
fn half_open_connections_give_up_their_ports_toward_a_destination() {
    // The fixture's range has 4 ports. Half open connections hold them all:
    // a new connection (a flood's SYNs do no more) takes one's port, once
    // its handshake had time to complete (20 ms).
    let mut fixture = Fixture::new().unwrap();
    with_pod_b_on_the_test_device(&mut fixture);
    for flow in 0..4 {
        open_tcp(&mut fixture, 50_000 + flow, false);
    }
    let syn = tcp((POD_B_IP, 50_000), (EXTERNAL_IP, 80), TCP_SYN);
    let (verdict, _) = fixture.run(&ipv4_packet(POD_B_IP, EXTERNAL_IP, 6, &syn));
    assert_eq!(verdict, TC_ACT_SHOT, "young connections keep their ports");
    assert_eq!(fixture.counter("drop_nat_exhausted"), 1);
    std::thread::sleep(Duration::from_millis(25));
    let (verdict, _) = fixture.run(&ipv4_packet(POD_B_IP, EXTERNAL_IP, 6, &syn));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(fixture.counter("nat_evicted"), 1);
    assert_eq!(fixture.counter("drop_nat_exhausted"), 1);

    // Established connections keep theirs: the range is exhausted.
    let mut fixture = Fixture::new().unwrap();
    with_pod_b_on_the_test_device(&mut fixture);
    for flow in 0..4 {
        open_tcp(&mut fixture, 50_000 + flow, true);
    }
    std::thread::sleep(Duration::from_millis(25));
    let (verdict, _) = fixture.run(&ipv4_packet(POD_B_IP, EXTERNAL_IP, 6, &syn));
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(fixture.counter("nat_evicted"), 0);
    assert_eq!(fixture.counter("drop_nat_exhausted"), 1);
}

#[test]
fn the_agent_forgets_the_rows_of_departed_pods_that_hold_nothing() {
    let mut fixture = Fixture::new().unwrap();
    with_pod_b_on_the_test_device(&mut fixture);
    for pod in [POD_A_IP, POD_B_IP] {
        assert!(open_udp(&mut fixture, (pod, 1000), (EXTERNAL_IP, 53)).is_some());
    }
    let table = dataplane_user::state::NatTable::new(
        fixture.maps.take_nat().unwrap(),
        dataplane_user::nat::Timeouts::from(&dataplane_user::config::NatSettings::default()),
        u64::from(dataplane_common::MAX_NAT_CONNECTIONS),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let rows = |report: &dataplane_user::state::GcReport| -> Vec<Ipv4Addr> {
        report.pods.iter().map(|usage| usage.pod).collect()
    };
    // Pod B is gone, but its connection is not yet: its row stays.
    let only_a = || [POD_A_IP].into_iter().collect();
    let report = runtime.block_on(table.collect_garbage(only_a())).unwrap();
    assert_eq!(rows(&report), [POD_A_IP, POD_B_IP]);
    // Once it holds nothing, the row goes; pod A's stays, with its counts.
    assert_eq!(runtime.block_on(table.flush(only_a())).unwrap(), 4);
    let report = runtime.block_on(table.collect_garbage(only_a())).unwrap();
    assert_eq!(rows(&report), [POD_A_IP]);
    assert_eq!((report.pods[0].opened, report.pods[0].connections), (1, 0));
}
