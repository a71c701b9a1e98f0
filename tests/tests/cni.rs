// Above 400 lines: each file under tests/ is a binary of its own (built, linked, run apart): one per feature.
//! `dataplane-cni` chained after Debian's real ptp + host-local plugins,
//! executed the way a container runtime does it (env + stdin, prevResult).

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    sync::atomic::{AtomicUsize, Ordering},
};

use dataplane_tests::{
    Cluster, ClusterSpec, Netns, Node,
    cluster::{EXTERNAL_HOST_IP, VXLAN_POD_MTU},
    cni::{CniNetwork, MainPlugin, environment, expect_code, pod_ip},
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
    let netns = Netns::create(format!("{}{number}", node.pod_prefix))?;
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

/// What `endpoint list` shows, as JSON objects.
fn endpoints(node: &Node) -> anyhow::Result<Vec<Value>> {
    let mut json: Value =
        serde_json::from_str(&node.cli(&["--output", "json", "endpoint", "list"])?)?;
    Ok(match json["endpoints"].take() {
        Value::Array(endpoints) => endpoints,
        _ => Vec::new(),
    })
}

fn endpoint_ips(node: &Node) -> anyhow::Result<BTreeSet<Ipv4Addr>> {
    Ok(endpoints(node)?
        .iter()
        .filter_map(|endpoint| endpoint["ip"].as_str()?.parse().ok())
        .collect())
}

/// The plugin's configuration at spec 1.1.0 (GC, STATUS, MTUs in results).
fn config_1_1(network: &CniNetwork, prev_result: Option<&Value>) -> Value {
    let mut config = network.dataplane_config(prev_result);
    config["cniVersion"] = "1.1.0".into();
    config
}

/// A pod namespace joined to the node by a bare veth (`host` on the node,
/// MTU 1500 on both ends): what a main plugin leaves for the dataplane.
fn bare_veth(node: &Node, host: &str) -> anyhow::Result<Netns> {
    let netns = Netns::create(format!("{}{host}", node.pod_prefix))?;
    node.netns.add_veth(host, &netns, "eth0")?;
    node.netns.set_up(host)?;
    netns.set_up("eth0")?;
    Ok(netns)
}

/// A main plugin's result claiming `address` for `eth0` in `netns`.
fn claimed_result(netns: &Netns, host: &str, address: &str) -> Value {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": host}, {"name": "eth0", "sandbox": netns.path()}],
        "ips": [{"address": address, "interface": 1}],
    })
}

/// The host interface an endpoint is registered behind, if it is.
fn endpoint_interface(node: &Node, ip: Ipv4Addr) -> anyhow::Result<Option<String>> {
    Ok(endpoints(node)?
        .iter()
        .find(|endpoint| endpoint["ip"] == ip.to_string())
        .and_then(|endpoint| endpoint["interface"].as_str().map(str::to_string)))
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
        assert_eq!(pod.netns.mtu_of("eth0")?, VXLAN_POD_MTU, "pod MTU applied");
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
    network.dataplane_plugin(&status, &config_1_1(&network, None).to_string())?;

    let mut gc = config_1_1(&network, None);
    gc["cni.dev/valid-attachments"] =
        serde_json::json!([{"containerID": kept.container_id, "ifname": "eth0"}]);
    // What libcni 1.2.3 and later send beside it (refused before: GC never ran).
    gc["cni.dev/attachments"] = gc["cni.dev/valid-attachments"].clone();
    network.dataplane_plugin(&[("CNI_COMMAND", "GC")], &gc.to_string())?;
    let endpoints = endpoint_ips(node)?;
    assert!(
        endpoints.contains(&kept.ip) && !endpoints.contains(&collected.ip),
        "{endpoints:?}"
    );

    // While the agent is down: not ready, and ADD asks to be retried.
    node.stop_agent(Signal::SIGTERM);
    expect_code(
        network.dataplane_plugin(&status, &config_1_1(&network, None).to_string()),
        50,
    )?;
    let spare = Netns::create(format!("{}spare", node.pod_prefix))?;
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
    let links_before = node.netns.links()?.len();

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
    let links_after = node.netns.links()?.len();
    assert_eq!(links_after, links_before, "leftover links");
    let state = cluster
        .workdir()
        .join(node.netns.name())
        .join("dataplane")
        .join("pods");
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

#[test]
fn an_address_another_pod_has_is_refused_and_nothing_changes() -> anyhow::Result<()> {
    let cluster = cluster(1);
    let node = &cluster.nodes[0];
    let network = network(&cluster, node);
    let owner = create_pod(node, &network)?;
    let witness = create_pod(node, &network)?;
    let owner_interface = endpoint_interface(node, owner.ip)?;

    let intruder = bare_veth(node, "vintr")?;
    let netns = intruder.path();
    let claim = claimed_result(&intruder, "vintr", &format!("{}/24", owner.ip));
    let stdin = network.dataplane_config(Some(&claim)).to_string();
    let error = expect_code(
        network.dataplane_plugin(&environment("ADD", "intruder", &netns, "eth0"), &stdin),
        7,
    )?;
    assert!(error.msg.contains("already"), "{error}");
    assert_eq!(endpoint_interface(node, owner.ip)?, owner_interface);
    assert_eq!(intruder.mtu_of("eth0")?, 1500, "pod MTU untouched");
    assert_eq!(node.netns.mtu_of("vintr")?, 1500, "host MTU untouched");
    ping(&witness, owner.ip)?;

    // The runtime's DEL after the failed ADD takes nothing from the owner.
    network.dataplane_plugin(&environment("DEL", "intruder", &netns, "eth0"), &stdin)?;
    assert_eq!(endpoint_interface(node, owner.ip)?, owner_interface);
    ping(&witness, owner.ip)?;
    Ok(())
}

#[test]
fn a_failed_add_changes_nothing_and_leaves_nothing_behind() -> anyhow::Result<()> {
    let cluster = cluster(1);
    let node = &cluster.nodes[0];
    let network = network(&cluster, node);
    let pod = bare_veth(node, "vfail")?;
    let netns = pod.path();
    let add = environment("ADD", "failing", &netns, "eth0");
    let before = endpoint_ips(node)?;

    // Validation failures: an address outside the node's pod CIDR, an
    // interface that is not a veth.
    let outside = claimed_result(&pod, "vfail", "10.99.0.5/24");
    let stdin = network.dataplane_config(Some(&outside)).to_string();
    expect_code(network.dataplane_plugin(&add, &stdin), 7)?;
    let claim = claimed_result(&pod, "vfail", "10.244.0.200/24");
    let stdin = network.dataplane_config(Some(&claim)).to_string();
    let loopback = environment("ADD", "failing", &netns, "lo");
    expect_code(network.dataplane_plugin(&loopback, &stdin), 7)?;
    assert_eq!(pod.mtu_of("lo")?, 65536, "loopback MTU untouched");

    // A failure after registration (the record cannot be written) undoes
    // the registration and the MTUs; the runtime's DEL then succeeds.
    let blocker = cluster.workdir().join("not-a-directory");
    std::fs::write(&blocker, "")?;
    let mut unwritable = network.dataplane_config(Some(&claim));
    unwritable["dataDir"] = blocker.join("records").display().to_string().into();
    expect_code(network.dataplane_plugin(&add, &unwritable.to_string()), 5)?;
    network.dataplane_plugin(
        &environment("DEL", "failing", &netns, "eth0"),
        &unwritable.to_string(),
    )?;

    assert_eq!(endpoint_ips(node)?, before, "an endpoint stayed registered");
    assert_eq!(pod.mtu_of("eth0")?, 1500, "pod MTU restored");
    assert_eq!(node.netns.mtu_of("vfail")?, 1500, "host MTU restored");
    Ok(())
}

#[test]
fn a_1_1_0_result_reports_the_mtu_the_plugin_set() -> anyhow::Result<()> {
    let cluster = cluster(1);
    let node = &cluster.nodes[0];
    let network = network(&cluster, node);
    let pod = bare_veth(node, "vmtu")?;
    let netns = pod.path();
    let mut claim = claimed_result(&pod, "vmtu", "10.244.0.201/24");
    claim["cniVersion"] = "1.1.0".into();
    for interface in claim["interfaces"].as_array_mut().into_iter().flatten() {
        interface["mtu"] = 1500.into();
    }
    let result = network.dataplane_plugin(
        &environment("ADD", "mtu", &netns, "eth0"),
        &config_1_1(&network, Some(&claim)).to_string(),
    )?;
    for interface in result["interfaces"].as_array().into_iter().flatten() {
        assert_eq!(interface["mtu"], VXLAN_POD_MTU, "{result}");
    }
    assert_eq!(pod.mtu_of("eth0")?, VXLAN_POD_MTU);
    Ok(())
}

#[test]
fn gc_touches_only_its_own_network_and_gets_past_bad_records() -> anyhow::Result<()> {
    let cluster = cluster(1);
    let node = &cluster.nodes[0];
    let state = cluster.workdir().join("shared-state");
    let (pods, other) = (
        CniNetwork::chain(
            MainPlugin::Ptp,
            "pods",
            &node.netns,
            "10.244.0.0/25",
            &node.socket,
            &state,
        )?,
        CniNetwork::chain(
            MainPlugin::Ptp,
            "other",
            &node.netns,
            "10.244.0.128/25",
            &node.socket,
            &state,
        )?,
    );
    let stale = create_pod(node, &pods)?;
    let neighbour = create_pod(node, &other)?;
    let records = state.join("dataplane");
    std::fs::write(records.join("pods").join("broken:eth0.json"), "")?;
    std::fs::create_dir(records.join("pods").join("stuck:eth0.json"))?;

    let mut gc = config_1_1(&pods, None);
    gc["cni.dev/valid-attachments"] = serde_json::json!([]);
    let error = expect_code(
        pods.dataplane_plugin(&[("CNI_COMMAND", "GC")], &gc.to_string()),
        5,
    )?;
    // Both: a record that cannot be read says nothing of its endpoints
    // (before, it was deleted and GC reported success).
    assert!(
        error.msg.contains("2 attachment") && error.msg.contains("broken"),
        "the failures are reported: {error}"
    );
    let endpoints = endpoint_ips(node)?;
    assert!(!endpoints.contains(&stale.ip), "{endpoints:?}");
    assert!(endpoints.contains(&neighbour.ip), "{endpoints:?}");
    assert!(
        records.join("pods").join("broken:eth0.json").exists(),
        "kept to be looked at"
    );
    assert_eq!(std::fs::read_dir(records.join("other"))?.count(), 1);
    Ok(())
}

#[test]
fn del_of_a_pod_whose_record_is_corrupt_cleans_up_and_succeeds() -> anyhow::Result<()> {
    let cluster = cluster(1);
    let node = &cluster.nodes[0];
    let network = network(&cluster, node);
    let pod = create_pod(node, &network)?;
    let record = cluster
        .workdir()
        .join(node.netns.name())
        .join("dataplane")
        .join("pods")
        .join(format!("{}:eth0.json", pod.container_id));
    std::fs::write(&record, "")?;
    delete_pod(&network, &pod)?;
    assert!(!endpoint_ips(node)?.contains(&pod.ip));
    assert!(!record.exists());
    Ok(())
}

#[test]
fn pods_can_be_deleted_while_the_agent_is_down() -> anyhow::Result<()> {
    let mut cluster = cluster(1);
    let network = network(&cluster, &cluster.nodes[0]);
    let deleted = create_pod(&cluster.nodes[0], &network)?;
    let witness = create_pod(&cluster.nodes[0], &network)?;
    let node = &mut cluster.nodes[0];

    node.stop_agent(Signal::SIGKILL);
    delete_pod(&network, &deleted)?;
    // What stays in the map until the agent is back misroutes nothing.
    assert!(witness.netns.ping(deleted.ip, 1, &[]).is_err());
    node.start_agent()?;
    assert!(!endpoint_ips(node)?.contains(&deleted.ip));
    witness.netns.ping(node.ip, 1, &[])?;
    Ok(())
}

#[test]
fn dual_stack_results_and_the_nodes_own_addresses_are_refused() -> anyhow::Result<()> {
    let cluster = cluster(1);
    let node = &cluster.nodes[0];
    // host-local with an IPv4 and an IPv6 range and the real ptp: the pod
    // would get both, and every IPv6 packet would be dropped.
    let dual = CniNetwork::chain(
        MainPlugin::Ptp,
        "dual",
        &node.netns,
        &node.pod_cidr.to_string(),
        &node.socket,
        &cluster.workdir().join("dual"),
    )?
    .with_ipv6_range("fd00:10:244::/64");
    let netns = Netns::create(format!("{}dual", node.pod_prefix))?;
    let error = expect_code(dual.add("dual", &netns, "eth0"), 7)?;
    assert!(error.msg.contains("IPv6"), "{error}");
    assert!(endpoint_ips(node)?.is_empty());
    dual.del("dual", &netns.path(), "eth0", None)?;

    // The pods' gateway (on every ptp host veth), the CIDR's network and
    // broadcast addresses.
    let network = network(&cluster, node);
    let pod = create_pod(node, &network)?;
    let gateway = Ipv4Addr::from(u32::from(node.pod_cidr.network()) + 1);
    let claims = [
        (gateway, "an address of this node"),
        (node.pod_cidr.network(), "network address"),
        (node.pod_cidr.broadcast(), "broadcast address"),
    ];
    for (index, (address, reason)) in claims.into_iter().enumerate() {
        let host = format!("vown{index}");
        let intruder = bare_veth(node, &host)?;
        let claim = claimed_result(&intruder, &host, &format!("{address}/24"));
        let stdin = network.dataplane_config(Some(&claim)).to_string();
        let error = expect_code(
            network.dataplane_plugin(
                &environment("ADD", &format!("own{index}"), &intruder.path(), "eth0"),
                &stdin,
            ),
            7,
        )?;
        assert!(error.msg.contains(reason), "{address}: {error}");
    }
    assert_eq!(endpoint_ips(node)?, BTreeSet::from([pod.ip]));
    // The node still reaches the pod from its gateway address, and the pod
    // its gateway.
    node.netns
        .ping(pod.ip, 1, &["-q", "-I", &gateway.to_string()])?;
    ping(&pod, gateway)?;
    Ok(())
}

#[test]
fn a_container_id_as_long_as_the_spec_allows_is_added_collected_and_deleted() -> anyhow::Result<()>
{
    let cluster = cluster(1);
    let node = &cluster.nodes[0];
    let network = network(&cluster, node);
    // 250 characters: with ":eth0.json" past the file system's 255.
    let (kept_id, deleted_id) = ("k".repeat(250), "d".repeat(250));
    let (kept_netns, deleted_netns) = (
        Netns::create(format!("{}long0", node.pod_prefix))?,
        Netns::create(format!("{}long1", node.pod_prefix))?,
    );
    let kept = pod_ip(&network.add(&kept_id, &kept_netns, "eth0")?)?;
    let deleted_result = network.add(&deleted_id, &deleted_netns, "eth0")?;
    let deleted = pod_ip(&deleted_result)?;
    let mut gc = config_1_1(&network, None);
    gc["cni.dev/valid-attachments"] = serde_json::json!([
        {"containerID": kept_id, "ifname": "eth0"},
        {"containerID": deleted_id, "ifname": "eth0"},
    ]);
    network.dataplane_plugin(&[("CNI_COMMAND", "GC")], &gc.to_string())?;
    assert_eq!(endpoint_ips(node)?, BTreeSet::from([kept, deleted]));
    network.del(
        &deleted_id,
        &deleted_netns.path(),
        "eth0",
        Some(&deleted_result),
    )?;
    assert_eq!(endpoint_ips(node)?, BTreeSet::from([kept]));

    // A relative dataDir is refused before anything is written.
    let mut relative = network.dataplane_config(None);
    relative["dataDir"] = "records".into();
    let error = expect_code(
        network.dataplane_plugin(
            &environment("DEL", &kept_id, &kept_netns.path(), "eth0"),
            &relative.to_string(),
        ),
        7,
    )?;
    assert!(error.msg.contains("absolute"), "{error}");
    assert_eq!(endpoint_ips(node)?, BTreeSet::from([kept]));
    Ok(())
}
