//! Kubernetes Namespaces, Pods and NetworkPolicies followed into the shared
//! policy model (what `policy list` and `policy explain` read). Only what
//! policy reads of each object is kept (`policies.rs`), the objects are
//! dropped as they arrive; a relisting updates the model in place.

use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use k8s_openapi::api::{
    core::v1::{Namespace, Pod},
    networking::v1::NetworkPolicy,
};
use kube::{Client, runtime::watcher};
use tokio::sync::watch;
use tracing::warn;

use super::policy_store::PolicyStore;
use crate::{
    model::policy::SharedPolicies,
    state::{Command, StateHandle},
};

/// An event of one of the watches (boxed: a Pod is large).
enum Change {
    Namespace(Box<watcher::Event<Namespace>>),
    Pod(Box<watcher::Event<Pod>>),
    Policy(Box<watcher::Event<NetworkPolicy>>),
}

/// Follows the cluster's Namespaces, Pods and NetworkPolicies into `shared`
/// for as long as the agent runs, telling `state` when the model changed
/// (a burst of changes, such as a listing, is told once it has passed).
pub async fn follow_policies(shared: SharedPolicies, state: StateHandle) {
    let (changed, mut told) = watch::channel(());
    tokio::spawn(async move {
        while told.changed().await.is_ok() {
            if state.tell(Command::PoliciesChanged).await.is_err() {
                break;
            }
        }
    });
    // Kept across watches: a new watch's listing updates it in place.
    let mut store = PolicyStore::new(shared);
    loop {
        if let Ok(Err(error)) =
            tokio::time::timeout(super::RESYNC_INTERVAL, follow(&mut store, &changed)).await
        {
            warn!("Kubernetes policy source: {error:#}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn follow(store: &mut PolicyStore, changed: &watch::Sender<()>) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let mut events = futures::stream::select_all([
        super::followed(&client, Change::Namespace),
        super::followed(&client, Change::Pod),
        super::followed(&client, Change::Policy),
    ]);
    while let Some(event) = events.next().await {
        let changes = match event {
            Ok(Change::Namespace(event)) => store.namespace_event(*event),
            Ok(Change::Pod(event)) => store.pod_event(*event),
            Ok(Change::Policy(event)) => store.policy_event(*event),
            Err(error) => {
                warn!("Kubernetes policy watch: {error}; resuming");
                false
            }
        };
        if changes {
            changed.send_replace(());
        }
    }
    Ok(())
}
