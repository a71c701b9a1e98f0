//! Kubernetes Services and EndpointSlices followed: both watched, what the
//! dataplane reads of them kept (`ServiceFacts`, `SliceFacts`: the objects
//! themselves are dropped as they arrive, they would be 90% of the agent's
//! memory with many Services), each
//! complete listing replacing what this source contributed, and every
//! change applied for the Services it touches.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use anyhow::Context as _;
use futures::{FutureExt as _, StreamExt as _};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt as _, watcher},
};
use tracing::{info, warn};

use super::services::{ServiceFacts, SliceFacts, service_facts, slice_facts};
use crate::{
    model::{ServiceSpec, Source},
    state::{Command, StateHandle},
};

/// How often both kinds are relisted and reconciled even without errors.
const RESYNC_INTERVAL: Duration = Duration::from_secs(300);

/// A namespaced object: (namespace, name).
type Key = (String, String);

/// Follows the cluster's Services and EndpointSlices for as long as the agent runs.
pub async fn follow_services(state: StateHandle) {
    let mut listed_before = false;
    loop {
        if let Ok(Err(error)) =
            tokio::time::timeout(RESYNC_INTERVAL, watch(&state, &mut listed_before)).await
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

/// What the watches have told, with each Service's slices indexed.
#[derive(Default)]
struct Store {
    /// The Services the dataplane programs (not those it leaves alone).
    services: BTreeMap<Key, ServiceFacts>,
    slices: BTreeMap<Key, SliceFacts>,
    slices_of: BTreeMap<Key, BTreeSet<Key>>,
    /// Listings in progress.
    listing_services: BTreeMap<Key, ServiceFacts>,
    listing_slices: BTreeMap<Key, SliceFacts>,
    services_listed: bool,
    slices_listed: bool,
}

fn key_of(metadata: &kube::api::ObjectMeta) -> Key {
    (
        metadata.namespace.clone().unwrap_or_default(),
        metadata.name.clone().unwrap_or_default(),
    )
}

/// The Service of the slice `key`.
fn owner_of(key: &Key, slice: &SliceFacts) -> Option<Key> {
    Some((key.0.clone(), slice.service.clone()?))
}

impl Store {
    fn insert_slice(&mut self, key: Key, slice: SliceFacts) -> Option<Key> {
        let before = self.remove_slice(&key);
        let owner = owner_of(&key, &slice);
        if let Some(owner) = &owner {
            self.slices_of
                .entry(owner.clone())
                .or_default()
                .insert(key.clone());
        }
        self.slices.insert(key, slice);
        owner.or(before)
    }

    /// Returns the Service the slice belonged to.
    fn remove_slice(&mut self, key: &Key) -> Option<Key> {
        let owner = owner_of(key, &self.slices.remove(key)?)?;
        if let Some(slices) = self.slices_of.get_mut(&owner) {
            slices.remove(key);
            if slices.is_empty() {
                self.slices_of.remove(&owner);
            }
        }
        Some(owner)
    }

    fn spec_of(&self, key: &Key) -> Option<ServiceSpec> {
        let service = self.services.get(key)?;
        let slices: Vec<&SliceFacts> = self
            .slices_of
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|slice| self.slices.get(slice))
            .collect();
        Some(service.spec(&slices))
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

async fn watch(state: &StateHandle, listed_before: &mut bool) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let services = watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|event| event.map(|event| Change::Service(Box::new(event))))
    .boxed();
    let slices = watcher(
        Api::<EndpointSlice>::all(client),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|event| event.map(|event| Change::Slice(Box::new(event))))
    .boxed();
    let mut events = futures::stream::select(services, slices);
    let mut store = Store::default();
    let mut pending: BTreeSet<Key> = BTreeSet::new();
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
                    Changed::Nothing
                }
            };
            match changed {
                Changed::Nothing => {}
                Changed::Listing if store.listed() => {
                    pending.clear();
                    replace_all(state, &store, listed_before).await;
                }
                Changed::Listing => {}
                Changed::Service(key) => {
                    pending.insert(key);
                }
            }
            taken += 1;
            next = if taken < MAX_EVENTS_AT_ONCE {
                events.next().now_or_never().flatten()
            } else {
                None
            };
        }
        if store.listed() {
            for key in std::mem::take(&mut pending) {
                apply(state, &store, &key).await?;
            }
        }
    }
    Ok(())
}

/// Events taken in at most before the Services they touched are applied.
const MAX_EVENTS_AT_ONCE: usize = 1_000;

/// A complete listing: the Services as listed replace what this source
/// contributed (and, the first time, what an earlier run left pinned).
async fn replace_all(state: &StateHandle, store: &Store, listed_before: &mut bool) {
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
    if !*listed_before {
        // What an earlier run programmed and the cluster no longer lists goes.
        if let Err(error) = state
            .ask(|reply| Command::ReplaceServices(Source::Pinned, Vec::new(), reply))
            .await
        {
            warn!("services pinned by an earlier run: {error:#}");
        }
        *listed_before = true;
    }
    info!(services = count, "Kubernetes services listed");
}

/// What an event changed.
enum Changed {
    Nothing,
    /// A listing completed.
    Listing,
    Service(Key),
}

impl Store {
    fn service_event(&mut self, event: watcher::Event<Service>) -> Changed {
        match event {
            watcher::Event::Init => {
                self.listing_services.clear();
                Changed::Nothing
            }
            watcher::Event::InitApply(service) => {
                if let Some(facts) = service_facts(&service) {
                    self.listing_services
                        .insert(key_of(&service.metadata), facts);
                }
                Changed::Nothing
            }
            watcher::Event::InitDone => {
                self.services = std::mem::take(&mut self.listing_services);
                self.services_listed = true;
                Changed::Listing
            }
            watcher::Event::Apply(service) => {
                let key = key_of(&service.metadata);
                match service_facts(&service) {
                    Some(facts) => self.services.insert(key.clone(), facts),
                    // Now one to leave alone: withdrawn.
                    None => self.services.remove(&key),
                };
                Changed::Service(key)
            }
            watcher::Event::Delete(service) => {
                let key = key_of(&service.metadata);
                self.services.remove(&key);
                Changed::Service(key)
            }
        }
    }

    fn slice_event(&mut self, event: watcher::Event<EndpointSlice>) -> Changed {
        match event {
            watcher::Event::Init => {
                self.listing_slices.clear();
                Changed::Nothing
            }
            watcher::Event::InitApply(slice) => {
                self.listing_slices
                    .insert(key_of(&slice.metadata), slice_facts(&slice));
                Changed::Nothing
            }
            watcher::Event::InitDone => {
                self.slices.clear();
                self.slices_of.clear();
                for (key, slice) in std::mem::take(&mut self.listing_slices) {
                    self.insert_slice(key, slice);
                }
                self.slices_listed = true;
                Changed::Listing
            }
            watcher::Event::Apply(slice) => {
                match self.insert_slice(key_of(&slice.metadata), slice_facts(&slice)) {
                    Some(owner) => Changed::Service(owner),
                    None => Changed::Nothing,
                }
            }
            watcher::Event::Delete(slice) => match self.remove_slice(&key_of(&slice.metadata)) {
                Some(owner) => Changed::Service(owner),
                None => Changed::Nothing,
            },
        }
    }
}

/// Programs one Service as the store has it now (or withdraws it).
async fn apply(state: &StateHandle, store: &Store, key: &Key) -> anyhow::Result<()> {
    let name = format!("{}/{}", key.0, key.1);
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
                warn!(service = key.1, "not withdrawn yet: {error:#}");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
