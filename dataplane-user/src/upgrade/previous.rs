//! The conversion from map layout v14, the layout this one replaces. What
//! v15 changed:
//! - `NODE_CONFIG`: the node's IPv6 address (the source of the ICMPv6
//!   errors it sends), its IPv6 pod CIDR and the uplink's MAC, at the end; v14's settings are
//!   carried into the start of the new layout's, the new fields zero until
//!   the agent writes them (the programs send no ICMPv6 error meanwhile).
//! - `HOST_VETHS`: new, each host veth a pod with an IPv6 address is behind,
//!   with its MAC (what the pod's neighbour discovery from its link-local
//!   address is answered with), rebuilt from the carried IPv6 endpoints.
//!
//! Every other pinned map kept its layout and is copied entry by entry,
//! policy included (an isolated pod stays isolated from the first packet
//! this build's programs see, before the agent's sources have policy whole);
//! the queue of connections never established is rebuilt from the carried
//! NAT (a queue cannot be read without emptying it).

use std::path::Path;

use aya::maps::{Array, MapData, Queue, lpm_trie::Key};
use dataplane_common::{
    Affinity, AffinityKey, Backend, BackendKey, CounterValue, Endpoint, FlowKey, FragmentKey,
    FragmentRecord, Ipv4Octets, Ipv6Octets, NatEntry, NodeConfig, NodeRoute, PodNat,
    PolicyClassKey, PolicyDrops, PolicyFlow, PolicyOpen6, PolicyOpenKey6, PolicyRuleKey,
    PolicySubject, PolicySubjectKey, RemoteNode, ServiceFlow, ServiceKey, ServiceValue, ServingKey,
    SocketFlowKey, SourceRangeKey, conn_state, names, nat_direction,
};

use super::tables::{Carried, CarryError, Pins, carry, copy, copy_per_cpu_array, entries_of};
use crate::nat::partner;

/// The layout converted from.
pub const FROM_VERSION: u32 = 14;

/// Every map this layout pins, and what an upgrade does with it (a test
/// holds this to the eBPF object's maps).
pub const HANDLED_MAPS: &[(&str, &str)] = &[
    (names::ENDPOINTS_MAP, "copied"),
    (names::ENDPOINTS6_MAP, "copied"),
    (
        names::HOST_VETHS_MAP,
        "new: rebuilt from the carried IPv6 endpoints",
    ),
    (
        names::NODE_CONFIG_MAP,
        "carried into the start of the new layout (then rewritten by the agent)",
    ),
    (names::NODE_ROUTES_MAP, "copied"),
    (names::NODE_ROUTES6_MAP, "copied"),
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
    (names::HOST_ADDRESSES6_MAP, "copied"),
    (names::COUNTERS_MAP, "copied into a new layout's maps"),
    (names::POLICY_CLASSES_MAP, "copied"),
    (names::POLICY_HOSTS_MAP, "copied"),
    (names::POLICY_SUBJECTS_MAP, "copied"),
    (names::POLICY_OPEN6_MAP, "copied"),
    (names::POLICY_RULES_MAP, "copied"),
    (names::POLICY_PORTS_MAP, "copied"),
    (names::POLICY_FLOWS_MAP, "copied"),
    (names::POLICY_DROPS_MAP, "copied"),
    (names::TAIL_CALLS_MAP, "not carried: this build's programs"),
    (names::EVENTS_MAP, "not carried: a monitor reconnects"),
    (names::MONITOR_MAP, "not carried: a monitor reconnects"),
    (names::EVENT_BUDGET_MAP, "not carried: a monitor reconnects"),
];

/// A NAT half as the previous layout pins it (unchanged in v15).
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
        copy::<Ipv6Octets, Endpoint, _>(names::ENDPOINTS6_MAP, &old, &new, Pins::hash)?,
        copy::<Ipv4Octets, RemoteNode, _>(names::REMOTE_NODES_MAP, &old, &new, Pins::hash)?,
        copy::<Key<Ipv4Octets>, NodeRoute, _>(names::NODE_ROUTES_MAP, &old, &new, Pins::lpm)?,
        copy::<Key<Ipv6Octets>, NodeRoute, _>(names::NODE_ROUTES6_MAP, &old, &new, Pins::lpm)?,
        copy::<ServiceKey, ServiceValue, _>(names::SERVICES_MAP, &old, &new, Pins::hash)?,
        copy::<BackendKey, Backend, _>(names::BACKENDS_MAP, &old, &new, Pins::hash)?,
        copy::<ServingKey, u8, _>(names::SERVING_MAP, &old, &new, Pins::hash)?,
        copy::<Key<SourceRangeKey>, u8, _>(names::SOURCE_RANGES_MAP, &old, &new, Pins::lpm)?,
        copy::<Key<Ipv4Octets>, u8, _>(names::NO_MASQUERADE_MAP, &old, &new, Pins::lpm)?,
        copy::<Ipv4Octets, u8, _>(names::HOST_ADDRESSES_MAP, &old, &new, Pins::hash)?,
        copy::<Ipv6Octets, u8, _>(names::HOST_ADDRESSES6_MAP, &old, &new, Pins::hash)?,
        copy::<Ipv4Octets, PodNat, _>(names::POD_NAT_MAP, &old, &new, Pins::hash)?,
        copy::<Ipv4Octets, u64, _>(names::POD_NAT_CLOSED_MAP, &old, &new, Pins::hash)?,
    ];
    if fresh {
        carried.push(copy_per_cpu_array::<CounterValue>(
            names::COUNTERS_MAP,
            &old,
            &new,
        )?);
        carried.push(carry_node_config(&old, &new)?);
    }
    carried.push(rebuild_host_veths(&old, &new)?);
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

/// Both policy tables as pinned, and each pod's drops.
fn carry_policy(old: &Pins, new: &Pins) -> Result<Vec<Carried>, CarryError> {
    Ok(vec![
        copy::<Key<PolicyClassKey>, u32, _>(names::POLICY_CLASSES_MAP, old, new, Pins::lpm)?,
        copy::<PolicyClassKey, u32, _>(names::POLICY_HOSTS_MAP, old, new, Pins::hash)?,
        copy::<PolicySubjectKey, PolicySubject, _>(
            names::POLICY_SUBJECTS_MAP,
            old,
            new,
            Pins::hash,
        )?,
        copy::<PolicyOpenKey6, PolicyOpen6, _>(names::POLICY_OPEN6_MAP, old, new, Pins::hash)?,
        copy::<Key<PolicyRuleKey>, u8, _>(names::POLICY_RULES_MAP, old, new, Pins::lpm)?,
        copy::<PolicyRuleKey, u8, _>(names::POLICY_PORTS_MAP, old, new, Pins::hash)?,
        copy::<Ipv4Octets, PolicyDrops, _>(names::POLICY_DROPS_MAP, old, new, Pins::hash)?,
    ])
}

/// Every host veth the previous layout's IPv6 endpoints are behind, with
/// its MAC.
fn rebuild_host_veths(old: &Pins, new: &Pins) -> Result<Carried, CarryError> {
    let mut veths: Vec<(u32, [u8; 6])> = entries_of(
        names::ENDPOINTS6_MAP,
        &old.hash::<Ipv6Octets, Endpoint>(names::ENDPOINTS6_MAP)?,
    )?
    .into_iter()
    .map(|(_, endpoint)| (endpoint.host_ifindex, endpoint.host_mac))
    .collect();
    veths.sort_unstable();
    veths.dedup();
    let map = names::HOST_VETHS_MAP;
    Ok(carry(
        map,
        &veths,
        &mut new.hash::<u32, [u8; 6]>(map)?,
        |ifindex, mac| (*ifindex, *mac),
    ))
}

/// v14's `NODE_CONFIG` as bytes: v15's starts with them.
const PREVIOUS_NODE_CONFIG_LEN: usize = 80;

/// The node's settings, v14's fields into the start of v15's.
fn carry_node_config(old: &Pins, new: &Pins) -> Result<Carried, CarryError> {
    let map = names::NODE_CONFIG_MAP;
    let previous: Array<MapData, [u8; PREVIOUS_NODE_CONFIG_LEN]> = old.typed(map)?;
    let mut config: Array<MapData, NodeConfig> = new.typed(map)?;
    let settings = previous
        .get(&0, 0)
        .map_err(|source| CarryError::Read { map, source })?;
    let mut carried = Carried::new(map);
    carried.count(config.set(0, widened_node_config(&settings), 0));
    Ok(carried)
}

/// v14's settings as v15's: the same fields, the new ones zero.
fn widened_node_config(previous: &[u8; PREVIOUS_NODE_CONFIG_LEN]) -> NodeConfig {
    let mut config = NodeConfig::default();
    bytemuck::bytes_of_mut(&mut config)[..PREVIOUS_NODE_CONFIG_LEN].copy_from_slice(previous);
    config
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
