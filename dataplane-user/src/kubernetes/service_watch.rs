//! Kubernetes Services and EndpointSlices followed: both watched, what the
//! dataplane reads of them kept (`ServiceFacts`, `SliceFacts`: the objects
//! themselves are dropped as they arrive, they would be 90% of the agent's
//! memory with many Services). A watch's first complete listing replaces
//! what this source contributed; later ones (a watch expired) update the
//! store in place and apply what they changed, like every other change.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use anyhow::Context as _;
use futures::{FutureExt as _, StreamExt as _};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{Client, runtime::watcher};
use tracing::{info, warn};

use super::services::{ServiceFacts, SliceFacts, object_key, owner_of, service_facts, slice_facts};
use crate::{
    model::{ServiceSpec, Source},
    state::{Command, StateHandle},
};

/// A namespaced object: "namespace/name".
type Key = String;

/// Follows the cluster's Services and EndpointSlices for as long as the agent runs.
pub async fn follow_services(state: StateHandle) {
    // Kept across watches: a new watch's listing updates it in place.
    let mut store = Store::default();
    loop {
        if let Ok(Err(error)) =
            tokio::time::timeout(super::RESYNC_INTERVAL, watch(&state, &mut store)).await
        {
            warn!("Kubernetes service source: {error:#}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// An event of either watch (boxed: a Service is twice a slice's size).
enum Change {
    Service(Box<watcher::Event<Service>>),
    Slice(Box<watcher::Event<EndpointSlice>>),
}

/// What the watches have told, each Service with its slices. Kept lean
/// (one entry per Service, its facts boxed: B-tree nodes are half empty
/// when filled in order): at 30,000 Services this is most of the agent.
#[derive(Default)]
struct Store {
    services: BTreeMap<Key, Entry>,
    /// The Service of each slice, for the slice's next change.
    owners: BTreeMap<Key, Key>,
    /// What listings in progress have named so far (`None`: no listing).
    /// A listing updates the store in place, as it goes: a second copy of
    /// every fact would double the agent at its peak.
    listing_services: Option<BTreeSet<Key>>,
    listing_slices: Option<BTreeSet<Key>>,
    services_listed: bool,
    slices_listed: bool,
    /// Services changed and not applied yet (kept when a watch ends).
    pending: BTreeSet<Key>,
    /// Whether the first complete listing was sent whole.
    sent_whole: bool,
}

/// One Service's name: what the dataplane reads of the Service, once one
/// of that name is there (and not one to leave alone), and its slices.
#[derive(Default)]
struct Entry {
    facts: Option<Box<ServiceFacts>>,
    slices: Vec<(Key, SliceFacts)>,
}

impl Store {
    /// Sets the Service's facts (`None`: none or one to leave alone).
    fn set_facts(&mut self, key: Key, facts: Option<ServiceFacts>) {
        match facts {
            Some(facts) => self.services.entry(key).or_default().facts = Some(Box::new(facts)),
            None => {
                if let Some(entry) = self.services.get_mut(&key) {
                    entry.facts = None;
                    if entry.slices.is_empty() {
                        self.services.remove(&key);
                    }
                }
            }
        }
    }

    /// Returns the Services changed: the one the slice belonged to and
    /// the one it belongs to now (a tenant may relabel its own slice).
    fn insert_slice(&mut self, key: Key, owner: Option<Key>, slice: SliceFacts) -> Vec<Key> {
        let mut changed: Vec<Key> = self.remove_slice(&key).into_iter().collect();
        let Some(owner) = owner else {
            return changed;
        };
        self.owners.insert(key.clone(), owner.clone());
        let slices = &mut self.services.entry(owner.clone()).or_default().slices;
        // Nearly every Service has one slice: a vector's first push makes
        // room for four (168 bytes a Service left empty).
        slices.reserve_exact(1);
        slices.push((key, slice));
        if !changed.contains(&owner) {
            changed.push(owner);
        }
        changed
    }

    /// Returns the Service the slice belonged to.
    fn remove_slice(&mut self, key: &Key) -> Option<Key> {
        let owner = self.owners.remove(key)?;
        if let Some(entry) = self.services.get_mut(&owner) {
            entry.slices.retain(|(slice, _)| slice != key);
            if entry.slices.is_empty() && entry.facts.is_none() {
                self.services.remove(&owner);
            }
        }
        Some(owner)
    }

    /// The slice `key`: its Service and facts.
    fn slice(&self, key: &Key) -> Option<(&Key, &SliceFacts)> {
        let owner = self.owners.get(key)?;
        let (_, facts) = self
            .services
            .get(owner)?
            .slices
            .iter()
            .find(|(slice, _)| slice == key)?;
        Some((owner, facts))
    }

    fn spec_of(&self, key: &Key) -> Option<ServiceSpec> {
        let entry = self.services.get(key)?;
        let slices: Vec<&SliceFacts> = entry.slices.iter().map(|(_, slice)| slice).collect();
        Some(entry.facts.as_ref()?.spec(key, &slices))
    }

    fn listed(&self) -> bool {
        self.services_listed && self.slices_listed
    }

    fn all_specs(&self) -> Vec<ServiceSpec> {
        self.services
            .keys()
            .filter_map(|key| self.spec_of(key))
            .collect()
    }
}

async fn watch(state: &StateHandle, store: &mut Store) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let services = super::followed(&client, Change::Service);
    let slices = super::followed(&client, Change::Slice);
    let mut events = futures::stream::select(services, slices);
    while let Some(first) = events.next().await {
        // What the watches have ready is taken in before anything is
        // applied: a burst (a large Service's slices, a namespace deleted)
        // costs each Service it touches once.
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(event) = next {
            let changed = match event {
                Ok(Change::Service(event)) => store.service_event(*event),
                Ok(Change::Slice(event)) => store.slice_event(*event),
                Err(error) => {
                    warn!("Kubernetes watch: {error}; resuming");
                    Vec::new()
                }
            };
            store.pending.extend(changed);
            if store.listed() && !store.sent_whole {
                store.pending.clear();
                send_whole(state, store).await;
                store.sent_whole = true;
            }
            taken += 1;
            next = if taken < MAX_EVENTS_AT_ONCE {
                events.next().now_or_never().flatten()
            } else {
                None
            };
        }
        if store.listed() {
            // Each taken out once applied: a watch ended meanwhile (the
            // resync's timeout) leaves the rest for the next.
            while let Some(key) = store.pending.first().cloned() {
                apply(state, store, &key).await?;
                store.pending.remove(&key);
            }
        }
    }
    Ok(())
}

/// Events taken in at most before the Services they touched are applied.
const MAX_EVENTS_AT_ONCE: usize = 1_000;

/// The first complete listing: the Services as listed replace what this
/// source contributed and what an earlier run left pinned.
async fn send_whole(state: &StateHandle, store: &Store) {
    let specs = store.all_specs();
    let count = specs.len();
    // Objects that break a rule are refused one by one; a failure here is a
    // write the agent retries by itself: relisting would not help, so the
    // watch goes on.
    if let Err(error) = state
        .ask(|reply| Command::ReplaceServices(Source::Kubernetes, specs, reply))
        .await
    {
        warn!("Kubernetes services: {error:#}");
    }
    // What an earlier run programmed and the cluster no longer lists goes.
    if let Err(error) = state
        .ask(|reply| Command::ReplaceServices(Source::Pinned, Vec::new(), reply))
        .await
    {
        warn!("services pinned by an earlier run: {error:#}");
    }
    crate::memory::release_free_memory();
    info!(services = count, "Kubernetes services listed");
}

impl Store {
    /// Returns the Services the event changed.
    fn service_event(&mut self, event: watcher::Event<Service>) -> Vec<Key> {
        match event {
            watcher::Event::Init => {
                self.listing_services = Some(BTreeSet::new());
                Vec::new()
            }
            watcher::Event::InitApply(service) => {
                let key = object_key(&service.metadata);
                let facts = service_facts(&service);
                self.listing_services
                    .get_or_insert_default()
                    .insert(key.clone());
                let known = self
                    .services
                    .get(&key)
                    .and_then(|entry| entry.facts.as_deref());
                if known == facts.as_ref() {
                    return Vec::new();
                }
                self.set_facts(key.clone(), facts);
                vec![key]
            }
            watcher::Event::InitDone => {
                let listed = self.listing_services.take().unwrap_or_default();
                let gone: Vec<Key> = self
                    .services
                    .iter()
                    .filter(|(key, entry)| entry.facts.is_some() && !listed.contains(*key))
                    .map(|(key, _)| key.clone())
                    .collect();
                for key in &gone {
                    self.set_facts(key.clone(), None);
                }
                if self.sent_whole {
                    info!(
                        services = listed.len(),
                        gone = gone.len(),
                        "Kubernetes services relisted"
                    );
                }
                self.services_listed = true;
                gone
            }
            watcher::Event::Apply(service) => {
                let key = object_key(&service.metadata);
                // One now left alone is withdrawn.
                self.set_facts(key.clone(), service_facts(&service));
                vec![key]
            }
            watcher::Event::Delete(service) => {
                let key = object_key(&service.metadata);
                self.set_facts(key.clone(), None);
                vec![key]
            }
        }
    }

    /// Returns the Services the event changed.
    fn slice_event(&mut self, event: watcher::Event<EndpointSlice>) -> Vec<Key> {
        match event {
            watcher::Event::Init => {
                self.listing_slices = Some(BTreeSet::new());
                Vec::new()
            }
            watcher::Event::InitApply(slice) => {
                let key = object_key(&slice.metadata);
                let (owner, facts) = (owner_of(&slice), slice_facts(&slice));
                self.listing_slices
                    .get_or_insert_default()
                    .insert(key.clone());
                let unchanged = match (&owner, self.slice(&key)) {
                    (Some(owner), Some((known_owner, known))) => {
                        owner == known_owner && *known == facts
                    }
                    (None, None) => true,
                    _ => false,
                };
                if unchanged {
                    return Vec::new();
                }
                self.insert_slice(key, owner, facts)
            }
            watcher::Event::InitDone => {
                let listed = self.listing_slices.take().unwrap_or_default();
                let gone: Vec<Key> = self
                    .owners
                    .keys()
                    .filter(|key| !listed.contains(*key))
                    .cloned()
                    .collect();
                let changed = gone
                    .iter()
                    .filter_map(|key| self.remove_slice(key))
                    .collect();
                self.slices_listed = true;
                changed
            }
            watcher::Event::Apply(slice) => {
                let key = object_key(&slice.metadata);
                self.insert_slice(key, owner_of(&slice), slice_facts(&slice))
            }
            watcher::Event::Delete(slice) => self
                .remove_slice(&object_key(&slice.metadata))
                .into_iter()
                .collect(),
        }
    }
}

/// Programs one Service as the store has it now (or withdraws it).
async fn apply(state: &StateHandle, store: &Store, key: &Key) -> anyhow::Result<()> {
    let name = key.clone();
    match store.spec_of(key) {
        Some(spec) => {
            let upserted = state
                .ask(|reply| Command::UpsertService(Source::Kubernetes, spec, reply))
                .await;
            if let Err(error) = upserted {
                warn!(service = name, "not programmed: {error:#}");
            }
        }
        None => {
            let withdrawn = state
                .ask(|reply| Command::WithdrawService(Some(Source::Kubernetes), name, reply))
                .await;
            if let Err(error) = withdrawn {
                warn!(service = key, "not withdrawn yet: {error:#}");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
