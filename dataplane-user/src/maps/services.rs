//! The Service maps: frontends, their backend slots, and the backends
//! each frontend serves new connections with. The connections themselves
//! are the programs' (see `state::service_tables`): a change here never
//! walks them.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddrV4},
};

use aya::maps::{MapError, lpm_trie::Key};
use dataplane_common::{
    Backend, BackendKey, ServiceKey, ServiceValue, ServingKey, SourceRangeKey, names, service_flags,
};
use ipnetwork::Ipv4Network;

use super::{MapsError, access, is_errno, removed, table::BoxedTable};
use crate::model::{Frontend, Protocol, Scope};

pub struct ServiceMaps {
    pub(super) services: BoxedTable<ServiceKey, ServiceValue>,
    pub(super) backends: BoxedTable<BackendKey, Backend>,
    pub(super) serving: BoxedTable<ServingKey, u8>,
    pub(super) source_ranges: BoxedTable<Key<SourceRangeKey>, u8>,
}

/// A frontend as programmed: its id, its backends by slot, its session
/// affinity (0: none), the clients it takes new connections from (empty:
/// everyone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgrammedService {
    pub id: u32,
    pub backends: Vec<Backend>,
    pub affinity_seconds: u32,
    /// `service_flags::*`.
    pub flags: u8,
    pub source_ranges: Vec<Ipv4Network>,
}

impl ServiceMaps {
    /// Every frontend with its backends, as the maps hold them.
    pub fn programmed(&self) -> Result<Vec<(ServiceKey, ProgrammedService)>, MapsError> {
        let mut ranges = self.source_ranges()?;
        let mut programmed = Vec::new();
        for (key, value) in self
            .services
            .entries()
            .map_err(access(names::SERVICES_MAP))?
        {
            let of_it = ranges.remove(&value.id).unwrap_or_default();
            programmed.push((key, self.programmed_service(value, of_it)?));
        }
        Ok(programmed)
    }

    /// The frontend `key` as the maps hold it, if they do.
    pub fn get(&self, key: &ServiceKey) -> Result<Option<ProgrammedService>, MapsError> {
        let Some(value) = self
            .services
            .get(key)
            .map_err(access(names::SERVICES_MAP))?
        else {
            return Ok(None);
        };
        // The whole trie is walked only for a frontend that has ranges.
        let ranges = if value.flags & service_flags::SOURCE_RANGES != 0 {
            self.source_ranges()?.remove(&value.id).unwrap_or_default()
        } else {
            Vec::new()
        };
        self.programmed_service(value, ranges).map(Some)
    }

    /// Every frontend's client ranges, by frontend id.
    fn source_ranges(&self) -> Result<BTreeMap<u32, Vec<Ipv4Network>>, MapsError> {
        let name = names::SOURCE_RANGES_MAP;
        let mut ranges: BTreeMap<u32, Vec<Ipv4Network>> = BTreeMap::new();
        for (key, _) in self.source_ranges.entries().map_err(access(name))? {
            let data = key.data();
            let prefix = key.prefix_len().saturating_sub(32) as u8;
            let range =
                Ipv4Network::new(Ipv4Addr::from(data.address), prefix).map_err(|error| {
                    MapsError::Corrupt {
                        name,
                        detail: format!("a range of service id {:?}: {error}", data.service_id),
                    }
                })?;
            ranges
                .entry(u32::from_be_bytes(data.service_id))
                .or_default()
                .push(range);
        }
        Ok(ranges)
    }

    /// Makes frontend `id` take new connections from `new` ranges only,
    /// where it took them from `old` (the frontend's flag says whether
    /// they apply: the ranges go in before it is set, and come out after).
    pub fn set_source_ranges(
        &mut self,
        id: u32,
        (old, new): (&[Ipv4Network], &[Ipv4Network]),
        adding: bool,
    ) -> Result<(), MapsError> {
        let name = names::SOURCE_RANGES_MAP;
        let key = |range: &Ipv4Network| {
            Key::new(
                32 + u32::from(range.prefix()),
                SourceRangeKey {
                    service_id: id.to_be_bytes(),
                    address: range.network().octets(),
                },
            )
        };
        if adding {
            for range in new.iter().filter(|range| !old.contains(range)) {
                self.source_ranges
                    .insert(&key(range), &1)
                    .map_err(full(name))?;
            }
        } else {
            for range in old.iter().filter(|range| !new.contains(range)) {
                removed(self.source_ranges.remove(&key(range)), name)?;
            }
        }
        Ok(())
    }

    fn programmed_service(
        &self,
        value: ServiceValue,
        source_ranges: Vec<Ipv4Network>,
    ) -> Result<ProgrammedService, MapsError> {
        let backends = (0..value.backend_count)
            .map(|slot| {
                let slot_key = BackendKey {
                    service_id: value.id,
                    slot,
                };
                match self.backends.get(&slot_key) {
                    Ok(Some(backend)) => Ok(backend),
                    Ok(None) => Err(MapsError::Corrupt {
                        name: names::BACKENDS_MAP,
                        detail: format!("slot {slot} of service id {} is missing", value.id),
                    }),
                    Err(error) => Err(access(names::BACKENDS_MAP)(error)),
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(ProgrammedService {
            id: value.id,
            backends,
            affinity_seconds: value.affinity_seconds,
            flags: value.flags,
            source_ranges,
        })
    }

    /// Every backend slot, for listing.
    pub fn slots(&self) -> Result<Vec<(BackendKey, Backend)>, MapsError> {
        self.backends.entries().map_err(access(names::BACKENDS_MAP))
    }

    /// Makes the frontend `key` lead to `new` (slots in order, with session
    /// affinity of `affinity_seconds`), where it led to `old` before: only
    /// slots that differ are written; new slots go in before the count
    /// covers them, stale ones come out after it no longer does, so a
    /// packet never picks a missing slot. A backend that arrives serves
    /// before its slot exists; one that leaves stops serving (its
    /// datagram flows and affinities move, its TCP connections drain).
    pub fn program(
        &mut self,
        key: ServiceKey,
        id: u32,
        (old, new): (&[Backend], &[Backend]),
        affinity_seconds: u32,
        flags: u8,
    ) -> Result<(), MapsError> {
        let (arriving, leaving) = differences(old, new);
        for backend in arriving {
            self.serving
                .insert(&serving_key(id, backend), &1)
                .map_err(full(names::SERVING_MAP))?;
        }
        for (slot, backend) in new.iter().enumerate() {
            if old.get(slot) != Some(backend) {
                let slot_key = BackendKey {
                    service_id: id,
                    slot: slot as u32,
                };
                self.backends
                    .insert(&slot_key, backend)
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
            .insert(&key, &value)
            .map_err(full(names::SERVICES_MAP))?;
        for slot in new.len()..old.len() {
            let slot_key = BackendKey {
                service_id: id,
                slot: slot as u32,
            };
            removed(self.backends.remove(&slot_key), names::BACKENDS_MAP)?;
        }
        for backend in leaving {
            removed(
                self.serving.remove(&serving_key(id, backend)),
                names::SERVING_MAP,
            )?;
        }
        Ok(())
    }

    /// Removes the frontend `key` and its backend slots `old`.
    pub fn remove(&mut self, key: ServiceKey, id: u32, old: &[Backend]) -> Result<(), MapsError> {
        removed(self.services.remove(&key), names::SERVICES_MAP)?;
        for (slot, backend) in old.iter().enumerate() {
            let slot_key = BackendKey {
                service_id: id,
                slot: slot as u32,
            };
            removed(self.backends.remove(&slot_key), names::BACKENDS_MAP)?;
            removed(
                self.serving.remove(&serving_key(id, *backend)),
                names::SERVING_MAP,
            )?;
        }
        Ok(())
    }
}

fn serving_key(service_id: u32, backend: Backend) -> ServingKey {
    ServingKey {
        service_id,
        backend,
    }
}

/// The backends in `new` and not in `old`, and those in `old` and not in `new`.
fn differences(old: &[Backend], new: &[Backend]) -> (Vec<Backend>, Vec<Backend>) {
    let (old_set, new_set): (BTreeSet<Backend>, BTreeSet<Backend>) =
        (old.iter().copied().collect(), new.iter().copied().collect());
    (
        new_set.difference(&old_set).copied().collect(),
        old_set.difference(&new_set).copied().collect(),
    )
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
