//! Kubernetes as the source of nodes: every `Node` with an InternalIP and a
//! pod CIDR becomes a remote node; this node's own `Node` gives its pod CIDR.
//! The watcher relists after errors and dropped watches, and every few
//! minutes; each list is a full reconciliation against the node map as it
//! is (pinned, so it includes what an earlier agent programmed): nodes
//! Kubernetes no longer lists are removed, except those of the config file.

use std::{
    collections::{BTreeMap, HashSet},
    net::Ipv4Addr,
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use futures::StreamExt as _;
use ipnetwork::Ipv4Network;
use k8s_openapi::api::core::v1::Node;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt as _, watcher},
};
use tracing::{info, warn};

use crate::{agent::Agent, config::KubernetesSettings, config::NodeSpec};

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

/// What the dataplane needs of a Node: its InternalIP and IPv4 pod CIDR.
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
    let pod_cidr = spec
        .pod_cidrs
        .iter()
        .flatten()
        .chain(spec.pod_cidr.iter())
        .find_map(|cidr| cidr.parse::<Ipv4Network>().ok())?;
    Some(NodeSpec { ip, pod_cidr })
}

/// How often the Nodes are relisted and reconciled even without errors.
const RESYNC_INTERVAL: Duration = Duration::from_secs(300);

/// Follows the cluster's Nodes for as long as the agent runs. Nodes in
/// `file_nodes` belong to the config file and are never removed here.
pub async fn follow_nodes(agent: Arc<Agent>, node_name: String, file_nodes: Vec<NodeSpec>) {
    // What the map holds now, by IP until names are known.
    let mut owned: Owned = match agent.remote_nodes() {
        Ok(nodes) => nodes
            .into_iter()
            .filter(|node| !file_nodes.iter().any(|file| file.ip == node.ip))
            .map(|node| (node.ip.to_string(), node))
            .collect(),
        Err(error) => {
            warn!("reading the node map: {error:#}");
            Owned::new()
        }
    };
    loop {
        // Elapsing is the resync: the next watch starts with a fresh list.
        if let Ok(Err(error)) =
            tokio::time::timeout(RESYNC_INTERVAL, watch(&agent, &node_name, &mut owned)).await
        {
            warn!("Kubernetes node source: {error:#}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The nodes this source is responsible for, by Node name.
type Owned = BTreeMap<String, NodeSpec>;

async fn watch(agent: &Agent, node_name: &str, owned: &mut Owned) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let nodes: Api<Node> = Api::all(client);
    let mut events = watcher(nodes, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut listing = Owned::new();
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => listing.clear(),
            Ok(watcher::Event::InitApply(node)) => {
                if let Some((name, spec)) = remote(agent, node_name, &node) {
                    listing.insert(name, spec);
                }
            }
            Ok(watcher::Event::InitDone) => {
                let listed: HashSet<Ipv4Addr> = listing.values().map(|spec| spec.ip).collect();
                for (name, spec) in owned.iter() {
                    if !listed.contains(&spec.ip) {
                        forget(agent, name, spec);
                    }
                }
                *owned = std::mem::take(&mut listing);
                for (name, spec) in owned.iter() {
                    program(agent, name, spec);
                }
                agent.reconciled();
                info!(nodes = owned.len(), "Kubernetes nodes listed");
            }
            Ok(watcher::Event::Apply(node)) => {
                if let Some((name, spec)) = remote(agent, node_name, &node) {
                    if let Some(previous) = owned.get(&name)
                        && previous.ip != spec.ip
                    {
                        forget(agent, &name, previous);
                    }
                    program(agent, &name, &spec);
                    owned.insert(name, spec);
                }
            }
            Ok(watcher::Event::Delete(node)) => {
                let name = node.metadata.name.unwrap_or_default();
                if let Some(spec) = owned.remove(&name) {
                    forget(agent, &name, &spec);
                }
            }
            Err(error) => warn!("Kubernetes watch: {error}; resuming"),
        }
    }
    Ok(())
}

/// A remote node's name and spec; for this node, records its pod CIDR instead.
fn remote(agent: &Agent, node_name: &str, node: &Node) -> Option<(String, NodeSpec)> {
    let name = node.metadata.name.clone()?;
    let spec = node_spec(node)?;
    if name == node_name || Some(spec.ip) == agent.node_ip() {
        if let Err(error) = agent.set_local_pod_cidr(spec.pod_cidr) {
            warn!("applying this node's pod CIDR {}: {error:#}", spec.pod_cidr);
        }
        return None;
    }
    Some((name, spec))
}

fn program(agent: &Agent, name: &str, spec: &NodeSpec) {
    if let Err(error) = agent.add_node(spec) {
        warn!(node = name, "not programmed: {error:#}");
    }
}

fn forget(agent: &Agent, name: &str, spec: &NodeSpec) {
    if let Err(error) = agent.remove_node(spec.ip) {
        warn!(node = name, "not removed: {error:#}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(json: &str) -> Node {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_node_gives_its_internal_ip_and_ipv4_pod_cidr() {
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
