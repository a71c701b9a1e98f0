//! What a host on the underlay can send into a node's pods (from the real
//! `ptp` chain, whose host side has `ip_forward` on): unencapsulated
//! packets to a pod from addresses that answer no pod's connection, and
//! VLAN-tagged tunnel frames from a real node. Neither reaches the pod;
//! what should still does.

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    time::Duration,
};

use dataplane_common::HAIRPIN_SOURCE;
use dataplane_tests::{
    Cluster, ClusterSpec, Netns,
    cluster::{EXTERNAL_HOST_IP, GATEWAY_UNDERLAY_IP},
    cni::MainPlugin,
    eventually,
    test_run::{NODE_IP, ipv4_packet, udp, vxlan_frame},
    traffic::{Capture, in_netns, joined, send_frames, udp_echo_server, udp_exchange},
};

const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const ECHO_PORT: u16 = 5353;

/// A UDP socket of `netns` (it stays there, whichever thread uses it).
fn udp_socket_of(netns: &Netns) -> anyhow::Result<UdpSocket> {
    joined(in_netns(netns, || Ok(UdpSocket::bind("0.0.0.0:0")?)))
}

/// `frame` (an Ethernet frame) re-addressed from `source_mac` to `destination_mac`.
fn addressed(mut frame: Vec<u8>, destination_mac: [u8; 6], source_mac: [u8; 6]) -> Vec<u8> {
    frame[0..6].copy_from_slice(&destination_mac);
    frame[6..12].copy_from_slice(&source_mac);
    frame
}

#[test]
fn an_underlay_host_cannot_send_into_a_ptp_pod() -> anyhow::Result<()> {
    let cluster = Cluster::new(ClusterSpec::dataplane(1, 1).with_real_plugin(MainPlugin::Ptp))?;
    let node = &cluster.nodes[0];
    let pod = &node.pods[0];
    node.cli(&[
        "service",
        "add",
        "--name",
        "default/echo",
        "--ip",
        &CLUSTER_IP.to_string(),
        "--port",
        &format!("53/udp:30053={}:{ECHO_PORT}", pod.ip),
    ])?;
    let server = udp_echo_server(&pod.netns, pod.ip, ECHO_PORT, 2, Duration::from_secs(3))?;
    // Sources no pod's connection has: a ClusterIP (echoed, it looped
    // through the Service at 100,000 packets/s), the hairpin address, the
    // underlay host itself and an outside address.
    let (node_mac, gateway_mac) = (
        node.netns.mac_of("eth0")?.into_array(),
        cluster.gateway.mac_of("eth0")?.into_array(),
    );
    let sources = [
        CLUSTER_IP,
        Ipv4Addr::from(HAIRPIN_SOURCE),
        GATEWAY_UNDERLAY_IP,
        EXTERNAL_HOST_IP,
    ];
    for source in sources {
        let datagram = ipv4_packet(
            source,
            pod.ip,
            17,
            &udp((source, 53), (pod.ip, ECHO_PORT), true),
        );
        send_frames(
            &cluster.gateway,
            "eth0",
            addressed(datagram, node_mac, gateway_mac),
            1,
        )?;
    }
    assert!(
        eventually(Duration::from_secs(2), || Ok(node
            .counter("drop_uplink_to_pod")?
            >= sources.len() as u64))?,
        "the datagrams were not dropped"
    );
    // An outside client of the Service still gets through.
    let node_port = SocketAddr::from((node.ip, 30053));
    udp_exchange(&udp_socket_of(&cluster.external)?, node_port, b"query")?;
    let seen = joined(server)?;
    assert_eq!(
        seen,
        [SocketAddr::from((node.ip, seen[0].port()))],
        "only the Service's client, masqueraded"
    );
    Ok(())
}

#[test]
fn vlan_tagged_tunnel_frames_reach_no_pod() -> anyhow::Result<()> {
    let cluster = Cluster::new(ClusterSpec::dataplane(2, 1).with_real_plugin(MainPlugin::Ptp))?;
    let (node, sender) = (&cluster.nodes[0], &cluster.nodes[1]);
    let (pod, remote_pod) = (&node.pods[0], &sender.pods[0]);
    let server = udp_echo_server(&pod.netns, pod.ip, ECHO_PORT, 2, Duration::from_secs(3))?;
    // What the sending node's tunnel would send for its pod, byte for byte
    // but from a raw socket: once in VLAN 7, once untagged.
    let inner = ipv4_packet(
        remote_pod.ip,
        pod.ip,
        17,
        &udp((remote_pod.ip, 40000), (pod.ip, ECHO_PORT), true),
    );
    // The packet tests' node is this cluster's first.
    assert_eq!(node.ip, NODE_IP);
    let outer = addressed(
        vxlan_frame(sender.ip, dataplane_user::config::DEFAULT_VNI, &inner),
        node.netns.mac_of("eth0")?.into_array(),
        sender.netns.mac_of("eth0")?.into_array(),
    );
    let tagged = [&outer[..12], &[0x81, 0x00, 0x00, 0x07], &outer[12..]].concat();
    let capture = Capture::start(&pod.netns, "eth0")?;
    send_frames(&sender.netns, "eth0", tagged, 3)?;
    std::thread::sleep(Duration::from_millis(500));
    send_frames(&sender.netns, "eth0", outer, 1)?;
    let seen = joined(server)?;
    assert_eq!(seen.len(), 1, "only the untagged frame arrived: {seen:?}");
    // Left to the kernel (no VLAN 7 device here): never decapsulated into
    // the pod, where it arrived tagged.
    let frames = capture.finish()?;
    assert!(
        frames.iter().all(|frame| !frame.contains("vlan")),
        "{frames:#?}"
    );
    Ok(())
}
