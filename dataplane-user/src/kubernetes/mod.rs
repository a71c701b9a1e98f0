//! Kubernetes as a source of nodes and (in [`services`]) of Services: every
//! `Node` with an InternalIP and a pod CIDR becomes a remote node; this
//! node's own `Node` gives its pod CIDR.
//! The watcher relists after errors and dropped watches, and every few
//! minutes; each list replaces what this source contributed (nodes the
//! config file or the API also list stay), and the first one also what an
//! earlier run left in the pinned maps.

use std::{collections::BTreeMap, net::Ipv4Addr, time::Duration};

use anyhow::Context as _;
use futures::StreamExt as _;
use ipnetwork::Ipv4Network;
use k8s_openapi::api::core::v1::Node;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt as _, watcher},
};
use tracing::{info, warn};

mod policies;
mod policy_store;
mod policy_watch;
mod service_watch;
mod services;

pub use policy_watch::follow_policies;
pub use service_watch::follow_services;

/// Every object of kind `K` in the cluster, watched (relisted after errors,
/// with backoff), each event boxed into `C` by `wrap`.
fn followed<K, C: 'static>(
    client: &Client,
    wrap: fn(Box<watcher::Event<K>>) -> C,
) -> futures::stream::BoxStream<'static, Result<C, watcher::Error>>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    watcher(Api::<K>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .map(move |event| event.map(|event| wrap(Box::new(event))))
        .boxed()
}

use crate::{
    config::KubernetesSettings,
    model::{NodeSpec, Source},
    state::{Command, StateHandle},
};

/// This node's name: configured, else $NODE_NAME (downward API), else the hostname.
pub fn node_name(settings: &KubernetesSettings) -> anyhow::Result<String> {
    if let Some(name) = &settings.node_name {
        return Ok(name.clone());
    }
    if let Ok(name) = std::env::var("NODE_NAME")
        && !name.is_empty()
    {
        return Ok(name);
    }
    let hostname = nix::unistd::gethostname().context("reading the hostname")?;
    Ok(hostname.to_string_lossy().into_owned())
}

/// What the dataplane needs of a Node: its InternalIP and pod CIDRs (an
/// IPv4 one, and an IPv6 one on a dual-stack cluster).
pub fn node_spec(node: &Node) -> Option<NodeSpec> {
    let ip = node
        .status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .filter(|address| address.type_ == "InternalIP")
        .find_map(|address| address.address.parse::<Ipv4Addr>().ok())?;
    let spec = node.spec.as_ref()?;
    let cidrs = || spec.pod_cidrs.iter().flatten().chain(spec.pod_cidr.iter());
    let pod_cidr = cidrs().find_map(|cidr| cidr.parse::<Ipv4Network>().ok())?;
    let pod_cidr_ipv6 = cidrs().find_map(|cidr| cidr.parse::<ipnetwork::Ipv6Network>().ok());
    Some(NodeSpec {
        ip,
        pod_cidr,
        pod_cidr_ipv6,
    })
}

/// How often every watch is started afresh, relisting its kind even
/// without errors (Nodes reconciled whole; Services and policy updated in
/// place with what the listing changed).
const RESYNC_INTERVAL: Duration = Duration::from_secs(300);

/// Follows the cluster's Nodes for as long as the agent runs. This node's
/// own Node (by name, or by `node_ip`) gives its pod CIDR.
pub async fn follow_nodes(state: StateHandle, node_name: String, node_ip: Option<Ipv4Addr>) {
    let this_node = ThisNode {
        name: node_name,
        ip: node_ip,
    };
    let mut listed_before = false;
    loop {
        // Elapsing is the resync: the next watch starts with a fresh list.
        if let Ok(Err(error)) = tokio::time::timeout(
            RESYNC_INTERVAL,
            watch(&state, &this_node, &mut listed_before),
        )
        .await
        {
            warn!("Kubernetes node source: {error:#}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

struct ThisNode {
    name: String,
    ip: Option<Ipv4Addr>,
}

async fn watch(
    state: &StateHandle,
    this_node: &ThisNode,
    listed_before: &mut bool,
) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let nodes: Api<Node> = Api::all(client);
    let mut events = watcher(nodes, watcher::Config::default())
        .default_backoff()
        .boxed();
    // Node name -> IP, to withdraw a deleted Node (its object may be partial).
    let mut known: BTreeMap<String, Ipv4Addr> = BTreeMap::new();
    let mut listing: BTreeMap<String, NodeSpec> = BTreeMap::new();
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => listing.clear(),
            Ok(watcher::Event::InitApply(node)) => {
                if let Some((name, spec)) = remote(state, this_node, &node).await {
                    listing.insert(name, spec);
                }
            }
            Ok(watcher::Event::InitDone) => {
                let nodes: Vec<NodeSpec> = listing.values().copied().collect();
                state.replace_nodes(Source::Kubernetes, nodes).await?;
                if !*listed_before {
                    // What an earlier run programmed and the cluster no longer lists goes.
                    state.replace_nodes(Source::Pinned, Vec::new()).await?;
                    *listed_before = true;
                }
                known = listing
                    .iter()
                    .map(|(name, spec)| (name.clone(), spec.ip))
                    .collect();
                info!(nodes = known.len(), "Kubernetes nodes listed");
            }
            Ok(watcher::Event::Apply(node)) => {
                if let Some((name, spec)) = remote(state, this_node, &node).await {
                    if let Some(previous) = known.insert(name.clone(), spec.ip)
                        && previous != spec.ip
                    {
                        state
                            .withdraw_node(Some(Source::Kubernetes), previous)
                            .await?;
                    }
                    if let Err(error) = state.upsert_node(Source::Kubernetes, spec).await {
                        warn!(node = name, "not programmed: {error:#}");
                    }
                }
            }
            Ok(watcher::Event::Delete(node)) => {
                let name = node.metadata.name.unwrap_or_default();
                if let Some(ip) = known.remove(&name) {
                    state.withdraw_node(Some(Source::Kubernetes), ip).await?;
                }
            }
            Err(error) => warn!("Kubernetes watch: {error}; resuming"),
        }
    }
    Ok(())
}

/// The zone a node is in (topology-aware routing prefers endpoints hinted for it).
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// A remote node's name and spec; for this node, sends its pod CIDR and
/// zone instead.
async fn remote(
    state: &StateHandle,
    this_node: &ThisNode,
    node: &Node,
) -> Option<(String, NodeSpec)> {
    let name = node.metadata.name.clone()?;
    let spec = node_spec(node)?;
    if name == this_node.name || Some(spec.ip) == this_node.ip {
        let zone = node
            .metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get(ZONE_LABEL))
            .cloned();
        let local = Command::LocalNode {
            pod_cidr: spec.pod_cidr,
            pod_cidr_ipv6: spec.pod_cidr_ipv6,
            zone,
        };
        let _ = state.tell(local).await;
        return None;
    }
    Some((name, spec))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(json: &str) -> Node {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_node_gives_its_internal_ip_and_pod_cidrs_of_both_families() {
        let spec = node_spec(&node(
            r#"{"metadata":{"name":"n1"},
                "spec":{"podCIDR":"fd00::/64","podCIDRs":["fd00::/64","10.244.1.0/24"]},
                "status":{"addresses":[{"type":"Hostname","address":"n1"},
                                       {"type":"InternalIP","address":"192.0.2.11"}]}}"#,
        ))
        .unwrap();
        assert_eq!(spec.ip, Ipv4Addr::new(192, 0, 2, 11));
        assert_eq!(
            spec.pod_cidr,
            "10.244.1.0/24".parse::<Ipv4Network>().unwrap()
        );
        assert_eq!(spec.pod_cidr_ipv6, Some("fd00::/64".parse().unwrap()));
    }

    #[test]
    fn nodes_without_address_or_cidr_are_skipped() {
        assert!(
            node_spec(&node(
                r#"{"metadata":{"name":"n"},"spec":{"podCIDR":"10.244.1.0/24"}}"#
            ))
            .is_none()
        );
        assert!(
            node_spec(&node(
                r#"{"metadata":{"name":"n"},"spec":{},"status":{"addresses":[{"type":"InternalIP","address":"192.0.2.11"}]}}"#
            ))
            .is_none()
        );
    }
}
