//! What a pod can do to its node and to other pods, tried as an attacker
//! would, on nodes with IPv6 left on as real nodes have it.

use std::{
    net::{Ipv6Addr, SocketAddrV6},
    time::Duration,
};

use anyhow::Context as _;
use dataplane_tests::{
    Cluster, ClusterSpec, MainPlugin, Netns,
    cluster::{EXTERNAL_HOST_IP, GATEWAY_UNDERLAY_IP},
    eventually,
    test_run::{ipv4_frame, vxlan_frame, with_ip_bytes},
    traffic::{in_netns, joined, send_frames},
};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// One node whose pods the real `ptp` plugin made, as on a user's node.
fn one_node(pods: usize) -> Cluster {
    Cluster::new(ClusterSpec::dataplane(1, pods).with_real_plugin(MainPlugin::Ptp))
        .expect("building the netns cluster")
}

/// One node with pods wired by hand and registered with `dataplane endpoint
/// add`: host veths keep the kernel's defaults (`ptp` switches `accept_ra`
/// off on the ones it makes), the case a pod's router advertisement hits.
fn one_node_with_handmade_pods(pods: usize) -> Cluster {
    Cluster::new(ClusterSpec::dataplane(1, pods)).expect("building the netns cluster")
}

/// The prefix the hostile router advertisement offers for SLAAC.
const ADVERTISED_PREFIX: [u8; 8] = [0x20, 0x01, 0x0d, 0xb8, 0x66, 0x66, 0, 0];

/// Sends router advertisements out of `interface` to all nodes: "I am your
/// default router, take an address in 2001:db8:6666::/64", as radvd would.
/// Retried until the pod has a link-local address to send them from.
fn advertise_as_router(pod: &Netns, interface: &str) -> anyhow::Result<()> {
    let index = pod.index_of(interface)?;
    joined(in_netns(pod, move || {
        let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
        // Hosts ignore router advertisements that crossed a router.
        socket.set_multicast_hops_v6(255)?;
        socket.set_multicast_if_v6(index)?;
        let mut advertisement = vec![
            134, 0, 0, 0, // type, code, checksum (the kernel's)
            64, 0, 0x07, 0x08, // hop limit, flags, router lifetime 1800 s
            0, 0, 0, 0, 0, 0, 0, 0, // reachable time, retransmission timer
            3, 4, 64, 0xc0, // prefix information: on-link, autonomous
            0, 0, 0x1c, 0x20, 0, 0, 0x1c, 0x20, 0, 0, 0, 0, // lifetimes, reserved
        ];
        advertisement.extend_from_slice(&ADVERTISED_PREFIX);
        advertisement.extend_from_slice(&[0; 8]);
        let all_nodes = SockAddr::from(SocketAddrV6::new(
            Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
            0,
            0,
            index,
        ));
        let sent = eventually(Duration::from_secs(5), || {
            Ok(socket.send_to(&advertisement, &all_nodes).is_ok())
        })?;
        anyhow::ensure!(sent, "the pod never had an address to advertise from");
        for _ in 0..3 {
            socket
                .send_to(&advertisement, &all_nodes)
                .context("sending a router advertisement")?;
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }))
}

#[test]
fn a_pod_can_neither_reach_nor_reconfigure_its_node_over_ipv6() -> anyhow::Result<()> {
    ipv6_from_a_pod_changes_nothing(&one_node_with_handmade_pods(2))
}

#[test]
fn a_ptp_pod_can_neither_reach_nor_reconfigure_its_node_over_ipv6() -> anyhow::Result<()> {
    ipv6_from_a_pod_changes_nothing(&one_node(2))
}

/// A pod's router advertisements reach nothing on its node, nor do its
/// probes of the host veth's link-local address.
fn ipv6_from_a_pod_changes_nothing(cluster: &Cluster) -> anyhow::Result<()> {
    let node = &cluster.nodes[0];
    let (pod, other) = (&node.pods[0], &node.pods[1]);
    let ignored = node.counter("drop_ndp_ignored")?;

    // The host veth's link-local address, once it is usable (after DAD): the
    // node would answer on it.
    let mut host_link_local = None;
    eventually(Duration::from_secs(5), || {
        host_link_local = node
            .netns
            .ipv6_addresses(&pod.host_interface)?
            .into_iter()
            .find(Ipv6Addr::is_unicast_link_local);
        Ok(host_link_local.is_some())
    })?;
    let host_link_local =
        host_link_local.context("the host veth never had a usable link-local address")?;

    advertise_as_router(&pod.netns, "eth0")?;
    let target = format!("{host_link_local}%eth0");
    let echo = pod
        .netns
        .exec(&["ping", "-6", "-c", "2", "-i", "0.2", "-W", "1", &target]);
    assert!(echo.is_err(), "the node answered a pod over IPv6: {echo:?}");

    // Given time to act on the advertisement, the node took nothing from it.
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !node.netns.has_ipv6_default_route()?,
        "the pod became the node's IPv6 default router"
    );
    let learned: Vec<_> = node
        .netns
        .ipv6_addresses(&pod.host_interface)?
        .into_iter()
        .filter(|address| !address.is_unicast_link_local())
        .collect();
    assert!(
        learned.is_empty(),
        "SLAAC addresses from the pod: {learned:?}"
    );
    // The advertisements and the solicitations for the host veth's
    // link-local address (no MAC to answer a link-local source from).
    assert!(node.counter("drop_ndp_ignored")? > ignored);

    // IPv4 goes on as before.
    pod.ping(other.ip, 2)?;
    Ok(())
}

#[test]
fn a_pod_cannot_put_vlan_tags_on_the_underlay() -> anyhow::Result<()> {
    let cluster = one_node(1);
    let node = &cluster.nodes[0];
    let pod = &node.pods[0];
    // An echo request to the outside tagged with VLAN 5, as a pod with a VLAN
    // device would send it. The node's kernel moves the tag into the
    // packet's metadata before the dataplane sees it.
    let untagged = ipv4_frame(pod.ip, EXTERNAL_HOST_IP, 64, 1);
    let gateway_mac = node.netns.mac_of(&pod.host_interface)?;
    let macs = [gateway_mac.as_bytes(), pod.mac.as_bytes()].concat();
    let tagged = [&macs, &[0x81, 0x00, 0x00, 0x05][..], &untagged[12..]].concat();
    let dropped = node.counter("drop_pod_vlan_tagged")?;
    send_frames(&pod.netns, "eth0", tagged, 3)?;
    assert!(
        eventually(Duration::from_secs(2), || Ok(node
            .counter("drop_pod_vlan_tagged")?
            >= dropped + 3))?,
        "tagged frames were not dropped"
    );
    assert_eq!(
        node.counter("masqueraded")?,
        0,
        "NAT state for tagged frames"
    );
    // Untagged, the same request goes out and is answered.
    pod.ping(EXTERNAL_HOST_IP, 1)?;
    Ok(())
}

#[test]
fn martian_non_unicast_and_malformed_packets_from_a_pod_go_nowhere() -> anyhow::Result<()> {
    let cluster = one_node(1);
    let node = &cluster.nodes[0];
    let pod = &node.pods[0];
    let gateway_mac = node.netns.mac_of(&pod.host_interface)?;
    let to_gateway = |destination| {
        let mut frame = ipv4_frame(pod.ip, destination, 64, 1);
        frame[..6].copy_from_slice(gateway_mac.as_bytes());
        frame[6..12].copy_from_slice(pod.mac.as_bytes());
        frame
    };
    let mut in_broadcast_frame = to_gateway(EXTERNAL_HOST_IP);
    in_broadcast_frame[..6].copy_from_slice(&[0xff; 6]);
    let cases = [
        (
            to_gateway([127, 0, 0, 1].into()),
            "drop_martian_destination",
        ),
        (to_gateway([0, 0, 0, 0].into()), "drop_martian_destination"),
        (to_gateway([255, 255, 255, 255].into()), "drop_not_unicast"),
        (to_gateway([224, 0, 0, 251].into()), "drop_not_unicast"),
        (in_broadcast_frame, "drop_not_unicast"),
        // A total length past the end of the frame.
        (
            with_ip_bytes(to_gateway(EXTERNAL_HOST_IP), 2, &600u16.to_be_bytes()),
            "drop_malformed",
        ),
    ];
    for (frame, reason) in cases {
        let before = node.counter(reason)?;
        send_frames(&pod.netns, "eth0", frame, 1)?;
        assert!(
            eventually(
                Duration::from_secs(2),
                || Ok(node.counter(reason)? > before)
            )?,
            "not counted as {reason}"
        );
    }
    assert_eq!(
        node.counter("masqueraded")?,
        0,
        "NAT state for a refused packet"
    );
    pod.ping(EXTERNAL_HOST_IP, 1)?;
    Ok(())
}

#[test]
fn a_fragment_of_vxlan_from_the_underlay_is_not_decapsulated() -> anyhow::Result<()> {
    let cluster = one_node(1);
    let node = &cluster.nodes[0];
    let pod = &node.pods[0];
    // The first piece of a VXLAN datagram to the node, for its pod, sent by
    // a host on the underlay.
    let inner = ipv4_frame([10, 244, 1, 5].into(), pod.ip, 64, 1);
    let mut piece = vxlan_frame(GATEWAY_UNDERLAY_IP, 1, &inner);
    piece = with_ip_bytes(piece, 16, &node.ip.octets());
    piece = with_ip_bytes(piece, 6, &0x2000u16.to_be_bytes());
    piece[..6].copy_from_slice(node.netns.mac_of("eth0")?.as_bytes());
    piece[6..12].copy_from_slice(cluster.gateway.mac_of("eth0")?.as_bytes());
    let before = node.counter("drop_tunnel_fragment")?;
    send_frames(&cluster.gateway, "eth0", piece, 2)?;
    assert!(
        eventually(Duration::from_secs(2), || Ok(node
            .counter("drop_tunnel_fragment")?
            >= before + 2))?,
        "fragmented VXLAN was not dropped"
    );
    assert_eq!(node.counter("decapsulated_to_pod")?, 0);
    Ok(())
}

#[test]
fn a_pod_whose_ttl_runs_out_hears_time_exceeded_from_its_node() -> anyhow::Result<()> {
    let cluster = one_node(2);
    let node = &cluster.nodes[0];
    let pod = &node.pods[0];
    for destination in [node.pods[1].ip, EXTERNAL_HOST_IP] {
        let destination = destination.to_string();
        let output = pod
            .netns
            .command("ping")?
            .args(["-c", "1", "-t", "1", "-W", "1", &destination])
            .output()?;
        let printed = String::from_utf8_lossy(&output.stdout);
        let expected = format!("From {} icmp_seq=1 Time to live exceeded", node.ip);
        assert!(printed.contains(&expected), "to {destination}: {printed}");
    }
    assert_eq!(
        node.counter("masqueraded")?,
        0,
        "NAT state for an expired packet"
    );
    Ok(())
}
