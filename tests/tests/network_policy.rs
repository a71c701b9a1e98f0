//! NetworkPolicy from a Kubernetes API server (a local one speaking real
//! Kubernetes JSON) into the agent and the programs: real TCP between pods
//! from the real `ptp` chain (IPv6 left on), probed as the upstream e2e
//! suite probes (every ordered pair, a truth table printed whole when it
//! differs), each test named after the upstream case it ports; and the
//! model read back through the CLI (`policy list`, `policy explain`).

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::PathBuf,
    sync::mpsc,
    time::Duration,
};

use dataplane_tests::{
    Cluster, ClusterSpec,
    cluster::Node,
    cni::MainPlugin,
    eventually,
    kube_api::{FakeApiServer, Resource},
    traffic::{EchoServers, echo_once, in_netns, joined},
};
use serde_json::{Value, json};

/// How long a change in the API may take to reach the agent.
const WATCH_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a probe waits for its connection (a denied one never gets it).
const PROBE_TIMEOUT: Duration = Duration::from_millis(700);

/// The ports every pod serves.
const PORTS: [u16; 2] = [80, 81];

/// The pods, as (namespace, name): pod i of the node.
const PODS: [(&str, &str); 3] = [("x", "a"), ("y", "b"), ("x", "c")];

/// One node following a Kubernetes API server; pod 0 is x/a (pod=a), pod 1
/// y/b, pod 2 x/c, from the real `ptp` chain, each serving `PORTS`.
struct Lab {
    cluster: Cluster,
    api: FakeApiServer,
    _servers: Vec<EchoServers>,
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
            Cluster::new(ClusterSpec::dataplane(1, PODS.len()).with_real_plugin(MainPlugin::Ptp))?;
        let kubeconfig: PathBuf = cluster.workdir().join("kubeconfig");
        let node = &mut cluster.nodes[0];
        let api = FakeApiServer::start(&node.netns)?;
        api.write_kubeconfig(&kubeconfig)?;
        api.apply_node("n0", node.ip, &node.pod_cidr.to_string());
        for name in ["x", "y"] {
            api.apply(Resource::Namespaces, namespace(name));
        }
        for ((namespace, name), pod_of_node) in PODS.iter().zip(&node.pods) {
            api.apply(Resource::Pods, pod(namespace, name, pod_of_node.ip));
        }
        let servers = node
            .pods
            .iter()
            .map(|pod| EchoServers::start(&pod.netns, pod.ip, PORTS, 1, None))
            .collect::<anyhow::Result<_>>()?;
        node.follow_kubernetes(&kubeconfig, "")?;
        Ok(Self {
            cluster,
            api,
            _servers: servers,
        })
    }

    /// Whether pod `from` gets an answer from pod `to` at `port` over TCP.
    fn reaches(&self, from: usize, to: usize, port: u16) -> bool {
        let pods = &self.node().pods;
        let address = SocketAddr::from((pods[to].ip, port));
        echo_once(&pods[from].netns, address, PROBE_TIMEOUT).is_ok()
    }

    /// Every ordered pair of pods at `port`, as the upstream suite prints it
    /// (X: reached, .: not).
    fn truth_table(&self, port: u16) -> Vec<Vec<bool>> {
        (0..PODS.len())
            .map(|from| {
                (0..PODS.len())
                    .map(|to| self.reaches(from, to, port))
                    .collect()
            })
            .collect()
    }

    /// Waits until the truth table at `port` is `wanted` (rows: from, in
    /// `PODS` order); both tables printed whole if it never is.
    fn until_reachability(&self, port: u16, wanted: [[bool; 3]; 3]) -> anyhow::Result<()> {
        let wanted: Vec<Vec<bool>> = wanted.iter().map(|row| row.to_vec()).collect();
        let matched = eventually(WATCH_TIMEOUT, || Ok(self.truth_table(port) == wanted))?;
        if !matched {
            let print = |table: &[Vec<bool>]| {
                let mut text = String::from("      x/a y/b x/c\n");
                for ((namespace, name), row) in PODS.iter().zip(table) {
                    text.push_str(&format!("{namespace}/{name}  "));
                    for cell in row {
                        text.push_str(if *cell { " X  " } else { " .  " });
                    }
                    text.push('\n');
                }
                text
            };
            anyhow::bail!(
                "reachability at port {port} not as expected in {WATCH_TIMEOUT:?}\nexpected:\n{}\
                 observed:\n{}\npolicy list:\n{}\n{}",
                print(&wanted),
                print(&self.truth_table(port)),
                self.node().cli(&["policy", "list"])?,
                self.node().agent_log()
            );
        }
        Ok(())
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
    assert!(!listed.contains("not enforced yet"), "{listed}");
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

const ALL: [[bool; 3]; 3] = [[true; 3]; 3];

fn policy(namespace: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    })
}

#[test]
fn should_support_a_default_deny_ingress_policy() -> anyhow::Result<()> {
    let lab = Lab::new()?;
    lab.until_reachability(80, ALL)?;
    lab.api.apply(
        Resource::NetworkPolicies,
        policy(
            "x",
            "deny-ingress",
            json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
        ),
    );
    // Nothing reaches x's pods (x/a, x/c), not even from their own
    // namespace or themselves through their veth; y/b is reached by all.
    let into_y_only = [
        [true, true, false],
        [false, true, false],
        [false, true, true],
    ];
    lab.until_reachability(80, into_y_only)?;
    lab.until_reachability(81, into_y_only)?;
    // The node itself always reaches them (kubelet's probes).
    let node = lab.node();
    let to_a = SocketAddr::from((node.pods[0].ip, 80));
    echo_once(&node.netns, to_a, PROBE_TIMEOUT)?;
    let counters = node.cli(&["counters"])?;
    assert!(counters.contains("policy_ingress"), "{counters}");
    Ok(())
}

#[test]
fn should_stop_enforcing_policies_after_they_are_deleted() -> anyhow::Result<()> {
    let lab = Lab::new()?;
    lab.api.apply(
        Resource::NetworkPolicies,
        policy(
            "x",
            "deny-ingress",
            json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
        ),
    );
    lab.until_reachability(
        80,
        [
            [true, true, false],
            [false, true, false],
            [false, true, true],
        ],
    )?;
    lab.api.delete(Resource::NetworkPolicies, "x/deny-ingress");
    lab.until_reachability(80, ALL)
}

#[test]
fn should_allow_ingress_access_on_one_named_port() -> anyhow::Result<()> {
    let lab = Lab::new()?;
    lab.api
        .apply(Resource::NetworkPolicies, allow_named_port_from_y());
    // x/a takes serve-80-tcp from y/b only (and itself: a pod's traffic to
    // its own address never leaves it, as upstream's AllowLoopback has it);
    // nothing at 81; x/c is open.
    lab.until_reachability(
        80,
        [[true, true, true], [true, true, true], [false, true, true]],
    )?;
    lab.until_reachability(
        81,
        [[true, true, true], [false, true, true], [false, true, true]],
    )
}

#[test]
fn should_enforce_egress_policy_and_let_replies_through() -> anyhow::Result<()> {
    let lab = Lab::new()?;
    // y/b may open nothing; what others open to it is answered (the
    // replies leave a pod isolated for egress).
    lab.api.apply(
        Resource::NetworkPolicies,
        policy(
            "y",
            "deny-egress",
            json!({"podSelector": {}, "policyTypes": ["Egress"]}),
        ),
    );
    lab.until_reachability(
        80,
        [[true, true, true], [false, true, false], [true, true, true]],
    )?;
    // Egress to x's pods at 81 allowed again, by podSelector and
    // namespaceSelector together.
    lab.api.apply(
        Resource::NetworkPolicies,
        policy(
            "y",
            "allow-to-x-81",
            json!({
                "podSelector": {"matchLabels": {"pod": "b"}},
                "policyTypes": ["Egress"],
                "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "x"}},
                                    "podSelector": {"matchLabels": {"pod": "a"}}}],
                            "ports": [{"port": 81, "protocol": "TCP"}]}],
            }),
        ),
    );
    lab.until_reachability(
        81,
        [[true, true, true], [true, true, false], [true, true, true]],
    )?;
    lab.until_reachability(
        80,
        [[true, true, true], [false, true, false], [true, true, true]],
    )
}

#[test]
fn should_enforce_updated_policy_on_established_connections() -> anyhow::Result<()> {
    let lab = Lab::new()?;
    lab.until_reachability(80, ALL)?;
    // y/b holds a connection to x/a, answered once before the policy.
    let (go_on, told) = mpsc::channel::<()>();
    let to_a = SocketAddr::from((lab.node().pods[0].ip, 80));
    let connection = in_netns(&lab.node().pods[1].netns, move || {
        let mut stream = TcpStream::connect_timeout(&to_a, PROBE_TIMEOUT)?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut answer = [0u8; 64];
        stream.write_all(&[1; 64])?;
        stream.read_exact(&mut answer)?;
        told.recv()?;
        stream.write_all(&[1; 64])?;
        Ok(stream.read_exact(&mut answer).is_ok())
    });
    lab.api.apply(
        Resource::NetworkPolicies,
        policy(
            "x",
            "deny-ingress",
            json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
        ),
    );
    lab.until_reachability(
        80,
        [
            [true, true, false],
            [false, true, false],
            [false, true, true],
        ],
    )?;
    go_on.send(())?;
    let answered = joined(connection)?;
    // Cut, as Cilium cuts them: a connection is judged again after a change.
    assert!(
        !answered,
        "an established connection outlived the policy denying it"
    );
    Ok(())
}
