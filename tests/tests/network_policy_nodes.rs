//! NetworkPolicy across nodes: x/a on node n0, y/b on node n1 (real `ptp`
//! chains, the tunnel between them), each agent following its own API
//! server holding the same objects. Each node judges its own pods: egress
//! where a connection leaves, ingress where it arrives; Services translated
//! on the client's node are judged on the backend on both.

use std::{net::SocketAddr, path::PathBuf};

use dataplane_tests::{
    Cluster, ClusterSpec,
    cni::MainPlugin,
    eventually,
    kube_api::{FakeApiServer, Resource},
    netpol::{PORTS, PROBE_TIMEOUT, WATCH_TIMEOUT, cluster_ip, namespace, pod, policy, service},
    traffic::{EchoServers, echo_once},
};
use serde_json::{Value, json};

/// Two nodes, one pod each: x/a on n0, y/b on n1, each behind its Service.
struct TwoNodes {
    cluster: Cluster,
    apis: Vec<FakeApiServer>,
    _servers: Vec<EchoServers>,
}

impl TwoNodes {
    fn new() -> anyhow::Result<Self> {
        let mut cluster =
            Cluster::new(ClusterSpec::dataplane(2, 1).with_real_plugin(MainPlugin::Ptp))?;
        let pods = [("x", "a"), ("y", "b")];
        let mut apis = Vec::new();
        for node in &cluster.nodes {
            apis.push(FakeApiServer::start(&node.netns)?);
        }
        let mut servers = Vec::new();
        for (index, node) in cluster.nodes.iter().enumerate() {
            let pod_of_node = &node.pods[0];
            servers.push(EchoServers::start(
                &pod_of_node.netns,
                pod_of_node.ip,
                PORTS,
                1,
                None,
            )?);
            let (namespace_name, name) = pods[index];
            for api in &apis {
                api.apply_node(&format!("n{index}"), node.ip, &node.pod_cidr.to_string());
                api.apply(Resource::Namespaces, namespace(namespace_name));
                api.apply(Resource::Pods, pod(namespace_name, name, pod_of_node.ip));
                let (service, slice) = service((index, namespace_name, name), pod_of_node.ip);
                api.apply(Resource::Services, service);
                api.apply(Resource::EndpointSlices, slice);
            }
        }
        let workdir: PathBuf = cluster.workdir().to_path_buf();
        for (index, (node, api)) in cluster.nodes.iter_mut().zip(&apis).enumerate() {
            let kubeconfig = workdir.join(format!("kubeconfig-{index}"));
            api.write_kubeconfig(&kubeconfig)?;
            node.follow_kubernetes_as(&format!("n{index}"), &kubeconfig, "")?;
        }
        Ok(Self {
            cluster,
            apis,
            _servers: servers,
        })
    }

    fn apply(&self, object: &Value) {
        for api in &self.apis {
            api.apply(Resource::NetworkPolicies, object.clone());
        }
    }

    /// Whether the pod of node `from` reaches the pod of node `to` (or its
    /// Service) at 80, waiting until it is `wanted`.
    fn until(
        &self,
        from: usize,
        (to, via_service): (usize, bool),
        wanted: bool,
    ) -> anyhow::Result<()> {
        let client = &self.cluster.nodes[from].pods[0];
        let address = if via_service {
            SocketAddr::from((cluster_ip(to), 80))
        } else {
            SocketAddr::from((self.cluster.nodes[to].pods[0].ip, 80))
        };
        let reached = eventually(WATCH_TIMEOUT, || {
            Ok(echo_once(&client.netns, address, PROBE_TIMEOUT).is_ok() == wanted)
        })?;
        anyhow::ensure!(
            reached,
            "n{from} -> {address}: expected {}\n{}\n{}",
            if wanted { "reached" } else { "refused" },
            self.cluster.nodes[to].cli(&["policy", "list"])?,
            self.cluster.nodes[from].cli(&["policy", "list"])?
        );
        Ok(())
    }
}

#[test]
fn policies_are_enforced_on_both_nodes_of_a_connection() -> anyhow::Result<()> {
    let nodes = TwoNodes::new()?;
    nodes.until(1, (0, false), true)?;
    nodes.until(1, (0, true), true)?;
    // x/a (n0) takes nothing: refused on n0, directly or through its
    // Service translated on n1.
    nodes.apply(&policy(
        "x",
        "deny-ingress",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    ));
    nodes.until(1, (0, false), false)?;
    nodes.until(1, (0, true), false)?;
    nodes.until(0, (1, false), true)?;
    // ... but from y at 80, its Service's backend port.
    nodes.apply(&policy(
        "x",
        "from-y",
        json!({
            "podSelector": {},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
                         "ports": [{"port": 80}]}],
        }),
    ));
    nodes.until(1, (0, true), true)?;
    // y/b (n1) may open nothing: refused on n1 before it leaves, and its
    // answers to x/a still pass.
    nodes.apply(&policy(
        "y",
        "deny-egress",
        json!({"podSelector": {}, "policyTypes": ["Egress"]}),
    ));
    nodes.until(1, (0, true), false)?;
    nodes.until(0, (1, false), true)?;
    nodes.until(0, (1, true), true)
}
