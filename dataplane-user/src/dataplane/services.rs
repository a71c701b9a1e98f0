//! Service frontends in the maps, with their mirror: what each frontend
//! leads to and how, written where it changed.

use super::*;

/// How a frontend serves, beside its backends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FrontendSettings {
    /// ClientIP session affinity (0: none).
    pub affinity_seconds: u32,
    /// `service_flags::*`.
    pub flags: u8,
    /// The clients new connections are taken from, with
    /// `service_flags::SOURCE_RANGES`.
    pub source_ranges: Vec<Ipv4Network>,
}

impl Dataplane {
    /// The Service frontends programmed (the mirror of the maps).
    pub fn programmed_services(&self) -> &BTreeMap<ServiceKey, ProgrammedService> {
        &self.services
    }

    /// Whether any frontend is programmed for outside clients of a Local
    /// frontend (kept count of, not looked for: asked on every change).
    pub fn serves_outside_local(&self) -> bool {
        self.outside_local_frontends > 0
    }

    /// Every backend slot of every frontend, as the map holds them.
    pub fn backend_slots(
        &self,
    ) -> Result<Vec<(dataplane_common::BackendKey, Backend)>, DataplaneError> {
        Ok(self.maps.services.slots()?)
    }

    /// Makes the frontend `key` lead to `backends` with `settings` (`None`:
    /// removes it), in the slots
    /// `plan_slots` gives. Costs what changed: connections to a departed
    /// backend are judged by the programs when they are used, never
    /// walked here.
    pub fn program_service(
        &mut self,
        key: ServiceKey,
        backends: Option<&BTreeSet<Backend>>,
        settings: FrontendSettings,
    ) -> Result<(), DataplaneError> {
        let FrontendSettings {
            affinity_seconds,
            flags,
            source_ranges,
        } = settings;
        let current = self.services.get(&key).cloned();
        let old: &[Backend] = current.as_ref().map_or(&[], |service| &service.backends);
        let old_ranges: &[Ipv4Network] = current
            .as_ref()
            .map_or(&[], |service| &service.source_ranges);
        match (&current, backends) {
            (Some(service), None) => {
                self.maps.services.remove(key, service.id, old)?;
                self.maps
                    .services
                    .set_source_ranges(service.id, (old_ranges, &[]), false)?;
                self.services.remove(&key);
                self.outside_local_frontends -= usize::from(key.scope != 0);
            }
            (None, None) => {}
            (current, Some(wanted)) => {
                let id = match current {
                    Some(service) => service.id,
                    None => {
                        let id = self.next_service_id;
                        self.next_service_id = id.wrapping_add(1);
                        id
                    }
                };
                let slots = plan_slots(old, wanted);
                let ranges = (old_ranges, source_ranges.as_slice());
                self.maps.services.set_source_ranges(id, ranges, true)?;
                self.maps
                    .services
                    .program(key, id, (old, &slots), affinity_seconds, flags)?;
                self.maps.services.set_source_ranges(id, ranges, false)?;
                let added = self
                    .services
                    .insert(
                        key,
                        ProgrammedService {
                            id,
                            backends: slots,
                            affinity_seconds,
                            flags,
                            source_ranges,
                        },
                    )
                    .is_none();
                // Counted once written: a failed write is retried.
                self.outside_local_frontends += usize::from(added && key.scope != 0);
            }
        }
        Ok(())
    }
}
