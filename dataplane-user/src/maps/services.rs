//! The Service maps: frontends, their backend slots, and the connections
//! to Services the programs track.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddrV4},
};

use aya::maps::{HashMap, MapData, MapError};
use dataplane_common::{
    Affinity, AffinityKey, Backend, BackendKey, FlowKey, NODE_PORT_ADDRESS, ServiceFlow,
    ServiceKey, ServiceValue, SocketFlowKey, frontend_scope, names, service_direction,
    socket_direction,
};

use super::{MapsError, access, is_errno, removed};
use crate::model::{Frontend, Protocol, Scope};

pub struct ServiceMaps {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, BackendKey, Backend>,
    flows: HashMap<MapData, FlowKey, ServiceFlow>,
    affinity: HashMap<MapData, AffinityKey, Affinity>,
    sockets: HashMap<MapData, SocketFlowKey, Backend>,
}

/// A frontend as programmed: its id, its backends by slot, its session
/// affinity (0: none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgrammedService {
    pub id: u32,
    pub backends: Vec<Backend>,
    pub affinity_seconds: u32,
    /// `service_flags::*`.
    pub flags: u8,
}

impl ServiceMaps {
    pub fn new(
        services: HashMap<MapData, ServiceKey, ServiceValue>,
        backends: HashMap<MapData, BackendKey, Backend>,
        flows: HashMap<MapData, FlowKey, ServiceFlow>,
        affinity: HashMap<MapData, AffinityKey, Affinity>,
        sockets: HashMap<MapData, SocketFlowKey, Backend>,
    ) -> Self {
        Self {
            services,
            backends,
            flows,
            affinity,
            sockets,
        }
    }

    /// Every frontend with its backends, as the maps hold them.
    pub fn programmed(&self) -> Result<Vec<(ServiceKey, ProgrammedService)>, MapsError> {
        let mut programmed = Vec::new();
        for entry in self.services.iter() {
            let (key, value) = entry.map_err(access(names::SERVICES_MAP))?;
            programmed.push((key, self.programmed_service(value)?));
        }
        Ok(programmed)
    }

    /// The frontend `key` as the maps hold it, if they do.
    pub fn get(&self, key: &ServiceKey) -> Result<Option<ProgrammedService>, MapsError> {
        match self.services.get(key, 0) {
            Ok(value) => self.programmed_service(value).map(Some),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(error) => Err(access(names::SERVICES_MAP)(error)),
        }
    }

    fn programmed_service(&self, value: ServiceValue) -> Result<ProgrammedService, MapsError> {
        let backends = (0..value.backend_count)
            .map(|slot| {
                let slot_key = BackendKey {
                    service_id: value.id,
                    slot,
                };
                self.backends
                    .get(&slot_key, 0)
                    .map_err(|error| MapsError::Corrupt {
                        name: names::BACKENDS_MAP,
                        detail: format!("slot {slot} of service id {}: {error}", value.id),
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(ProgrammedService {
            id: value.id,
            backends,
            affinity_seconds: value.affinity_seconds,
            flags: value.flags,
        })
    }

    /// Every backend slot, for listing.
    pub fn slots(&self) -> Result<Vec<(BackendKey, Backend)>, MapsError> {
        self.backends
            .iter()
            .collect::<Result<_, _>>()
            .map_err(access(names::BACKENDS_MAP))
    }

    /// Makes the frontend `key` lead to `new` (slots in order, with session
    /// affinity of `affinity_seconds`), where it led to `old` before: only
    /// slots that differ are written; new slots go in before the count
    /// covers them, stale ones come out after it no longer does, so a
    /// packet never picks a missing slot.
    pub fn program(
        &mut self,
        key: ServiceKey,
        id: u32,
        (old, new): (&[Backend], &[Backend]),
        affinity_seconds: u32,
        flags: u8,
    ) -> Result<(), MapsError> {
        for (slot, backend) in new.iter().enumerate() {
            if old.get(slot) != Some(backend) {
                let slot_key = BackendKey {
                    service_id: id,
                    slot: slot as u32,
                };
                self.backends
                    .insert(slot_key, *backend, 0)
                    .map_err(full(names::BACKENDS_MAP))?;
            }
        }
        let value = ServiceValue {
            id,
            backend_count: new.len() as u32,
            affinity_seconds,
            flags,
            _pad: [0; 3],
        };
        self.services
            .insert(key, value, 0)
            .map_err(full(names::SERVICES_MAP))?;
        for slot in new.len()..old.len() {
            let slot_key = BackendKey {
                service_id: id,
                slot: slot as u32,
            };
            removed(self.backends.remove(&slot_key), names::BACKENDS_MAP)?;
        }
        Ok(())
    }

    /// Removes the frontend `key` and its `slots` backend slots.
    pub fn remove(&mut self, key: ServiceKey, id: u32, slots: usize) -> Result<(), MapsError> {
        removed(self.services.remove(&key), names::SERVICES_MAP)?;
        for slot in 0..slots {
            let slot_key = BackendKey {
                service_id: id,
                slot: slot as u32,
            };
            removed(self.backends.remove(&slot_key), names::BACKENDS_MAP)?;
        }
        Ok(())
    }

    /// Removes both halves of every tracked connection to one of `gone`
    /// (a frontend and a backend it no longer has), and what host sockets
    /// were given of them; returns how many connections and sockets that was.
    pub fn forget_connections(
        &mut self,
        gone: &BTreeSet<(ServiceKey, Backend)>,
    ) -> Result<usize, MapsError> {
        if gone.is_empty() {
            return Ok(0);
        }
        let name = names::SERVICE_FLOWS_MAP;
        let stale = lru_entries_where(&self.flows, name, |key, flow| {
            let frontend = addressed(key.dst, key.dst_port, key.protocol);
            key.direction == service_direction::TO_BACKEND && was_to(gone, frontend, flow.target)
        })?;
        for (forward, flow) in &stale {
            let client_seen_as = if flow.target.address == forward.src {
                dataplane_common::HAIRPIN_SOURCE
            } else {
                forward.src
            };
            let reply = FlowKey {
                src: flow.target.address,
                dst: client_seen_as,
                src_port: flow.target.port,
                dst_port: forward.src_port,
                protocol: forward.protocol,
                direction: service_direction::TO_CLIENT,
                _pad: [0; 2],
            };
            removed(self.flows.remove(forward), name)?;
            removed(self.flows.remove(&reply), name)?;
        }
        Ok(stale.len() + self.forget_sockets(gone)?)
    }

    /// Removes what the node's sockets were given of the `gone` pairs, so
    /// their next connect or datagram to the frontend gets a live backend.
    fn forget_sockets(
        &mut self,
        gone: &BTreeSet<(ServiceKey, Backend)>,
    ) -> Result<usize, MapsError> {
        let name = names::SOCKET_FLOWS_MAP;
        let stale = lru_entries_where(&self.sockets, name, |key, backend| {
            let frontend = addressed(key.address, key.port, key.protocol);
            key.direction == socket_direction::TO_BACKEND && was_to(gone, frontend, *backend)
        })?;
        for (forward, backend) in &stale {
            let reply = SocketFlowKey {
                address: backend.address,
                port: backend.port,
                direction: socket_direction::TO_CLIENT,
                ..*forward
            };
            removed(self.sockets.remove(forward), name)?;
            removed(self.sockets.remove(&reply), name)?;
        }
        Ok(stale.len())
    }

    /// Removes the session affinities of frontend `id` to one of `gone`;
    /// returns how many clients that was.
    pub fn forget_affinities(
        &mut self,
        id: u32,
        gone: &BTreeSet<Backend>,
    ) -> Result<usize, MapsError> {
        if gone.is_empty() {
            return Ok(0);
        }
        let name = names::AFFINITY_MAP;
        let stale = lru_entries_where(&self.affinity, name, |key, affinity| {
            key.service_id == id && gone.contains(&affinity.backend)
        })?;
        for (key, _) in &stale {
            removed(self.affinity.remove(key), name)?;
        }
        Ok(stale.len())
    }

    /// Halves of connections tracked now (the LRU holds at most its size).
    pub fn connection_entries(&self) -> usize {
        self.flows.keys().filter(Result::is_ok).count()
    }
}

/// The frontend entry for everyone at what a client addressed.
fn addressed(address: [u8; 4], port: [u8; 2], protocol: u8) -> ServiceKey {
    ServiceKey {
        address,
        port,
        protocol,
        scope: frontend_scope::EVERYONE,
    }
}

/// Whether a connection to `frontend` (the address its client used) and
/// `backend` is one of the `gone` pairs: its frontend's own, or a node
/// port's (programmed for every node address).
fn was_to(gone: &BTreeSet<(ServiceKey, Backend)>, frontend: ServiceKey, backend: Backend) -> bool {
    let node_port = ServiceKey {
        address: NODE_PORT_ADDRESS,
        ..frontend
    };
    gone.contains(&(frontend, backend)) || gone.contains(&(node_port, backend))
}

/// The entries of the LRU map `map` that `wanted` picks. An entry evicted
/// between two steps of the walk is skipped, not an error.
fn lru_entries_where<K: aya::Pod, V: aya::Pod>(
    map: &HashMap<MapData, K, V>,
    name: &'static str,
    mut wanted: impl FnMut(&K, &V) -> bool,
) -> Result<Vec<(K, V)>, MapsError> {
    let mut picked = Vec::new();
    for entry in map.iter() {
        match entry {
            Ok((key, value)) if wanted(&key, &value) => picked.push((key, value)),
            Ok(_) | Err(MapError::KeyNotFound) => {}
            Err(error) => return Err(access(name)(error)),
        }
    }
    Ok(picked)
}

fn full(name: &'static str) -> impl FnOnce(MapError) -> MapsError {
    move |source| {
        if is_errno(&source, nix::libc::E2BIG) || is_errno(&source, nix::libc::ENOSPC) {
            MapsError::ServicesFull { name }
        } else {
            access(name)(source)
        }
    }
}

/// The slots `wanted` backends take when `old` held the slots before: a
/// backend that stays keeps its slot, a departing one's slot goes to the
/// last backend, new ones are appended. One backend's change thus writes at
/// most three map entries (its slot, the count, the last slot).
pub fn plan_slots(old: &[Backend], wanted: &BTreeSet<Backend>) -> Vec<Backend> {
    let mut slots = old.to_vec();
    let mut index = 0;
    while index < slots.len() {
        if wanted.contains(&slots[index]) {
            index += 1;
        } else {
            slots.swap_remove(index);
        }
    }
    let kept: BTreeSet<Backend> = slots.iter().copied().collect();
    slots.extend(wanted.difference(&kept));
    slots
}

/// The map key of `frontend`.
pub fn service_key(frontend: &Frontend) -> ServiceKey {
    ServiceKey {
        address: frontend.ip.octets(),
        port: frontend.port.to_be_bytes(),
        protocol: frontend.protocol.number(),
        scope: frontend.scope.number(),
    }
}

/// The frontend a map key stands for; `None` for a protocol no agent writes.
pub fn frontend_of(key: &ServiceKey) -> Option<Frontend> {
    Some(Frontend {
        ip: Ipv4Addr::from(key.address),
        port: u16::from_be_bytes(key.port),
        protocol: Protocol::from_number(key.protocol)?,
        scope: Scope::from_number(key.scope)?,
    })
}

pub fn backend_entry(address: SocketAddrV4) -> Backend {
    Backend {
        address: address.ip().octets(),
        port: address.port().to_be_bytes(),
        _pad: [0; 2],
    }
}

pub fn backend_address(backend: &Backend) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(backend.address),
        u16::from_be_bytes(backend.port),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(last_octets: &[u8]) -> Vec<Backend> {
        last_octets
            .iter()
            .map(|last| backend_entry(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, *last), 80)))
            .collect()
    }

    #[test]
    fn a_backend_change_moves_as_few_slots_as_possible() {
        let old = backends(&[1, 2, 3, 4]);
        // One leaves: the last takes its slot; the others stay put.
        let wanted: BTreeSet<Backend> = backends(&[1, 3, 4]).into_iter().collect();
        assert_eq!(plan_slots(&old, &wanted), backends(&[1, 4, 3]));
        // One arrives: appended.
        let wanted: BTreeSet<Backend> = backends(&[1, 2, 3, 4, 5]).into_iter().collect();
        assert_eq!(plan_slots(&old, &wanted), backends(&[1, 2, 3, 4, 5]));
        // All change: a fresh set in order.
        let wanted: BTreeSet<Backend> = backends(&[7, 6]).into_iter().collect();
        assert_eq!(plan_slots(&old, &wanted), backends(&[6, 7]));
        assert!(plan_slots(&old, &BTreeSet::new()).is_empty());
    }
}
