//! NetworkPolicy on traffic: new connections/s and request/response p99 to
//! a pod isolated for ingress by 10 and by 1,000 NetworkPolicies of one
//! rule each, the client allowed by the last. This dataplane (policy from
//! Kubernetes, the verdict in BPF) against the kernel's /32 routes with the
//! same policies as Calico's iptables dataplane writes them: a chain per
//! workload and per policy, an ipset per selector, established connections
//! accepted by conntrack first, so only new connections walk the chains.

use std::{net::Ipv4Addr, time::Duration};

use anyhow::Context as _;
use dataplane_tests::{
    Cluster, ClusterSpec,
    cluster::{Forwarding, Node},
    eventually,
    kube_api::{FakeApiServer, Resource},
    netpol::{followed_node, pod, policy},
    traffic::connection_rate,
};
use serde_json::{Value, json};

use crate::{
    Progress, Settings,
    measure::{Comparison, Measure},
    paths::{Placement, connections, latency, pod_to_pod},
    scale::thousands,
};

/// Policies isolating the server pod, fewest first.
const POLICIES: [u32; 2] = [10, 1_000];

/// The ports the measuring servers listen on (the kernel's ephemeral
/// range): what the last policy allows the client.
const SERVER_PORTS: (u16, u16) = (32_768, 60_999);

/// Connections made before each policy count's runs, not measured.
const WARM_UP: Duration = Duration::from_millis(300);

/// How long the agent may take to program the largest policy set.
const PROGRAMMED_WITHIN: Duration = Duration::from_secs(60);

/// Progress steps `run` reports.
pub fn steps(settings: &Settings) -> usize {
    settings.min_repetitions * POLICIES.len() * 2
}

/// The rows: connections/s and p99 per policy count.
pub fn run(settings: &Settings, progress: &mut Progress) -> anyhow::Result<Vec<Comparison>> {
    let dataplane = PolicedNode::new()?;
    let kernel = Cluster::new(ClusterSpec::new(1, 2, Forwarding::KernelRoutes))
        .context("kernel-routes cluster for the policy rows")?;
    let placement = Placement::TwoCpus;
    let mut comparisons = Vec::new();
    for count in POLICIES {
        dataplane.isolate_server(count)?;
        load_calico_rules(&kernel.nodes[0], count)?;
        let scenario = format!(
            "same-node pod-to-pod, server isolated by {} NetworkPolicies, {}",
            thousands(count),
            placement.label()
        );
        let baseline = "/32 routes + the policies as Calico's iptables writes them";
        let mut rate = Comparison::new(&scenario, baseline, Measure::ConnectionsPerSecond);
        let mut p99 = Comparison::new(&scenario, baseline, Measure::LatencyP99);
        let paths = [
            pod_to_pod("policed dataplane", &dataplane.cluster, (0, 0), (0, 1)),
            pod_to_pod("policed routes", &kernel, (0, 0), (0, 1)),
        ];
        // First contact (neighbours, the agent's records) is not measured.
        for path in &paths {
            connection_rate(
                path.server,
                path.server_ip,
                path.client,
                WARM_UP,
                1,
                placement.pinning(),
            )?;
        }
        for repetition in 1..=settings.min_repetitions {
            let mut rates = Vec::new();
            let mut latencies = Vec::new();
            for path in &paths {
                rates.push(connections(path, settings, placement)?);
                latencies.push(latency(path, settings.duration(), placement)?.1);
            }
            rate.dataplane.push(rates[0]);
            rate.reference.push(rates[1]);
            p99.dataplane.push(latencies[0]);
            p99.reference.push(latencies[1]);
            for (measure, values) in [
                (Measure::ConnectionsPerSecond, &rates),
                (Measure::LatencyP99, &latencies),
            ] {
                progress.step(
                    &format!(
                        "run {repetition} policy traffic, {} policies",
                        thousands(count)
                    ),
                    &format!(
                        "{}: {} against {}",
                        measure.name(),
                        measure.show(values[0]),
                        measure.show(values[1])
                    ),
                );
            }
        }
        comparisons.extend([rate, p99]);
    }
    Ok(comparisons)
}

/// One node of this dataplane following a Kubernetes API server, its pod 0
/// x/client and pod 1 x/server.
struct PolicedNode {
    cluster: Cluster,
    api: FakeApiServer,
}

impl PolicedNode {
    fn new() -> anyhow::Result<Self> {
        let (mut cluster, api, kubeconfig) = followed_node(ClusterSpec::dataplane(1, 2), &["x"])
            .context("dataplane cluster for the policy rows")?;
        let node = &mut cluster.nodes[0];
        for (name, pod_of_node) in ["client", "server"].into_iter().zip(&node.pods) {
            api.apply(Resource::Pods, pod("x", name, pod_of_node.ip));
        }
        node.follow_kubernetes(&kubeconfig, "")?;
        Ok(Self { cluster, api })
    }

    /// Applies `count` policies isolating the server (the ones of an
    /// earlier call kept, as names repeat) and waits until the agent has
    /// programmed them all.
    fn isolate_server(&self, count: u32) -> anyhow::Result<()> {
        for index in 0..count {
            self.api.apply(
                Resource::NetworkPolicies,
                policy("x", &format!("p{index}"), rule_of(index, count)),
            );
        }
        let node = &self.cluster.nodes[0];
        let server = node.pods[1].ip.to_string();
        let wanted = format!("({count} rules)");
        let programmed = eventually(PROGRAMMED_WITHIN, || {
            let listed = node.cli(&["policy", "list"])?;
            Ok(listed.lines().any(|line| {
                line.starts_with(&server) && line.contains(&wanted) && line.ends_with("programmed")
            }))
        })?;
        anyhow::ensure!(
            programmed,
            "{count} policies not programmed in {PROGRAMMED_WITHIN:?}\n{}",
            node.agent_log()
        );
        Ok(())
    }
}

/// The source policy `index` of `count` allows: a network of its own, the
/// last the client pod.
fn source_of(index: u32, count: u32) -> Option<Ipv4Addr> {
    (index + 1 < count).then(|| Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 0, 0)) + index))
}

/// Policy `index` of `count`'s spec: the server isolated for ingress, one
/// rule: TCP from its source to a port of its own (the last: the client to
/// the servers' ports).
fn rule_of(index: u32, count: u32) -> Value {
    let (from, port) = match source_of(index, count) {
        Some(network) => (
            json!({"ipBlock": {"cidr": format!("{network}/32")}}),
            json!({"protocol": "TCP", "port": 1_000 + index}),
        ),
        None => (
            json!({"podSelector": {"matchLabels": {"pod": "client"}}}),
            json!({"protocol": "TCP", "port": SERVER_PORTS.0, "endPort": SERVER_PORTS.1}),
        ),
    };
    json!({
        "podSelector": {"matchLabels": {"pod": "server"}},
        "policyTypes": ["Ingress"],
        "ingress": [{"from": [from], "ports": [port]}],
    })
}

/// The same policies in the kernel node's filter table as Calico's
/// iptables dataplane writes them (`felix/rules`): the server's workload
/// chain accepts established connections, then jumps to each policy's
/// chain and returns once one has marked the packet accepted, and drops
/// what none accepts; each policy's chain matches its selector's ipset.
fn load_calico_rules(node: &Node, count: u32) -> anyhow::Result<()> {
    let client = node.pods[0].ip;
    let workload = format!("cali-tw-{}", node.pods[1].host_interface);
    let mut sets = String::new();
    let mut rules = format!("*filter\n:{workload} - [0:0]\n");
    let mut jumps = String::new();
    let mut policies = String::new();
    for index in 0..count {
        let (set, chain) = (format!("cali40s:p{index}"), format!("cali-pi-p{index}"));
        let (member, ports) = match source_of(index, count) {
            Some(network) => (network, (1_000 + index).to_string()),
            None => (client, format!("{}:{}", SERVER_PORTS.0, SERVER_PORTS.1)),
        };
        sets.push_str(&format!(
            "create {set} hash:net family inet -exist\nflush {set}\nadd {set} {member}/32\n"
        ));
        rules.push_str(&format!(":{chain} - [0:0]\n"));
        jumps.push_str(&format!(
            "-A {workload} -m mark --mark 0x0/0x20000 -j {chain}\n\
             -A {workload} -m mark --mark 0x10000/0x10000 -j RETURN\n"
        ));
        policies.push_str(&format!(
            "-A {chain} -p tcp -m set --match-set {set} src -m multiport --dports {ports} \
             -j MARK --set-xmark 0x10000/0x10000\n\
             -A {chain} -m mark --mark 0x10000/0x10000 -j RETURN\n"
        ));
    }
    rules.push_str(&format!(
        "-F FORWARD\n\
         -A FORWARD -o {iface} -j {workload}\n\
         -A {workload} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
         -A {workload} -m conntrack --ctstate INVALID -j DROP\n\
         -A {workload} -j MARK --set-xmark 0x0/0x30000\n\
         {jumps}\
         -A {workload} -j DROP\n\
         {policies}COMMIT\n",
        iface = node.pods[1].host_interface,
    ));
    node.netns.feed(&["ipset", "restore"], &sets)?;
    node.netns.feed(&["iptables-restore", "--noflush"], &rules)
}
