//! The from-pod program run by the kernel on hand-built packets
//! (BPF_PROG_TEST_RUN): exact output bytes, verdicts and counters.

use std::net::{IpAddr, Ipv4Addr};

use dataplane_tests::test_run::*;

#[test]
fn arp_request_for_the_gateway_is_answered_with_the_host_veth_mac() {
    let mut fixture = Fixture::new().unwrap();
    let (verdict, reply) = fixture.run(&arp_request(POD_A_MAC, POD_A_IP, GATEWAY_IP));
    assert_eq!(verdict, TC_ACT_REDIRECT);

    let mut expected_arp = vec![0, 1, 0x08, 0x00, 6, 4, 0, 2];
    expected_arp.extend_from_slice(&HOST_A_MAC);
    expected_arp.extend_from_slice(&GATEWAY_IP.octets());
    expected_arp.extend_from_slice(&POD_A_MAC);
    expected_arp.extend_from_slice(&POD_A_IP.octets());
    assert_eq!(
        reply,
        ethernet(POD_A_MAC, HOST_A_MAC, 0x0806, &expected_arp)
    );
    assert_eq!(fixture.counter("arp_replied"), 1);
}

#[test]
fn arp_probes_spoofed_and_foreign_arp_are_not_answered() {
    let mut fixture = Fixture::new().unwrap();
    // Duplicate address detection probe, gratuitous ARP, a sender that is
    // another pod, and a sender nobody registered.
    for request in [
        arp_request(POD_A_MAC, Ipv4Addr::UNSPECIFIED, POD_A_IP),
        arp_request(POD_A_MAC, POD_A_IP, POD_A_IP),
        arp_request(POD_A_MAC, POD_B_IP, GATEWAY_IP),
        arp_request(POD_A_MAC, Ipv4Addr::new(10, 244, 0, 77), GATEWAY_IP),
    ] {
        assert_eq!(fixture.run(&request).0, TC_ACT_SHOT);
    }
    assert_eq!(fixture.counter("drop_arp_ignored"), 4);

    // ARP for another hardware type is ignored too; replies go to the host.
    let mut token_ring = arp_request(POD_A_MAC, POD_A_IP, GATEWAY_IP);
    token_ring[15] = 6;
    assert_eq!(fixture.run(&token_ring).0, TC_ACT_SHOT);
    let mut reply = arp_request(POD_A_MAC, POD_A_IP, GATEWAY_IP);
    reply[21] = 2;
    assert_eq!(fixture.run(&reply).0, TC_ACT_OK);
    assert_eq!(fixture.counter("arp_replied"), 0);
}

#[test]
fn local_delivery_rewrites_macs_and_decrements_ttl_with_a_valid_checksum() {
    let mut fixture = Fixture::new().unwrap();
    // Several TTLs and IDs so the incremental update meets carries.
    for (ttl, id) in [(64u8, 0u16), (2, 0xffff), (255, 0x1234), (128, 0xfeff)] {
        let packet = ipv4_frame(POD_A_IP, POD_B_IP, ttl, id);
        let (verdict, out) = fixture.run(&packet);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(&out[0..6], &POD_B_MAC, "destination MAC is pod B's");
        assert_eq!(&out[6..12], &HOST_B_MAC, "source MAC is B's gateway");
        assert_eq!(out[14 + 8], ttl - 1);
        assert_eq!(
            checksum(&out[14..34]),
            0,
            "IPv4 header checksum must verify"
        );
        assert_eq!(&out[34..], &packet[34..], "payload untouched");
    }
    assert_eq!(fixture.counter("forwarded_local"), 4);
}

#[test]
fn expiring_ttl_is_answered_with_time_exceeded_before_any_state() {
    let mut fixture = Fixture::new().unwrap();
    // To a pod here, to a remote pod, to the outside (no NAT entry made).
    for (ttl, destination) in [
        (1, POD_B_IP),
        (0, POD_B_IP),
        (1, REMOTE_POD_IP),
        (1, EXTERNAL_IP),
    ] {
        let packet = ipv4_frame(POD_A_IP, destination, ttl, 7);
        let (verdict, reply) = fixture.run(&packet);
        assert_eq!(verdict, TC_ACT_REDIRECT, "sent back to the pod");
        let icmp = icmp_error_to_pod_a(&reply, &packet);
        assert_eq!((icmp[0], icmp[1]), (11, 0), "time exceeded in transit");
    }
    assert_eq!(fixture.counter("drop_ttl_exceeded"), 4);
    assert_eq!(fixture.counter("masqueraded"), 0);
    // TTL 1 is enough to reach the node itself.
    assert_eq!(
        fixture.run(&ipv4_frame(POD_A_IP, NODE_IP, 1, 7)).0,
        TC_ACT_OK
    );
}

#[test]
fn spoofed_sources_are_dropped() {
    let mut fixture = Fixture::new().unwrap();
    // B's address arriving on A's device, and an address nobody owns.
    for source in [
        POD_B_IP,
        Ipv4Addr::new(10, 244, 0, 66),
        Ipv4Addr::new(192, 0, 2, 1),
    ] {
        assert_eq!(
            fixture.run(&ipv4_frame(source, POD_B_IP, 64, 1)).0,
            TC_ACT_SHOT
        );
    }
    assert_eq!(fixture.counter("drop_spoofed_source"), 3);
    assert_eq!(fixture.counter("forwarded_local"), 0);
}

#[test]
fn unknown_local_pods_are_dropped_and_the_node_ip_goes_to_the_host() {
    let mut fixture = Fixture::new().unwrap();
    let unknown_pod = Ipv4Addr::new(10, 244, 0, 99);
    assert_eq!(
        fixture.run(&ipv4_frame(POD_A_IP, unknown_pod, 64, 1)).0,
        TC_ACT_SHOT
    );
    assert_eq!(fixture.counter("drop_unknown_endpoint"), 1);

    let packet = ipv4_frame(POD_A_IP, NODE_IP, 64, 1);
    let (verdict, out) = fixture.run(&packet);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out, packet, "packets for the host are not modified");
    assert_eq!(fixture.counter("passed_to_host"), 1);
}

#[test]
fn truncated_and_malformed_packets_are_dropped() {
    let mut fixture = Fixture::new().unwrap();
    let valid = ipv4_frame(POD_A_IP, POD_B_IP, 64, 1);
    let mut bad_ihl = valid.clone();
    bad_ihl[14] = 0x44;
    let mut bad_version = valid.clone();
    bad_version[14] = 0x65;
    let cases = [
        // BPF_PROG_TEST_RUN itself refuses IPv4 frames shorter than an IP
        // header, so truncation is exercised on ARP, which shares the bounds checks.
        arp_request(POD_A_MAC, POD_A_IP, GATEWAY_IP)[..30].to_vec(),
        bad_ihl,
        bad_version,
    ];
    for packet in &cases {
        assert_eq!(fixture.run(packet).0, TC_ACT_SHOT, "{packet:02x?}");
    }
    assert_eq!(fixture.counter("drop_malformed"), cases.len() as u64);
}

#[test]
fn nothing_but_ip_and_arp_leaves_a_pod_and_bogus_ipv6_is_malformed() {
    let mut fixture = Fixture::new().unwrap();
    // An EtherType nothing handles.
    let other = ethernet(HOST_A_MAC, POD_A_MAC, 0x88b5, &[0; 46]);
    assert_eq!(fixture.run(&other).0, TC_ACT_SHOT);
    assert_eq!(fixture.counter("drop_pod_not_ipv4"), 1);
    // IPv6 headers whose payload length runs past the frame (a header
    // shorter than 40 bytes the test run itself refuses).
    let bogus = [
        ethernet(HOST_A_MAC, POD_A_MAC, 0x86dd, &[0x60; 48]),
        ethernet(HOST_A_MAC, POD_A_MAC, 0x86dd, &[0x60; 40]),
    ];
    for frame in &bogus {
        assert_eq!(fixture.run(frame).0, TC_ACT_SHOT, "{frame:02x?}");
    }
    assert_eq!(fixture.counter("drop_malformed"), bogus.len() as u64);
}

#[test]
fn vlan_tagged_frames_from_a_pod_are_dropped() {
    let mut fixture = Fixture::new().unwrap();
    let untagged = ipv4_frame(POD_A_IP, EXTERNAL_IP, 64, 1);
    // 802.1Q with VID 5 in front of the IPv4 EtherType, and QinQ around it.
    let tag = |tpid: u16, vid: u16| [tpid.to_be_bytes(), vid.to_be_bytes()].concat();
    let tagged = [
        untagged[..12].to_vec(),
        tag(0x8100, 5),
        untagged[12..].to_vec(),
    ]
    .concat();
    let qinq = [
        untagged[..12].to_vec(),
        tag(0x88a8, 6),
        tag(0x8100, 5),
        untagged[12..].to_vec(),
    ]
    .concat();
    for frame in [&tagged, &qinq] {
        assert_eq!(fixture.run(frame).0, TC_ACT_SHOT, "{frame:02x?}");
    }
    assert_eq!(fixture.counter("drop_pod_vlan_tagged"), 2);
    assert_eq!(
        fixture.counter("masqueraded"),
        0,
        "no state for tagged frames"
    );
}

#[test]
fn a_full_endpoints_map_is_reported_not_corrupted() {
    let mut fixture = Fixture::new().unwrap();
    let capacity = dataplane_common::MAX_ENDPOINTS;
    let mut inserted = 2; // the fixture's pods
    let error = loop {
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 0)) + inserted);
        match fixture
            .maps
            .insert_endpoint(ip.into(), endpoint(7, POD_B_MAC, HOST_B_MAC))
        {
            Ok(()) => inserted += 1,
            Err(error) => break error,
        }
        assert!(inserted <= capacity, "the map took more than its capacity");
    };
    assert_eq!(inserted, capacity);
    assert!(error.to_string().contains("full"), "{error}");
    // Existing entries still forward.
    let (verdict, _) = fixture.run(&ipv4_frame(POD_A_IP, POD_B_IP, 64, 1));
    assert_eq!(verdict, TC_ACT_REDIRECT);
}

#[test]
fn pods_reach_every_address_of_the_node_through_its_stack() {
    let mut fixture = Fixture::new().unwrap();
    // A gateway address inside the pod CIDR (what ptp and bridge give the
    // node) and one outside it: unknown pods before, the node's once listed.
    let gateway = Ipv4Addr::new(10, 244, 0, 1);
    let other = Ipv4Addr::new(198, 51, 100, 7);
    assert_eq!(
        fixture.run(&ipv4_frame(POD_A_IP, gateway, 64, 1)).0,
        TC_ACT_SHOT
    );
    assert_eq!(fixture.counter("drop_unknown_endpoint"), 1);

    fixture
        .maps
        .set_host_addresses(&[gateway, other].map(IpAddr::V4).into())
        .unwrap();
    for destination in [gateway, other, NODE_IP] {
        let packet = ipv4_frame(POD_A_IP, destination, 64, 1);
        let (verdict, out) = fixture.run(&packet);
        assert_eq!(verdict, TC_ACT_OK, "{destination}");
        assert_eq!(out, packet, "handed over untouched");
    }
    assert_eq!(fixture.counter("passed_to_host"), 3);
    assert_eq!(fixture.counter("masqueraded"), 0);

    // A removed address is no longer the node's.
    fixture
        .maps
        .set_host_addresses(&[other].map(IpAddr::V4).into())
        .unwrap();
    assert_eq!(
        fixture.run(&ipv4_frame(POD_A_IP, gateway, 64, 1)).0,
        TC_ACT_SHOT
    );
    assert_eq!(fixture.counter("drop_unknown_endpoint"), 2);
}

#[test]
fn martian_and_non_unicast_destinations_are_dropped_before_any_state() {
    let mut fixture = Fixture::new().unwrap();
    let cases = [
        (Ipv4Addr::new(127, 0, 0, 1), "drop_martian_destination"),
        (Ipv4Addr::new(0, 0, 0, 0), "drop_martian_destination"),
        (Ipv4Addr::new(0, 1, 2, 3), "drop_martian_destination"),
        (Ipv4Addr::new(240, 0, 0, 1), "drop_martian_destination"),
        (Ipv4Addr::BROADCAST, "drop_not_unicast"),
        (Ipv4Addr::new(224, 0, 0, 251), "drop_not_unicast"),
        (Ipv4Addr::new(239, 1, 2, 3), "drop_not_unicast"),
    ];
    for (destination, reason) in cases {
        let before = fixture.counter(reason);
        let (verdict, _) = fixture.run(&ipv4_frame(POD_A_IP, destination, 64, 1));
        assert_eq!(verdict, TC_ACT_SHOT, "{destination}");
        assert_eq!(fixture.counter(reason), before + 1, "{destination}");
    }
    // A unicast address in a broadcast or multicast frame.
    for group_mac in [[0xff; 6], [0x01, 0, 0x5e, 0, 0, 1]] {
        let mut frame = ipv4_frame(POD_A_IP, EXTERNAL_IP, 64, 1);
        frame[..6].copy_from_slice(&group_mac);
        assert_eq!(fixture.run(&frame).0, TC_ACT_SHOT);
    }
    assert_eq!(fixture.counter("drop_not_unicast"), 5);
    assert_eq!(fixture.counter("masqueraded"), 0, "no NAT entry for any");
}

#[test]
fn inconsistent_lengths_are_dropped_as_malformed() {
    let mut fixture = Fixture::new().unwrap();
    let echo = ipv4_frame(POD_A_IP, POD_B_IP, 64, 1);
    let longer_than_frame = with_ip_bytes(echo.clone(), 2, &200u16.to_be_bytes());
    let shorter_than_header = with_ip_bytes(echo.clone(), 2, &19u16.to_be_bytes());
    let mut header_longer_than_packet = echo.clone();
    header_longer_than_packet[14] = 0x4f;
    let segment = tcp((POD_A_IP, 1000), (EXTERNAL_IP, 80), 0x02);
    let mut short_data_offset = ipv4_packet(POD_A_IP, EXTERNAL_IP, 6, &segment);
    short_data_offset[34 + 12] = 0x40;
    let mut data_offset_past_packet = ipv4_packet(POD_A_IP, EXTERNAL_IP, 6, &segment);
    data_offset_past_packet[34 + 12] = 0xf0;
    let datagram = udp((POD_A_IP, 1000), (POD_B_IP, 53), false);
    let mut udp_longer_than_packet = ipv4_packet(POD_A_IP, POD_B_IP, 17, &datagram);
    udp_longer_than_packet[34 + 4..34 + 6].copy_from_slice(&100u16.to_be_bytes());
    let cases = [
        longer_than_frame,
        shorter_than_header,
        header_longer_than_packet,
        short_data_offset,
        data_offset_past_packet,
        udp_longer_than_packet,
    ];
    for (index, frame) in cases.iter().enumerate() {
        assert_eq!(fixture.run(frame).0, TC_ACT_SHOT, "case {index}");
    }
    assert_eq!(fixture.counter("drop_malformed"), cases.len() as u64);
    assert_eq!(
        fixture.counter("masqueraded") + fixture.counter("forwarded_local"),
        0
    );
    // Ethernet padding after a short packet is not an inconsistency.
    let mut padded = ipv4_frame(POD_A_IP, POD_B_IP, 64, 1);
    padded.resize(60, 0);
    assert_eq!(fixture.run(&padded).0, TC_ACT_REDIRECT);
}
