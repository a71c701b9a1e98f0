//! In-memory tables for unit tests: as many entries as the BPF map holds
//! (E2BIG past that, as the kernel answers), and writes that fail when a
//! test injects a fault, so the code above the seam is tested without root.

use std::{
    collections::{BTreeMap, HashMap},
    io,
    sync::{Arc, Mutex},
};

use aya::{Pod, maps::MapError, sys::SyscallError};

use dataplane_common::{
    Counter, MAX_BACKEND_SLOTS, MAX_ENDPOINTS, MAX_HOST_ADDRESSES, MAX_NAT_ENTRIES,
    MAX_NO_MASQUERADE, MAX_POLICY_CLASSES, MAX_POLICY_RULES, MAX_REMOTE_NODES, MAX_SERVICES,
    MAX_SOURCE_RANGES, names,
};

use super::{Maps, NatMap, PolicyMaps, ServiceMaps, table::Table};

/// Faults shared by a set of fake tables: the next writes of a map fail,
/// with an errno.
#[derive(Clone, Default)]
pub struct Faults(Arc<Mutex<HashMap<&'static str, (u32, i32)>>>);

impl Faults {
    /// Makes the next `writes` inserts or removals of map `name` fail (EIO).
    pub fn fail_writes(&self, name: &'static str, writes: u32) {
        self.fail_writes_with(name, writes, nix::libc::EIO);
    }

    /// The same, as the kernel answers a full map (E2BIG).
    pub fn fill(&self, name: &'static str, writes: u32) {
        self.fail_writes_with(name, writes, nix::libc::E2BIG);
    }

    fn fail_writes_with(&self, name: &'static str, writes: u32, errno: i32) {
        self.0
            .lock()
            .expect("no panics while held")
            .insert(name, (writes, errno));
    }

    /// The errno the next write of `name` fails with, if it does.
    fn take(&self, name: &'static str) -> Option<i32> {
        let mut faults = self.0.lock().expect("no panics while held");
        match faults.get_mut(name) {
            Some((left, errno)) if *left > 0 => {
                *left -= 1;
                Some(*errno)
            }
            _ => None,
        }
    }
}

fn errno(call: &'static str, code: i32) -> MapError {
    MapError::SyscallError(SyscallError {
        call,
        io_error: io::Error::from_raw_os_error(code),
    })
}

/// The bytes of a plain-old-data value: keys compare as the kernel's do.
fn bytes<T: Pod>(value: &T) -> Vec<u8> {
    // SAFETY: `Pod` values are plain bytes (no pointers, explicit padding).
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

/// One fake map.
pub struct FakeTable<K, V> {
    name: &'static str,
    capacity: usize,
    entries: BTreeMap<Vec<u8>, (K, V)>,
    faults: Faults,
}

impl<K, V> FakeTable<K, V> {
    pub fn new(name: &'static str, capacity: u32, faults: &Faults) -> Self {
        Self {
            name,
            capacity: capacity as usize,
            entries: BTreeMap::new(),
            faults: faults.clone(),
        }
    }

    fn fault(&self, call: &'static str) -> Result<(), MapError> {
        match self.faults.take(self.name) {
            Some(code) => Err(errno(call, code)),
            None => Ok(()),
        }
    }
}

impl<K: Pod + Send + Sync, V: Pod + Send + Sync> Table<K, V> for FakeTable<K, V> {
    fn get(&self, key: &K) -> Result<Option<V>, MapError> {
        Ok(self.entries.get(&bytes(key)).map(|(_, value)| *value))
    }

    fn insert(&mut self, key: &K, value: &V) -> Result<(), MapError> {
        self.fault("bpf_map_update_elem")?;
        let key_bytes = bytes(key);
        if !self.entries.contains_key(&key_bytes) && self.entries.len() >= self.capacity {
            return Err(errno("bpf_map_update_elem", nix::libc::E2BIG));
        }
        self.entries.insert(key_bytes, (*key, *value));
        Ok(())
    }

    fn insert_new(&mut self, key: &K, value: &V) -> Result<(), MapError> {
        if self.entries.contains_key(&bytes(key)) {
            return Err(errno("bpf_map_update_elem", nix::libc::EEXIST));
        }
        self.insert(key, value)
    }

    fn remove(&mut self, key: &K) -> Result<(), MapError> {
        self.fault("bpf_map_delete_elem")?;
        match self.entries.remove(&bytes(key)) {
            Some(_) => Ok(()),
            None => Err(MapError::KeyNotFound),
        }
    }

    fn entries(&self) -> Result<Vec<(K, V)>, MapError> {
        Ok(self.entries.values().copied().collect())
    }
}

impl Maps {
    /// The maps in memory, as large as the programs' (unit tests).
    pub fn fake(faults: &Faults) -> Self {
        Self {
            endpoints: Box::new(FakeTable::new(names::ENDPOINTS_MAP, MAX_ENDPOINTS, faults)),
            endpoints6: Box::new(FakeTable::new(names::ENDPOINTS6_MAP, MAX_ENDPOINTS, faults)),
            host_veths: Box::new(FakeTable::new(names::HOST_VETHS_MAP, MAX_ENDPOINTS, faults)),
            node_config: Box::new(FakeTable::new(names::NODE_CONFIG_MAP, 1, faults)),
            node_routes: Box::new(FakeTable::new(
                names::NODE_ROUTES_MAP,
                MAX_REMOTE_NODES,
                faults,
            )),
            node_routes6: Box::new(FakeTable::new(
                names::NODE_ROUTES6_MAP,
                MAX_REMOTE_NODES,
                faults,
            )),
            remote_nodes: Box::new(FakeTable::new(
                names::REMOTE_NODES_MAP,
                MAX_REMOTE_NODES,
                faults,
            )),
            nat: Some(NatMap {
                connections: Box::new(FakeTable::new(names::NAT_MAP, MAX_NAT_ENTRIES, faults)),
                pod_nat: Box::new(FakeTable::new(names::POD_NAT_MAP, MAX_ENDPOINTS, faults)),
                pod_closed: Box::new(FakeTable::new(
                    names::POD_NAT_CLOSED_MAP,
                    MAX_ENDPOINTS,
                    faults,
                )),
            }),
            no_masquerade: Box::new(FakeTable::new(
                names::NO_MASQUERADE_MAP,
                MAX_NO_MASQUERADE,
                faults,
            )),
            host_addresses: Box::new(FakeTable::new(
                names::HOST_ADDRESSES_MAP,
                MAX_HOST_ADDRESSES,
                faults,
            )),
            host_addresses6: Box::new(FakeTable::new(
                names::HOST_ADDRESSES6_MAP,
                MAX_HOST_ADDRESSES,
                faults,
            )),
            monitor: Box::new(FakeTable::new(names::MONITOR_MAP, 1, faults)),
            events: None,
            counters: Box::new(FakeTable::new(names::COUNTERS_MAP, Counter::COUNT, faults)),
            services: ServiceMaps {
                services: Box::new(FakeTable::new(names::SERVICES_MAP, MAX_SERVICES, faults)),
                backends: Box::new(FakeTable::new(
                    names::BACKENDS_MAP,
                    MAX_BACKEND_SLOTS,
                    faults,
                )),
                serving: Box::new(FakeTable::new(
                    names::SERVING_MAP,
                    MAX_BACKEND_SLOTS,
                    faults,
                )),
                source_ranges: Box::new(FakeTable::new(
                    names::SOURCE_RANGES_MAP,
                    MAX_SOURCE_RANGES,
                    faults,
                )),
            },
            policy: PolicyMaps {
                classes: Box::new(FakeTable::new(
                    names::POLICY_CLASSES_MAP,
                    MAX_POLICY_CLASSES,
                    faults,
                )),
                hosts: Box::new(FakeTable::new(
                    names::POLICY_HOSTS_MAP,
                    MAX_POLICY_CLASSES,
                    faults,
                )),
                subjects: Box::new(FakeTable::new(
                    names::POLICY_SUBJECTS_MAP,
                    MAX_ENDPOINTS,
                    faults,
                )),
                open6: Box::new(FakeTable::new(
                    names::POLICY_OPEN6_MAP,
                    MAX_ENDPOINTS,
                    faults,
                )),
                rules: Box::new(FakeTable::new(
                    names::POLICY_RULES_MAP,
                    MAX_POLICY_RULES,
                    faults,
                )),
                ports: Box::new(FakeTable::new(
                    names::POLICY_PORTS_MAP,
                    MAX_POLICY_RULES,
                    faults,
                )),
                drops: Box::new(FakeTable::new(
                    names::POLICY_DROPS_MAP,
                    MAX_ENDPOINTS,
                    faults,
                )),
            },
        }
    }
}
