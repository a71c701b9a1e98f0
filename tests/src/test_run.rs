//! The eBPF programs under BPF_PROG_TEST_RUN, for the packet suites and the
//! benchmark's run-time rows: a freshly loaded object with a pin directory
//! of its own, configured as a node with pods A and B and one remote node,
//! and hand-built packets.

use std::{net::Ipv4Addr, path::PathBuf, time::Duration};

use anyhow::Context as _;

use aya::{
    Ebpf,
    programs::{TestRun, TestRunOptions},
};
use dataplane_common::{Endpoint, Ipv4Cidr, NodeConfig, names};
use dataplane_user::{
    loader::{self, classifier},
    maps::Maps,
};

use crate::netns::{require_root, unique_prefix};

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

/// Without a context, BPF_PROG_TEST_RUN runs skb programs on the loopback device.
pub const LOOPBACK_IFINDEX: u32 = 1;

pub const POD_A_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 2);
pub const POD_B_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 3);
pub const POD_A_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa];
pub const POD_B_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb];
pub const HOST_A_MAC: [u8; 6] = [0x02, 0, 0, 0, 1, 0xa];
pub const HOST_B_MAC: [u8; 6] = [0x02, 0, 0, 0, 1, 0xb];
pub const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
pub const REMOTE_NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
pub const REMOTE_POD_CIDR: &str = "10.244.1.0/24";
pub const REMOTE_POD_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
pub const VNI: u32 = 7;
pub const VXLAN_PORT: u16 = 4789;
pub const TUNNEL_MTU: u32 = 1450;
pub const NAT_PORT_MIN: u16 = 40000;
pub const NAT_PORT_MAX: u16 = 40003;
pub const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const UPLINK_MAC: [u8; 6] = [0x02, 0, 0, 0, 2, 0x10];

/// A freshly loaded object with its own pin directory, removed on drop.
pub struct Fixture {
    ebpf: Ebpf,
    pub maps: Maps,
    pin_root: PathBuf,
}

impl Fixture {
    /// Pods A and B registered, A on the device test runs use and B
    /// elsewhere; the tunnel on, with one remote node.
    pub fn new() -> anyhow::Result<Self> {
        require_root()?;
        loader::ensure_bpffs_mounted()?;
        let pin_root = PathBuf::from(format!("/sys/fs/bpf/{}-unit", unique_prefix()));
        let mut ebpf = loader::load(&loader::pin_directory(&pin_root))
            .with_context(|| format!("loading with pins under {}", pin_root.display()))?;
        // From here on, dropping the fixture removes the pins.
        let maps = Maps::take_from(&mut ebpf)?;
        let mut fixture = Self {
            ebpf,
            maps,
            pin_root,
        };
        let maps = &mut fixture.maps;
        maps.set_node_config(NodeConfig {
            pod_cidr: Ipv4Cidr::new([10, 244, 0, 0], 24),
            cluster_cidr: Ipv4Cidr::new([10, 244, 0, 0], 16),
            node_ip: NODE_IP.octets(),
            vni: VNI,
            uplink_ifindex: LOOPBACK_IFINDEX,
            tunnel_mtu: TUNNEL_MTU,
            vxlan_port: VXLAN_PORT,
            masquerade: 1,
            _pad: 0,
            nat_port_min: NAT_PORT_MIN,
            nat_port_max: NAT_PORT_MAX,
        })?;
        maps.insert_remote_node(REMOTE_NODE_IP, REMOTE_POD_CIDR.parse()?)?;
        maps.insert_endpoint(POD_A_IP, endpoint(LOOPBACK_IFINDEX, POD_A_MAC, HOST_A_MAC))?;
        maps.insert_endpoint(POD_B_IP, endpoint(4242, POD_B_MAC, HOST_B_MAC))?;
        Ok(fixture)
    }

    /// Runs the from-pod program on `packet`; the verdict and the packet as it left.
    pub fn run(&mut self, packet: &[u8]) -> (u32, Vec<u8>) {
        self.run_program(names::FROM_POD_PROGRAM, packet)
    }

    /// Runs `program` on `packet`; the verdict and the packet as it left.
    pub fn run_program(&mut self, program: &str, packet: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; packet.len() + 256];
        let result = classifier(&mut self.ebpf, program)
            .test_run(TestRunOptions {
                data_in: Some(packet),
                data_out: Some(&mut out),
                ..TestRunOptions::new()
            })
            .unwrap();
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }

    /// The average run time of `program` on `packet` over `runs` single-packet
    /// test runs (a repeated run would feed the program its own rewritten
    /// packet), and the verdict of the last.
    pub fn run_time(
        &mut self,
        program: &str,
        packet: &[u8],
        runs: u32,
    ) -> anyhow::Result<(Duration, u32)> {
        let program = classifier(&mut self.ebpf, program);
        let (mut total, mut verdict) = (Duration::ZERO, 0);
        for _ in 0..runs {
            let result = program.test_run(TestRunOptions {
                data_in: Some(packet),
                ..TestRunOptions::new()
            })?;
            total += result.duration;
            verdict = result.return_value;
        }
        Ok((total / runs.max(1), verdict))
    }

    pub fn counter(&self, name: &str) -> u64 {
        self.maps
            .counters()
            .unwrap()
            .into_iter()
            .find(|total| total.counter.name() == name)
            .map(|total| total.value.packets)
            .unwrap()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pin_root);
    }
}

pub fn endpoint(host_ifindex: u32, pod_mac: [u8; 6], host_mac: [u8; 6]) -> Endpoint {
    Endpoint {
        host_ifindex,
        pod_mac,
        host_mac,
    }
}

pub fn ethernet(dst: [u8; 6], src: [u8; 6], ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&ether_type.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

pub fn arp_request(sender_mac: [u8; 6], sender_ip: Ipv4Addr, target_ip: Ipv4Addr) -> Vec<u8> {
    let mut arp = vec![0, 1, 0x08, 0x00, 6, 4, 0, 1];
    arp.extend_from_slice(&sender_mac);
    arp.extend_from_slice(&sender_ip.octets());
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&target_ip.octets());
    ethernet([0xff; 6], sender_mac, 0x0806, &arp)
}

pub use dataplane_common::checksum::internet as checksum;

/// An IPv4 ICMP echo request in an Ethernet frame, with a valid header checksum.
pub fn ipv4_frame(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, id: u16) -> Vec<u8> {
    ipv4_frame_sized(src, dst, ttl, id, 8)
}

/// As `ipv4_frame`, with DF set and `icmp_len` bytes of ICMP.
pub fn ipv4_frame_sized(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    id: u16,
    icmp_len: usize,
) -> Vec<u8> {
    let mut icmp = vec![0u8; icmp_len];
    icmp[..8].copy_from_slice(&[8, 0, 0xf7, 0xfe, 0, 1, 0, 1]);
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&id.to_be_bytes());
    ip.extend_from_slice(&[0x40, 0, ttl, 1, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip.extend_from_slice(&icmp);
    ethernet(HOST_A_MAC, POD_A_MAC, 0x0800, &ip)
}

/// `inner` (an Ethernet frame) in VXLAN from `outer_src` to this node.
pub fn vxlan_frame(outer_src: Ipv4Addr, vni: u32, inner: &[u8]) -> Vec<u8> {
    let mut udp = Vec::new();
    udp.extend_from_slice(&50000u16.to_be_bytes());
    udp.extend_from_slice(&VXLAN_PORT.to_be_bytes());
    udp.extend_from_slice(&((8 + 8 + inner.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0, 0x08, 0, 0, 0]);
    udp.extend_from_slice(&vni.to_be_bytes()[1..]);
    udp.push(0);
    udp.extend_from_slice(inner);
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((20 + udp.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0]);
    ip.extend_from_slice(&outer_src.octets());
    ip.extend_from_slice(&NODE_IP.octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip.extend_from_slice(&udp);
    ethernet(UPLINK_MAC, [0x02, 0, 0, 0, 2, 0x11], 0x0800, &ip)
}

/// An IPv4 packet (no options, DF) in an Ethernet frame from pod A's veth.
pub fn ipv4_packet(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, l4: &[u8]) -> Vec<u8> {
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0x40, 0, 64, protocol, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip.extend_from_slice(l4);
    ethernet(HOST_A_MAC, POD_A_MAC, 0x0800, &ip)
}

/// Sum of the IPv4 pseudo-header and `l4`, as TCP and UDP checksums cover it.
pub fn pseudo_header_checksum(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, l4: &[u8]) -> u16 {
    let mut covered = Vec::new();
    covered.extend_from_slice(&src.octets());
    covered.extend_from_slice(&dst.octets());
    covered.extend_from_slice(&[0, protocol]);
    covered.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    covered.extend_from_slice(l4);
    checksum(&covered)
}

/// A TCP segment with `flags` and a valid checksum.
pub fn tcp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8) -> Vec<u8> {
    let mut segment = Vec::new();
    segment.extend_from_slice(&src.1.to_be_bytes());
    segment.extend_from_slice(&dst.1.to_be_bytes());
    segment.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    segment.extend_from_slice(b"payload!");
    let sum = pseudo_header_checksum(src.0, dst.0, 6, &segment);
    segment[16..18].copy_from_slice(&sum.to_be_bytes());
    segment
}

/// A UDP datagram, with a valid checksum or with none (0).
pub fn udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), with_checksum: bool) -> Vec<u8> {
    let mut datagram = Vec::new();
    datagram.extend_from_slice(&src.1.to_be_bytes());
    datagram.extend_from_slice(&dst.1.to_be_bytes());
    datagram.extend_from_slice(&16u16.to_be_bytes());
    datagram.extend_from_slice(&[0, 0]);
    datagram.extend_from_slice(b"datagram");
    if with_checksum {
        let sum = pseudo_header_checksum(src.0, dst.0, 17, &datagram);
        datagram[6..8].copy_from_slice(&sum.to_be_bytes());
    }
    datagram
}

/// An ICMP message of `kind` (code 0 unless given) with a valid checksum.
pub fn icmp(kind: u8, code: u8, rest_of_header: [u8; 4], body: &[u8]) -> Vec<u8> {
    let mut message = vec![kind, code, 0, 0];
    message.extend_from_slice(&rest_of_header);
    message.extend_from_slice(body);
    let sum = checksum(&message);
    message[2..4].copy_from_slice(&sum.to_be_bytes());
    message
}

/// The same frame as if it arrived on the uplink (other MACs).
pub fn on_uplink(mut frame: Vec<u8>) -> Vec<u8> {
    frame[0..6].copy_from_slice(&UPLINK_MAC);
    frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 2, 0x01]);
    frame
}
