//! `dataplane-cni` chained after Debian's real ptp + host-local plugins,
//! executed the way a container runtime does it (env + stdin, prevResult).

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    sync::atomic::{AtomicUsize, Ordering},
};

use dataplane_tests::{
    Cluster, ClusterSpec, Netns, Node,
    cluster::{EXTERNAL_HOST_IP, VXLAN_POD_MTU, create_ipv4_only_netns},
    cni::{CniNetwork, expect_code, pod_ip},
    traffic::tcp_round_trip,
};
use nix::sys::signal::Signal;
use serde_json::Value;

/// A pod created through CNI: its namespace and the chain's result.
struct CniPod {
    netns: Netns,
    container_id: String,
    result: Value,
    ip: Ipv4Addr,
}

fn cluster(nodes: usize) -> Cluster {
    Cluster::new(ClusterSpec::dataplane(nodes, 0)).expect("building the netns cluster")
}

fn network(cluster: &Cluster, node: &Node) -> CniNetwork {
    let state = cluster.workdir().join(node.netns.name());
    CniNetwork::ptp_chain(
        &node.netns,
        &node.pod_cidr.to_string(),
        &node.socket,
        &state,
    )
    .expect("CNI network")
}

fn create_pod(node: &Node, network: &CniNetwork) -> anyhow::Result<CniPod> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let number = NEXT.fetch_add(1, Ordering::Relaxed);
    let netns = create_ipv4_only_netns(format!("{}{number}", node.pod_prefix))?;
    let container_id = format!("container{number}");
    let result = network.add(&container_id, &netns, "eth0")?;
    let ip = pod_ip(&result)?;
    Ok(CniPod {
        netns,
        container_id,
        result,
        ip,
    })
}

fn delete_pod(network: &CniNetwork, pod: &CniPod) -> anyhow::Result<()> {
    network.del(
        &pod.container_id,
        &pod.netns.path(),
        "eth0",
        Some(&pod.result),
    )
}

fn endpoint_ips(node: &Node) -> anyhow::Result<BTreeSet<Ipv4Addr>> {
    let json: Value = serde_json::from_str(&node.cli(&["--output", "json", "endpoint", "list"])?)?;
    Ok(json["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|endpoint| endpoint["ip"].as_str()?.parse().ok())
        .collect())
}

fn ping(from: &CniPod, to: Ipv4Addr) -> anyhow::Result<()> {
    from.netns.ping(to, 1, &["-q"])
}

#[test]
fn pods_created_through_cni_talk_everywhere() -> anyhow::Result<()> {
    let cluster = cluster(2);
    let mut pods = Vec::new();
    for node in &cluster.nodes {
        let network = network(&cluster, node);
        for _ in 0..2 {
            pods.push(create_pod(node, &network)?);
        }
    }
    for pod in &pods {
        let mtu = pod.netns.ip(&["-j", "link", "show", "dev", "eth0"])?;
        assert!(
            mtu.contains(&format!("\"mtu\":{VXLAN_POD_MTU}")),
            "pod MTU applied: {mtu}"
        );
        for other in pods.iter().filter(|other| other.ip != pod.ip) {
            ping(pod, other.ip)?;
        }
        ping(pod, EXTERNAL_HOST_IP)?;
    }
    tcp_round_trip(&pods[3].netns, pods[3].ip, &pods[0].netns, 256 * 1024)?;
    // The result went back unchanged: the runtime sees the main plugin's interfaces and IPs.
    assert_eq!(
        pods[0].result["interfaces"].as_array().map(Vec::len),
        Some(2)
    );
    Ok(())
}

#[test]
fn del_removes_the_endpoint_is_idempotent_and_add_works_again() -> anyhow::Result<()> {
    let cluster = cluster(1);
    let node = &cluster.nodes[0];
    let network = network(&cluster, node);
    let peer = create_pod(node, &network)?;
    let pod = create_pod(node, &network)?;
    assert!(endpoint_ips(node)?.contains(&pod.ip));

    let check = |pod: &CniPod| {
        let netns = pod.netns.path();
        let environment = [
            ("CNI_COMMAND", "CHECK"),
            ("CNI_CONTAINERID", pod.container_id.as_str()),
            ("CNI_NETNS", netns.as_str()),
            ("CNI_IFNAME", "eth0"),
        ];
        network.dataplane_plugin(
            &environment,
            &network.dataplane_config(Some(&pod.result)).to_string(),
        )
    };
    check(&pod)?;

    delete_pod(&network, &pod)?;
    assert!(!endpoint_ips(node)?.contains(&pod.ip));
    assert!(peer.netns.ping(pod.ip, 1, &[]).is_err());
    expect_code(check(&pod), 100)?;
    delete_pod(&network, &pod)?;

    let again = network.add(&pod.container_id, &pod.netns, "eth0")?;
    let ip = pod_ip(&again)?;
    assert!(endpoint_ips(node)?.contains(&ip));
    peer.netns.ping(ip, 1, &[])?;
    Ok(())
}

#[test]
fn bad_input_gets_the_right_error_and_programs_nothing() -> anyhow::Result<()> {
    let cluster = cluster(1);
    let node = &cluster.nodes[0];
    let network = network(&cluster, node);
    let pod = create_pod(node, &network)?;
    let before = endpoint_ips(node)?;
    let netns = pod.netns.path();
    let add = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "bad"),
        ("CNI_NETNS", netns.as_str()),
        ("CNI_IFNAME", "eth0"),
    ];
    let chained = network.dataplane_config(Some(&pod.result)).to_string();

    expect_code(
        network.dataplane_plugin(&add, "{\"cniVersion\": \"1.0.0\", oops"),
        6,
    )?;
    let error = expect_code(
        network.dataplane_plugin(&add, &network.dataplane_config(None).to_string()),
        7,
    )?;
    assert!(error.msg.contains("prevResult"), "{error}");
    expect_code(network.dataplane_plugin(&add[..1], &chained), 4)?;
    let unknown_netns = [
        add[0],
        add[1],
        ("CNI_NETNS", "/run/netns/no-such-pod"),
        add[3],
    ];
    expect_code(network.dataplane_plugin(&unknown_netns, &chained), 3)?;
    let unknown_interface = [add[0], add[1], add[2], ("CNI_IFNAME", "eth9")];
    expect_code(network.dataplane_plugin(&unknown_interface, &chained), 3)?;

    assert_eq!(
        endpoint_ips(node)?,
        before,
        "a failed ADD left something programmed"
    );
    Ok(())
}

#[test]
fn status_gc_and_an_agent_that_is_down() -> anyhow::Result<()> {
    let mut cluster = cluster(1);
    let network = network(&cluster, &cluster.nodes[0]);
    let kept = create_pod(&cluster.nodes[0], &network)?;
    let collected = create_pod(&cluster.nodes[0], &network)?;
    let node = &mut cluster.nodes[0];

    let status = [("CNI_COMMAND", "STATUS")];
    network.dataplane_plugin(&status, &network.dataplane_config(None).to_string())?;

    let mut gc = network.dataplane_config(None);
    gc["cni.dev/valid-attachments"] =
        serde_json::json!([{"containerID": kept.container_id, "ifname": "eth0"}]);
    network.dataplane_plugin(&[("CNI_COMMAND", "GC")], &gc.to_string())?;
    let endpoints = endpoint_ips(node)?;
    assert!(
        endpoints.contains(&kept.ip) && !endpoints.contains(&collected.ip),
        "{endpoints:?}"
    );

    // While the agent is down: not ready, and ADD asks to be retried.
    node.stop_agent(Signal::SIGTERM);
    expect_code(
        network.dataplane_plugin(&status, &network.dataplane_config(None).to_string()),
        50,
    )?;
    let spare = create_ipv4_only_netns(format!("{}spare", node.pod_prefix))?;
    let error = network
        .add("retry-me", &spare, "eth0")
        .expect_err("ADD without an agent");
    assert_eq!(
        error
            .downcast_ref::<dataplane_tests::cni::PluginError>()
            .map(|error| error.code),
        Some(11)
    );
    node.start_agent()?;
    network.add("retry-me", &spare, "eth0")?;
    Ok(())
}

#[test]
fn a_hundred_pods_added_and_deleted_in_parallel_leave_nothing_behind() -> anyhow::Result<()> {
    const WORKERS: usize = 4;
    const PODS_PER_WORKER: usize = 25;
    let cluster = cluster(1);
    let node = &cluster.nodes[0];
    let network = network(&cluster, node);
    let links_before = node.netns.ip(&["-o", "link", "show"])?.lines().count();

    std::thread::scope(|scope| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..WORKERS)
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<()> {
                    for _ in 0..PODS_PER_WORKER {
                        let pod = create_pod(node, &network)?;
                        anyhow::ensure!(
                            endpoint_ips(node)?.contains(&pod.ip),
                            "{} not registered",
                            pod.ip
                        );
                        delete_pod(&network, &pod)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for worker in workers {
            worker.join().expect("worker panicked")?;
        }
        Ok(())
    })?;

    assert!(endpoint_ips(node)?.is_empty(), "leftover endpoints");
    let links_after = node.netns.ip(&["-o", "link", "show"])?.lines().count();
    assert_eq!(links_after, links_before, "leftover links");
    let state = cluster.workdir().join(node.netns.name()).join("dataplane");
    let leftovers: Vec<_> = std::fs::read_dir(&state)?
        .flatten()
        .map(|entry| entry.file_name())
        .collect();
    assert!(
        leftovers.is_empty(),
        "leftover attachment state: {leftovers:?}"
    );
    let status = node.status()?;
    assert_eq!(status["endpoints"], 0);
    Ok(())
}
