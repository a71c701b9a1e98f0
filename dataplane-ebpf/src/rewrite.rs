//! Rewriting the addresses and ports of a packet while keeping its IPv4 and
//! transport checksums right: what SNAT (nat.rs) and Services (service.rs)
//! both do to a packet.

use core::mem::offset_of;

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use dataplane_common::{Counter, Ipv4Octets, conn_state};
use network_types::{icmp::Icmpv4Hdr, ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr};

use crate::{
    counters::Outcome,
    ipv4::icmp::{ECHO_ID_OFFSET, ECHO_REPLY, ECHO_REQUEST, echo_id},
    packet::{ICMP, IP_AT, L4_AT, PLAIN_VIHL, TCP, UDP, raw2, raw4},
};

pub const IP_CHECKSUM_AT: usize = IP_AT + offset_of!(Ipv4Hdr, check);
pub const IP_SOURCE_AT: usize = IP_AT + offset_of!(Ipv4Hdr, src_addr);
pub const IP_DESTINATION_AT: usize = IP_AT + offset_of!(Ipv4Hdr, dst_addr);
/// TCP and UDP headers both start with the two ports.
pub const SOURCE_PORT_AT: usize = L4_AT + offset_of!(UdpHdr, src);
pub const DESTINATION_PORT_AT: usize = L4_AT + offset_of!(UdpHdr, dst);

/// What a TCP segment says about its sender's side of the connection.
#[derive(Clone, Copy)]
pub struct Segment {
    pub seq: u32,
    /// The sequence number after it (SYN and FIN count one).
    pub end: u32,
    /// The acknowledgement number, when the ACK flag is set.
    pub ack: Option<u32>,
    pub window: u16,
}

/// The transport fields of a packet that NAT and Services look at and rewrite.
pub struct Transport {
    pub protocol: u8,
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
    /// Where the source (egress) or destination (reply) port or echo id sits.
    pub port_at: usize,
    pub checksum_at: usize,
    /// The L4 checksum covers the IPv4 pseudo-header (TCP, UDP).
    pub pseudo_header: bool,
    /// UDP: a zero checksum means "none" and must stay zero.
    pub checksum_optional: bool,
    /// The state this packet moves its half of the connection to.
    pub state: u8,
    /// TCP only.
    pub segment: Option<Segment>,
}

/// Reads the transport fields of a packet whose IPv4 header is `ip` (only
/// headers without options are translated). `egress`: the port that gets
/// translated is the source one.
#[inline(always)]
pub fn transport(ctx: &TcContext, ip: &Ipv4Hdr, egress: bool) -> Option<Transport> {
    if ip.vihl != PLAIN_VIHL {
        return None;
    }
    // What any packet but a close says: the opener's speaks of an
    // established connection (once answered, as nat.rs checks), the other
    // side's of an answer.
    let carries_on = if egress {
        conn_state::ESTABLISHED
    } else {
        conn_state::ANSWERED
    };
    let protocol = ip.proto;
    match protocol {
        TCP => {
            let tcp: TcpHdr = ctx.load(L4_AT).ok()?;
            let closing = tcp.fin() != 0 || tcp.rst() != 0;
            let opening = tcp.syn() != 0 && tcp.ack() == 0;
            let headers = Ipv4Hdr::LEN as u32 + u32::from(tcp.doff()) * 4;
            let payload = u32::from(ip.tot_len()).saturating_sub(headers);
            let seq = u32::from_be_bytes(tcp.seq);
            let flags_len = u32::from(tcp.syn() != 0) + u32::from(tcp.fin() != 0);
            let translated = if egress {
                offset_of!(TcpHdr, source)
            } else {
                offset_of!(TcpHdr, dest)
            };
            Some(Transport {
                port_at: L4_AT + translated,
                state: if closing {
                    conn_state::CLOSING
                } else if opening {
                    conn_state::NEW
                } else {
                    carries_on
                },
                segment: Some(Segment {
                    seq,
                    end: seq.wrapping_add(payload + flags_len),
                    ack: (tcp.ack() != 0).then(|| u32::from_be_bytes(tcp.ack_seq)),
                    window: u16::from_be_bytes(tcp.window),
                }),
                ..ports_only(protocol, [tcp.source, tcp.dest])?
            })
        }
        UDP => {
            let udp: UdpHdr = ctx.load(L4_AT).ok()?;
            let translated = if egress {
                offset_of!(UdpHdr, src)
            } else {
                offset_of!(UdpHdr, dst)
            };
            Some(Transport {
                port_at: L4_AT + translated,
                state: carries_on,
                ..ports_only(protocol, [udp.src, udp.dst])?
            })
        }
        ICMP => {
            // Echo: the identifier plays the port, as the requester's source
            // port and the replier's destination port.
            let icmp: Icmpv4Hdr = ctx.load(L4_AT).ok()?;
            let wanted = if egress { ECHO_REQUEST } else { ECHO_REPLY };
            if icmp.type_ != wanted {
                return None;
            }
            let id = echo_id(&icmp);
            let (src_port, dst_port) = if egress { (id, [0; 2]) } else { ([0; 2], id) };
            Some(Transport {
                protocol,
                src_port,
                dst_port,
                port_at: L4_AT + ECHO_ID_OFFSET,
                checksum_at: L4_AT + offset_of!(Icmpv4Hdr, check),
                pseudo_header: false,
                checksum_optional: false,
                state: carries_on,
                segment: None,
            })
        }
        _ => None,
    }
}

/// What rewriting the addresses and ports of a TCP or UDP packet with these
/// `[source, destination]` ports needs to know, from the protocol alone (no
/// packet read): where its checksum is and how it is kept. `port_at` is the
/// source port; TCP's sequence state is not read.
#[inline(always)]
pub fn ports_only(protocol: u8, [src_port, dst_port]: [[u8; 2]; 2]) -> Option<Transport> {
    let (checksum_at, checksum_optional) = match protocol {
        TCP => (L4_AT + offset_of!(TcpHdr, check), false),
        UDP => (L4_AT + offset_of!(UdpHdr, check), true),
        _ => return None,
    };
    Some(Transport {
        protocol,
        src_port,
        dst_port,
        port_at: SOURCE_PORT_AT,
        checksum_at,
        pseudo_header: true,
        checksum_optional,
        state: conn_state::ESTABLISHED,
        segment: None,
    })
}

/// Replaces the address at `address_at`, keeping the IPv4 checksum right:
/// all a later fragment needs (it carries no transport header).
#[inline(always)]
pub fn rewrite_address(
    ctx: &TcContext,
    address_at: usize,
    (old_address, new_address): (Ipv4Octets, Ipv4Octets),
) -> Outcome<()> {
    ctx.l3_csum_replace(IP_CHECKSUM_AT, raw4(old_address), raw4(new_address), 4)
        .and_then(|()| ctx.store(address_at, &new_address, 0))
        .map_err(|_| Counter::DropMalformed)
}

/// Replaces the address at `address_at` and the port at `transport.port_at`,
/// keeping the IPv4 and L4 checksums right (also for checksum-offloaded
/// packets, which the helpers handle).
#[inline(always)]
pub fn rewrite(
    ctx: &TcContext,
    transport: &Transport,
    address_at: usize,
    addresses: (Ipv4Octets, Ipv4Octets),
    (old_port, new_port): ([u8; 2], [u8; 2]),
) -> Outcome<()> {
    rewrite_transport_address(ctx, transport, address_at, addresses)?;
    rewrite_port(ctx, transport, transport.port_at, (old_port, new_port))
}

/// Replaces the port at `port_at`, keeping the transport checksum right.
#[inline(always)]
pub fn rewrite_port(
    ctx: &TcContext,
    transport: &Transport,
    port_at: usize,
    (old_port, new_port): ([u8; 2], [u8; 2]),
) -> Outcome<()> {
    ctx.l4_csum_replace(
        transport.checksum_at,
        raw2(old_port),
        raw2(new_port),
        optional(transport) | 2,
    )
    .and_then(|()| ctx.store(port_at, &new_port, 0))
    .map_err(|_| Counter::DropMalformed)
}

/// Replaces the address at `address_at`, keeping the IPv4 checksum and the
/// transport checksum (whose pseudo-header holds it) right.
#[inline(always)]
pub fn rewrite_transport_address(
    ctx: &TcContext,
    transport: &Transport,
    address_at: usize,
    (old_address, new_address): (Ipv4Octets, Ipv4Octets),
) -> Outcome<()> {
    let rewritten = ctx
        .l3_csum_replace(IP_CHECKSUM_AT, raw4(old_address), raw4(new_address), 4)
        .and_then(|()| {
            if !transport.pseudo_header {
                return Ok(());
            }
            let flags = u64::from(BPF_F_PSEUDO_HDR) | optional(transport) | 4;
            ctx.l4_csum_replace(
                transport.checksum_at,
                raw4(old_address),
                raw4(new_address),
                flags,
            )
        })
        .and_then(|()| ctx.store(address_at, &new_address, 0));
    rewritten.map_err(|_| Counter::DropMalformed)
}

/// UDP's zero checksum means "none" and must stay zero.
#[inline(always)]
fn optional(transport: &Transport) -> u64 {
    if transport.checksum_optional {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    }
}
