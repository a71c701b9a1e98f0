//! The conversion from map layout v11, the layout this one replaces. What
//! v12 changed:
//! - `NAT`: `NatEntry` states renumbered (ANSWERED came between NEW and
//!   ESTABLISHED), `assured` (conntrack's ASSURED: never evicted), `sent`
//!   kept for both sides of TCP (v11 kept the pod's, in the egress half),
//!   `outside_client` (outside clients share one `POD_NAT` row).
//! - `POD_NAT`, `POD_NAT_CLOSED`: outside clients' rows merged into
//!   `OUTSIDE_CLIENTS`.
//! - `UNANSWERED`, the queue of connections never answered, became
//!   `UNASSURED`, of those never established: rebuilt from the carried NAT.
//! - `FragmentRecord`: `rewrite` (v11 only ever rewrote destinations).
//! - `COUNTERS`: one more, at the end.
//!
//! Every other pinned map kept its layout and is copied entry by entry.

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
};

use aya::maps::{Array, MapData, Queue, lpm_trie::Key};
use dataplane_common::{
    Affinity, AffinityKey, Backend, BackendKey, CounterValue, Endpoint, FlowKey, FragmentKey,
    FragmentRecord, Ipv4Octets, NatEntry, NodeConfig, NodeRoute, OUTSIDE_CLIENTS, PodNat,
    RemoteNode, SentSegment, ServiceFlow, ServiceKey, ServiceValue, ServingKey, SocketFlowKey,
    SourceRangeKey, conn_state, fragment_rewrite, names, nat_direction,
};

use super::tables::{Carried, CarryError, Pins, carry, copy, copy_per_cpu_array, entries_of};
use crate::maps::table::Table as _;
use crate::nat::partner;

/// The layout converted from.
pub const FROM_VERSION: u32 = 11;

/// Every map this layout pins, and what an upgrade does with it (a test
/// holds this to the eBPF object's maps).
pub const HANDLED_MAPS: &[(&str, &str)] = &[
    (names::ENDPOINTS_MAP, "copied"),
    (
        names::NODE_CONFIG_MAP,
        "copied (then rewritten by the agent)",
    ),
    (names::NODE_ROUTES_MAP, "copied"),
    (names::REMOTE_NODES_MAP, "copied"),
    (names::NAT_MAP, "converted"),
    (names::POD_NAT_MAP, "converted"),
    (names::POD_NAT_CLOSED_MAP, "converted"),
    (names::UNASSURED_MAP, "rebuilt from the carried NAT"),
    (names::FRAGMENTS_MAP, "converted"),
    (names::SERVICES_MAP, "copied"),
    (names::BACKENDS_MAP, "copied"),
    (names::SERVING_MAP, "copied"),
    (names::SOURCE_RANGES_MAP, "copied"),
    (names::SERVICE_FLOWS_MAP, "copied"),
    (names::AFFINITY_MAP, "copied"),
    (names::SOCKET_FLOWS_MAP, "copied"),
    (names::NO_MASQUERADE_MAP, "copied"),
    (names::HOST_ADDRESSES_MAP, "copied"),
    (names::COUNTERS_MAP, "copied into a new layout's maps"),
    (names::TAIL_CALLS_MAP, "not carried: this build's programs"),
    (names::EVENTS_MAP, "not carried: a monitor reconnects"),
    (names::MONITOR_MAP, "not carried: a monitor reconnects"),
    (names::EVENT_BUDGET_MAP, "not carried: a monitor reconnects"),
];

/// v11's own layouts, as v11 defined them.
mod v11 {
    use dataplane_common::{Ipv4Octets, SentSegment};

    /// v11's `conn_state`.
    pub const ESTABLISHED: u8 = 1;
    pub const CLOSING: u8 = 2;

    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default, bytemuck::Pod, bytemuck::Zeroable)]
    pub struct NatEntry {
        pub addr: Ipv4Octets,
        pub port: [u8; 2],
        pub state: u8,
        pub _pad: u8,
        pub last_seen_ns: u64,
        /// What the pod sent (v12's `SentSegment`), TCP egress halves only.
        pub pod_segment: SentSegment,
        pub _pad2: u32,
    }

    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default, bytemuck::Pod, bytemuck::Zeroable)]
    pub struct FragmentRecord {
        pub pod: Ipv4Octets,
        pub _pad: u32,
        pub first_seen_ns: u64,
    }

    // SAFETY: plain old data with explicit padding, as the v11 programs wrote it.
    unsafe impl aya::Pod for NatEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FragmentRecord {}
}

/// A NAT half as the previous layout pins it.
pub type PreviousNatEntry = v11::NatEntry;

/// An established connection as the previous layout's programs pin it: its
/// egress half `egress` translated to `node`:`node_port`, and its reply
/// half (for tests that start from the previous layout's state).
pub fn previous_nat_connection(
    egress: FlowKey,
    node: Ipv4Octets,
    node_port: [u8; 2],
    last_seen_ns: u64,
) -> [(FlowKey, PreviousNatEntry); 2] {
    let to_node = v11::NatEntry {
        addr: node,
        port: node_port,
        state: v11::ESTABLISHED,
        last_seen_ns,
        ..v11::NatEntry::default()
    };
    let as_new = NatEntry {
        addr: node,
        port: node_port,
        ..NatEntry::default()
    };
    let to_pod = v11::NatEntry {
        addr: egress.src,
        port: egress.src_port,
        ..to_node
    };
    [(egress, to_node), (partner(&egress, &as_new), to_pod)]
}

/// v11's states in v12's numbering.
fn state_now(v11_state: u8) -> u8 {
    match v11_state {
        v11::ESTABLISHED => conn_state::ESTABLISHED,
        v11::CLOSING => conn_state::CLOSING,
        _ => conn_state::NEW,
    }
}

/// A v11 connection, converted: (egress half, reply half).
fn convert_pair(
    egress: &v11::NatEntry,
    reply: &v11::NatEntry,
    outside_client: bool,
) -> (NatEntry, NatEntry) {
    // v11 called a connection established at its first answer; it is kept
    // as established (and never evicted) rather than guessed half open.
    let answered = reply.state != conn_state::NEW || egress.state == v11::ESTABLISHED;
    let half = |old: &v11::NatEntry| NatEntry {
        addr: old.addr,
        port: old.port,
        state: state_now(old.state),
        last_seen_ns: old.last_seen_ns,
        ..NatEntry::default()
    };
    (
        NatEntry {
            assured: u8::from(answered),
            sent: egress.pod_segment,
            outside_client: u8::from(outside_client),
            ..half(egress)
        },
        // What the other side sent was not kept by v11: learnt from its
        // next segment (until then the pod's FIN or RST is not believed
        // and the connection closes by its timeout).
        NatEntry {
            sent: SentSegment::default(),
            ..half(reply)
        },
    )
}

/// Which addresses are this node's pods (`POD_NAT` rows of others are
/// outside clients', merged into `OUTSIDE_CLIENTS`).
struct Pods {
    cidr: dataplane_common::Ipv4Cidr,
    endpoints: std::collections::HashSet<Ipv4Octets>,
}

impl Pods {
    fn read(old: &Pins) -> Result<Self, CarryError> {
        let config = old
            .typed::<Array<MapData, NodeConfig>>(names::NODE_CONFIG_MAP)?
            .get(&0, 0)
            .unwrap_or_default();
        let endpoints = old
            .hash::<Ipv4Octets, Endpoint>(names::ENDPOINTS_MAP)?
            .entries()
            .map_err(|source| CarryError::Read {
                map: names::ENDPOINTS_MAP,
                source,
            })?
            .into_iter()
            .map(|(ip, _)| ip)
            .collect();
        Ok(Self {
            cidr: config.pod_cidr,
            endpoints,
        })
    }

    fn row(&self, address: Ipv4Octets) -> Ipv4Octets {
        if self.cidr.contains(address) || self.endpoints.contains(&address) {
            address
        } else {
            OUTSIDE_CLIENTS
        }
    }
}

/// Everything, before this build's programs are swapped in. Counters are
/// carried only into a new layout's maps (never added twice).
pub fn carry_state(old: &Path, new: &Path, fresh: bool) -> Result<Vec<Carried>, CarryError> {
    let (old, new) = (Pins(old.to_owned()), Pins(new.to_owned()));
    let pods = Pods::read(&old)?;
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
        carry_pod_nat(&old, &new, &pods)?,
        carry_pod_nat_closed(&old, &new, &pods)?,
    ];
    if fresh {
        carried.push(copy_per_cpu_array::<CounterValue>(
            names::COUNTERS_MAP,
            &old,
            &new,
        )?);
    }
    carried.extend(carry_connection_maps(&old, &new, &pods)?);
    Ok(carried)
}

/// The connection state alone (NAT, Service flows, affinities, the node's
/// sockets' flows, fragments), never over what this build's programs made.
pub fn carry_connections(old: &Path, new: &Path) -> Result<Vec<Carried>, CarryError> {
    let (old, new) = (Pins(old.to_owned()), Pins(new.to_owned()));
    let pods = Pods::read(&old)?;
    carry_connection_maps(&old, &new, &pods)
}

fn carry_connection_maps(old: &Pins, new: &Pins, pods: &Pods) -> Result<Vec<Carried>, CarryError> {
    let (nat, unassured) = carry_nat(old, new, pods)?;
    Ok(vec![
        nat,
        unassured,
        copy::<FlowKey, ServiceFlow, _>(names::SERVICE_FLOWS_MAP, old, new, Pins::hash)?,
        copy::<AffinityKey, Affinity, _>(names::AFFINITY_MAP, old, new, Pins::hash)?,
        copy::<SocketFlowKey, Backend, _>(names::SOCKET_FLOWS_MAP, old, new, Pins::hash)?,
        carry_fragments(old, new)?,
    ])
}

/// NAT connections, both halves or neither; then the queue of those never
/// established, oldest first.
fn carry_nat(old: &Pins, new: &Pins, pods: &Pods) -> Result<(Carried, Carried), CarryError> {
    let map = names::NAT_MAP;
    let halves: HashMap<FlowKey, v11::NatEntry> =
        entries_of(map, &old.hash::<FlowKey, v11::NatEntry>(map)?)?
            .into_iter()
            .collect();
    let mut into = new.hash::<FlowKey, NatEntry>(map)?;
    let mut carried = Carried::new(map);
    let mut unassured = Vec::new();
    let mut paired = 0;
    for (key, old_egress) in halves
        .iter()
        .filter(|(key, _)| key.direction == nat_direction::EGRESS)
    {
        let as_new = NatEntry {
            addr: old_egress.addr,
            port: old_egress.port,
            ..NatEntry::default()
        };
        let reply_key = partner(key, &as_new);
        let Some(old_reply) = halves.get(&reply_key) else {
            continue;
        };
        paired += 2;
        let outside_client = pods.row(key.src) == OUTSIDE_CLIENTS;
        let (egress, reply) = convert_pair(old_egress, old_reply, outside_client);
        match into.insert_new(key, &egress) {
            Ok(()) => {}
            Err(error) => {
                carried.count(Err(error));
                continue;
            }
        }
        // The reply half holds the node's port: taken meanwhile by this
        // build's programs, the connection cannot come along.
        if let Err(error) = into.insert_new(&reply_key, &reply) {
            let _ = into.remove(key);
            carried.lose(1, format!("its node port was taken meanwhile ({error})"));
            continue;
        }
        carried.carried += 1;
        if egress.assured == 0 {
            unassured.push((egress.last_seen_ns, *key));
        }
    }
    let orphans = halves.len() as u64 - paired;
    if orphans > 0 {
        carried.lose(orphans, "a half without its other half".into());
    }
    unassured.sort_by_key(|(last_seen_ns, _)| *last_seen_ns);
    let mut queue: Queue<MapData, FlowKey> = new.typed(names::UNASSURED_MAP)?;
    let mut queued = Carried::new(names::UNASSURED_MAP);
    for (_, key) in unassured {
        queued.count(queue.push(key, 0));
    }
    Ok((carried, queued))
}

fn carry_fragments(old: &Pins, new: &Pins) -> Result<Carried, CarryError> {
    let map = names::FRAGMENTS_MAP;
    let entries = entries_of(map, &old.hash::<FragmentKey, v11::FragmentRecord>(map)?)?;
    Ok(carry(
        map,
        &entries,
        &mut new.hash::<FragmentKey, FragmentRecord>(map)?,
        |key, record| {
            let record = FragmentRecord {
                address: record.pod,
                rewrite: fragment_rewrite::DESTINATION,
                first_seen_ns: record.first_seen_ns,
                ..FragmentRecord::default()
            };
            (*key, record)
        },
    ))
}

/// Sums a per-row table's rows as v12 keeps them.
fn merged_rows<V: Copy + Default>(
    rows: Vec<(Ipv4Octets, V)>,
    pods: &Pods,
    add: impl Fn(&mut V, &V),
) -> Vec<(Ipv4Octets, V)> {
    let mut merged: BTreeMap<Ipv4Octets, V> = BTreeMap::new();
    for (address, value) in rows {
        add(merged.entry(pods.row(address)).or_default(), &value);
    }
    merged.into_iter().collect()
}

fn carry_pod_nat(old: &Pins, new: &Pins, pods: &Pods) -> Result<Carried, CarryError> {
    let map = names::POD_NAT_MAP;
    let rows = entries_of(map, &old.hash::<Ipv4Octets, PodNat>(map)?)?;
    let merged = merged_rows(rows, pods, |sum, row| {
        sum.opened += row.opened;
        sum.evicted += row.evicted;
        sum.refused_share += row.refused_share;
        sum.refused_full += row.refused_full;
        sum.refused_ports += row.refused_ports;
    });
    Ok(carry(
        map,
        &merged,
        &mut new.hash::<Ipv4Octets, PodNat>(map)?,
        |key, value| (*key, *value),
    ))
}

fn carry_pod_nat_closed(old: &Pins, new: &Pins, pods: &Pods) -> Result<Carried, CarryError> {
    let map = names::POD_NAT_CLOSED_MAP;
    let rows = entries_of(map, &old.hash::<Ipv4Octets, u64>(map)?)?;
    let merged = merged_rows(rows, pods, |sum, row| *sum += row);
    Ok(carry(
        map,
        &merged,
        &mut new.hash::<Ipv4Octets, u64>(map)?,
        |key, value| (*key, *value),
    ))
}

#[cfg(test)]
mod tests;
