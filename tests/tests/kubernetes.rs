//! Nodes, Services and EndpointSlices from the Kubernetes API (a local
//! server speaking real Kubernetes JSON for list and watch) drive the node
//! and Service maps: add, change, delete, dropped watches.

use std::{
    net::{SocketAddr, SocketAddrV4},
    time::Duration,
};

use dataplane_tests::{
    Cluster, ClusterSpec, Node, eventually,
    kube_api::{FakeApiServer, Resource},
    traffic::{joined, tcp_echo_server, tcp_exchange},
};
use serde_json::json;

/// How long a change in the API may take to reach the node map.
const WATCH_TIMEOUT: Duration = Duration::from_secs(10);

fn nodes_of(node: &Node) -> anyhow::Result<String> {
    node.cli(&["node", "list"])
}

#[test]
fn node_objects_drive_the_node_map() -> anyhow::Result<()> {
    let mut cluster = Cluster::new(ClusterSpec::dataplane(3, 1))?;
    let (second_ip, second_cidr, second_pod) = {
        let second = &cluster.nodes[1];
        (second.ip, second.pod_cidr.to_string(), second.pods[0].ip)
    };
    let (third_ip, third_cidr) = (cluster.nodes[2].ip, cluster.nodes[2].pod_cidr.to_string());
    let kubeconfig = cluster.workdir().join("kubeconfig");
    let node = &mut cluster.nodes[0];
    // Only Kubernetes tells this node about the others.
    node.remove_remote_node(second_ip)?;
    node.remove_remote_node(third_ip)?;
    let api = FakeApiServer::start(&node.netns)?;
    api.write_kubeconfig(&kubeconfig)?;
    api.apply_node("n0", node.ip, &node.pod_cidr.to_string());
    api.apply_node("n1", second_ip, &second_cidr);
    node.follow_kubernetes(&kubeconfig, "")?;

    // Listed at start.
    assert!(
        eventually(WATCH_TIMEOUT, || Ok(nodes_of(node)?.contains(&second_cidr)))?,
        "{}",
        node.agent_log()
    );
    assert!(
        !nodes_of(node)?.contains(&node.ip.to_string()),
        "this node is not a remote node"
    );
    node.pods[0].ping(second_pod, 2)?;

    // Added, changed, deleted through the watch.
    api.apply_node("n2", third_ip, &third_cidr);
    assert!(eventually(WATCH_TIMEOUT, || Ok(
        nodes_of(node)?.contains(&third_cidr)
    ))?);
    api.apply_node("n2", third_ip, "10.244.50.0/24");
    assert!(eventually(WATCH_TIMEOUT, || {
        let listed = nodes_of(node)?;
        Ok(listed.contains("10.244.50.0/24") && !listed.contains(&third_cidr))
    })?);
    api.delete_node("n1");
    assert!(eventually(WATCH_TIMEOUT, || Ok(
        !nodes_of(node)?.contains(&second_cidr)
    ))?);
    assert!(!node.pods[0].reaches(second_pod));

    // A dropped watch is resumed: changes made meanwhile still arrive.
    api.drop_watches();
    api.apply_node("n1", second_ip, &second_cidr);
    assert!(
        eventually(WATCH_TIMEOUT, || Ok(nodes_of(node)?.contains(&second_cidr)))?,
        "{}",
        node.agent_log()
    );
    node.pods[0].ping(second_pod, 2)?;
    Ok(())
}

fn services_of(node: &Node) -> anyhow::Result<String> {
    node.cli(&["map", "list", "services"])
}

/// The EndpointSlice "shop/web-a" of Service "shop/web": `endpoints` as
/// (address, ready, terminating).
fn web_slice(endpoints: &[(std::net::Ipv4Addr, bool, bool)]) -> serde_json::Value {
    let endpoints: Vec<serde_json::Value> = endpoints
        .iter()
        .map(|(ip, ready, terminating)| {
            json!({"addresses": [ip.to_string()],
                   "conditions": {"ready": ready, "serving": ready | terminating,
                                  "terminating": terminating}})
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "web-a", "namespace": "shop",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    })
}

fn web_service(labels: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop", "labels": labels},
        "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP",
                            "targetPort": "http"}]},
    })
}

#[test]
fn service_and_endpoint_slice_objects_drive_the_service_maps() -> anyhow::Result<()> {
    let mut cluster = Cluster::new(ClusterSpec::dataplane(1, 3))?;
    let kubeconfig = cluster.workdir().join("kubeconfig");
    let node = &mut cluster.nodes[0];
    let (first, second) = (node.pods[1].ip, node.pods[2].ip);
    let api = FakeApiServer::start(&node.netns)?;
    api.write_kubeconfig(&kubeconfig)?;
    api.apply_node("n0", node.ip, &node.pod_cidr.to_string());
    api.apply(Resource::Services, web_service(json!({})));
    api.apply(Resource::EndpointSlices, web_slice(&[(first, true, false)]));
    // A headless Service is left alone, as kube-proxy leaves it.
    let mut headless = web_service(json!({}));
    headless["metadata"]["name"] = json!("headless");
    headless["spec"]["clusterIP"] = json!("None");
    headless["spec"]["clusterIPs"] = json!(["None"]);
    api.apply(Resource::Services, headless);
    node.follow_kubernetes(&kubeconfig, "")?;

    // Listed at start: the Service works through its ClusterIP.
    let first_backend = format!("{first}:8080");
    assert!(
        eventually(WATCH_TIMEOUT, || Ok(
            services_of(node)?.contains(&first_backend)
        ))?,
        "{}",
        node.agent_log()
    );
    let listed = node.cli(&["service", "list"])?;
    assert!(
        listed.contains("shop/web") && !listed.contains("headless"),
        "{listed}"
    );
    let server = SocketAddrV4::new(first, 8080);
    let (_, echo) = tcp_echo_server(&node.pods[1].netns, server, 1, Duration::from_secs(5))?;
    tcp_exchange(
        &node.pods[0].netns,
        SocketAddr::from(([10, 96, 0, 10], 80)),
        4096,
    )?;
    assert_eq!(joined(echo)?[0].ip(), node.pods[0].ip);

    // The first endpoint terminates while the second is ready: only the
    // ready one serves.
    let second_backend = format!("{second}:8080");
    api.apply(
        Resource::EndpointSlices,
        web_slice(&[(first, false, true), (second, true, false)]),
    );
    assert!(eventually(WATCH_TIMEOUT, || {
        let programmed = services_of(node)?;
        Ok(programmed.contains(&second_backend) && !programmed.contains(&first_backend))
    })?);
    // None ready: the terminating one serves (KEP-1669).
    api.apply(Resource::EndpointSlices, web_slice(&[(first, false, true)]));
    assert!(eventually(WATCH_TIMEOUT, || {
        let programmed = services_of(node)?;
        Ok(programmed.contains(&first_backend) && !programmed.contains(&second_backend))
    })?);

    // Another proxy's Service (service.kubernetes.io/service-proxy-name) is left alone.
    api.apply(
        Resource::Services,
        web_service(json!({"service.kubernetes.io/service-proxy-name": "other"})),
    );
    assert!(eventually(WATCH_TIMEOUT, || Ok(
        !services_of(node)?.contains("10.96.0.10")
    ))?);
    // Back, then deleted; a dropped watch resumes with the change made meanwhile.
    api.apply(Resource::Services, web_service(json!({})));
    assert!(eventually(WATCH_TIMEOUT, || Ok(
        services_of(node)?.contains("10.96.0.10")
    ))?);
    api.drop_watches();
    api.delete(Resource::Services, "shop/web");
    assert!(
        eventually(WATCH_TIMEOUT, || Ok(
            !services_of(node)?.contains("10.96.0.10")
        ))?,
        "{}",
        node.agent_log()
    );
    Ok(())
}
