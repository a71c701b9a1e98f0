//! NetworkPolicy as the programs judge it: every address's peer class (an
//! LPM trie), each local pod's isolation, the allowed {subject, peer class,
//! direction, protocol, port prefix} entries (an LPM trie too: `endPort`
//! ranges are port prefixes; single ports, the most common, in a hash
//! looked up first), and the connections allowed so far (replies
//! and later packets pass without a rule lookup). Compiled by the agent
//! (`model/policy/compile.rs`), so a new connection costs the same with 10
//! rules or 10,000.

use crate::Ipv4Octets;

/// Prefixes the policies of this node's pods name (ipBlocks, pods).
pub const MAX_POLICY_CLASSES: u32 = 65_536;

/// Allowed entries of this node's pods together (in each of
/// `POLICY_RULES` and `POLICY_PORTS`).
pub const MAX_POLICY_RULES: u32 = 65_536;

/// Connections of isolated pods being tracked (LRU; both ends of a
/// connection within the node share one entry).
pub const MAX_POLICY_FLOWS: u32 = 262_144;

/// The class of addresses no peer matches (absent from the trie).
pub const POLICY_WORLD: u32 = 0;
/// The class of an entry that allows every peer.
pub const POLICY_ANY_PEER: u32 = u32::MAX;
/// The protocol of an entry that allows every protocol and port.
pub const POLICY_ANY_PROTOCOL: u8 = 0;

/// `PolicyRuleKey::direction`.
pub mod policy_direction {
    pub const INGRESS: u8 = 0;
    pub const EGRESS: u8 = 1;
}

/// The bits of a `PolicyRuleKey` before its port: always matched whole.
pub const POLICY_RULE_FIXED_BITS: u32 = 80;

/// Policy is written in two tables, the programs reading the one
/// `NodeConfig::policy_generation`'s lowest bit names: a change fills the
/// other table whole, then switches (never a packet judged half by the
/// old policy, half by the new), then empties the old one.
pub const fn policy_table(generation: u32) -> u8 {
    (generation & 1) as u8
}

/// The highest bit of a subject's id: its table.
pub const POLICY_TABLE_BIT: u32 = 1 << 31;

/// The prefix length of a single address's class in `POLICY_CLASSES`:
/// such classes are kept in `POLICY_HOSTS` instead, a hash looked up
/// first (a /32 is always the longest prefix, and most classes are pods'
/// own addresses: the trie stays shallow however many pods policy names).
pub const POLICY_HOST_PREFIX: u32 = 8 + 32;

/// Key of `POLICY_CLASSES` (the data of an LPM key whose prefix is 8 plus
/// the address prefix's) and of `POLICY_HOSTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct PolicyClassKey {
    pub table: u8,
    pub address: Ipv4Octets,
}

/// Key of `POLICY_OPEN6`: an IPv6 address of a local pod the policy model
/// knows, per table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct PolicyOpenKey6 {
    pub address: crate::Ipv6Octets,
    pub table: u8,
    pub _pad: [u8; 3],
}

/// Value of `POLICY_OPEN6`: the directions in which that pod is isolated
/// by no policy (1: open). NetworkPolicy does not judge IPv6 yet: while a
/// pod of the node is isolated, a pod's IPv6 passes only where its entry
/// says it is open (absent: closed both ways).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct PolicyOpen6 {
    pub ingress: u8,
    pub egress: u8,
}

/// Key of `POLICY_SUBJECTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct PolicySubjectKey {
    pub address: Ipv4Octets,
    pub table: u8,
    pub _pad: [u8; 3],
}

/// A local pod a policy isolates: value of `POLICY_SUBJECTS`, keyed by the
/// pod's address. A pod without an entry is isolated in neither direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct PolicySubject {
    /// What its `POLICY_RULES` entries carry (its table's bit included).
    pub id: u32,
    /// 1 when isolated in that direction: only what an entry allows passes.
    pub ingress: u8,
    pub egress: u8,
    pub _pad: [u8; 2],
}

/// An allowed entry of `POLICY_RULES` (the data of an LPM key whose prefix
/// covers `POLICY_RULE_FIXED_BITS` plus the port's leading bits) or, when
/// it is of one port (`POLICY_PORT_PREFIX`), the key of `POLICY_PORTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct PolicyRuleKey {
    /// Big-endian, as an LPM key compares bytes in order.
    pub subject: [u8; 4],
    /// The peer's class (`POLICY_ANY_PEER`: every peer), big-endian.
    pub class: [u8; 4],
    /// `policy_direction::*`.
    pub direction: u8,
    /// `POLICY_ANY_PROTOCOL`: every protocol and port.
    pub protocol: u8,
    /// The destination port, network byte order.
    pub port: [u8; 2],
}

/// Which end of a `POLICY_FLOWS` key the pod whose record it is has (its
/// `direction` field): pods of one node judge a connection between them
/// each by their own records.
pub mod policy_flow_end {
    pub const SOURCE: u8 = 1;
    pub const DESTINATION: u8 = 2;
}

/// A connection an isolated pod was allowed: value of `POLICY_FLOWS`, keyed
/// by the `FlowKey` of its packets (`direction`: `policy_flow_end`) as they
/// reached the pod or left it, a Service's translation done.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct PolicyFlow {
    /// `NodeConfig::policy_generation` when it was last judged: a policy
    /// change judges it again on its next packet.
    pub generation: u32,
    pub _pad: u32,
}

/// Each local pod's packets its policy dropped, by direction: value of
/// `POLICY_DROPS`, keyed by the pod's address (added to atomically).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct PolicyDrops {
    pub ingress: u64,
    pub egress: u64,
}

/// The prefix length of an allowed entry whose port has its leading
/// `port_bits` bits fixed (0: every port).
pub const fn policy_rule_prefix(port_bits: u8) -> u32 {
    POLICY_RULE_FIXED_BITS + port_bits as u32
}

/// The prefix length of an allowed entry of one port: such entries are
/// kept in `POLICY_PORTS` instead, a hash looked up first (a whole port
/// is always the longest prefix, and most entries are of one port: the
/// trie keeps only ranges and whole protocols, however many ports policy
/// names).
pub const POLICY_PORT_PREFIX: u32 = policy_rule_prefix(16);
