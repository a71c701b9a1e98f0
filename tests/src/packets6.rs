//! IPv6 frames for the packet suites (BPF_PROG_TEST_RUN), built by hand:
//! a fixed header, ICMPv6 with its checksum over the pseudo-header, and
//! neighbour discovery messages as a pod's stack sends them.

use std::net::Ipv6Addr;

use dataplane_common::checksum;

use crate::test_run::{HOST_A_MAC, POD_A_MAC};

pub const POD_A_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, 2);
pub const POD_B_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, 3);
/// The pods' gateway, as host-local gives it (the range's first address).
pub const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, 1);
pub const POD_A_LINK_LOCAL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0xa);

pub const ETHERTYPE_IPV6: [u8; 2] = [0x86, 0xdd];
pub const ICMPV6: u8 = 58;
pub const TCP: u8 = 6;
pub const NEIGHBOR_SOLICITATION: u8 = 135;
pub const NEIGHBOR_ADVERTISEMENT: u8 = 136;

/// Where the IPv6 header and its payload start in a frame.
pub const IP6_AT: usize = 14;
pub const L4_AT6: usize = IP6_AT + 40;

/// An IPv6 packet in a frame from pod A (to `dst_mac`).
pub fn ipv6_frame(
    dst_mac: [u8; 6],
    (src, dst): (Ipv6Addr, Ipv6Addr),
    next_header: u8,
    hop_limit: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut frame = [dst_mac, POD_A_MAC].concat();
    frame.extend_from_slice(&ETHERTYPE_IPV6);
    frame.extend_from_slice(&[0x60, 0, 0, 0]);
    frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    frame.extend_from_slice(&[next_header, hop_limit]);
    frame.extend_from_slice(&src.octets());
    frame.extend_from_slice(&dst.octets());
    frame.extend_from_slice(payload);
    frame
}

/// `message` (its checksum field zero) with its ICMPv6 checksum set.
pub fn icmpv6((src, dst): (Ipv6Addr, Ipv6Addr), mut message: Vec<u8>) -> Vec<u8> {
    message[2..4].copy_from_slice(&[0, 0]);
    let sum = checksum::ipv6_upper_layer(&src.octets(), &dst.octets(), ICMPV6, &message);
    message[2..4].copy_from_slice(&sum.to_be_bytes());
    message
}

/// Whether the ICMPv6 message of `frame` holds its correct checksum.
pub fn icmpv6_checksum_holds(frame: &[u8]) -> bool {
    let src: [u8; 16] = frame[IP6_AT + 8..IP6_AT + 24].try_into().unwrap();
    let dst: [u8; 16] = frame[IP6_AT + 24..IP6_AT + 40].try_into().unwrap();
    checksum::ipv6_upper_layer(&src, &dst, ICMPV6, &frame[L4_AT6..]) == 0
}

/// The solicited-node multicast address of `target`, and its MAC.
pub fn solicited_node(target: Ipv6Addr) -> (Ipv6Addr, [u8; 6]) {
    let [.., a, b, c] = target.octets();
    let address = Ipv6Addr::from([
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(a),
        u16::from_be_bytes([b, c]),
    ]);
    (address, [0x33, 0x33, 0xff, a, b, c])
}

/// A neighbour discovery message of `kind` for `target` from `src` to
/// `dst` (hop limit 255, as the link demands), with a source link-layer
/// address option when `option` names a MAC.
pub fn neighbor_message(
    kind: u8,
    (src, dst): (Ipv6Addr, Ipv6Addr),
    dst_mac: [u8; 6],
    target: Ipv6Addr,
    option: Option<[u8; 6]>,
) -> Vec<u8> {
    let mut message = vec![kind, 0, 0, 0, 0, 0, 0, 0];
    message.extend_from_slice(&target.octets());
    if let Some(mac) = option {
        message.extend_from_slice(&[1, 1]);
        message.extend_from_slice(&mac);
    }
    ipv6_frame(
        dst_mac,
        (src, dst),
        ICMPV6,
        255,
        &icmpv6((src, dst), message),
    )
}

/// Pod A's solicitation for `target`, multicast as its stack sends it.
pub fn solicitation(src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let (group, group_mac) = solicited_node(target);
    neighbor_message(
        NEIGHBOR_SOLICITATION,
        (src, group),
        group_mac,
        target,
        Some(POD_A_MAC),
    )
}

/// A TCP SYN from pod A's `src` to `dst` (the checksum is not the
/// programs' business on these paths: zero).
pub fn tcp6_syn((src, dst): (Ipv6Addr, Ipv6Addr), hop_limit: u8) -> Vec<u8> {
    let mut segment = vec![0u8; 20];
    segment[0..2].copy_from_slice(&40_000u16.to_be_bytes());
    segment[2..4].copy_from_slice(&80u16.to_be_bytes());
    segment[12] = 5 << 4;
    segment[13] = 0x02;
    ipv6_frame(HOST_A_MAC, (src, dst), TCP, hop_limit, &segment)
}
