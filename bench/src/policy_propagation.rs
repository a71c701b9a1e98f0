//! NetworkPolicy propagation: from a change at the API server to its
//! enforcement in the datapath, with 1,000 pods and 1,000 policies the
//! agent follows. A probe policy (or a pod label a policy selects) is
//! flipped between allowing and not allowing a client pod to reach a
//! server pod of the node; the time until the client's new connections
//! first get through (or first do not) is one sample. Reported with the
//! agent's resident memory at that size.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use dataplane_tests::{
    Cluster, ClusterSpec,
    kube_api::{FakeApiServer, Resource},
    netpol::{followed_node, pod, policy},
    traffic::{EchoServers, echo_over, in_netns, joined},
};
use serde_json::{Value, json};

use crate::{Progress, Settings, services::resident_bytes};

/// Pods of other nodes the policies select peers among.
const PODS: u32 = 1_000;
/// Policies isolating the server, besides the probe.
const POLICIES: u32 = 1_000;
/// Label values the other pods spread over (each policy's peers: 1 in 50).
const APPS: u32 = 50;
/// The port the server pod listens on.
const PORT: u16 = 8080;
/// How long a probe waits for its connection while it is denied: an
/// allowed one is answered in well under a millisecond on one node, so
/// this is the resolution of an allowing change's samples.
const DENIED_PROBE_TIMEOUT: Duration = Duration::from_millis(2);
/// The same while it is allowed: a connection slower than this is taken
/// as denied (a denied one never is answered).
const ALLOWED_PROBE_TIMEOUT: Duration = Duration::from_millis(50);
/// The server's workers: a connection the change cut holds one until it
/// times out, and new probes must still be served meanwhile.
const SERVER_WORKERS: usize = 8;
/// How long a change may take before the sample is an error.
const GIVE_UP: Duration = Duration::from_secs(30);

/// Progress steps `run` reports.
pub fn steps(_: &Settings) -> usize {
    2
}

/// Samples per kind of change.
fn samples(settings: &Settings) -> usize {
    if settings.quick { 10 } else { 100 }
}

/// The note: propagation percentiles per kind of change, and memory.
pub fn run(settings: &Settings, progress: &mut Progress) -> anyhow::Result<String> {
    let lab = Lab::new()?;
    let samples = samples(settings);
    let mut policy_changes = Vec::new();
    for sample in 0..samples {
        let allow = sample % 2 == 0;
        let started = Instant::now();
        lab.api
            .apply(Resource::NetworkPolicies, probe_policy(allow, false));
        policy_changes.push(lab.until_reachable(allow, started)?);
    }
    let policy_line = percentiles("a NetworkPolicy changed", &mut policy_changes);
    progress.step("policy propagation", &policy_line);
    // The probe policy now allows pods labelled role=client; the client's
    // label comes and goes.
    lab.api
        .apply(Resource::NetworkPolicies, probe_policy(true, true));
    lab.until_reachable(false, Instant::now())?;
    let mut label_changes = Vec::new();
    for sample in 0..samples {
        let allow = sample % 2 == 0;
        let started = Instant::now();
        lab.api.apply(Resource::Pods, lab.client_pod(allow));
        label_changes.push(lab.until_reachable(allow, started)?);
    }
    let label_line = percentiles("a pod's labels changed", &mut label_changes);
    progress.step("policy propagation", &label_line);
    let pid = lab.cluster.nodes[0]
        .agent_pid()
        .context("the agent is not running")?;
    Ok(format!(
        "NetworkPolicy propagation, change at the API server to enforcement (new connections \
         through or not, probed every 2 ms) with {PODS} pods and {POLICIES} policies, \
         {samples} samples each: \
         {policy_line}; {label_line}; the agent's resident memory {:.1} MB.",
        resident_bytes(pid)? as f64 / 1e6
    ))
}

/// "what: p50 X ms, p99 Y ms".
fn percentiles(what: &str, samples: &mut [Duration]) -> String {
    samples.sort_unstable();
    let at = |share: f64| samples[((samples.len() - 1) as f64 * share).round() as usize];
    format!(
        "{what}: p50 {:.1} ms, p99 {:.1} ms",
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3
    )
}

/// The probe policy: the server takes connections to `PORT` from the
/// client (`allow`), by name or (`by_label`) by a label it may carry.
fn probe_policy(allow: bool, by_label: bool) -> Value {
    let client = if by_label {
        json!({"podSelector": {"matchLabels": {"role": "client"}}})
    } else {
        json!({"podSelector": {"matchLabels": {"pod": "client"}}})
    };
    let rules = if allow {
        json!([{"from": [client], "ports": [{"protocol": "TCP", "port": PORT}]}])
    } else {
        json!([])
    };
    policy(
        "x",
        "probe",
        json!({"podSelector": {"matchLabels": {"pod": "server"}},
               "policyTypes": ["Ingress"], "ingress": rules}),
    )
}

/// One node of this dataplane (pod 0 x/client, pod 1 x/server serving
/// `PORT`) following an API server that also holds `PODS` pods of another
/// node in namespace y and `POLICIES` policies isolating the server, each
/// taking one of `APPS` groups of them on a port of its own.
struct Lab {
    cluster: Cluster,
    api: FakeApiServer,
    _server: EchoServers,
}

impl Lab {
    fn new() -> anyhow::Result<Self> {
        let (mut cluster, api, kubeconfig) =
            followed_node(ClusterSpec::dataplane(1, 2), &["x", "y"])
                .context("dataplane cluster for policy propagation")?;
        let node = &mut cluster.nodes[0];
        api.apply(Resource::Pods, pod("x", "client", node.pods[0].ip));
        api.apply(Resource::Pods, pod("x", "server", node.pods[1].ip));
        for index in 0..PODS {
            let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 245, 0, 0)) + index);
            let mut other = pod("y", &format!("p{index}"), ip);
            other["spec"]["nodeName"] = json!("n1");
            other["metadata"]["labels"]["app"] = json!(format!("a{}", index % APPS));
            api.apply(Resource::Pods, other);
        }
        for index in 0..POLICIES {
            api.apply(
                Resource::NetworkPolicies,
                policy(
                    "x",
                    &format!("p{index}"),
                    json!({
                        "podSelector": {"matchLabels": {"pod": "server"}},
                        "policyTypes": ["Ingress"],
                        "ingress": [{
                            "from": [{
                                "namespaceSelector": {"matchLabels": {"ns": "y"}},
                                "podSelector": {"matchLabels": {"app": format!("a{}", index % APPS)}},
                            }],
                            "ports": [{"protocol": "TCP", "port": 10_000 + index}],
                        }],
                    }),
                ),
            );
        }
        api.apply(Resource::NetworkPolicies, probe_policy(false, false));
        let server = EchoServers::start(
            &node.pods[1].netns,
            node.pods[1].ip,
            [PORT],
            SERVER_WORKERS,
            None,
        )?;
        node.follow_kubernetes(&kubeconfig, "")?;
        let lab = Self {
            cluster,
            api,
            _server: server,
        };
        lab.until_reachable(false, Instant::now())?;
        Ok(lab)
    }

    /// The client pod, labelled role=client or not.
    fn client_pod(&self, labelled: bool) -> Value {
        let mut client = pod("x", "client", self.cluster.nodes[0].pods[0].ip);
        if labelled {
            client["metadata"]["labels"]["role"] = json!("client");
        }
        client
    }

    /// Probes from the client until its new connections to the server
    /// get through (`reachable`) or do not; the time from `started` by
    /// which the change was in force at the latest: the end of the first
    /// probe that got through, or the SYN of the first that did not (sent
    /// right before its wait for an answer began: its end less the wait).
    fn until_reachable(&self, reachable: bool, started: Instant) -> anyhow::Result<Duration> {
        let node = &self.cluster.nodes[0];
        let server = SocketAddr::from((node.pods[1].ip, PORT));
        let timeout = if reachable {
            DENIED_PROBE_TIMEOUT
        } else {
            ALLOWED_PROBE_TIMEOUT
        };
        joined(in_netns(&node.pods[0].netns, move || {
            while started.elapsed() < GIVE_UP {
                // Served whole before the next probe (probes never outrun
                // the server's accept queue); a request unanswered is a
                // connection the change cut after its SYN passed.
                let through = TcpStream::connect_timeout(&server, timeout)
                    .is_ok_and(|mut stream| echo_over(&mut stream, ALLOWED_PROBE_TIMEOUT).is_ok());
                let ended = started.elapsed();
                match (through, reachable) {
                    (true, true) => return Ok(ended),
                    (false, false) => return Ok(ended.saturating_sub(timeout)),
                    _ => {}
                }
            }
            anyhow::bail!(
                "the server never became {} in {GIVE_UP:?}",
                if reachable {
                    "reachable"
                } else {
                    "unreachable"
                }
            )
        }))
    }
}
