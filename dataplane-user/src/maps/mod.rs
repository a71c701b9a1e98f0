//! Typed access to the dataplane's maps, over the [`table::Table`] seam.

mod endpoints;
#[cfg(test)]
pub mod fake;
mod nat;
mod nodes;
mod policy;
mod policy_table;
mod services;
pub mod table;

pub use nat::{NatMap, PodNatTotals};
pub use nodes::{ProgrammedNode, ipv4_cidr, ipv6_cidr};
pub use policy::{PartialTable, PolicyMaps, PolicyTable};
pub use services::{
    ProgrammedService, ServiceMaps, backend_address, backend_entry, frontend_of, plan_slots,
    service_key,
};

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
};

use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, MapData, MapError, RingBuf, lpm_trie::Key},
};
use dataplane_common::{
    Counter, CounterValue, Endpoint, Ipv4Cidr, Ipv4Octets, Ipv6Cidr, Ipv6Octets, MAX_ENDPOINTS,
    MAX_HOST_ADDRESSES, MAX_REMOTE_NODES, MonitorConfig, NodeConfig, NodeRoute, RemoteNode, names,
    node_path,
};
use ipnetwork::{Ipv4Network, Ipv6Network};

use crate::model::NodePath;
use table::{BoxedTable, CounterSums};

#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error("the eBPF object has no map {0}")]
    Missing(&'static str),
    #[error("map {name}: {source}")]
    Access {
        name: &'static str,
        source: MapError,
    },
    #[error("the endpoints map is full ({MAX_ENDPOINTS} entries); remove stale endpoints first")]
    EndpointsFull,
    #[error("the remote node maps are full ({MAX_REMOTE_NODES} entries); remove stale nodes first")]
    NodesFull,
    #[error(
        "the host address map is full ({MAX_HOST_ADDRESSES} entries): {missing} addresses of \
         this node are not in it, and pods cannot reach the node on them"
    )]
    HostAddressesFull { missing: usize },
    #[error("map {name} is full; remove Services or backends first")]
    ServicesFull { name: &'static str },
    #[error("map {name} is full: the policies of this node's pods need more entries than it has")]
    PolicyFull { name: &'static str },
    #[error("map {name} holds an entry no agent writes: {detail}")]
    Corrupt { name: &'static str, detail: String },
}

impl MapsError {
    /// Whether a map is full (it may take the entry once others go).
    pub fn is_full(&self) -> bool {
        matches!(
            self,
            Self::EndpointsFull
                | Self::NodesFull
                | Self::HostAddressesFull { .. }
                | Self::ServicesFull { .. }
                | Self::PolicyFull { .. }
        )
    }
}

fn is_errno(error: &MapError, errno: i32) -> bool {
    matches!(error, MapError::SyscallError(error) if error.io_error.raw_os_error() == Some(errno))
}

/// `Ok(false)` for a key that was not there: removals are idempotent.
pub(crate) fn removed(result: Result<(), MapError>, name: &'static str) -> Result<bool, MapsError> {
    match result {
        Ok(()) => Ok(true),
        Err(MapError::KeyNotFound) => Ok(false),
        Err(error) if is_errno(&error, nix::libc::ENOENT) => Ok(false),
        Err(source) => Err(access(name)(source)),
    }
}

/// Makes the keys of `table` exactly `wanted`, stale ones out first.
fn set_members<K: Ord + Copy>(
    table: &mut BoxedTable<K, u8>,
    name: &'static str,
    wanted: BTreeSet<K>,
) -> Result<(), MapsError> {
    let present: BTreeSet<K> = table
        .entries()
        .map_err(access(name))?
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    for stale in present.difference(&wanted) {
        removed(table.remove(stale), name)?;
    }
    let new: Vec<&K> = wanted.difference(&present).collect();
    for (inserted, key) in new.iter().enumerate() {
        table.insert(key, &1).map_err(|source| {
            if is_errno(&source, nix::libc::E2BIG) {
                MapsError::HostAddressesFull {
                    missing: new.len() - inserted,
                }
            } else {
                access(name)(source)
            }
        })?;
    }
    Ok(())
}

/// A map's error, named.
pub fn access(name: &'static str) -> impl FnOnce(MapError) -> MapsError {
    move |source| MapsError::Access { name, source }
}

pub struct Maps {
    endpoints: BoxedTable<Ipv4Octets, Endpoint>,
    endpoints6: BoxedTable<Ipv6Octets, Endpoint>,
    host_veths: BoxedTable<u32, [u8; 6]>,
    node_config: BoxedTable<u32, NodeConfig>,
    node_routes: BoxedTable<Key<Ipv4Octets>, NodeRoute>,
    node_routes6: BoxedTable<Key<Ipv6Octets>, NodeRoute>,
    remote_nodes: BoxedTable<Ipv4Octets, RemoteNode>,
    /// The connection table, until the NAT table task takes it.
    nat: Option<NatMap>,
    no_masquerade: BoxedTable<Key<Ipv4Octets>, u8>,
    host_addresses: BoxedTable<Ipv4Octets, u8>,
    host_addresses6: BoxedTable<Ipv6Octets, u8>,
    monitor: BoxedTable<u32, MonitorConfig>,
    /// Drop events, until the agent's monitor task takes them.
    events: Option<RingBuf<MapData>>,
    counters: BoxedTable<u32, CounterValue>,
    pub services: ServiceMaps,
    pub policy: PolicyMaps,
}

/// One counter summed over all CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterTotal {
    pub counter: Counter,
    pub value: CounterValue,
}

/// The LPM key of a CIDR (node routes, no-masquerade destinations).
fn route_key(pod_cidr: Ipv4Network) -> Key<Ipv4Octets> {
    Key::new(u32::from(pod_cidr.prefix()), pod_cidr.network().octets())
}

/// The LPM key of an IPv6 pod CIDR.
fn route_key6(pod_cidr: Ipv6Network) -> Key<Ipv6Octets> {
    Key::new(u32::from(pod_cidr.prefix()), pod_cidr.network().octets())
}

impl Maps {
    /// Takes ownership of the maps of a loaded object.
    pub fn take_from(ebpf: &mut Ebpf) -> Result<Self, MapsError> {
        fn table<T: TryFrom<aya::maps::Map, Error = MapError>>(
            ebpf: &mut Ebpf,
            name: &'static str,
        ) -> Result<T, MapsError> {
            let map = ebpf.take_map(name).ok_or(MapsError::Missing(name))?;
            T::try_from(map).map_err(access(name))
        }
        fn hash<K: aya::Pod + Send + Sync + 'static, V: aya::Pod + Send + Sync + 'static>(
            ebpf: &mut Ebpf,
            name: &'static str,
        ) -> Result<BoxedTable<K, V>, MapsError> {
            Ok(Box::new(table::<HashMap<MapData, K, V>>(ebpf, name)?))
        }
        Ok(Self {
            endpoints: hash(ebpf, names::ENDPOINTS_MAP)?,
            endpoints6: hash(ebpf, names::ENDPOINTS6_MAP)?,
            host_veths: hash(ebpf, names::HOST_VETHS_MAP)?,
            node_config: Box::new(table::<Array<MapData, _>>(ebpf, names::NODE_CONFIG_MAP)?),
            node_routes: Box::new(table::<LpmTrie<MapData, _, _>>(
                ebpf,
                names::NODE_ROUTES_MAP,
            )?),
            node_routes6: Box::new(table::<LpmTrie<MapData, _, _>>(
                ebpf,
                names::NODE_ROUTES6_MAP,
            )?),
            remote_nodes: hash(ebpf, names::REMOTE_NODES_MAP)?,
            nat: Some(NatMap {
                connections: hash(ebpf, names::NAT_MAP)?,
                pod_nat: hash(ebpf, names::POD_NAT_MAP)?,
                pod_closed: hash(ebpf, names::POD_NAT_CLOSED_MAP)?,
            }),
            no_masquerade: Box::new(table::<LpmTrie<MapData, _, _>>(
                ebpf,
                names::NO_MASQUERADE_MAP,
            )?),
            host_addresses: hash(ebpf, names::HOST_ADDRESSES_MAP)?,
            host_addresses6: hash(ebpf, names::HOST_ADDRESSES6_MAP)?,
            monitor: Box::new(table::<Array<MapData, _>>(ebpf, names::MONITOR_MAP)?),
            events: Some(table(ebpf, names::EVENTS_MAP)?),
            counters: Box::new(CounterSums(table(ebpf, names::COUNTERS_MAP)?)),
            services: ServiceMaps {
                services: hash(ebpf, names::SERVICES_MAP)?,
                backends: hash(ebpf, names::BACKENDS_MAP)?,
                serving: hash(ebpf, names::SERVING_MAP)?,
                source_ranges: Box::new(table::<LpmTrie<MapData, _, _>>(
                    ebpf,
                    names::SOURCE_RANGES_MAP,
                )?),
            },
            policy: PolicyMaps {
                classes: Box::new(table::<LpmTrie<MapData, _, _>>(
                    ebpf,
                    names::POLICY_CLASSES_MAP,
                )?),
                hosts: hash(ebpf, names::POLICY_HOSTS_MAP)?,
                subjects: hash(ebpf, names::POLICY_SUBJECTS_MAP)?,
                open6: hash(ebpf, names::POLICY_OPEN6_MAP)?,
                rules: Box::new(table::<LpmTrie<MapData, _, _>>(
                    ebpf,
                    names::POLICY_RULES_MAP,
                )?),
                ports: hash(ebpf, names::POLICY_PORTS_MAP)?,
                drops: hash(ebpf, names::POLICY_DROPS_MAP)?,
            },
        })
    }

    /// What NODE_CONFIG holds now (all zero before anything wrote it).
    pub fn node_config(&self) -> Result<NodeConfig, MapsError> {
        Ok(self
            .node_config
            .get(&0)
            .map_err(access(names::NODE_CONFIG_MAP))?
            .unwrap_or_default())
    }

    pub fn set_node_config(&mut self, config: NodeConfig) -> Result<(), MapsError> {
        self.node_config
            .insert(&0, &config)
            .map_err(access(names::NODE_CONFIG_MAP))
    }

    /// Makes `cidrs` the complete list of non-masquerade destinations, without
    /// a moment in which an entry that stays is missing.
    pub fn set_no_masquerade(&mut self, cidrs: &[Ipv4Network]) -> Result<(), MapsError> {
        let name = names::NO_MASQUERADE_MAP;
        let wanted: Vec<(u32, Ipv4Octets)> = cidrs
            .iter()
            .map(|cidr| (u32::from(cidr.prefix()), cidr.network().octets()))
            .collect();
        let stale: Vec<Key<Ipv4Octets>> = self
            .no_masquerade
            .entries()
            .map_err(access(name))?
            .into_iter()
            .map(|(key, _)| key)
            .filter(|key| !wanted.contains(&(key.prefix_len(), key.data())))
            .collect();
        for key in stale {
            removed(self.no_masquerade.remove(&key), name)?;
        }
        for cidr in cidrs {
            self.no_masquerade
                .insert(&route_key(*cidr), &1)
                .map_err(access(name))?;
        }
        Ok(())
    }

    /// Makes the host address set exactly `addresses` (both families):
    /// stale ones out first, then the new ones, so an address never misses
    /// while it exists. A set beyond a map's capacity fills it and reports
    /// what did not fit.
    pub fn set_host_addresses(&mut self, addresses: &BTreeSet<IpAddr>) -> Result<(), MapsError> {
        let ipv4 = addresses.iter().filter_map(|address| match address {
            IpAddr::V4(address) => Some(address.octets()),
            IpAddr::V6(_) => None,
        });
        let ipv6 = addresses.iter().filter_map(|address| match address {
            IpAddr::V6(address) => Some(address.octets()),
            IpAddr::V4(_) => None,
        });
        let first = set_members(
            &mut self.host_addresses,
            names::HOST_ADDRESSES_MAP,
            ipv4.collect(),
        );
        let second = set_members(
            &mut self.host_addresses6,
            names::HOST_ADDRESSES6_MAP,
            ipv6.collect(),
        );
        first.and(second)
    }

    pub fn take_nat(&mut self) -> Option<NatMap> {
        self.nat.take()
    }

    /// Turns drop and trace events on or off (at most `events_per_second` per CPU).
    pub fn set_monitor(
        &mut self,
        drops: bool,
        traces: bool,
        events_per_second: u32,
    ) -> Result<(), MapsError> {
        let config = MonitorConfig {
            drops: u32::from(drops),
            traces: u32::from(traces),
            events_per_second,
            _pad: 0,
        };
        self.monitor
            .insert(&0, &config)
            .map_err(access(names::MONITOR_MAP))
    }

    /// The drop event ring buffer; `None` once taken.
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    pub fn counters(&self) -> Result<Vec<CounterTotal>, MapsError> {
        Counter::ALL
            .iter()
            .map(|&counter| {
                let value = self
                    .counters
                    .get(&(counter as u32))
                    .map_err(access(names::COUNTERS_MAP))?
                    .unwrap_or_default();
                Ok(CounterTotal { counter, value })
            })
            .collect()
    }
}
