//! NetworkPolicy from a Kubernetes API server (a local one speaking real
//! Kubernetes JSON) into the agent's policy model, read back through the
//! CLI: which of this node's pods each policy isolates (`policy list`) and
//! the verdict on a connection with the policy and rule deciding it
//! (`policy explain`). Pods from the real `ptp` chain, IPv6 left on. The
//! programs do not enforce policy yet; these tests hold the model and its
//! sources to the cluster as it changes.

use std::{net::Ipv4Addr, path::PathBuf, time::Duration};

use dataplane_tests::{
    Cluster, ClusterSpec,
    cluster::Node,
    cni::MainPlugin,
    eventually,
    kube_api::{FakeApiServer, Resource},
};
use serde_json::{Value, json};

/// How long a change in the API may take to reach the agent.
const WATCH_TIMEOUT: Duration = Duration::from_secs(10);

/// One node following a Kubernetes API server; pod 0 is x/a (pod=a), pod 1
/// is y/b (pod=b), both from the real `ptp` chain.
struct Lab {
    cluster: Cluster,
    api: FakeApiServer,
}

fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": name, "labels": {"ns": name}}})
}

fn pod(namespace: &str, name: &str, ip: Ipv4Addr) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"pod": name}},
        "spec": {"nodeName": "n0", "containers": [{"name": "c", "ports": [
            {"name": "serve-80-tcp", "containerPort": 80, "protocol": "TCP"}]}]},
        "status": {"podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}]},
    })
}

/// "should allow ingress access on one named port": pods labelled pod=a in
/// x take connections to `serve-80-tcp` from namespace y only.
fn allow_named_port_from_y() -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "allow-y-named", "namespace": "x"},
        "spec": {
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
                         "ports": [{"port": "serve-80-tcp"}]}],
        },
    })
}

impl Lab {
    fn new() -> anyhow::Result<Self> {
        let mut cluster =
            Cluster::new(ClusterSpec::dataplane(1, 2).with_real_plugin(MainPlugin::Ptp))?;
        let kubeconfig: PathBuf = cluster.workdir().join("kubeconfig");
        let node = &mut cluster.nodes[0];
        let api = FakeApiServer::start(&node.netns)?;
        api.write_kubeconfig(&kubeconfig)?;
        api.apply_node("n0", node.ip, &node.pod_cidr.to_string());
        for name in ["x", "y"] {
            api.apply(Resource::Namespaces, namespace(name));
        }
        api.apply(Resource::Pods, pod("x", "a", node.pods[0].ip));
        api.apply(Resource::Pods, pod("y", "b", node.pods[1].ip));
        node.follow_kubernetes(&kubeconfig, "")?;
        Ok(Self { cluster, api })
    }

    fn node(&self) -> &Node {
        &self.cluster.nodes[0]
    }

    fn explain(&self, from: usize, to: usize, port: &str) -> anyhow::Result<String> {
        let pods = &self.node().pods;
        self.node().cli(&[
            "policy",
            "explain",
            "--from",
            &pods[from].ip.to_string(),
            "--to",
            &pods[to].ip.to_string(),
            "--port",
            port,
        ])
    }

    /// Waits until `explain` from pod `from` to pod `to` at `port`
    /// satisfies `wanted`.
    fn until_explained(
        &self,
        (from, to, port): (usize, usize, &str),
        wanted: impl Fn(&str) -> bool,
    ) -> anyhow::Result<()> {
        let reached = eventually(WATCH_TIMEOUT, || Ok(wanted(&self.explain(from, to, port)?)))?;
        anyhow::ensure!(
            reached,
            "not in {WATCH_TIMEOUT:?}: {}\n{}",
            self.explain(from, to, port)?,
            self.node().agent_log()
        );
        Ok(())
    }
}

#[test]
fn policies_from_kubernetes_are_listed_per_pod_and_explained_per_connection() -> anyhow::Result<()>
{
    let lab = Lab::new()?;
    lab.until_explained((1, 0, "80"), |text| text.contains("not isolated"))?;
    lab.api
        .apply(Resource::NetworkPolicies, allow_named_port_from_y());
    lab.until_explained((1, 0, "80/tcp"), |text| {
        text.starts_with("allowed") && text.contains("allowed by x/allow-y-named, rule 0")
    })?;
    // Another port of the same pod: isolated, no rule allows it.
    let other_port = lab.explain(1, 0, "81")?;
    assert!(
        other_port.starts_with("denied") && other_port.contains("isolated by x/allow-y-named"),
        "{other_port}"
    );
    // From x/a's own namespace: no rule names it. Egress of x/a: not isolated.
    let same_namespace = lab.explain(0, 0, "80")?;
    assert!(same_namespace.starts_with("denied"), "{same_namespace}");
    let listed = lab.node().cli(&["policy", "list"])?;
    let a_line = listed
        .lines()
        .find(|line| line.contains("x/a"))
        .unwrap_or_default();
    assert!(
        a_line.contains("x/allow-y-named (1 rules)") && a_line.contains("not isolated"),
        "{listed}"
    );
    assert!(listed.contains("not enforced yet"), "{listed}");
    // Namespace y relabelled: its pods no longer match.
    lab.api.apply(
        Resource::Namespaces,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "y"}}),
    );
    lab.until_explained((1, 0, "80"), |text| text.starts_with("denied"))?;
    Ok(())
}

#[test]
fn a_policy_deleted_while_the_watches_were_expired_stops_isolating() -> anyhow::Result<()> {
    let lab = Lab::new()?;
    lab.api
        .apply(Resource::NetworkPolicies, allow_named_port_from_y());
    lab.until_explained((0, 0, "80"), |text| text.starts_with("denied"))?;
    lab.api.expire_history();
    lab.api.delete(Resource::NetworkPolicies, "x/allow-y-named");
    lab.until_explained((0, 0, "80"), |text| text.contains("not isolated"))?;
    // A policy the API server would refuse is listed with the reason.
    let mut unknown_protocol = allow_named_port_from_y();
    unknown_protocol["metadata"]["name"] = json!("icmp");
    unknown_protocol["spec"]["ingress"][0]["ports"] = json!([{"protocol": "ICMP"}]);
    lab.api.apply(Resource::NetworkPolicies, unknown_protocol);
    let refused = eventually(WATCH_TIMEOUT, || {
        Ok(lab
            .node()
            .cli(&["policy", "list"])?
            .contains("REFUSED x/icmp: unknown protocol"))
    })?;
    assert!(refused, "{}", lab.node().cli(&["policy", "list"])?);
    Ok(())
}
