//! Direct routing run by the kernel on hand-built packets
//! (BPF_PROG_TEST_RUN): a pod's packet to a node reached directly leaves as
//! it came but for the routing hop, within the uplink's MTU; unencapsulated
//! packets from pod addresses are taken only from their node's MAC (end to
//! end in `direct_routing.rs`: the fixture's uplink, loopback, has no node
//! on its link, so here every sender is unproven).

use std::net::Ipv4Addr;

use dataplane_common::names;
use dataplane_tests::test_run::*;
use dataplane_user::{maps::ProgrammedNode, model::NodePath};

/// The fixture with its remote node reached directly.
fn direct_fixture() -> Fixture {
    let mut fixture = Fixture::new().unwrap();
    let node = ProgrammedNode {
        pod_cidr: REMOTE_POD_CIDR.parse().unwrap(),
        pod_cidr_ipv6: None,
        path: NodePath::Direct,
        mac: None,
    };
    fixture
        .maps
        .insert_remote_node(REMOTE_NODE_IP, node)
        .unwrap();
    fixture
}

#[test]
fn a_pods_packets_to_a_direct_node_leave_unencapsulated() {
    let mut fixture = direct_fixture();
    for destination in [REMOTE_POD_IP, REMOTE_NODE_IP] {
        let packet = ipv4_frame(POD_A_IP, destination, 64, 9);
        let (verdict, out) = fixture.run(&packet);
        assert_eq!(verdict, TC_ACT_REDIRECT, "to {destination}");
        assert_eq!(out.len(), packet.len(), "no header added");
        assert_eq!(out[14 + 8], 63, "one routing hop");
        assert_eq!(checksum(&out[14..34]), 0);
        assert_eq!(&out[26..34], &packet[26..34], "addresses as sent");
        assert_eq!(&out[34..], &packet[34..]);
    }
    assert_eq!(fixture.counter("forwarded_direct"), 2);
    assert_eq!(fixture.counter("encapsulated"), 0);
}

#[test]
fn a_direct_path_carries_the_uplinks_mtu() {
    let mut fixture = direct_fixture();
    // 1500 bytes fit: no tunnel tax.
    let largest = ipv4_frame_sized(POD_A_IP, REMOTE_POD_IP, 64, 3, 1500 - 20);
    let (verdict, out) = fixture.run(&largest);
    assert_eq!((verdict, out.len()), (TC_ACT_REDIRECT, largest.len()));
    // One more byte with DF: told the uplink's MTU.
    let too_big = ipv4_frame_sized(POD_A_IP, REMOTE_POD_IP, 64, 4, 1501 - 20);
    let (verdict, reply) = fixture.run(&too_big);
    assert_eq!(verdict, TC_ACT_REDIRECT, "sent back to the pod");
    let icmp = icmp_error_to_pod_a(&reply, &too_big);
    assert_eq!((icmp[0], icmp[1]), (3, 4));
    assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), UPLINK_MTU as u16);
}

#[test]
fn unencapsulated_pod_sources_without_their_nodes_mac_are_dropped() {
    let mut fixture = direct_fixture();
    let cases = [
        // A remote pod's address: its node's MAC is not provable here.
        (REMOTE_POD_IP, POD_A_IP, "drop_direct_unverified"),
        // A remote node's own address, to a pod here: the same check.
        (REMOTE_NODE_IP, POD_A_IP, "drop_direct_unverified"),
        // A pod address of this very node, from outside it.
        (POD_B_IP, POD_A_IP, "drop_spoofed_source"),
        (POD_B_IP, NODE_IP, "drop_spoofed_source"),
        // In the cluster CIDR, owned by no node.
        (Ipv4Addr::new(10, 244, 9, 9), POD_A_IP, "drop_unknown_node"),
    ];
    for (source, destination, reason) in cases {
        let before = fixture.counter(reason);
        let packet = on_uplink(ipv4_frame(source, destination, 64, 1));
        let (verdict, _) = fixture.run_program(names::FROM_UPLINK_PROGRAM, &packet);
        assert_eq!(verdict, TC_ACT_SHOT, "{source} -> {destination}");
        assert_eq!(fixture.counter(reason), before + 1, "{reason}");
    }
    assert_eq!(fixture.counter("direct_to_pod"), 0);
    // A frame for another host (a switch flooding) is left to the kernel,
    // which discards it, uncounted.
    let elsewhere = for_another_host(ipv4_frame(REMOTE_POD_IP, POD_A_IP, 64, 6));
    let (verdict, out) = fixture.run_program(names::FROM_UPLINK_PROGRAM, &elsewhere);
    assert_eq!((verdict, out), (TC_ACT_OK, elsewhere));
    // The remote node's own traffic to this node is the nodes' business.
    let packet = on_uplink(ipv4_frame(REMOTE_NODE_IP, NODE_IP, 64, 5));
    let (verdict, out) = fixture.run_program(names::FROM_UPLINK_PROGRAM, &packet);
    assert_eq!((verdict, out), (TC_ACT_OK, packet));
}
