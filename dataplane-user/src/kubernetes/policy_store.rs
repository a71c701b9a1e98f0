//! What the Namespace, Pod and NetworkPolicy watches have told, kept as the
//! shared policy model ([`Policies`]) and nothing else. A listing updates it
//! in place, as the Services store does: what it names is set, and what it
//! no longer names goes once it is done.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{PoisonError, RwLockWriteGuard},
};

use k8s_openapi::{
    Metadata,
    api::{
        core::v1::{Namespace, Pod},
        networking::v1::NetworkPolicy,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::runtime::watcher;

use super::policies::{namespace_labels, pod_facts, policy_spec};
use crate::model::policy::{ObjectName, Policies, SharedPolicies};

/// How many kinds are followed.
const KINDS: usize = 3;

/// The kinds followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Namespace,
    Pod,
    Policy,
}

#[derive(Debug, Default)]
pub struct PolicyStore {
    /// The model, with the policies that cannot be enforced as written
    /// (the API server refuses all of them; another source could send
    /// them).
    pub shared: SharedPolicies,
    /// What listings in progress have named so far, by kind.
    listing: BTreeMap<Kind, BTreeSet<ObjectName>>,
    /// The kinds listed whole at least once.
    listed: BTreeSet<Kind>,
}

/// A namespaced object's name (a namespace's: its name, no namespace).
fn object_name(metadata: &ObjectMeta) -> ObjectName {
    (
        metadata.namespace.clone().unwrap_or_default(),
        metadata.name.clone().unwrap_or_default(),
    )
}

impl PolicyStore {
    /// A store writing into `shared`.
    pub fn new(shared: SharedPolicies) -> Self {
        Self {
            shared,
            listing: BTreeMap::new(),
            listed: BTreeSet::new(),
        }
    }

    /// The model, to change (a panic elsewhere leaves it as it was).
    fn model(&self) -> RwLockWriteGuard<'_, Policies> {
        self.shared.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Each returns whether the model changed.
    pub fn namespace_event(&mut self, event: watcher::Event<Namespace>) -> bool {
        self.event(Kind::Namespace, event)
    }

    pub fn pod_event(&mut self, event: watcher::Event<Pod>) -> bool {
        self.event(Kind::Pod, event)
    }

    pub fn policy_event(&mut self, event: watcher::Event<NetworkPolicy>) -> bool {
        self.event(Kind::Policy, event)
    }

    fn event<K: Metadata<Ty = ObjectMeta>>(&mut self, kind: Kind, event: watcher::Event<K>) -> bool
    where
        Self: Follows<K>,
    {
        match event {
            watcher::Event::Init => {
                self.listing.insert(kind, BTreeSet::new());
                false
            }
            watcher::Event::InitApply(object) => {
                let name = object_name(object.metadata());
                <Self as Follows<K>>::set(self, &object);
                self.listing.entry(kind).or_default().insert(name);
                true
            }
            watcher::Event::InitDone => {
                let listed = self.listing.remove(&kind).unwrap_or_default();
                let gone: Vec<ObjectName> = self
                    .known(kind)
                    .into_iter()
                    .filter(|name| !listed.contains(name))
                    .collect();
                for name in &gone {
                    <Self as Follows<K>>::remove(self, name);
                }
                self.listed.insert(kind);
                if self.listed.len() == KINDS {
                    self.model().synced = true;
                }
                true
            }
            watcher::Event::Apply(object) => {
                <Self as Follows<K>>::set(self, &object);
                true
            }
            watcher::Event::Delete(object) => {
                <Self as Follows<K>>::remove(self, &object_name(object.metadata()));
                true
            }
        }
    }

    /// The names of what is known of `kind`.
    fn known(&self, kind: Kind) -> Vec<ObjectName> {
        let model = self.model();
        match kind {
            Kind::Namespace => model
                .world
                .namespace_names()
                .map(|name| (String::new(), name.clone()))
                .collect(),
            Kind::Pod => model.world.pod_names().cloned().collect(),
            Kind::Policy => model
                .world
                .policy_names()
                .chain(model.refused.keys())
                .cloned()
                .collect(),
        }
    }
}

/// How the store takes in one kind.
trait Follows<K> {
    fn set(&mut self, object: &K);
    fn remove(&mut self, name: &ObjectName);
}

impl Follows<Namespace> for PolicyStore {
    fn set(&mut self, namespace: &Namespace) {
        let (name, labels) = namespace_labels(namespace);
        self.model().world.set_namespace(&name, labels);
    }

    fn remove(&mut self, (_, name): &ObjectName) {
        self.model().world.remove_namespace(name);
    }
}

impl Follows<Pod> for PolicyStore {
    fn set(&mut self, pod: &Pod) {
        let facts = pod_facts(pod);
        self.model().world.set_pod(facts);
    }

    fn remove(&mut self, (namespace, name): &ObjectName) {
        self.model().world.remove_pod(namespace, name);
    }
}

impl Follows<NetworkPolicy> for PolicyStore {
    fn set(&mut self, policy: &NetworkPolicy) {
        let name = object_name(&policy.metadata);
        let read = policy_spec(policy);
        let mut model = self.model();
        match read {
            Ok(spec) => {
                model.refused.remove(&name);
                model.world.set_policy(spec);
            }
            Err(reason) => {
                model.world.remove_policy(&name.0, &name.1);
                model.refused.insert(name, reason);
            }
        }
    }

    fn remove(&mut self, (namespace, name): &ObjectName) {
        let mut model = self.model();
        model.world.remove_policy(namespace, name);
        model.refused.remove(&(namespace.clone(), name.clone()));
    }
}

#[cfg(test)]
mod tests;
