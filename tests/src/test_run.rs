// Above 400 lines: one packet builder and runner for every BPF_PROG_TEST_RUN suite and the benchmark.
//! The eBPF programs under BPF_PROG_TEST_RUN, for the packet suites and the
//! benchmark's run-time rows: a freshly loaded object with a pin directory
//! of its own, configured as a node with pods A and B and one remote node,
//! and packets built with etherparse (malformed ones by hand, in the suites).

use std::{net::Ipv4Addr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use aya::{
    Ebpf,
    programs::{TestRun, TestRunOptions},
};
use dataplane_common::{
    Endpoint, Ipv4Cidr, Ipv6Cidr, MAX_NAT_CONNECTIONS, NodeConfig, PORT_SHARE_WHOLE, names,
    policy_table,
};
use dataplane_user::{
    loader::{self, classifier},
    maps::{Maps, PolicyTable, ProgrammedNode},
    model::{NodePath, policy::CompiledPolicy},
};
use etherparse::{
    ArpEthIpv4Packet, ArpOperation, Icmpv4Header, Icmpv4Type, IpHeaders, IpNumber, Ipv4Header,
    NetHeaders, PacketBuilder, PacketBuilderStep, PacketHeaders, TcpHeader, TransportHeader,
    UdpHeader,
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
/// The remote node's IPv6 pod CIDR (dual stack).
pub const REMOTE_POD_CIDR6: &str = "fd00:10:244:1::/64";
pub const REMOTE_POD_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
pub const VNI: u32 = 7;
pub const VXLAN_PORT: u16 = 4789;
pub const TUNNEL_MTU: u32 = 1450;
pub const UPLINK_MTU: u32 = 1500;
pub const NAT_PORT_MIN: u16 = 40000;
/// Node ports, as Kubernetes' default range has them.
pub const NODE_PORT_MIN: u16 = 30000;
pub const NODE_PORT_MAX: u16 = 32767;
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
        let loaded = loader::load(&loader::pin_directory(&pin_root))
            .with_context(|| format!("loading with pins under {}", pin_root.display()))
            .and_then(|mut ebpf| Ok((Maps::take_from(&mut ebpf)?, ebpf)));
        // Maps are pinned before a program can fail to load: nothing is left behind.
        let (maps, ebpf) = loaded.inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&pin_root);
        })?;
        // From here on, dropping the fixture removes the pins.
        let mut fixture = Self {
            ebpf,
            maps,
            pin_root,
        };
        let maps = &mut fixture.maps;
        maps.set_node_config(node_config())?;
        let remote = ProgrammedNode {
            pod_cidr: REMOTE_POD_CIDR.parse()?,
            pod_cidr_ipv6: Some(REMOTE_POD_CIDR6.parse()?),
            path: NodePath::Tunnel,
            mac: None,
        };
        maps.insert_remote_node(REMOTE_NODE_IP, remote)?;
        maps.insert_endpoint(
            POD_A_IP.into(),
            endpoint(LOOPBACK_IFINDEX, POD_A_MAC, HOST_A_MAC),
        )?;
        maps.insert_endpoint(POD_B_IP.into(), endpoint(4242, POD_B_MAC, HOST_B_MAC))?;
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

    /// The map `name` as the programs see it, opened from its pin (for
    /// maps the product only reads, which a test must fill itself).
    pub fn pinned_map(&self, name: &str) -> anyhow::Result<aya::maps::MapData> {
        let path = loader::pin_directory(&self.pin_root).join(name);
        aya::maps::MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))
    }

    /// Writes `compiled` into the policy table the programs do not read,
    /// then switches them to it, as the agent does.
    pub fn set_policy(&mut self, compiled: &CompiledPolicy) -> anyhow::Result<()> {
        let config = self.maps.node_config()?;
        let generation = config.policy_generation.wrapping_add(1);
        let idle = policy_table(generation);
        let wanted = PolicyTable::of(compiled, idle);
        self.write_policy_table(idle, &wanted)?;
        self.maps.set_node_config(NodeConfig {
            policy: u8::from(wanted.isolates()),
            policy_generation: generation,
            ..config
        })?;
        Ok(())
    }

    /// Brings policy table `table` to `wanted` (the switch left alone).
    pub fn write_policy_table(&mut self, table: u8, wanted: &PolicyTable) -> anyhow::Result<()> {
        let mut current = self.maps.policy.programmed()?[usize::from(table)].clone();
        self.maps
            .policy
            .write(&mut current, wanted)
            .map_err(|partial| anyhow::anyhow!("policy not written whole: {}", partial.error))
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

/// The node the fixture is: tunnel on, masquerading into
/// `NAT_PORT_MIN..=NAT_PORT_MAX`, whole shares for every pod.
pub fn node_config() -> NodeConfig {
    NodeConfig {
        pod_cidr: Ipv4Cidr::new([10, 244, 0, 0], 24),
        cluster_cidr: Ipv4Cidr::new([10, 244, 0, 0], 16),
        node_ip: NODE_IP.octets(),
        vni: VNI,
        uplink_ifindex: LOOPBACK_IFINDEX,
        tunnel_mtu: TUNNEL_MTU,
        vxlan_port: VXLAN_PORT,
        masquerade: 1,
        services: 0,
        nat_port_min: NAT_PORT_MIN,
        nat_port_max: NAT_PORT_MAX,
        // Whole shares: the suites that test them set their own.
        pod_port_share: PORT_SHARE_WHOLE,
        pod_connection_limit: MAX_NAT_CONNECTIONS,
        // No socket is in this namespace: the fixture loads no socket hook.
        host_netns_cookie: 0,
        outside_local: 0,
        policy: 0,
        node_port_min: NODE_PORT_MIN,
        node_port_max: NODE_PORT_MAX,
        _pad_end: [0; 2],
        service_cidr: Ipv4Cidr::default(),
        uplink_mtu: UPLINK_MTU,
        policy_generation: 0,
        // No IPv6 address: the suites that test ICMPv6 errors set one.
        node_ipv6: [0; 16],
        pod_cidr6: Ipv6Cidr::default(),
        uplink_mac: UPLINK_MAC,
        _pad_tail: [0; 6],
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
    let request = ArpEthIpv4Packet {
        operation: ArpOperation::REQUEST,
        sender_mac,
        sender_ipv4: sender_ip.octets(),
        target_mac: [0; 6],
        target_ipv4: target_ip.octets(),
    };
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(sender_mac, [0xff; 6])
        .arp(request.into())
        .write(&mut frame)
        .expect("an ARP request fits");
    frame
}

pub use dataplane_common::checksum::internet as checksum;

/// Ethernet and IPv4 headers (DF, identification `id`) of a frame pod A sends
/// to its gateway, ready for a payload.
fn from_pod_a(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, id: u16) -> PacketBuilderStep<IpHeaders> {
    let mut ip = Ipv4Header::new(0, ttl, IpNumber::ICMP, src.octets(), dst.octets())
        .expect("an empty payload fits");
    ip.identification = id;
    PacketBuilder::ethernet2(POD_A_MAC, HOST_A_MAC).ip(IpHeaders::Ipv4(ip, Default::default()))
}

/// An IPv4 ICMP echo request in an Ethernet frame, with a valid header checksum.
pub fn ipv4_frame(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, id: u16) -> Vec<u8> {
    ipv4_frame_sized(src, dst, ttl, id, 8)
}

/// As `ipv4_frame`, with `icmp_len` bytes of ICMP (zeros after the header).
pub fn ipv4_frame_sized(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    id: u16,
    icmp_len: usize,
) -> Vec<u8> {
    let mut frame = Vec::new();
    from_pod_a(src, dst, ttl, id)
        .icmpv4_echo_request(1, 1)
        .write(&mut frame, &vec![0; icmp_len - 8])
        .expect("an echo request fits");
    frame
}

/// `inner` (an Ethernet frame) in VXLAN from `outer_src` to this node.
pub fn vxlan_frame(outer_src: Ipv4Addr, vni: u32, inner: &[u8]) -> Vec<u8> {
    let [_, vni @ ..] = vni.to_be_bytes();
    let vxlan = [[0x08, 0, 0, 0].as_slice(), &vni, &[0], inner].concat();
    let mut frame = Vec::new();
    PacketBuilder::ethernet2([0x02, 0, 0, 0, 2, 0x11], UPLINK_MAC)
        .ipv4(outer_src.octets(), NODE_IP.octets(), 64)
        .udp(50000, VXLAN_PORT)
        .write(&mut frame, &vxlan)
        .expect("a VXLAN frame fits");
    frame
}

/// An IPv4 packet (no options, DF) in an Ethernet frame from pod A's veth.
pub fn ipv4_packet(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, l4: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    from_pod_a(src, dst, 64, 1)
        .write(&mut frame, IpNumber(protocol), l4)
        .expect("the packet fits");
    frame
}

/// A UDP datagram carrying `payload` from pod A, in a frame as it leaves the pod.
pub fn udp_frame(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    from_pod_a(src.0, dst.0, 64, 1)
        .udp(src.1, dst.1)
        .write(&mut frame, payload)
        .expect("the datagram fits");
    frame
}

/// A TCP segment with `flags` (FIN 0x01 ... URG 0x20) and a valid checksum.
pub fn tcp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8) -> Vec<u8> {
    tcp_segment(src, dst, flags, (1, 0), 0xffff)
}

/// As `tcp`, with sequence and acknowledgement numbers `(seq, ack)` and a
/// window.
pub fn tcp_segment(
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    flags: u8,
    (seq, ack): (u32, u32),
    window: u16,
) -> Vec<u8> {
    const PAYLOAD: &[u8] = b"payload!";
    let mut header = TcpHeader::new(src.1, dst.1, seq, window);
    header.acknowledgment_number = ack;
    [
        header.fin, header.syn, header.rst, header.psh, header.ack, header.urg,
    ] = std::array::from_fn(|bit| flags & (1 << bit) != 0);
    header.checksum = header
        .calc_checksum_ipv4_raw(src.0.octets(), dst.0.octets(), PAYLOAD)
        .expect("a small segment");
    [header.to_bytes().as_slice(), PAYLOAD].concat()
}

/// A UDP datagram, with a valid checksum or with none (0).
pub fn udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), with_checksum: bool) -> Vec<u8> {
    const PAYLOAD: &[u8] = b"datagram";
    let mut header = UdpHeader {
        source_port: src.1,
        destination_port: dst.1,
        length: (UdpHeader::LEN + PAYLOAD.len()) as u16,
        checksum: 0,
    };
    if with_checksum {
        header.checksum = header
            .calc_checksum_ipv4_raw(src.0.octets(), dst.0.octets(), PAYLOAD)
            .expect("a small datagram");
    }
    [header.to_bytes().as_slice(), PAYLOAD].concat()
}

/// An ICMP message of `kind` and `code` with a valid checksum.
pub fn icmp(kind: u8, code: u8, rest_of_header: [u8; 4], body: &[u8]) -> Vec<u8> {
    let icmp_type = Icmpv4Type::Unknown {
        type_u8: kind,
        code_u8: code,
        bytes5to8: rest_of_header,
    };
    let header = Icmpv4Header::with_checksum(icmp_type, body);
    [header.to_bytes().as_slice(), body].concat()
}

/// `frame` (Ethernet + IPv4 without options) cut into fragments carrying
/// `piece_len` bytes of its payload each (a multiple of 8, the last one
/// less), with identification `id`, each header checksum valid.
pub fn fragments(frame: &[u8], piece_len: usize, id: u16) -> Vec<Vec<u8>> {
    let (headers, payload) = frame.split_at(34);
    payload
        .chunks(piece_len)
        .enumerate()
        .map(|(index, piece)| {
            let offset = (index * piece_len / 8) as u16;
            let more = if (index + 1) * piece_len < payload.len() {
                0x2000
            } else {
                0
            };
            let total = (20 + piece.len()) as u16;
            let unchecked = [headers, piece].concat();
            let fields = [
                total.to_be_bytes(),
                id.to_be_bytes(),
                (more | offset).to_be_bytes(),
            ]
            .concat();
            with_ip_bytes(unchecked, 2, &fields)
        })
        .collect()
}

/// The IPv4 payload of `pieces` (fragments as `fragments` cuts them, in any
/// order) put back together behind the first piece's headers, the total
/// length and fragment fields of a whole datagram, to check its checksums.
pub fn reassembled(pieces: &[Vec<u8>]) -> Vec<u8> {
    let offset =
        |piece: &Vec<u8>| usize::from(u16::from_be_bytes([piece[20], piece[21]]) & 0x1fff) * 8;
    let mut sorted: Vec<&Vec<u8>> = pieces.iter().collect();
    sorted.sort_by_key(|piece| offset(piece));
    let payload: Vec<u8> = sorted
        .iter()
        .flat_map(|piece| piece[34..].to_vec())
        .collect();
    let total = (20 + payload.len()) as u16;
    let whole = [&sorted[0][..34], &payload].concat();
    with_ip_bytes(with_ip_bytes(whole, 2, &total.to_be_bytes()), 6, &[0, 0])
}

/// `frame` (Ethernet + IPv4) with the IPv4 header's bytes from `at` replaced
/// by `bytes` and its checksum made valid again: a crafted header field.
pub fn with_ip_bytes(mut frame: Vec<u8>, at: usize, bytes: &[u8]) -> Vec<u8> {
    const CHECKSUM_AT: usize = 14 + 10;
    frame[14 + at..14 + at + bytes.len()].copy_from_slice(bytes);
    frame[CHECKSUM_AT..CHECKSUM_AT + 2].copy_from_slice(&[0, 0]);
    let sum = checksum(&frame[14..34]);
    frame[CHECKSUM_AT..CHECKSUM_AT + 2].copy_from_slice(&sum.to_be_bytes());
    frame
}

/// The ICMP message of `reply`, an ICMP error this node sent pod A about the
/// frame `original`, once checked: from the node to pod A through its veth,
/// both checksums valid, quoting the original's IPv4 header and 8 bytes.
pub fn icmp_error_to_pod_a<'a>(reply: &'a [u8], original: &[u8]) -> &'a [u8] {
    assert_eq!(
        (&reply[0..6], &reply[6..12]),
        (&POD_A_MAC[..], &HOST_A_MAC[..])
    );
    let ip = &reply[14..34];
    assert_eq!(
        (ip[9], &ip[12..16], &ip[16..20]),
        (1, &NODE_IP.octets()[..], &POD_A_IP.octets()[..])
    );
    assert_eq!(checksum(ip), 0);
    let icmp = &reply[34..];
    assert_eq!(checksum(icmp), 0);
    assert_eq!(
        &icmp[8..],
        &original[14..14 + 28],
        "quotes the original header and 8 bytes"
    );
    icmp
}

/// The frame's pieces as `program` leaves them, each redirected.
pub fn run_pieces(fixture: &mut Fixture, program: &str, pieces: &[Vec<u8>]) -> Vec<Vec<u8>> {
    pieces
        .iter()
        .map(|piece| {
            let (verdict, out) = fixture.run_program(program, piece);
            assert_eq!(verdict, TC_ACT_REDIRECT, "piece {:02x?}", &piece[14..34]);
            assert_eq!(checksum(&out[14..34]), 0, "IPv4 header checksum");
            out
        })
        .collect()
}

/// Checks every checksum of an Ethernet + IPv4 frame: the IPv4 header's and
/// the TCP, UDP (unless 0: none) or ICMP one.
pub fn assert_checksums_valid(frame: &[u8]) {
    let packet = PacketHeaders::from_ethernet_slice(frame).expect("an Ethernet frame");
    let Some(NetHeaders::Ipv4(ip, _)) = &packet.net else {
        panic!("not IPv4: {packet:?}");
    };
    assert_eq!(
        ip.header_checksum,
        ip.calc_header_checksum(),
        "IPv4 header checksum"
    );
    let payload = packet.payload.slice();
    match &packet.transport {
        Some(TransportHeader::Tcp(tcp)) => {
            assert_eq!(
                Ok(tcp.checksum),
                tcp.calc_checksum_ipv4(ip, payload),
                "TCP checksum"
            );
        }
        Some(TransportHeader::Udp(udp)) if udp.checksum != 0 => {
            assert_eq!(
                Ok(udp.checksum),
                udp.calc_checksum_ipv4(ip, payload),
                "UDP checksum"
            );
        }
        Some(TransportHeader::Icmpv4(icmp)) => {
            assert_eq!(
                icmp.checksum,
                icmp.icmp_type.calc_checksum(payload),
                "ICMP checksum"
            );
        }
        _ => {}
    }
}

/// Address and port fields of an IPv4 (no options) + TCP/UDP frame:
/// (source, destination).
pub fn addresses(frame: &[u8]) -> ((Ipv4Addr, u16), (Ipv4Addr, u16)) {
    let ip = |at: usize| Ipv4Addr::new(frame[at], frame[at + 1], frame[at + 2], frame[at + 3]);
    let port = |at: usize| u16::from_be_bytes([frame[at], frame[at + 1]]);
    ((ip(26), port(34)), (ip(30), port(36)))
}

/// The same frame as if it arrived on the uplink for this node: to the
/// test runs' device (loopback, MAC all zero), from another MAC.
pub fn on_uplink(mut frame: Vec<u8>) -> Vec<u8> {
    frame[0..6].fill(0);
    frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 2, 0x01]);
    frame
}

/// `frame` as the uplink gets it when a switch floods a frame for another
/// host (its destination MAC not the device's).
pub fn for_another_host(frame: Vec<u8>) -> Vec<u8> {
    let mut frame = on_uplink(frame);
    frame[0..6].copy_from_slice(&UPLINK_MAC);
    frame
}
