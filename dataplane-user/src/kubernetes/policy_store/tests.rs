use std::net::IpAddr;

use serde_json::json;

use super::*;
use crate::model::policy::{Connection, Decision, PolicyProtocol};

fn pod(name: &str, ip: &str, labels: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "x", "labels": labels},
        "spec": {"containers": []},
        "status": {"podIPs": [{"ip": ip}]},
    }))
    .unwrap()
}

fn namespace(name: &str, labels: serde_json::Value) -> Namespace {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
}

/// Allows ingress to pods labelled pod=a from namespaces labelled ns=y.
fn policy(protocol: &str) -> NetworkPolicy {
    serde_json::from_value(json!({
        "metadata": {"name": "allow-y", "namespace": "x"},
        "spec": {
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
                         "ports": [{"protocol": protocol, "port": 80}]}],
        },
    }))
    .unwrap()
}

fn to_a_from(from: &str) -> Connection {
    Connection {
        from: from.parse().unwrap(),
        to: "10.244.0.2".parse().unwrap(),
        protocol: PolicyProtocol::Tcp,
        port: 80,
    }
}

fn address(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[test]
fn the_watches_build_the_world_a_verdict_is_read_from() {
    let mut store = PolicyStore::default();
    store.pod_event(watcher::Event::Apply(pod(
        "a",
        "10.244.0.2",
        json!({"pod": "a"}),
    )));
    let mut in_y = pod("b", "10.244.0.3", json!({}));
    in_y.metadata.namespace = Some("y".into());
    store.pod_event(watcher::Event::Apply(in_y));
    store.namespace_event(watcher::Event::Apply(namespace("y", json!({"ns": "y"}))));
    store.policy_event(watcher::Event::Apply(policy("TCP")));
    let verdict = store.model().world.verdict(&to_a_from("10.244.0.3"));
    assert!(
        matches!(&verdict.ingress, Decision::Allowed { policy, rule: 0 } if policy == "x/allow-y"),
        "{verdict:?}"
    );
    // The namespace relabelled: no longer allowed.
    store.namespace_event(watcher::Event::Apply(namespace("y", json!({}))));
    assert!(
        !store
            .model()
            .world
            .verdict(&to_a_from("10.244.0.3"))
            .allowed()
    );
    // The policy deleted: not isolated.
    store.policy_event(watcher::Event::Delete(policy("TCP")));
    assert_eq!(
        store
            .model()
            .world
            .verdict(&to_a_from("10.244.0.3"))
            .ingress,
        Decision::NotIsolated
    );
}

#[test]
fn a_relisting_drops_what_it_no_longer_names() {
    let mut store = PolicyStore::default();
    store.pod_event(watcher::Event::Apply(pod("a", "10.244.0.2", json!({}))));
    store.pod_event(watcher::Event::Apply(pod("gone", "10.244.0.9", json!({}))));
    store.policy_event(watcher::Event::Apply(policy("TCP")));
    store.pod_event(watcher::Event::Init);
    store.pod_event(watcher::Event::InitApply(pod(
        "a",
        "10.244.0.2",
        json!({"pod": "a"}),
    )));
    assert!(store.pod_event(watcher::Event::InitDone));
    assert!(store.model().world.pod(address("10.244.0.9")).is_none());
    assert_eq!(
        store
            .model()
            .world
            .pod(address("10.244.0.2"))
            .unwrap()
            .labels["pod"],
        "a"
    );
    store.policy_event(watcher::Event::Init);
    store.policy_event(watcher::Event::InitDone);
    assert_eq!(store.model().world.policy_names().count(), 0);
}

#[test]
fn a_policy_that_cannot_be_enforced_is_refused_on_its_own_and_withdrawn() {
    let mut store = PolicyStore::default();
    store.policy_event(watcher::Event::Apply(policy("TCP")));
    store.policy_event(watcher::Event::Apply(policy("ICMP")));
    assert_eq!(store.model().world.policy_names().count(), 0);
    let name = ("x".to_string(), "allow-y".to_string());
    assert!(store.model().refused[&name].contains("ICMP"));
    store.policy_event(watcher::Event::Apply(policy("UDP")));
    assert!(store.model().refused.is_empty());
    assert_eq!(store.model().world.policy_names().count(), 1);
}

#[test]
fn an_address_taken_over_by_a_new_pod_stays_with_it_when_the_old_one_goes() {
    let mut store = PolicyStore::default();
    store.pod_event(watcher::Event::Apply(pod("old", "10.244.0.2", json!({}))));
    store.pod_event(watcher::Event::Apply(pod("new", "10.244.0.2", json!({}))));
    store.pod_event(watcher::Event::Delete(pod("old", "10.244.0.2", json!({}))));
    assert_eq!(
        store.model().world.pod(address("10.244.0.2")).unwrap().name,
        "new"
    );
}
