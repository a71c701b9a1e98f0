//! Nodes from the Kubernetes API (a local server speaking real Node JSON for
//! list and watch) drive the node map: add, change, delete, dropped watches.

use std::time::Duration;

use dataplane_tests::{Cluster, ClusterSpec, Node, eventually, kube_api::FakeApiServer};
use nix::sys::signal::Signal;

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
    node.stop_agent(Signal::SIGTERM);
    let config = std::fs::read_to_string(&node.config)?;
    std::fs::write(
        &node.config,
        format!("{config}\n[kubernetes]\nenabled = true\nnode_name = \"n0\"\n"),
    )?;
    node.agent_environment
        .push(("KUBECONFIG".into(), kubeconfig.display().to_string()));
    node.start_agent()?;

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
