//! NetworkPolicy enforced by the programs, probed as the upstream e2e suite
//! probes it (`dataplane_tests::netpol`): real TCP between pods from the
//! real `ptp` chain, each test named after the upstream case it ports.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::mpsc,
    time::Duration,
};

use dataplane_tests::{
    eventually,
    kube_api::Resource,
    netpol::{
        ALL, Lab, PROBE_TIMEOUT, Via, WATCH_TIMEOUT, X_ISOLATED, allow_named_port_from_y,
        deny_ingress_in_x, pod, policy,
    },
    traffic::{EchoServers, echo_once, in_netns, joined},
};
use serde_json::json;

#[test]
fn should_support_a_default_deny_ingress_policy() -> anyhow::Result<()> {
    let lab = Lab::new()?;
    lab.until_reachability(80, ALL)?;
    lab.api
        .apply(Resource::NetworkPolicies, deny_ingress_in_x());
    // Nothing reaches x's pods (x/a, x/c) but themselves, not even from
    // their own namespace; y/b is reached by all.
    lab.until_reachability(80, X_ISOLATED)?;
    lab.until_reachability(81, X_ISOLATED)?;
    // The node itself always reaches them (kubelet's probes).
    let node = lab.node();
    // The monitor names the pod a drop was judged for and its policies.
    let (mut monitor, events) = node.monitor(&["--reason", "drop_policy_ingress"])?;
    assert!(!lab.reaches(1, (0, Via::Pod), 80), "y/b reached x/a");
    let event = events.recv_timeout(Duration::from_secs(5));
    let _ = monitor.kill();
    let event = event?;
    assert_eq!(event["policy"]["pod"], "x/a", "{event}");
    assert_eq!(
        event["policy"]["isolated_by"][0], "x/deny-ingress",
        "{event}"
    );
    let to_a = SocketAddr::from((node.pods[0].ip, 80));
    echo_once(&node.netns, to_a, PROBE_TIMEOUT)?;
    let counters = node.cli(&["counters"])?;
    assert!(counters.contains("policy_ingress"), "{counters}");
    let status = node.cli(&["status"])?;
    assert!(status.contains("enforced: 2 pods isolated"), "{status}");
    // Per pod, by direction, as metrics.
    let metrics = lab.metrics()?;
    let x_a = metrics
        .lines()
        .find(|line| {
            line.starts_with("dataplane_policy_pod_dropped_packets_total{")
                && line.contains("pod=\"x/a\"")
                && line.contains("direction=\"ingress\"")
        })
        .unwrap_or_default();
    let dropped: u64 = x_a
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .parse()
        .unwrap_or(0);
    assert!(dropped > 0, "{metrics}");
    Ok(())
}

#[test]
fn should_stop_enforcing_policies_after_they_are_deleted() -> anyhow::Result<()> {
    let lab = Lab::new()?;
    lab.api
        .apply(Resource::NetworkPolicies, deny_ingress_in_x());
    lab.until_reachability(80, X_ISOLATED)?;
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
    lab.api
        .apply(Resource::NetworkPolicies, deny_ingress_in_x());
    lab.until_reachability(80, X_ISOLATED)?;
    go_on.send(())?;
    let answered = joined(connection)?;
    // Cut, as Cilium cuts them: a connection is judged again after a change.
    assert!(
        !answered,
        "an established connection outlived the policy denying it"
    );
    Ok(())
}

#[test]
fn should_enforce_policies_on_the_backend_a_service_translates_to() -> anyhow::Result<()> {
    let lab = Lab::new()?;
    lab.until_reachability_via(Via::Service, 80, ALL)?;
    // x/a takes connections at 80 from y/b only; y/b may open connections
    // to x/a at 80 only: to the ClusterIP of x/a's Service, judged on the
    // backend (x/a, port 80) on both sides.
    lab.api
        .apply(Resource::NetworkPolicies, allow_named_port_from_y());
    lab.api.apply(
        Resource::NetworkPolicies,
        policy(
            "y",
            "to-a-80",
            json!({
                "podSelector": {},
                "policyTypes": ["Egress"],
                "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "x"}},
                                    "podSelector": {"matchLabels": {"pod": "a"}}}],
                            "ports": [{"port": 80, "protocol": "TCP"}]}],
            }),
        ),
    );
    // A pod reaches itself through its own Service (a hairpin) whatever
    // its policies, as it reaches its own address (upstream's
    // AllowLoopback).
    lab.until_reachability_via(
        Via::Service,
        80,
        [[true, true, true], [true, true, false], [false, true, true]],
    )?;
    lab.until_reachability_via(
        Via::Service,
        81,
        [
            [true, true, true],
            [false, true, false],
            [false, true, true],
        ],
    )
}

#[test]
fn a_new_pod_a_policy_selects_is_isolated_from_its_first_packet() -> anyhow::Result<()> {
    let mut lab = Lab::new()?;
    lab.api
        .apply(Resource::NetworkPolicies, deny_ingress_in_x());
    lab.until_reachability(80, X_ISOLATED)?;
    // x/late's runtime names it at ADD; the API server has not told about
    // it yet (its object, let alone its address): isolated both ways.
    let node = &mut lab.cluster.nodes[0];
    let late_ip = node.add_kubernetes_pod(Some(("x", "late")))?.ip;
    let late_netns_index = node.pods.len() - 1;
    let _late_server =
        EchoServers::start(&node.pods[late_netns_index].netns, late_ip, [80], 1, None)?;
    let node = lab.node();
    let (b, late) = (&node.pods[1], &node.pods[late_netns_index]);
    let to_late = SocketAddr::from((late_ip, 80));
    let to_b = SocketAddr::from((b.ip, 80));
    let drops = node.counter("drop_policy_ingress")?;
    assert!(
        echo_once(&b.netns, to_late, PROBE_TIMEOUT).is_err(),
        "x/late was open at its first packet"
    );
    assert!(
        node.counter("drop_policy_ingress")? > drops,
        "not refused by its policy"
    );
    assert!(echo_once(&late.netns, to_b, PROBE_TIMEOUT).is_err());
    // Known now: isolated for ingress only, as x's policy says.
    lab.api.apply(Resource::Pods, pod("x", "late", late_ip));
    let opened = eventually(WATCH_TIMEOUT, || {
        Ok(echo_once(&late.netns, to_b, PROBE_TIMEOUT).is_ok())
    })?;
    assert!(opened, "{}", node.cli(&["policy", "list"])?);
    assert!(echo_once(&b.netns, to_late, PROBE_TIMEOUT).is_err());
    // A new pod of a namespace without policies is open at once.
    let node = &mut lab.cluster.nodes[0];
    let free = node.add_kubernetes_pod(Some(("y", "free")))?;
    let free_ip = free.ip;
    let _free_server = EchoServers::start(&free.netns, free_ip, [80], 1, None)?;
    let b = &lab.node().pods[1];
    echo_once(&b.netns, SocketAddr::from((free_ip, 80)), PROBE_TIMEOUT)?;
    Ok(())
}

// The upstream UDP cases ("NetworkPolicy between server and client using
// UDP"), probed with datagrams echoed back.

#[test]
fn should_support_a_default_deny_ingress_policy_over_udp() -> anyhow::Result<()> {
    let lab = Lab::new()?;
    lab.until_reachability_via(Via::PodOverUdp, 80, ALL)?;
    lab.api
        .apply(Resource::NetworkPolicies, deny_ingress_in_x());
    lab.until_reachability_via(Via::PodOverUdp, 80, X_ISOLATED)
}

#[test]
fn should_enforce_policy_based_on_ports_over_udp() -> anyhow::Result<()> {
    let lab = Lab::new()?;
    lab.api.apply(
        Resource::NetworkPolicies,
        policy(
            "x",
            "a-udp-81",
            json!({
                "podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"ports": [{"port": 81, "protocol": "UDP"}]}],
            }),
        ),
    );
    let a_closed = [[true, true, true], [false, true, true], [false, true, true]];
    lab.until_reachability_via(Via::PodOverUdp, 80, a_closed)?;
    lab.until_reachability_via(Via::PodOverUdp, 81, ALL)?;
    // UDP's rule opens no TCP.
    lab.until_reachability(81, a_closed)
}

#[test]
fn should_enforce_policy_to_allow_traffic_only_from_a_pod_in_a_different_namespace_over_udp()
-> anyhow::Result<()> {
    let lab = Lab::new()?;
    lab.api.apply(
        Resource::NetworkPolicies,
        policy(
            "x",
            "a-from-y-b",
            json!({
                "podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}},
                                       "podSelector": {"matchLabels": {"pod": "b"}}}],
                             "ports": [{"port": 80, "protocol": "UDP"}]}],
            }),
        ),
    );
    lab.until_reachability_via(
        Via::PodOverUdp,
        80,
        [[true, true, true], [true, true, true], [false, true, true]],
    )
}
