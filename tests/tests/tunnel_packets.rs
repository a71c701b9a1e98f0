//! VXLAN encapsulation (from-pod), decapsulation (from-uplink), ICMP
//! fragmentation-needed and the device guard, run by the kernel on hand-built
//! packets (BPF_PROG_TEST_RUN): exact output bytes, verdicts and counters.

use std::net::Ipv4Addr;

use dataplane_common::names;
use dataplane_tests::test_run::*;

/// Checks the outer headers `encapsulate` put in front of `inner_ip` (the
/// original IPv4 packet) and returns the inner packet as it was sent.
fn assert_vxlan_to(out: &[u8], node: Ipv4Addr) -> &[u8] {
    let outer_ip = &out[14..34];
    assert_eq!(&out[12..14], &[0x08, 0x00]);
    assert_eq!(outer_ip[0], 0x45);
    assert_eq!(outer_ip[9], 17, "outer protocol is UDP");
    assert_eq!(
        &outer_ip[12..16],
        &NODE_IP.octets(),
        "outer source is this node"
    );
    assert_eq!(
        &outer_ip[16..20],
        &node.octets(),
        "outer destination is the node"
    );
    assert_eq!(
        usize::from(u16::from_be_bytes([outer_ip[2], outer_ip[3]])),
        out.len() - 14
    );
    assert_eq!(checksum(outer_ip), 0, "outer IPv4 checksum must verify");
    let udp = &out[34..42];
    assert!(
        u16::from_be_bytes([udp[0], udp[1]]) >= 49152,
        "source port from the dynamic range"
    );
    assert_eq!(u16::from_be_bytes([udp[2], udp[3]]), VXLAN_PORT);
    assert_eq!(
        usize::from(u16::from_be_bytes([udp[4], udp[5]])),
        out.len() - 34
    );
    assert_eq!(&udp[6..8], &[0, 0], "UDP checksum 0");
    let vxlan = &out[42..50];
    assert_eq!(vxlan, &[0x08, 0, 0, 0, 0, 0, VNI as u8, 0]);
    &out[50..]
}

#[test]
fn pod_traffic_for_a_remote_pod_is_encapsulated_toward_its_node() {
    let mut fixture = Fixture::new().unwrap();
    let packet = ipv4_frame(POD_A_IP, REMOTE_POD_IP, 64, 9);
    let (verdict, out) = fixture.run(&packet);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let inner = assert_vxlan_to(&out, REMOTE_NODE_IP);
    assert_eq!(
        &inner[..14],
        &packet[..14],
        "inner Ethernet header as the pod sent it"
    );
    assert_eq!(inner[14 + 8], 63, "one routing hop");
    assert_eq!(checksum(&inner[14..34]), 0);
    assert_eq!(&inner[34..], &packet[34..]);
    assert_eq!(fixture.counter("encapsulated"), 1);
}

#[test]
fn flows_keep_their_outer_source_port() {
    let mut fixture = Fixture::new().unwrap();
    let port = |fixture: &mut Fixture, id| {
        let (_, out) = fixture.run(&ipv4_frame(POD_A_IP, REMOTE_POD_IP, 64, id));
        u16::from_be_bytes([out[34], out[35]])
    };
    // Same flow (ICMP echo id and addresses), different packets: same port.
    assert_eq!(port(&mut fixture, 1), port(&mut fixture, 2));
}

#[test]
fn pod_traffic_for_a_remote_node_ip_goes_through_the_tunnel() {
    let mut fixture = Fixture::new().unwrap();
    let (verdict, out) = fixture.run(&ipv4_frame(POD_A_IP, REMOTE_NODE_IP, 64, 1));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_vxlan_to(&out, REMOTE_NODE_IP);
}

#[test]
fn cluster_addresses_of_no_node_are_dropped() {
    let mut fixture = Fixture::new().unwrap();
    let (verdict, _) = fixture.run(&ipv4_frame(POD_A_IP, Ipv4Addr::new(10, 244, 9, 9), 64, 1));
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(fixture.counter("drop_unknown_node"), 1);
    assert_eq!(fixture.counter("encapsulated"), 0);
}

#[test]
fn oversized_packets_get_icmp_fragmentation_needed() {
    let mut fixture = Fixture::new().unwrap();
    // A 1500-byte IPv4 packet with DF, into a tunnel that carries 1450.
    let packet = ipv4_frame_sized(POD_A_IP, REMOTE_POD_IP, 64, 3, 1500 - 20);
    let (verdict, reply) = fixture.run(&packet);
    assert_eq!(verdict, TC_ACT_REDIRECT, "sent back to the pod");
    assert_eq!(reply.len(), 14 + 20 + 8 + 28);
    let icmp = icmp_error_to_pod_a(&reply, &packet);
    assert_eq!(
        (icmp[0], icmp[1]),
        (3, 4),
        "destination unreachable, fragmentation needed"
    );
    assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), TUNNEL_MTU as u16);
    assert_eq!(fixture.counter("drop_frag_needed"), 1);

    // Without DF the packet is not refused: the outer packet may be fragmented.
    let may_fragment = with_ip_bytes(packet.clone(), 6, &[0]);
    let (verdict, out) = fixture.run(&may_fragment);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_vxlan_to(&out, REMOTE_NODE_IP);
}

#[test]
fn vxlan_from_a_known_node_is_decapsulated_into_the_pod() {
    let mut fixture = Fixture::new().unwrap();
    let inner = ipv4_frame(Ipv4Addr::new(10, 244, 1, 5), POD_B_IP, 63, 4);
    let (verdict, out) = fixture.run_program(
        names::FROM_UPLINK_PROGRAM,
        &vxlan_frame(REMOTE_NODE_IP, VNI, &inner),
    );
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out.len(), inner.len());
    assert_eq!(&out[0..6], &POD_B_MAC);
    assert_eq!(&out[6..12], &HOST_B_MAC);
    assert_eq!(out[14 + 8], 62);
    assert_eq!(checksum(&out[14..34]), 0);
    assert_eq!(&out[34..], &inner[34..]);
    assert_eq!(fixture.counter("decapsulated_to_pod"), 1);
}

#[test]
fn vxlan_for_this_node_is_decapsulated_up_the_stack() {
    let mut fixture = Fixture::new().unwrap();
    let inner = ipv4_frame(Ipv4Addr::new(10, 244, 1, 5), NODE_IP, 63, 4);
    let packet = vxlan_frame(REMOTE_NODE_IP, VNI, &inner);
    let (verdict, out) = fixture.run_program(names::FROM_UPLINK_PROGRAM, &packet);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(
        &out[..14],
        &packet[..14],
        "the outer Ethernet header, addressed to the uplink"
    );
    assert_eq!(&out[14..], &inner[14..]);
    assert_eq!(fixture.counter("decapsulated_to_host"), 1);
}

#[test]
fn vxlan_that_fails_a_check_is_dropped_with_its_reason() {
    let mut fixture = Fixture::new().unwrap();
    let from_remote_pod = ipv4_frame(Ipv4Addr::new(10, 244, 1, 5), POD_B_IP, 63, 4);
    let cases = [
        (
            vxlan_frame(Ipv4Addr::new(192, 0, 2, 99), VNI, &from_remote_pod),
            "drop_unknown_tunnel_source",
        ),
        (
            vxlan_frame(REMOTE_NODE_IP, VNI + 1, &from_remote_pod),
            "drop_wrong_vni",
        ),
        // The remote node claiming a pod of another node.
        (
            vxlan_frame(
                REMOTE_NODE_IP,
                VNI,
                &ipv4_frame(Ipv4Addr::new(10, 244, 2, 5), POD_B_IP, 63, 4),
            ),
            "drop_spoofed_source",
        ),
        (
            vxlan_frame(
                REMOTE_NODE_IP,
                VNI,
                &ipv4_frame(
                    Ipv4Addr::new(10, 244, 1, 5),
                    Ipv4Addr::new(10, 244, 0, 99),
                    63,
                    4,
                ),
            ),
            "drop_unknown_endpoint",
        ),
        (
            vxlan_frame(
                REMOTE_NODE_IP,
                VNI,
                // An IPv6 frame whose header says version 4.
                &ethernet([2; 6], [4; 6], 0x86dd, &[0x40; 40]),
            ),
            "drop_malformed",
        ),
    ];
    for (packet, reason) in &cases {
        let (verdict, _) = fixture.run_program(names::FROM_UPLINK_PROGRAM, packet);
        assert_eq!(verdict, TC_ACT_SHOT, "{reason}");
        assert_eq!(fixture.counter(reason), 1, "{reason}");
    }
    assert_eq!(fixture.counter("decapsulated_to_pod"), 0);
}

#[test]
fn fragmented_vxlan_is_dropped_not_decapsulated_as_if_whole() {
    let mut fixture = Fixture::new().unwrap();
    let inner = ipv4_frame(Ipv4Addr::new(10, 244, 1, 5), POD_B_IP, 63, 4);
    let whole = vxlan_frame(REMOTE_NODE_IP, VNI, &inner);
    // A first fragment (more fragments) is dropped.
    let first = with_ip_bytes(whole.clone(), 6, &0x2000u16.to_be_bytes());
    let (verdict, _) = fixture.run_program(names::FROM_UPLINK_PROGRAM, &first);
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(fixture.counter("drop_tunnel_fragment"), 1);
    // A later one (an offset) has no UDP header to tell it by, even when its
    // payload reads as one to the VXLAN port: it goes to the node's stack,
    // which never completes the datagram (its first piece was dropped).
    let later = with_ip_bytes(whole, 6, &0x0010u16.to_be_bytes());
    let (verdict, out) = fixture.run_program(names::FROM_UPLINK_PROGRAM, &later);
    assert_eq!((verdict, out), (TC_ACT_OK, later));
    assert_eq!(fixture.counter("decapsulated_to_pod"), 0);
}

#[test]
fn other_uplink_traffic_passes_untouched() {
    let mut fixture = Fixture::new().unwrap();
    let mut other_port = vxlan_frame(REMOTE_NODE_IP, VNI, &ipv4_frame(POD_A_IP, POD_B_IP, 64, 1));
    other_port[36..38].copy_from_slice(&53u16.to_be_bytes());
    for packet in [other_port, ipv4_frame(REMOTE_NODE_IP, NODE_IP, 64, 1)] {
        let (verdict, out) = fixture.run_program(names::FROM_UPLINK_PROGRAM, &packet);
        assert_eq!((verdict, out), (TC_ACT_OK, packet));
    }
}

#[test]
fn whatever_reaches_the_vxlan_device_is_dropped() {
    let mut fixture = Fixture::new().unwrap();
    let (verdict, _) = fixture.run_program(
        names::FROM_TUNNEL_PROGRAM,
        &ipv4_frame(POD_A_IP, POD_B_IP, 64, 1),
    );
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(fixture.counter("drop_tunnel_bypass"), 1);
}

#[test]
fn the_node_reaches_remote_pods_only_from_addresses_they_can_answer() {
    let mut fixture = Fixture::new().unwrap();
    let gateway = Ipv4Addr::new(10, 244, 0, 1);
    let other = Ipv4Addr::new(198, 51, 100, 7);
    fixture
        .maps
        .set_host_addresses(&[gateway, other, NODE_IP].map(std::net::IpAddr::V4).into())
        .unwrap();
    for source in [NODE_IP, gateway] {
        let (verdict, out) = fixture.run_program(
            names::FROM_HOST_PROGRAM,
            &ipv4_frame(source, REMOTE_POD_IP, 64, 1),
        );
        assert_eq!(verdict, TC_ACT_REDIRECT, "{source}");
        assert_vxlan_to(&out, REMOTE_NODE_IP);
    }
    let (verdict, _) = fixture.run_program(
        names::FROM_HOST_PROGRAM,
        &ipv4_frame(other, REMOTE_POD_IP, 64, 1),
    );
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(fixture.counter("drop_host_source_unroutable"), 1);

    // A remote pod's answer to the gateway address is decapsulated to the node.
    let answer = ipv4_frame(REMOTE_POD_IP, gateway, 63, 2);
    let (verdict, out) = fixture.run_program(
        names::FROM_UPLINK_PROGRAM,
        &vxlan_frame(REMOTE_NODE_IP, VNI, &answer),
    );
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(&out[14..], &answer[14..]);
    assert_eq!(fixture.counter("decapsulated_to_host"), 1);
}

#[test]
fn unencapsulated_packets_from_the_underlay_reach_no_pod() {
    let mut fixture = Fixture::new().unwrap();
    // A ClusterIP, the hairpin address, an underlay host and an outside
    // one: none answers a pod's connection, so none has a reason to send to
    // one (the node's stack would forward it into the pod).
    let sources = [
        Ipv4Addr::new(10, 96, 0, 10),
        Ipv4Addr::from(dataplane_common::HAIRPIN_SOURCE),
        Ipv4Addr::new(192, 0, 2, 99),
        EXTERNAL_IP,
    ];
    let datagram = |source| {
        on_uplink(ipv4_packet(
            source,
            POD_A_IP,
            17,
            &udp((source, 7), (POD_A_IP, 7), true),
        ))
    };
    for source in sources {
        let (verdict, _) = fixture.run_program(names::FROM_UPLINK_PROGRAM, &datagram(source));
        assert_eq!(verdict, TC_ACT_SHOT, "{source}");
    }
    assert_eq!(fixture.counter("drop_uplink_to_pod"), sources.len() as u64);
    // Without masquerading pod addresses are routed to: the stack's to deliver.
    fixture
        .maps
        .set_node_config(dataplane_common::NodeConfig {
            masquerade: 0,
            ..node_config()
        })
        .unwrap();
    let (verdict, _) = fixture.run_program(names::FROM_UPLINK_PROGRAM, &datagram(EXTERNAL_IP));
    assert_eq!(verdict, TC_ACT_OK);
}
