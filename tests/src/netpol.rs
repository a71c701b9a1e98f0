// Above 400 lines: the upstream lab, the objects it applies and its probes read together.
//! The upstream NetworkPolicy e2e method (kubernetes
//! `test/e2e/network/netpol`) on one node: namespaces x and y (and z for
//! the cases that need a third), pods a, b, c
//! from the real `ptp` chain (IPv6 left on) each serving TCP and UDP `PORTS`, each
//! behind its own ClusterIP Service,
//! followed by the agent through a Kubernetes API server; probes of every
//! ordered pair compared to a truth table, printed whole when they differ.

use std::{net::Ipv4Addr, net::SocketAddr, path::PathBuf, time::Duration};

use serde_json::{Value, json};

use crate::{
    Cluster, ClusterSpec,
    cluster::Node,
    cni::MainPlugin,
    eventually,
    kube_api::{FakeApiServer, Resource},
    traffic::{EchoServers, echo_once, http_get, udp_echo_once},
};

/// How long a change in the API may take to reach the agent.
pub const WATCH_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a probe waits for its connection (a denied one never gets it).
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(700);

/// Where the agent serves its metrics, in the node's namespace.
const METRICS: &str = "127.0.0.1:9464";

/// The ports every pod serves.
pub const PORTS: [u16; 2] = [80, 81];

/// The pods, as (namespace, name): pod i of the node.
pub const PODS: [(&str, &str); 3] = [("x", "a"), ("y", "b"), ("x", "c")];

/// `PODS` and a pod of a third namespace, z/b (labelled pod=b, as y/b).
pub const PODS_WITH_Z: [(&str, &str); 4] = [("x", "a"), ("y", "b"), ("x", "c"), ("z", "b")];

/// One node following a Kubernetes API server; pod 0 is x/a (pod=a), pod 1
/// y/b, pod 2 x/c (and pod 3 z/b in `Lab::with_z`), from the real `ptp`
/// chain, each serving `PORTS`.
pub struct Lab {
    pub cluster: Cluster,
    pub api: FakeApiServer,
    pods: &'static [(&'static str, &'static str)],
    _servers: Vec<EchoServers>,
}

pub fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": name, "labels": {"ns": name}}})
}

/// Pod `namespace/name` at `ip`, labelled pod=`name`, its container ports
/// named as upstream names them (serve-80-tcp, serve-81-tcp).
pub fn pod(namespace: &str, name: &str, ip: Ipv4Addr) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"pod": name}},
        "spec": {"nodeName": "n0", "containers": [{"name": "c", "ports": [
            {"name": "serve-80-tcp", "containerPort": 80, "protocol": "TCP"},
            {"name": "serve-81-tcp", "containerPort": 81, "protocol": "TCP"}]}]},
        "status": {"podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}]},
    })
}

/// "should allow ingress access on one named port": pods labelled pod=a in
/// x take connections to `serve-80-tcp` from namespace y only.
pub fn allow_named_port_from_y() -> Value {
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
    /// The lab of `PODS`.
    pub fn new() -> anyhow::Result<Self> {
        Self::of(&PODS)
    }

    /// The lab of `PODS_WITH_Z`.
    pub fn with_z() -> anyhow::Result<Self> {
        Self::of(&PODS_WITH_Z)
    }

    fn of(pods: &'static [(&'static str, &'static str)]) -> anyhow::Result<Self> {
        let mut namespaces: Vec<&str> = pods.iter().map(|(namespace, _)| *namespace).collect();
        namespaces.sort_unstable();
        namespaces.dedup();
        let (mut cluster, api, kubeconfig) = followed_node(
            ClusterSpec::dataplane(1, pods.len()).with_real_plugin(MainPlugin::Ptp),
            &namespaces,
        )?;
        let node = &mut cluster.nodes[0];
        for (index, (&(namespace, name), pod_of_node)) in pods.iter().zip(&node.pods).enumerate() {
            api.apply(Resource::Pods, pod(namespace, name, pod_of_node.ip));
            let (service, slice) = service((index, namespace, name), pod_of_node.ip);
            api.apply(Resource::Services, service);
            api.apply(Resource::EndpointSlices, slice);
        }
        let mut servers = Vec::new();
        for pod in &node.pods {
            servers.push(EchoServers::start(&pod.netns, pod.ip, PORTS, 1, None)?);
            servers.push(EchoServers::start_udp(&pod.netns, pod.ip, PORTS)?);
        }
        let config = std::fs::read_to_string(&node.config)?;
        let with_metrics = format!("[agent]\nmetrics_address = \"{METRICS}\"\n");
        std::fs::write(&node.config, config.replacen("[agent]\n", &with_metrics, 1))?;
        node.follow_kubernetes(&kubeconfig, "")?;
        Ok(Self {
            cluster,
            api,
            pods,
            _servers: servers,
        })
    }

    /// Waits until every pod reaches every pod at 80, then applies
    /// `policies`.
    pub fn apply_once_open(&self, policies: &[Value]) -> anyhow::Result<()> {
        let count = self.pods.len();
        self.until_table(Via::Pod, 80, vec![vec![true; count]; count])?;
        for policy in policies {
            self.api.apply(Resource::NetworkPolicies, policy.clone());
        }
        Ok(())
    }

    /// Whether pod `from` gets an answer from pod `to` (or its Service) at
    /// `port`, over TCP or (to the pod) UDP.
    pub fn reaches(&self, from: usize, (to, via): (usize, Via), port: u16) -> bool {
        let pods = &self.node().pods;
        let (client, pod) = (&pods[from].netns, SocketAddr::from((pods[to].ip, port)));
        match via {
            Via::Pod => echo_once(client, pod, PROBE_TIMEOUT).is_ok(),
            Via::Service => echo_once(
                client,
                SocketAddr::from((cluster_ip(to), port)),
                PROBE_TIMEOUT,
            )
            .is_ok(),
            Via::PodOverUdp => udp_echo_once(client, pod, PROBE_TIMEOUT).is_ok(),
        }
    }

    /// Every ordered pair of pods at `port`, as the upstream suite prints it
    /// (X: reached, .: not), probed at once (a denied probe waits out its
    /// timeout).
    pub fn truth_table(&self, via: Via, port: u16) -> Vec<Vec<bool>> {
        let count = self.pods.len();
        std::thread::scope(|scope| {
            let probes: Vec<Vec<_>> = (0..count)
                .map(|from| {
                    (0..count)
                        .map(|to| scope.spawn(move || self.reaches(from, (to, via), port)))
                        .collect()
                })
                .collect();
            probes
                .into_iter()
                .map(|row| {
                    row.into_iter()
                        .map(|probe| probe.join().expect("a probe never panics"))
                        .collect()
                })
                .collect()
        })
    }

    /// Waits until the truth table at `port` is `wanted` (rows: from, in
    /// the lab's pod order); both tables printed whole if it never is.
    pub fn until_reachability<const N: usize>(
        &self,
        port: u16,
        wanted: [[bool; N]; N],
    ) -> anyhow::Result<()> {
        self.until_reachability_via(Via::Pod, port, wanted)
    }

    /// As `until_reachability`, to each pod `via` its address (over TCP or
    /// UDP) or Service.
    pub fn until_reachability_via<const N: usize>(
        &self,
        via: Via,
        port: u16,
        wanted: [[bool; N]; N],
    ) -> anyhow::Result<()> {
        anyhow::ensure!(
            N == self.pods.len(),
            "a table of {N} pods for a lab of {}",
            self.pods.len()
        );
        self.until_table(via, port, wanted.iter().map(|row| row.to_vec()).collect())
    }

    fn until_table(&self, via: Via, port: u16, wanted: Vec<Vec<bool>>) -> anyhow::Result<()> {
        let matched = eventually(WATCH_TIMEOUT, || Ok(self.truth_table(via, port) == wanted))?;
        if !matched {
            let print = |table: &[Vec<bool>]| {
                let mut text = String::from("     ");
                for (namespace, name) in self.pods {
                    text.push_str(&format!(" {namespace}/{name}"));
                }
                text.push('\n');
                for ((namespace, name), row) in self.pods.iter().zip(table) {
                    text.push_str(&format!("{namespace}/{name}  "));
                    for cell in row {
                        text.push_str(if *cell { " X  " } else { " .  " });
                    }
                    text.push('\n');
                }
                text
            };
            anyhow::bail!(
                "reachability ({via:?}) at port {port} not as expected in {WATCH_TIMEOUT:?}\n\
                 expected:\n{}observed:\n{}\npolicy list:\n{}\n{}",
                print(&wanted),
                print(&self.truth_table(via, port)),
                self.node().cli(&["policy", "list"])?,
                self.node().agent_log()
            );
        }
        Ok(())
    }

    /// The agent's Prometheus metrics, as text.
    pub fn metrics(&self) -> anyhow::Result<String> {
        let (status, body) = http_get(&self.node().netns, METRICS.parse()?, "/metrics")?;
        anyhow::ensure!(status == 200, "metrics answered {status}: {body}");
        Ok(body)
    }

    /// Pod `index` with `labels` besides its pod=<name>.
    pub fn relabel_pod(&self, index: usize, labels: Value) {
        let (namespace, name) = self.pods[index];
        let mut object = pod(namespace, name, self.node().pods[index].ip);
        for (key, value) in labels.as_object().into_iter().flatten() {
            object["metadata"]["labels"][key] = value.clone();
        }
        self.api.apply(Resource::Pods, object);
    }

    /// Namespace `name` with `labels` besides its ns=<name>.
    pub fn relabel_namespace(&self, name: &str, labels: Value) {
        let mut object = namespace(name);
        for (key, value) in labels.as_object().into_iter().flatten() {
            object["metadata"]["labels"][key] = value.clone();
        }
        self.api.apply(Resource::Namespaces, object);
    }

    pub fn node(&self) -> &Node {
        &self.cluster.nodes[0]
    }

    pub fn explain(&self, from: usize, to: usize, port: &str) -> anyhow::Result<String> {
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
    pub fn until_explained(
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

/// How a probe addresses its destination pod.
#[derive(Debug, Clone, Copy)]
pub enum Via {
    /// Its address, over TCP.
    Pod,
    /// Its own ClusterIP Service (`cluster_ip`), over TCP, as upstream's
    /// probes do.
    Service,
    /// Its address, over UDP.
    PodOverUdp,
}

/// The ClusterIP of pod `index`'s Service.
pub fn cluster_ip(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, 0, 10 + index as u8)
}

/// The Service of pod `index`, `namespace/name` (`s-<pod>` in its
/// namespace: every port of `PORTS`, to the same port of the pod) and its
/// EndpointSlice.
pub fn service((index, namespace, name): (usize, &str, &str), ip: Ipv4Addr) -> (Value, Value) {
    let service_name = format!("s-{name}");
    let ports: Vec<Value> = PORTS
        .iter()
        .map(|port| {
            json!({"name": format!("p{port}"), "port": port, "protocol": "TCP",
                           "targetPort": port})
        })
        .collect();
    let slice_ports: Vec<Value> = PORTS
        .iter()
        .map(|port| json!({"name": format!("p{port}"), "port": port, "protocol": "TCP"}))
        .collect();
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": service_name, "namespace": namespace,
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"type": "ClusterIP", "clusterIP": cluster_ip(index).to_string(),
                 "clusterIPs": [cluster_ip(index).to_string()], "ports": ports},
    });
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service_name}-a"), "namespace": namespace,
                     "labels": {"kubernetes.io/service-name": service_name}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip.to_string()],
                       "conditions": {"ready": true, "serving": true, "terminating": false}}],
        "ports": slice_ports,
    });
    (service, slice)
}

/// Every pod reaches every pod.
pub const ALL: [[bool; 3]; 3] = [[true; 3]; 3];

/// "default-deny-ingress" in x: x/a and x/c take nothing.
pub fn deny_ingress_in_x() -> Value {
    policy(
        "x",
        "deny-ingress",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    )
}

/// What `deny_ingress_in_x` leaves: only y/b is reached (and every pod
/// reaches itself).
pub const X_ISOLATED: [[bool; 3]; 3] = [
    [true, true, false],
    [false, true, false],
    [false, true, true],
];

/// A NetworkPolicy of `namespace` with `spec`.
pub fn policy(namespace: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    })
}

/// A one-node cluster of `spec` and a fake API server in its node's
/// namespace holding the node and `namespaces`, with a kubeconfig for it
/// (the agent is not following it yet: `Node::follow_kubernetes`).
pub fn followed_node(
    spec: ClusterSpec,
    namespaces: &[&str],
) -> anyhow::Result<(Cluster, FakeApiServer, PathBuf)> {
    let cluster = Cluster::new(spec)?;
    let kubeconfig: PathBuf = cluster.workdir().join("kubeconfig");
    let node = &cluster.nodes[0];
    let api = FakeApiServer::start(&node.netns)?;
    api.write_kubeconfig(&kubeconfig)?;
    api.apply_node("n0", node.ip, &node.pod_cidr.to_string());
    for name in namespaces {
        api.apply(Resource::Namespaces, namespace(name));
    }
    Ok((cluster, api, kubeconfig))
}

/// x/a (pod=a) isolated for ingress, taking what `ingress` allows.
pub fn a_takes(name: &str, ingress: Value) -> Value {
    policy(
        "x",
        name,
        json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        }),
    )
}
