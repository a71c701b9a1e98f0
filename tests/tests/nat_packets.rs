//! Egress SNAT and reverse translation run by the kernel on hand-built
//! packets (BPF_PROG_TEST_RUN): rewritten addresses and ports, every checksum,
//! port choice, exhaustion and unsolicited traffic.

use std::net::Ipv4Addr;

use dataplane_common::names;
use dataplane_tests::test_run::*;

const TCP_SYN: u8 = 0x02;
const TCP_SYN_ACK: u8 = 0x12;

/// Address and port fields of an IPv4 + TCP/UDP frame.
fn addresses(frame: &[u8]) -> ((Ipv4Addr, u16), (Ipv4Addr, u16)) {
    let ip = |at: usize| Ipv4Addr::new(frame[at], frame[at + 1], frame[at + 2], frame[at + 3]);
    let port = |at: usize| u16::from_be_bytes([frame[at], frame[at + 1]]);
    ((ip(26), port(34)), (ip(30), port(36)))
}

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
    for source_port in 0..ports as u16 {
        let (verdict, _) = run_egress(
            &mut fixture,
            17,
            &udp((POD_A_IP, 1000 + source_port), (EXTERNAL_IP, 53), true),
        );
        assert_eq!(verdict, TC_ACT_REDIRECT);
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
