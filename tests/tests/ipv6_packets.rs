// Above 400 lines: every IPv6 decision of from-pod and from-uplink on crafted packets, over one fixture.
//! IPv6 at from-pod under BPF_PROG_TEST_RUN: neighbour discovery answered
//! or refused, forwarding between the node's pods with the hop limit,
//! the node's own addresses, and everything else dropped with its reason.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv6Addr},
};

use dataplane_common::{Ipv6Cidr, NodeConfig, VXLAN_OVERHEAD, checksum, names};
use dataplane_tests::{
    packets6::*,
    test_run::{
        Fixture, HOST_A_MAC, HOST_B_MAC, LOOPBACK_IFINDEX, NODE_IP, POD_A_MAC, POD_B_MAC,
        REMOTE_NODE_IP, REMOTE_POD_CIDR, REMOTE_POD_CIDR6, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT,
        TUNNEL_MTU, UPLINK_MAC, UPLINK_MTU, VNI, VXLAN_PORT, endpoint, on_uplink, vxlan_frame,
    },
};
use dataplane_user::{maps::ProgrammedNode, model::NodePath};
use serde_json::json;

/// Pods A and B with an IPv6 address each (A on the device test runs use).
fn fixture() -> anyhow::Result<Fixture> {
    let mut fixture = Fixture::new()?;
    let maps = &mut fixture.maps;
    maps.insert_endpoint(
        POD_A_IP6.into(),
        endpoint(LOOPBACK_IFINDEX, POD_A_MAC, HOST_A_MAC),
    )?;
    maps.insert_endpoint(POD_B_IP6.into(), endpoint(4242, POD_B_MAC, HOST_B_MAC))?;
    Ok(fixture)
}

/// The addresses of an IPv6 frame.
fn addresses(frame: &[u8]) -> (Ipv6Addr, Ipv6Addr) {
    let at = |start: usize| -> Ipv6Addr {
        <[u8; 16]>::try_from(&frame[start..start + 16])
            .unwrap()
            .into()
    };
    (at(IP6_AT + 8), at(IP6_AT + 24))
}

#[test]
fn a_pods_solicitation_for_its_gateway_is_answered_with_the_host_veth_mac() -> anyhow::Result<()> {
    let mut fixture = fixture()?;
    let (verdict, answer) = fixture.run(&solicitation(POD_A_IP6, GATEWAY6));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(&answer[0..6], &POD_A_MAC, "to the pod");
    assert_eq!(&answer[6..12], &HOST_A_MAC, "from its host veth");
    assert_eq!(addresses(&answer), (GATEWAY6, POD_A_IP6));
    assert_eq!(answer[IP6_AT + 7], 255, "hop limit of the link");
    let message = &answer[L4_AT6..];
    assert_eq!(message[0], NEIGHBOR_ADVERTISEMENT);
    assert_eq!(message[4], 0xe0, "router, solicited, override");
    assert_eq!(&message[8..24], &GATEWAY6.octets(), "the target");
    assert_eq!(&message[24..26], &[2, 1], "a target link-layer option");
    assert_eq!(&message[26..32], &HOST_A_MAC);
    assert!(icmpv6_checksum_holds(&answer), "{answer:02x?}");
    assert_eq!(fixture.counter("ndp_answered"), 1);

    // A unicast probe from the pod's link-local address, without an option
    // (neighbour unreachability detection): answered from the MAC it was
    // sent to.
    let probe = neighbor_message(
        NEIGHBOR_SOLICITATION,
        (POD_A_LINK_LOCAL, GATEWAY6),
        HOST_A_MAC,
        GATEWAY6,
        None,
    );
    let (verdict, answer) = fixture.run(&probe);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(&answer[6..12], &HOST_A_MAC);
    assert_eq!(addresses(&answer), (GATEWAY6, POD_A_LINK_LOCAL));
    assert_eq!(answer.len(), L4_AT6 + 24, "no option added");
    assert!(icmpv6_checksum_holds(&answer));

    // A link-local gateway: solicited from the pod's link-local address to
    // its solicited-node group, answered with the MAC of the veth it came
    // in on.
    fixture
        .maps
        .insert_host_veth(LOOPBACK_IFINDEX, HOST_A_MAC)?;
    let link_gateway: Ipv6Addr = "fe80::1".parse()?;
    let (verdict, answer) = fixture.run(&solicitation(POD_A_LINK_LOCAL, link_gateway));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(&answer[0..6], &POD_A_MAC);
    assert_eq!(&answer[6..12], &HOST_A_MAC);
    assert_eq!(addresses(&answer), (link_gateway, POD_A_LINK_LOCAL));
    assert_eq!(&answer[L4_AT6 + 26..L4_AT6 + 32], &HOST_A_MAC);
    assert!(icmpv6_checksum_holds(&answer));
    Ok(())
}

#[test]
fn duplicate_address_detection_router_messages_and_strangers_get_no_answer() -> anyhow::Result<()> {
    let mut fixture = fixture()?;
    let (dad_group, dad_mac) = solicited_node(POD_A_IP6);
    let mut refused = vec![
        // Duplicate address detection: from `::`, for the pod's own address.
        neighbor_message(
            NEIGHBOR_SOLICITATION,
            (Ipv6Addr::UNSPECIFIED, dad_group),
            dad_mac,
            POD_A_IP6,
            None,
        ),
        // For its own address from its own address.
        solicitation(POD_A_IP6, POD_A_IP6),
        // From an address that is not the pod's.
        solicitation(POD_B_IP6, GATEWAY6),
        // A multicast solicitation from a link-local address on a veth no
        // pod is known behind: no MAC to answer from.
        solicitation(POD_A_LINK_LOCAL, GATEWAY6),
    ];
    // Router solicitation, advertisement and redirect: never from a pod.
    for kind in [133, 134, 137] {
        refused.push(neighbor_message(
            kind,
            (POD_A_LINK_LOCAL, "ff02::2".parse()?),
            [0x33, 0x33, 0, 0, 0, 2],
            GATEWAY6,
            Some(POD_A_MAC),
        ));
    }
    // Not from the link (hop limit below 255).
    let mut forwarded = solicitation(POD_A_IP6, GATEWAY6);
    forwarded[IP6_AT + 7] = 64;
    refused.push(forwarded);
    let before = fixture.counter("drop_ndp_ignored");
    for (index, packet) in refused.iter().enumerate() {
        assert_eq!(fixture.run(packet).0, TC_ACT_SHOT, "message {index}");
    }
    assert_eq!(
        fixture.counter("drop_ndp_ignored"),
        before + refused.len() as u64
    );
    assert_eq!(fixture.counter("ndp_answered"), 0);

    // An advertisement answering the node's own solicitation goes up to it.
    let advertisement = neighbor_message(
        NEIGHBOR_ADVERTISEMENT,
        (POD_A_IP6, POD_A_LINK_LOCAL),
        HOST_A_MAC,
        POD_A_IP6,
        None,
    );
    assert_eq!(fixture.run(&advertisement).0, TC_ACT_OK);
    Ok(())
}

#[test]
fn ipv6_between_pods_is_redirected_with_the_hop_limit_decremented() -> anyhow::Result<()> {
    let mut fixture = fixture()?;
    let (verdict, delivered) = fixture.run(&tcp6_syn((POD_A_IP6, POD_B_IP6), 64));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(&delivered[0..6], &POD_B_MAC);
    assert_eq!(&delivered[6..12], &HOST_B_MAC);
    assert_eq!(delivered[IP6_AT + 7], 63);
    assert_eq!(addresses(&delivered), (POD_A_IP6, POD_B_IP6));
    assert_eq!(fixture.counter("forwarded_local"), 1);

    // The node's own addresses (the gateway included) and link-local ones.
    let gateway: BTreeSet<IpAddr> = [IpAddr::V6(GATEWAY6)].into();
    fixture.maps.set_host_addresses(&gateway)?;
    for to_node in [
        tcp6_syn((POD_A_IP6, GATEWAY6), 64),
        tcp6_syn((POD_A_LINK_LOCAL, "fe80::1".parse()?), 64),
    ] {
        assert_eq!(fixture.run(&to_node).0, TC_ACT_OK);
    }

    for (packet, reason) in [
        (tcp6_syn((POD_A_IP6, POD_B_IP6), 1), "drop_ttl_exceeded"),
        (tcp6_syn((POD_B_IP6, POD_A_IP6), 64), "drop_spoofed_source"),
        (
            tcp6_syn((POD_A_LINK_LOCAL, POD_B_IP6), 64),
            "drop_spoofed_source",
        ),
        (
            tcp6_syn((POD_A_IP6, "ff05::2".parse()?), 64),
            "drop_not_unicast",
        ),
        (
            tcp6_syn((POD_A_IP6, Ipv6Addr::LOCALHOST), 64),
            "drop_martian_destination",
        ),
        (
            tcp6_syn((POD_A_IP6, "::ffff:10.244.0.3".parse()?), 64),
            "drop_martian_destination",
        ),
        (
            tcp6_syn((POD_A_IP6, "2001:db8::1".parse()?), 64),
            "drop_ipv6_not_forwarded",
        ),
    ] {
        let before = fixture.counter(reason);
        assert_eq!(fixture.run(&packet).0, TC_ACT_SHOT, "{reason}");
        assert_eq!(fixture.counter(reason), before + 1, "{reason}");
    }
    // Truncated: a payload length beyond the packet.
    let mut truncated = tcp6_syn((POD_A_IP6, POD_B_IP6), 64);
    truncated[IP6_AT + 4..IP6_AT + 6].copy_from_slice(&1000u16.to_be_bytes());
    assert_eq!(fixture.run(&truncated).0, TC_ACT_SHOT);
    Ok(())
}

#[test]
fn ipv6_passes_only_where_no_policy_isolates_the_pod() -> anyhow::Result<()> {
    use dataplane_tests::test_run::{POD_A_IP, POD_B_IP};
    use dataplane_user::model::policy::{PodFacts, PolicyWorld};
    let mut fixture = fixture()?;
    // x/a isolated for ingress (its IPv4 and IPv6 addresses), y/b by nothing.
    let mut world = PolicyWorld::default();
    for (namespace, name, ips) in [
        ("x", "a", [IpAddr::from(POD_A_IP), POD_A_IP6.into()]),
        ("y", "b", [IpAddr::from(POD_B_IP), POD_B_IP6.into()]),
    ] {
        world.set_pod(PodFacts {
            namespace: namespace.into(),
            name: name.into(),
            ips: ips.to_vec(),
            ..Default::default()
        });
    }
    world.set_policy(serde_json::from_value(json!({
        "namespace": "x", "name": "deny-ingress", "policy_types": ["Ingress"],
    }))?);
    let local = [
        POD_A_IP.into(),
        POD_A_IP6.into(),
        POD_B_IP.into(),
        POD_B_IP6.into(),
    ];
    fixture.set_policy(&world.compile(&local))?;

    // a may send (egress is open) to b (ingress is open).
    assert_eq!(
        fixture.run(&tcp6_syn((POD_A_IP6, POD_B_IP6), 64)).0,
        TC_ACT_REDIRECT
    );
    // Nothing is handed to a (ingress isolated), from here or another node;
    // b is handed what comes.
    let remote_pod: Ipv6Addr = "fd00:10:244:1::5".parse()?;
    let from_remote = |to| vxlan_frame(REMOTE_NODE_IP, VNI, &tcp6_syn((remote_pod, to), 63));
    let before = fixture.counter("drop_policy_ipv6_unjudged");
    let (verdict, _) = fixture.run_program(names::FROM_UPLINK_PROGRAM, &from_remote(POD_A_IP6));
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(fixture.counter("drop_policy_ipv6_unjudged"), before + 1);
    let (verdict, _) = fixture.run_program(names::FROM_UPLINK_PROGRAM, &from_remote(POD_B_IP6));
    assert_eq!(verdict, TC_ACT_REDIRECT);

    // A pod the model does not know is closed both ways (fail closed).
    let unknown: Ipv6Addr = "fd00:10:244::77".parse()?;
    fixture
        .maps
        .insert_endpoint(unknown.into(), endpoint(4243, POD_B_MAC, HOST_B_MAC))?;
    assert_eq!(
        fixture.run(&tcp6_syn((POD_A_IP6, unknown), 64)).0,
        TC_ACT_SHOT
    );
    assert_eq!(fixture.counter("drop_policy_ipv6_unjudged"), before + 2);

    // The node's own traffic is never policy's.
    let gateway: BTreeSet<IpAddr> = [IpAddr::V6(GATEWAY6)].into();
    fixture.maps.set_host_addresses(&gateway)?;
    assert_eq!(
        fixture.run(&tcp6_syn((POD_A_IP6, GATEWAY6), 64)).0,
        TC_ACT_OK
    );
    Ok(())
}

#[test]
fn a_pod_isolated_only_by_its_ipv6_address_isolates_the_node() -> anyhow::Result<()> {
    use dataplane_user::model::policy::{PodFacts, PolicyWorld};
    let mut fixture = fixture()?;
    // An IPv6-only pod a policy isolates: the programs look policy up.
    let mut world = PolicyWorld::default();
    world.set_pod(PodFacts {
        namespace: "x".into(),
        name: "a".into(),
        ips: vec![POD_A_IP6.into()],
        ..Default::default()
    });
    world.set_policy(serde_json::from_value(json!({
        "namespace": "x", "name": "deny-egress", "policy_types": ["Egress"],
    }))?);
    fixture.set_policy(&world.compile(&[POD_A_IP6.into()]))?;
    assert_eq!(
        fixture.run(&tcp6_syn((POD_A_IP6, POD_B_IP6), 64)).0,
        TC_ACT_SHOT
    );
    Ok(())
}

/// A pod of the remote node (in `REMOTE_POD_CIDR6`).
const REMOTE_POD_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 5);

/// Pod A's packet to the remote pod, larger than the tunnel carries.
fn too_big_for_the_tunnel() -> Vec<u8> {
    let payload = vec![0; TUNNEL_MTU as usize];
    ipv6_frame(HOST_A_MAC, (POD_A_IP6, REMOTE_POD_IP6), TCP, 64, &payload)
}

#[test]
fn ipv6_to_another_nodes_pod_leaves_in_vxlan_to_that_node() -> anyhow::Result<()> {
    let mut fixture = fixture()?;
    let packet = tcp6_syn((POD_A_IP6, REMOTE_POD_IP6), 64);
    let (verdict, out) = fixture.run(&packet);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let outer_ip = &out[14..34];
    assert_eq!(&out[12..14], &[0x08, 0x00], "an IPv4 underlay");
    assert_eq!(&outer_ip[12..16], &NODE_IP.octets());
    assert_eq!(&outer_ip[16..20], &REMOTE_NODE_IP.octets());
    assert_eq!(checksum::internet(outer_ip), 0);
    assert_eq!(
        u16::from_be_bytes([out[36], out[37]]),
        VXLAN_PORT,
        "to the VXLAN port"
    );
    // The inner frame: after the outer Ethernet, IPv4, UDP and VXLAN headers.
    let inner = &out[14 + VXLAN_OVERHEAD as usize - 14..];
    assert_eq!(&inner[12..14], &ETHERTYPE_IPV6);
    assert_eq!(inner[IP6_AT + 7], 63, "the hop limit decremented");
    assert_eq!(
        &inner[IP6_AT..],
        &{
            let mut sent = packet[IP6_AT..].to_vec();
            sent[7] = 63;
            sent
        }[..]
    );
    assert_eq!(fixture.counter("encapsulated"), 1);

    // Too big for the tunnel (IPv6 routers never fragment), or its last hop.
    let big = too_big_for_the_tunnel();
    for (packet, reason) in [
        (big, "drop_frag_needed"),
        (
            tcp6_syn((POD_A_IP6, REMOTE_POD_IP6), 1),
            "drop_ttl_exceeded",
        ),
    ] {
        let before = fixture.counter(reason);
        assert_eq!(fixture.run(&packet).0, TC_ACT_SHOT, "{reason}");
        assert_eq!(fixture.counter(reason), before + 1, "{reason}");
    }
    Ok(())
}

/// Makes the fixture a dual-stack node (its IPv6 pod CIDR pod A's /64);
/// its IPv6 address.
fn dual_stack(fixture: &mut Fixture) -> anyhow::Result<Ipv6Addr> {
    let node_ipv6: Ipv6Addr = "fd00:192::10".parse()?;
    let config = fixture.maps.node_config()?;
    fixture.maps.set_node_config(NodeConfig {
        node_ipv6: node_ipv6.octets(),
        pod_cidr6: Ipv6Cidr::new(POD_A_IP6.octets(), 64),
        ..config
    })?;
    Ok(node_ipv6)
}

#[test]
fn a_router_s_icmpv6_errors_go_back_to_the_pod_from_the_node_ipv6_address() -> anyhow::Result<()> {
    let mut fixture = fixture()?;
    let node_ipv6 = dual_stack(&mut fixture)?;
    let world: Ipv6Addr = "2001:db8::1".parse()?;
    let big = too_big_for_the_tunnel();
    let echo = |dst| {
        let message = icmpv6((POD_A_IP6, dst), vec![128, 0, 0, 0, 0, 7, 0, 1]);
        ipv6_frame(HOST_A_MAC, (POD_A_IP6, dst), ICMPV6, 64, &message)
    };
    // (offending packet, ICMPv6 type, code, data, counter, bytes quoted)
    for (packet, kind, code, data, counter, quoted) in [
        (
            tcp6_syn((POD_A_IP6, POD_B_IP6), 1),
            3,
            0,
            [0; 4],
            "drop_ttl_exceeded",
            48,
        ),
        (
            tcp6_syn((POD_A_IP6, REMOTE_POD_IP6), 1),
            3,
            0,
            [0; 4],
            "drop_ttl_exceeded",
            48,
        ),
        (big, 2, 0, TUNNEL_MTU.to_be_bytes(), "drop_frag_needed", 104),
        (
            tcp6_syn((POD_A_IP6, world), 64),
            1,
            1,
            [0; 4],
            "drop_ipv6_not_forwarded",
            48,
        ),
        (echo(world), 1, 1, [0; 4], "drop_ipv6_not_forwarded", 48),
        // A SYN with its options (40 bytes of TCP) quoted whole.
        (
            ipv6_frame(HOST_A_MAC, (POD_A_IP6, world), TCP, 64, &[6; 40]),
            1,
            1,
            [0; 4],
            "drop_ipv6_not_forwarded",
            80,
        ),
    ] {
        let before = fixture.counter(counter);
        let (verdict, error) = fixture.run(&packet);
        assert_eq!(verdict, TC_ACT_REDIRECT, "{counter}");
        assert_eq!(fixture.counter(counter), before + 1, "{counter}");
        assert_eq!(&error[0..6], &POD_A_MAC, "back to the pod");
        assert_eq!(&error[6..12], &HOST_A_MAC, "from its gateway's MAC");
        assert_eq!(&error[12..14], &ETHERTYPE_IPV6);
        assert_eq!(addresses(&error), (node_ipv6, POD_A_IP6), "{counter}");
        assert_eq!(error[IP6_AT + 6], ICMPV6);
        assert_eq!(error.len(), L4_AT6 + 8 + quoted, "{counter}");
        let message = &error[L4_AT6..];
        assert_eq!((message[0], message[1]), (kind, code), "{counter}");
        assert_eq!(&message[4..8], &data, "{counter}");
        assert_eq!(&message[8..], &packet[IP6_AT..IP6_AT + quoted], "the quote");
        assert!(icmpv6_checksum_holds(&error), "{counter}: {error:02x?}");
    }

    // Never an error about an error; a gone pod of the node is dropped
    // (no route would be a lie), as for IPv4.
    let error_from_pod = {
        let message = icmpv6((POD_A_IP6, world), vec![1, 4, 0, 0, 0, 0, 0, 0]);
        ipv6_frame(HOST_A_MAC, (POD_A_IP6, world), ICMPV6, 64, &message)
    };
    let gone: Ipv6Addr = "fd00:10:244::99".parse()?;
    for (packet, reason) in [
        (error_from_pod, "drop_ipv6_not_forwarded"),
        (tcp6_syn((POD_A_IP6, gone), 64), "drop_unknown_endpoint"),
    ] {
        let before = fixture.counter(reason);
        assert_eq!(fixture.run(&packet).0, TC_ACT_SHOT, "{reason}");
        assert_eq!(fixture.counter(reason), before + 1, "{reason}");
    }
    Ok(())
}

#[test]
fn ipv6_to_a_node_reached_directly_goes_to_its_mac_and_is_taken_only_from_it() -> anyhow::Result<()>
{
    let mut fixture = fixture()?;
    // The MAC `on_uplink` frames come from.
    let node_mac = [0x02, 0, 0, 0, 2, 0x01];
    let direct = ProgrammedNode {
        pod_cidr: REMOTE_POD_CIDR.parse()?,
        pod_cidr_ipv6: Some(REMOTE_POD_CIDR6.parse()?),
        path: NodePath::Direct,
        mac: Some(node_mac),
    };
    fixture.maps.insert_remote_node(REMOTE_NODE_IP, direct)?;
    let node_ipv6 = dual_stack(&mut fixture)?;

    // Out: unencapsulated, to the node's MAC from the uplink's.
    let packet = tcp6_syn((POD_A_IP6, REMOTE_POD_IP6), 64);
    let (verdict, out) = fixture.run(&packet);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out.len(), packet.len(), "no header added");
    assert_eq!((&out[0..6], &out[6..12]), (&node_mac[..], &UPLINK_MAC[..]));
    assert_eq!(out[IP6_AT + 7], 63, "one routing hop");
    assert_eq!(&out[IP6_AT + 8..], &packet[IP6_AT + 8..]);
    assert_eq!(fixture.counter("forwarded_direct"), 1);
    assert_eq!(fixture.counter("encapsulated"), 0);
    // The uplink's MTU, not the tunnel's: larger is told so.
    let payload = |len: usize| vec![0; len - 40];
    let fits = ipv6_frame(
        HOST_A_MAC,
        (POD_A_IP6, REMOTE_POD_IP6),
        TCP,
        64,
        &payload(UPLINK_MTU as usize),
    );
    assert_eq!(fixture.run(&fits).0, TC_ACT_REDIRECT);
    let too_big = ipv6_frame(
        HOST_A_MAC,
        (POD_A_IP6, REMOTE_POD_IP6),
        TCP,
        64,
        &payload(UPLINK_MTU as usize + 1),
    );
    let (verdict, error) = fixture.run(&too_big);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(error[L4_AT6], 2, "packet too big");
    assert_eq!(&error[L4_AT6 + 4..L4_AT6 + 8], &UPLINK_MTU.to_be_bytes());

    // In: a pod of that node to pod A, in a frame from its MAC.
    let back = on_uplink(tcp6_syn((REMOTE_POD_IP6, POD_A_IP6), 64));
    let (verdict, delivered) = fixture.run_program(names::FROM_UPLINK_PROGRAM, &back);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(&delivered[0..6], &POD_A_MAC);
    assert_eq!(delivered[IP6_AT + 7], 63);
    assert_eq!(fixture.counter("direct_to_pod"), 1);
    // Anything else to a pod from the underlay is dropped.
    let mut forged = back.clone();
    forged[6..12].copy_from_slice(&[0x02, 0, 0, 0, 2, 0x99]);
    let world: Ipv6Addr = "2001:db8::1".parse()?;
    let gone: Ipv6Addr = "fd00:10:244::99".parse()?;
    for (packet, reason) in [
        (forged, "drop_direct_unverified"),
        (
            on_uplink(tcp6_syn((world, POD_A_IP6), 64)),
            "drop_uplink_to_pod",
        ),
        (
            on_uplink(tcp6_syn((POD_B_IP6, POD_A_IP6), 64)),
            "drop_spoofed_source",
        ),
        (
            on_uplink(tcp6_syn((REMOTE_POD_IP6, gone), 64)),
            "drop_unknown_endpoint",
        ),
    ] {
        let before = fixture.counter(reason);
        let (verdict, _) = fixture.run_program(names::FROM_UPLINK_PROGRAM, &packet);
        assert_eq!(verdict, TC_ACT_SHOT, "{reason}");
        assert_eq!(fixture.counter(reason), before + 1, "{reason}");
    }
    // The node's own IPv6 is its stack's, untouched.
    let own = on_uplink(tcp6_syn((world, node_ipv6), 64));
    let (verdict, out) = fixture.run_program(names::FROM_UPLINK_PROGRAM, &own);
    assert_eq!((verdict, out), (TC_ACT_OK, own));
    Ok(())
}

#[test]
fn ipv6_from_another_nodes_pod_is_decapsulated_into_the_pod_and_nothing_else_is()
-> anyhow::Result<()> {
    let mut fixture = fixture()?;
    let inner = tcp6_syn((REMOTE_POD_IP6, POD_A_IP6), 63);
    let (verdict, out) = fixture.run_program(
        names::FROM_UPLINK_PROGRAM,
        &vxlan_frame(REMOTE_NODE_IP, VNI, &inner),
    );
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out.len(), inner.len(), "the outer headers gone");
    assert_eq!(&out[0..6], &POD_A_MAC);
    assert_eq!(&out[6..12], &HOST_A_MAC);
    assert_eq!(&out[12..14], &ETHERTYPE_IPV6, "an IPv6 frame again");
    assert_eq!(out[IP6_AT + 7], 62);
    assert_eq!(addresses(&out), (REMOTE_POD_IP6, POD_A_IP6));
    assert_eq!(fixture.counter("decapsulated_to_pod"), 1);

    let elsewhere: Ipv6Addr = "fd00:10:244:2::5".parse()?;
    for (inner, reason) in [
        // The remote node speaking for a pod it does not own.
        (tcp6_syn((elsewhere, POD_A_IP6), 63), "drop_spoofed_source"),
        (tcp6_syn((POD_B_IP6, POD_A_IP6), 63), "drop_spoofed_source"),
        // To no pod of this node.
        (
            tcp6_syn((REMOTE_POD_IP6, "fd00:10:244::99".parse()?), 63),
            "drop_unknown_endpoint",
        ),
        // Its last hop.
        (
            tcp6_syn((REMOTE_POD_IP6, POD_A_IP6), 1),
            "drop_ttl_exceeded",
        ),
    ] {
        let before = fixture.counter(reason);
        let (verdict, _) = fixture.run_program(
            names::FROM_UPLINK_PROGRAM,
            &vxlan_frame(REMOTE_NODE_IP, VNI, &inner),
        );
        assert_eq!(verdict, TC_ACT_SHOT, "{reason}");
        assert_eq!(fixture.counter(reason), before + 1, "{reason}");
    }
    Ok(())
}

/// `upper` (a transport header of protocol `protocol`) behind extension
/// headers of the kinds in `chain`, each 8 bytes padded out (PadN).
fn behind(chain: &[u8], protocol: u8, upper: &[u8]) -> (u8, Vec<u8>) {
    let mut payload = Vec::new();
    let nexts = chain.iter().skip(1).copied().chain([protocol]);
    for next in nexts.take(chain.len()) {
        payload.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
    }
    payload.extend_from_slice(upper);
    (chain.first().copied().unwrap_or(protocol), payload)
}

const HOP_BY_HOP: u8 = 0;
const FRAGMENT: u8 = 44;
const DESTINATION_OPTIONS: u8 = 60;
const UDP: u8 = 17;

#[test]
fn extension_headers_are_walked_within_a_bound_and_dhcpv6_answers_go_nowhere() -> anyhow::Result<()>
{
    let mut fixture = fixture()?;
    let tcp = &tcp6_syn((POD_A_IP6, POD_B_IP6), 64)[L4_AT6..];
    let frame = |(first, payload): (u8, Vec<u8>), dst| {
        ipv6_frame(HOST_A_MAC, (POD_A_IP6, dst), first, 64, &payload)
    };
    // One hop-by-hop header, or four: forwarded.
    for chain in [
        &[HOP_BY_HOP][..],
        &[
            HOP_BY_HOP,
            DESTINATION_OPTIONS,
            DESTINATION_OPTIONS,
            DESTINATION_OPTIONS,
        ],
    ] {
        let packet = frame(behind(chain, TCP, tcp), POD_B_IP6);
        assert_eq!(fixture.run(&packet).0, TC_ACT_REDIRECT, "{chain:?}");
    }
    let udp = |port: u16| {
        let mut header = vec![0u8; 8];
        header[0..2].copy_from_slice(&547u16.to_be_bytes());
        header[2..4].copy_from_slice(&port.to_be_bytes());
        header[4..6].copy_from_slice(&8u16.to_be_bytes());
        header
    };
    // A DHCPv6 request (to servers) goes on; an answer (to clients) does not.
    assert_eq!(
        fixture
            .run(&frame(behind(&[], UDP, &udp(547)), POD_B_IP6))
            .0,
        TC_ACT_REDIRECT
    );
    // A later piece of a fragmented datagram has no upper-layer header:
    // payload that reads as a DHCPv6 answer or as neighbour discovery is
    // forwarded; the first piece is judged by its header.
    let fragment = |offset_and_flags: u16, upper: &[u8], protocol: u8| {
        let mut payload = vec![protocol, 0];
        payload.extend_from_slice(&offset_and_flags.to_be_bytes());
        payload.extend_from_slice(&[0, 0, 0, 9]);
        payload.extend_from_slice(upper);
        (FRAGMENT, payload)
    };
    let later = 8 << 3;
    for upper in [udp(546), vec![134, 0, 0, 0, 0, 0, 0, 0]] {
        let packet = frame(fragment(later, &upper, UDP), POD_B_IP6);
        assert_eq!(fixture.run(&packet).0, TC_ACT_REDIRECT, "{upper:?}");
    }
    let first_piece = frame(fragment(1, &udp(546), UDP), POD_B_IP6);
    let before = fixture.counter("drop_pod_dhcpv6_server");
    assert_eq!(fixture.run(&first_piece).0, TC_ACT_SHOT);
    assert_eq!(fixture.counter("drop_pod_dhcpv6_server"), before + 1);

    let router_advertisement = [134, 0, 0, 0, 64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let link: Ipv6Addr = "fe80::1".parse()?;
    for (packet, reason) in [
        (
            frame(behind(&[DESTINATION_OPTIONS; 5], TCP, tcp), POD_B_IP6),
            "drop_ipv6_extension_headers",
        ),
        (
            frame(behind(&[253], TCP, tcp), POD_B_IP6),
            "drop_ipv6_extension_headers",
        ),
        (
            frame(behind(&[HOP_BY_HOP], ICMPV6, &router_advertisement), link),
            "drop_ndp_ignored",
        ),
        (
            frame(behind(&[], UDP, &udp(546)), link),
            "drop_pod_dhcpv6_server",
        ),
        (
            frame(behind(&[HOP_BY_HOP], UDP, &udp(546)), POD_B_IP6),
            "drop_pod_dhcpv6_server",
        ),
    ] {
        let before = fixture.counter(reason);
        assert_eq!(fixture.run(&packet).0, TC_ACT_SHOT, "{reason}");
        assert_eq!(fixture.counter(reason), before + 1, "{reason}");
    }
    Ok(())
}
