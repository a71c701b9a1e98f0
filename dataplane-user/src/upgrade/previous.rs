//! The conversion from map layout v13, the layout this one replaces. What
//! v14 changed:
//! - `POLICY_PORTS`: new, a hash of the allowed entries of single ports,
//!   looked up before `POLICY_RULES`; v13's `POLICY_RULES` entries of one
//!   port are carried into it, the others stay in the trie.
//! - `ENDPOINTS6`, `HOST_ADDRESSES6`, `NODE_ROUTES6`, `POLICY_OPEN6`: new,
//!   the pods', the node's IPv6 addresses, other nodes' IPv6 pod CIDRs and
//!   the pods' IPv6 openings under policy (v13 forwarded no IPv6: nothing
//!   to carry; the agent writes the node's at start).
//! - `COUNTERS`: six more, at the end.
//!
//! Every other pinned map kept its layout and is copied entry by entry,
//! policy included (an isolated pod stays isolated from the first packet
//! this build's programs see, before the agent's sources have policy whole);
//! `NODE_CONFIG` is copied into a new layout's maps (the programs read its
//! policy switch before the agent writes it); the queue of connections never
//! established is rebuilt from the carried NAT (a queue cannot be read
//! without emptying it).

use std::path::Path;

use aya::maps::{MapData, Queue, lpm_trie::Key};
use dataplane_common::{
    Affinity, AffinityKey, Backend, BackendKey, CounterValue, Endpoint, FlowKey, FragmentKey,
    FragmentRecord, Ipv4Octets, NatEntry, NodeConfig, NodeRoute, POLICY_PORT_PREFIX, PodNat,
    PolicyClassKey, PolicyDrops, PolicyFlow, PolicyRuleKey, PolicySubject, PolicySubjectKey,
    RemoteNode, ServiceFlow, ServiceKey, ServiceValue, ServingKey, SocketFlowKey, SourceRangeKey,
    conn_state, names, nat_direction,
};

use super::tables::{
    Carried, CarryError, Pins, carry, copy, copy_array, copy_per_cpu_array, entries_of,
};
use crate::nat::partner;

/// The layout converted from.
pub const FROM_VERSION: u32 = 13;

/// Every map this layout pins, and what an upgrade does with it (a test
/// holds this to the eBPF object's maps).
pub const HANDLED_MAPS: &[(&str, &str)] = &[
    (names::ENDPOINTS_MAP, "copied"),
    (names::ENDPOINTS6_MAP, "new: v13 had no IPv6 endpoints"),
    (
        names::NODE_CONFIG_MAP,
        "copied (then rewritten by the agent)",
    ),
    (names::NODE_ROUTES_MAP, "copied"),
    (names::NODE_ROUTES6_MAP, "new: v13 had no IPv6 node routes"),
    (names::REMOTE_NODES_MAP, "copied"),
    (names::NAT_MAP, "copied"),
    (names::POD_NAT_MAP, "copied"),
    (names::POD_NAT_CLOSED_MAP, "copied"),
    (names::UNASSURED_MAP, "rebuilt from the carried NAT"),
    (names::FRAGMENTS_MAP, "copied"),
    (names::SERVICES_MAP, "copied"),
    (names::BACKENDS_MAP, "copied"),
    (names::SERVING_MAP, "copied"),
    (names::SOURCE_RANGES_MAP, "copied"),
    (names::SERVICE_FLOWS_MAP, "copied"),
    (names::AFFINITY_MAP, "copied"),
    (names::SOCKET_FLOWS_MAP, "copied"),
    (names::NO_MASQUERADE_MAP, "copied"),
    (names::HOST_ADDRESSES_MAP, "copied"),
    (names::HOST_ADDRESSES6_MAP, "new: written by the agent"),
    (names::COUNTERS_MAP, "copied into a new layout's maps"),
    (names::POLICY_CLASSES_MAP, "copied"),
    (names::POLICY_HOSTS_MAP, "copied"),
    (names::POLICY_SUBJECTS_MAP, "copied"),
    (
        names::POLICY_OPEN6_MAP,
        "new: v13 forwarded no IPv6 (written by the agent)",
    ),
    (
        names::POLICY_RULES_MAP,
        "copied, entries of one port into POLICY_PORTS",
    ),
    (
        names::POLICY_PORTS_MAP,
        "new: POLICY_RULES' entries of one port",
    ),
    (names::POLICY_FLOWS_MAP, "copied"),
    (names::POLICY_DROPS_MAP, "copied"),
    (names::TAIL_CALLS_MAP, "not carried: this build's programs"),
    (names::EVENTS_MAP, "not carried: a monitor reconnects"),
    (names::MONITOR_MAP, "not carried: a monitor reconnects"),
    (names::EVENT_BUDGET_MAP, "not carried: a monitor reconnects"),
];

/// A NAT half as the previous layout pins it (unchanged in v14).
pub type PreviousNatEntry = NatEntry;

/// An established connection as the previous layout's programs pin it: its
/// egress half `egress` translated to `node`:`node_port`, and its reply
/// half (for tests that start from the previous layout's state).
pub fn previous_nat_connection(
    egress: FlowKey,
    node: Ipv4Octets,
    node_port: [u8; 2],
    last_seen_ns: u64,
) -> [(FlowKey, PreviousNatEntry); 2] {
    let to_node = NatEntry {
        addr: node,
        port: node_port,
        state: conn_state::ESTABLISHED,
        assured: 1,
        last_seen_ns,
        ..NatEntry::default()
    };
    let to_pod = NatEntry {
        addr: egress.src,
        port: egress.src_port,
        assured: 0,
        ..to_node
    };
    [(egress, to_node), (partner(&egress, &to_node), to_pod)]
}

/// Everything, before this build's programs are swapped in. Counters are
/// carried only into a new layout's maps (never added twice).
pub fn carry_state(old: &Path, new: &Path, fresh: bool) -> Result<Vec<Carried>, CarryError> {
    let (old, new) = (Pins(old.to_owned()), Pins(new.to_owned()));
    let mut carried = vec![
        copy::<Ipv4Octets, Endpoint, _>(names::ENDPOINTS_MAP, &old, &new, Pins::hash)?,
        copy::<Ipv4Octets, RemoteNode, _>(names::REMOTE_NODES_MAP, &old, &new, Pins::hash)?,
        copy::<Key<Ipv4Octets>, NodeRoute, _>(names::NODE_ROUTES_MAP, &old, &new, Pins::lpm)?,
        copy::<ServiceKey, ServiceValue, _>(names::SERVICES_MAP, &old, &new, Pins::hash)?,
        copy::<BackendKey, Backend, _>(names::BACKENDS_MAP, &old, &new, Pins::hash)?,
        copy::<ServingKey, u8, _>(names::SERVING_MAP, &old, &new, Pins::hash)?,
        copy::<Key<SourceRangeKey>, u8, _>(names::SOURCE_RANGES_MAP, &old, &new, Pins::lpm)?,
        copy::<Key<Ipv4Octets>, u8, _>(names::NO_MASQUERADE_MAP, &old, &new, Pins::lpm)?,
        copy::<Ipv4Octets, u8, _>(names::HOST_ADDRESSES_MAP, &old, &new, Pins::hash)?,
        copy::<Ipv4Octets, PodNat, _>(names::POD_NAT_MAP, &old, &new, Pins::hash)?,
        copy::<Ipv4Octets, u64, _>(names::POD_NAT_CLOSED_MAP, &old, &new, Pins::hash)?,
    ];
    if fresh {
        carried.push(copy_per_cpu_array::<CounterValue>(
            names::COUNTERS_MAP,
            &old,
            &new,
        )?);
        carried.push(copy_array::<NodeConfig>(
            names::NODE_CONFIG_MAP,
            &old,
            &new,
        )?);
    }
    carried.extend(carry_policy(&old, &new)?);
    carried.extend(carry_connection_maps(&old, &new)?);
    Ok(carried)
}

/// The connection state alone (NAT, Service flows, affinities, the node's
/// sockets' flows, fragments), never over what this build's programs made.
pub fn carry_connections(old: &Path, new: &Path) -> Result<Vec<Carried>, CarryError> {
    let (old, new) = (Pins(old.to_owned()), Pins(new.to_owned()));
    carry_connection_maps(&old, &new)
}

fn carry_connection_maps(old: &Pins, new: &Pins) -> Result<Vec<Carried>, CarryError> {
    let (nat, unassured) = carry_nat(old, new)?;
    Ok(vec![
        nat,
        unassured,
        copy::<FlowKey, ServiceFlow, _>(names::SERVICE_FLOWS_MAP, old, new, Pins::hash)?,
        copy::<AffinityKey, Affinity, _>(names::AFFINITY_MAP, old, new, Pins::hash)?,
        copy::<SocketFlowKey, Backend, _>(names::SOCKET_FLOWS_MAP, old, new, Pins::hash)?,
        copy::<FragmentKey, FragmentRecord, _>(names::FRAGMENTS_MAP, old, new, Pins::hash)?,
        copy::<FlowKey, PolicyFlow, _>(names::POLICY_FLOWS_MAP, old, new, Pins::hash)?,
    ])
}

/// Both policy tables as pinned, the entries of one port moved from the
/// trie to `POLICY_PORTS`, and each pod's drops.
fn carry_policy(old: &Pins, new: &Pins) -> Result<Vec<Carried>, CarryError> {
    let map = names::POLICY_RULES_MAP;
    let rules = entries_of(map, &old.lpm::<PolicyRuleKey, u8>(map)?)?;
    let (ports, ranges): (Vec<_>, Vec<_>) = rules
        .into_iter()
        .partition(|(key, _)| key.prefix_len() == POLICY_PORT_PREFIX);
    let ports: Vec<(PolicyRuleKey, u8)> = ports
        .into_iter()
        .map(|(key, allowed)| (key.data(), allowed))
        .collect();
    Ok(vec![
        copy::<Key<PolicyClassKey>, u32, _>(names::POLICY_CLASSES_MAP, old, new, Pins::lpm)?,
        copy::<PolicyClassKey, u32, _>(names::POLICY_HOSTS_MAP, old, new, Pins::hash)?,
        copy::<PolicySubjectKey, PolicySubject, _>(
            names::POLICY_SUBJECTS_MAP,
            old,
            new,
            Pins::hash,
        )?,
        carry(
            map,
            &ranges,
            &mut new.lpm::<PolicyRuleKey, u8>(map)?,
            |key, allowed| (Key::new(key.prefix_len(), key.data()), *allowed),
        ),
        carry(
            names::POLICY_PORTS_MAP,
            &ports,
            &mut new.hash::<PolicyRuleKey, u8>(names::POLICY_PORTS_MAP)?,
            |key, allowed| (*key, *allowed),
        ),
        copy::<Ipv4Octets, PolicyDrops, _>(names::POLICY_DROPS_MAP, old, new, Pins::hash)?,
    ])
}

/// NAT halves, copied; then the queue of connections never established,
/// oldest first, from the egress halves carried.
fn carry_nat(old: &Pins, new: &Pins) -> Result<(Carried, Carried), CarryError> {
    let map = names::NAT_MAP;
    let halves = entries_of(map, &old.hash::<FlowKey, NatEntry>(map)?)?;
    let carried = carry(
        map,
        &halves,
        &mut new.hash::<FlowKey, NatEntry>(map)?,
        |key, half| (*key, *half),
    );
    let mut unassured: Vec<(u64, FlowKey)> = halves
        .iter()
        .filter(|(key, half)| key.direction == nat_direction::EGRESS && half.assured == 0)
        .map(|(key, half)| (half.last_seen_ns, *key))
        .collect();
    unassured.sort_unstable_by_key(|(last_seen_ns, _)| *last_seen_ns);
    let mut queue: Queue<MapData, FlowKey> = new.typed(names::UNASSURED_MAP)?;
    let mut queued = Carried::new(names::UNASSURED_MAP);
    for (_, key) in unassured {
        queued.count(queue.push(key, 0));
    }
    Ok((carried, queued))
}

#[cfg(test)]
mod tests;
