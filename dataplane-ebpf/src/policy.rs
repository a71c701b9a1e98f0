// Above 400 lines: the verdict, its records and ICMP errors read as one path (split, they would pass the scratch around).
//! NetworkPolicy: the verdict on a local pod's packets where they leave it
//! (from-pod, after a Service's translation: judged on the backend) and
//! where they are handed to it (to-pod: the delivery funnel hands pods their
//! packets through it while a pod is isolated, and the node's stack routes
//! through it). Only pods a policy isolates have an entry in
//! `POLICY_SUBJECTS`; nothing is looked up while `NodeConfig::policy` says
//! no pod of the node is isolated.
//!
//! A connection is judged at its first packet: the peer's class (a hash of
//! single addresses, then the trie of prefixes), then at most four allowed
//! entries (this class or any peer, this protocol and port or any
//! protocol; a single port's entry in a hash before the trie of ranges).
//! Allowed, it is recorded in
//! `POLICY_FLOWS` under the generation of policy that allowed it; its
//! later packets and replies pass on that record. After a policy change
//! (a new generation) a recorded connection is judged again, as it was
//! opened, on its next packet: one no longer allowed is cut. A TCP packet
//! of a connection with no record that opens nothing (a connection from
//! before the pod was isolated) is judged in its own direction and never
//! recorded: policy never allows more than its rules.

// The keys stay in the scratch map: passed by value, as clippy would have
// it, they would be copied onto the stack the delivery paths lack.
#![allow(clippy::needless_borrows_for_generic_args)]

use aya_ebpf::{bindings::BPF_NOEXIST, maps::lpm_trie::Key, programs::TcContext};
use dataplane_common::{
    Counter, FlowKey, HAIRPIN_SOURCE, NodeConfig, POLICY_ANY_PEER, POLICY_ANY_PROTOCOL,
    POLICY_HOST_PREFIX, POLICY_RULE_FIXED_BITS, POLICY_WORLD, PolicyClassKey, PolicyDrops,
    PolicyFlow, PolicyRuleKey, PolicySubjectKey, ip_protocol, policy_direction,
    policy_flow_end as flow_end, policy_table,
};
use network_types::ip::Ipv4Hdr;

use crate::{
    counters::{Outcome, PackedOutcome},
    ipv4::icmp::{QUOTE_PAYLOAD_AT, quoted_header},
    maps::{
        POLICY_CLASSES, POLICY_DROPS, POLICY_FLOWS, POLICY_HOSTS, POLICY_PORTS, POLICY_RULES,
        POLICY_SCRATCH, POLICY_SUBJECTS, is_host_address, node_config,
    },
    nat_share::bump,
    packet::{IP_AT, L4_AT, header},
};

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
/// Of the TCP header: where its flags are.
const TCP_FLAGS_AT: usize = 13;

/// A packet as policy sees it: its connection (direction 0; ports zero for
/// protocols without them), whether it may open one, and for an ICMP error
/// the connection of the packet it quotes.
#[repr(C)]
#[derive(Clone, Copy)]
struct Packet {
    key: FlowKey,
    about: FlowKey,
    opening: bool,
    error: bool,
}

/// What a verdict works on, in a per-CPU map rather than on the stack:
/// from-pod's frame leaves little of the stack's 512 bytes.
#[repr(C)]
pub struct Scratch {
    /// As the pod sent it (egress; for ingress the same as `after`).
    before: Packet,
    /// As it is now, a Service's translation done.
    after: Packet,
    reply: FlowKey,
    subject: PolicySubjectKey,
    flow: PolicyFlow,
    class: Key<PolicyClassKey>,
    rule: Key<PolicyRuleKey>,
}

/// The scratch of this CPU (a single entry, always there).
#[inline(always)]
fn scratch() -> Option<&'static mut Scratch> {
    // SAFETY: per-CPU; a program runs to its end on one CPU.
    POLICY_SCRATCH
        .get_ptr_mut(0)
        .map(|scratch| unsafe { &mut *scratch })
}

/// Reads the IPv4 packet at `IP_AT` into `into`; false for what passes
/// without a verdict: a later piece of a fragmented datagram (no ports;
/// its first piece was judged, and a datagram never whole never reaches a
/// socket), or what cannot be read.
#[inline(always)]
fn read_packet(ctx: &TcContext, into: &mut Packet) -> bool {
    let Some(ip) = header::<Ipv4Hdr>(ctx, IP_AT) else {
        return false;
    };
    // SAFETY: bounds checked by `header`; copied out before any change.
    let ip = unsafe { &*ip };
    if ip.frag_offset() != 0 {
        return false;
    }
    let l4 = IP_AT + usize::from(ip.vihl & 0x0f) * 4;
    into.opening = true;
    into.key = portless(ip.src_addr, ip.dst_addr, ip.proto);
    match ip.proto {
        ip_protocol::TCP | ip_protocol::UDP | ip_protocol::SCTP => {
            let Ok(ports) = ctx.load::<[[u8; 2]; 2]>(l4) else {
                return false;
            };
            into.key.src_port = ports[0];
            into.key.dst_port = ports[1];
        }
        _ => {}
    }
    if ip.proto == ip_protocol::TCP {
        let Ok(flags) = ctx.load::<u8>(l4 + TCP_FLAGS_AT) else {
            return false;
        };
        into.opening = flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    }
    into.error = false;
    if ip.proto == ip_protocol::ICMP && l4 == L4_AT {
        read_quote(ctx, into);
    }
    true
}

/// A connection's key before its ports are read (direction 0).
#[inline(always)]
fn portless(src: [u8; 4], dst: [u8; 4], protocol: u8) -> FlowKey {
    FlowKey {
        src,
        dst,
        src_port: [0; 2],
        dst_port: [0; 2],
        protocol,
        direction: 0,
        _pad: [0; 2],
    }
}

/// For an ICMP error: the connection of the packet it quotes (an error
/// opens nothing).
#[inline(always)]
fn read_quote(ctx: &TcContext, into: &mut Packet) {
    let Some(quoted) = quoted_header(ctx) else {
        return;
    };
    into.opening = false;
    into.error = true;
    into.about = portless(quoted.src, quoted.dst, quoted.protocol);
    if let ip_protocol::TCP | ip_protocol::UDP | ip_protocol::SCTP = quoted.protocol
        && let Ok(ports) = ctx.load::<[[u8; 2]; 2]>(QUOTE_PAYLOAD_AT)
    {
        into.about.src_port = ports[0];
        into.about.dst_port = ports[1];
    }
}

/// Notes a pod's packet as it was sent, before a translation; true when it
/// is to be judged (`egress`) once translated.
#[inline(always)]
pub fn note_sent(ctx: &TcContext, config: &NodeConfig) -> bool {
    if config.policy == 0 {
        return false;
    }
    scratch().is_some_and(|scratch| read_packet(ctx, &mut scratch.before))
}

/// A local pod's packet leaving it, as `note_sent` saw it and as it is now
/// (translated for a Service, or the same). A reply is known by what the
/// pod sent, a connection the pod opened by what it now is; both are
/// recorded, as the pod's peer answers either.
#[inline(always)]
pub fn egress(ctx: &TcContext) -> Outcome<()> {
    judged_egress(ctx).unpack().map(|_| ())
}

/// Out of line: from-pod's own frame is large.
#[inline(never)]
fn judged_egress(ctx: &TcContext) -> PackedOutcome {
    let Some(scratch) = scratch() else {
        return PackedOutcome::pack(Err(Counter::DropPolicyEgress));
    };
    if !read_packet(ctx, &mut scratch.after) {
        return PackedOutcome::pack(Ok(0));
    }
    PackedOutcome::pack(judge(scratch, policy_direction::EGRESS).map(|()| 0))
}

/// A packet to a local pod, at to-pod (what the funnel delivers while a pod
/// of the node is isolated, and what the node's stack routes to pods):
/// judged as it is now, its translations done. The node's own packets always pass
/// (kubelet's probes).
#[inline(always)]
pub fn ingress(ctx: &TcContext) -> Outcome<()> {
    if node_config().policy == 0 {
        return Ok(());
    }
    judged_ingress(ctx).unpack().map(|_| ())
}

/// Out of line, as `judged_egress`: one copy of the verdict per program.
#[inline(never)]
fn judged_ingress(ctx: &TcContext) -> PackedOutcome {
    let Some(scratch) = scratch() else {
        return PackedOutcome::pack(Err(Counter::DropPolicyIngress));
    };
    if !read_packet(ctx, &mut scratch.after)
        || is_host_address(&scratch.after.key.src, node_config())
    {
        return PackedOutcome::pack(Ok(0));
    }
    scratch.before = scratch.after;
    PackedOutcome::pack(judge(scratch, policy_direction::INGRESS).map(|()| 0))
}

/// The verdict on the scratch's packet for the local pod at its source
/// (egress) or destination (ingress).
#[inline(always)]
fn judge(scratch: &mut Scratch, direction: u8) -> Outcome<()> {
    let generation = node_config().policy_generation;
    let table = policy_table(generation);
    let egress = direction == policy_direction::EGRESS;
    // Records are the pod's own (another pod of the node judges the same
    // connection by its own): marked by the pod's end of their key.
    // The pod as it sent the packet (a connection to itself through a
    // Service leaves with the hairpin source), the peer as it is now.
    let (pod, peer, own_end, other_end) = if egress {
        let (sent, now) = (&scratch.before.key, &scratch.after.key);
        (sent.src, now.dst, flow_end::SOURCE, flow_end::DESTINATION)
    } else {
        let key = &scratch.after.key;
        (key.dst, key.src, flow_end::DESTINATION, flow_end::SOURCE)
    };
    // A pod's connections to itself (through its Service) follow no
    // policy, as its loopback traffic does not (upstream's AllowLoopback);
    // they are recorded all the same, for their replies.
    let loopback = peer == pod || peer == HAIRPIN_SOURCE;
    scratch.subject = PolicySubjectKey {
        address: pod,
        table,
        _pad: [0; 3],
    };
    // SAFETY: copied out at once; the agent writes whole entries.
    let Some(subject) = (unsafe { POLICY_SUBJECTS.get(&scratch.subject).copied() }) else {
        return Ok(());
    };
    // An ICMP error about a connection the pod has passes as the
    // connection's packets do; any other is judged as the ICMP it is.
    if (scratch.before.error || scratch.after.error)
        && error_about_recorded(scratch, pod, own_end, other_end)
    {
        return Ok(());
    }
    scratch.after.key.direction = own_end;
    scratch.before.key.direction = own_end;
    scratch.reply = reversed(&scratch.before.key);
    scratch.reply.direction = other_end;
    // The direction and port the connection was opened with, whether the
    // verdict is recorded, and whether under the reply's key.
    let (mut judged, mut port, mut record, mut as_reply) = (
        direction,
        scratch.after.key.dst_port,
        scratch.before.opening,
        false,
    );
    // SAFETY: the records are read in place once, plain integers.
    if let Some(flow) = unsafe { POLICY_FLOWS.get(&scratch.after.key) } {
        if flow.generation == generation {
            return Ok(());
        }
        record = true;
    // SAFETY: as above.
    } else if let Some(flow) = unsafe { POLICY_FLOWS.get(&scratch.reply) } {
        if flow.generation == generation {
            return Ok(());
        }
        // A reply under a changed policy: judged as its connection was
        // opened (by the peer, to the pod's port, or the other way round).
        (judged, port, record, as_reply) = (direction ^ 1, scratch.before.key.src_port, true, true);
    }
    let isolated = if judged == policy_direction::EGRESS {
        subject.egress
    } else {
        subject.ingress
    };
    if isolated != 0 && !loopback && !allows(scratch, subject.id, judged, peer, port) {
        count_drop(pod, egress);
        return Err(if egress {
            Counter::DropPolicyEgress
        } else {
            Counter::DropPolicyIngress
        });
    }
    if record {
        scratch.flow = PolicyFlow {
            generation,
            _pad: 0,
        };
        // A full table evicts its least used record: that connection is
        // judged again on its next packet.
        if as_reply {
            let _ = POLICY_FLOWS.insert(&scratch.reply, &scratch.flow, 0);
        } else {
            let _ = POLICY_FLOWS.insert(&scratch.after.key, &scratch.flow, 0);
            if scratch.before.key != scratch.after.key {
                let _ = POLICY_FLOWS.insert(&scratch.before.key, &scratch.flow, 0);
            }
        }
    }
    Ok(())
}

/// Whether the quoted packet of the scratch's ICMP error (as the pod sent
/// or received it, and as translated) belongs to a connection the pod has
/// a record of: the error travels as the quoted packet's answer, so the
/// record is the quote's own (the pod sent it) or its reverse's (the peer
/// did), either generation. The quote must be `pod`'s own packet: one it
/// received, for an error it sends (a pod cannot pass its isolation with
/// an error about another pod's connection), one it sent, for an error it
/// is handed.
#[inline(always)]
fn error_about_recorded(scratch: &mut Scratch, pod: [u8; 4], own_end: u8, other_end: u8) -> bool {
    let quoted = &scratch.before.about;
    let pods_own = if own_end == flow_end::SOURCE {
        quoted.dst == pod
    } else {
        quoted.src == pod
    };
    if !pods_own {
        return false;
    }
    for translated in [false, true] {
        let about = if translated {
            scratch.after.about
        } else {
            scratch.before.about
        };
        scratch.reply = about;
        scratch.reply.direction = other_end;
        // SAFETY: only whether the record exists is read.
        if unsafe { POLICY_FLOWS.get(&scratch.reply) }.is_some() {
            return true;
        }
        scratch.reply = reversed(&about);
        scratch.reply.direction = own_end;
        // SAFETY: as above.
        if unsafe { POLICY_FLOWS.get(&scratch.reply) }.is_some() {
            return true;
        }
    }
    false
}

/// Counts a packet `pod`'s policy dropped, in its row (made at its first).
#[inline(always)]
fn count_drop(pod: [u8; 4], egress: bool) {
    let row = match POLICY_DROPS.get_ptr_mut(pod) {
        Some(row) => row,
        None => {
            let _ = POLICY_DROPS.insert(pod, PolicyDrops::default(), u64::from(BPF_NOEXIST));
            match POLICY_DROPS.get_ptr_mut(pod) {
                Some(row) => row,
                None => return,
            }
        }
    };
    // SAFETY: a map value valid for this run; fields are aligned u64s.
    let counter = unsafe {
        if egress {
            &raw mut (*row).egress
        } else {
            &raw mut (*row).ingress
        }
    };
    bump(counter);
}

/// Whether an allowed entry of subject `id` matches `peer` and the
/// packet's protocol at `port` (network byte order) in `direction`.
#[inline(always)]
fn allows(scratch: &mut Scratch, id: u32, direction: u8, peer: [u8; 4], port: [u8; 2]) -> bool {
    let protocol = scratch.after.key.protocol;
    scratch.class = Key::new(
        POLICY_HOST_PREFIX,
        PolicyClassKey {
            table: scratch.subject.table,
            address: peer,
        },
    );
    // SAFETY: copied out at once; the agent writes whole entries.
    let class = match unsafe { POLICY_HOSTS.get(&scratch.class.data).copied() } {
        Some(class) => class,
        None => POLICY_CLASSES
            .get(&scratch.class)
            .copied()
            .unwrap_or(POLICY_WORLD),
    };
    for peer_class in [class, POLICY_ANY_PEER] {
        scratch.rule = Key::new(
            POLICY_RULE_FIXED_BITS + 16,
            PolicyRuleKey {
                subject: id.to_be_bytes(),
                class: peer_class.to_be_bytes(),
                direction,
                protocol,
                port,
            },
        );
        // SAFETY: only whether it is there is read.
        if unsafe { POLICY_PORTS.get(&scratch.rule.data) }.is_some()
            || POLICY_RULES.get(&scratch.rule).is_some()
        {
            return true;
        }
        scratch.rule.data.protocol = POLICY_ANY_PROTOCOL;
        scratch.rule.data.port = [0; 2];
        if POLICY_RULES.get(&scratch.rule).is_some() {
            return true;
        }
    }
    false
}

/// The key of the other direction of `key`'s connection.
#[inline(always)]
fn reversed(key: &FlowKey) -> FlowKey {
    FlowKey {
        src: key.dst,
        dst: key.src,
        src_port: key.dst_port,
        dst_port: key.src_port,
        ..*key
    }
}
