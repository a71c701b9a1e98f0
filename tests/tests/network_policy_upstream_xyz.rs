//! The rest of the upstream NetworkPolicy e2e cases (kubernetes
//! `test/e2e/network/netpol/network_policy.go`), each named after its
//! upstream title, on the lab with a third namespace: x/a, y/b, x/c, z/b
//! (y/b and z/b both labelled pod=b), TCP at 80 and 81. Truth tables: rows
//! are the clients, columns the servers, both in that order; a pod always
//! reaches itself (upstream's AllowLoopback). Where upstream names a pod
//! this lab lacks, the nearest one stands in (x/c for x/b, y/b for y/a).

use dataplane_tests::{
    kube_api::Resource,
    netpol::{Lab, a_takes, policy},
};
use serde_json::{Value, json};

const T: bool = true;
const F: bool = false;

/// Every pod reaches every pod.
const ALL: [[bool; 4]; 4] = [[T; 4]; 4];

/// A lab with `policies` applied.
fn lab_with(policies: &[Value]) -> anyhow::Result<Lab> {
    let lab = Lab::with_z()?;
    lab.apply_once_open(policies)?;
    Ok(lab)
}

/// x/a isolated for egress, sending what `egress` allows.
fn a_sends(name: &str, egress: Value) -> Value {
    policy(
        "x",
        name,
        json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "policyTypes": ["Egress"],
            "egress": egress,
        }),
    )
}

/// x/a reached by `from` (y/b, x/c, z/b), everything else open.
fn a_reached_by([by_y_b, by_x_c, by_z_b]: [bool; 3]) -> [[bool; 4]; 4] {
    [
        [T, T, T, T],
        [by_y_b, T, T, T],
        [by_x_c, T, T, T],
        [by_z_b, T, T, T],
    ]
}

/// x/a reaching `to` (y/b, x/c, z/b), everything else open.
fn a_reaching([y_b, x_c, z_b]: [bool; 3]) -> [[bool; 4]; 4] {
    [[T, y_b, x_c, z_b], ALL[1], ALL[2], ALL[3]]
}

/// Nothing reaches x's pods from outside themselves.
const X_CLOSED: [[bool; 4]; 4] = [[T, T, F, T], [F, T, F, T], [F, T, T, T], [F, T, F, T]];

/// x's pods reach nothing outside themselves.
const X_SILENT: [[bool; 4]; 4] = [[T, F, F, F], ALL[1], [F, F, T, F], ALL[3]];

#[test]
fn should_enforce_policy_to_allow_ingress_traffic_for_a_target() -> anyhow::Result<()> {
    let lab = lab_with(&[
        policy(
            "x",
            "deny-all",
            json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
        ),
        a_takes(
            "allow-all-to-a",
            json!([{"from": [{"podSelector": {}, "namespaceSelector": {}}]}]),
        ),
    ])?;
    // x/a open to all, x/c to nobody.
    lab.until_reachability(80, [[T, T, F, T], [T, T, F, T], [T, T, T, T], [T, T, F, T]])
}

#[test]
fn should_enforce_policy_to_allow_ingress_traffic_from_pods_in_all_namespaces() -> anyhow::Result<()>
{
    let lab = lab_with(&[a_takes(
        "allow-from-another-ns",
        json!([{"from": [{"namespaceSelector": {"matchLabels": {}}}]}]),
    )])?;
    lab.until_reachability(80, ALL)
}

#[test]
fn should_enforce_policy_to_allow_traffic_only_from_a_different_namespace_based_on_namespace_selector()
-> anyhow::Result<()> {
    let lab = lab_with(&[a_takes(
        "allow-client-a-via-ns-selector",
        json!([{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]),
    )])?;
    lab.until_reachability(80, a_reached_by([T, F, F]))
}

#[test]
fn should_enforce_policy_based_on_pod_selector_or_namespace_selector() -> anyhow::Result<()> {
    // Either entry: a namespace other than x, or pod=c (of x).
    let lab = lab_with(&[a_takes(
        "not-x-or-c",
        json!([{"from": [
            {"namespaceSelector": {"matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["x"]}]}},
            {"podSelector": {"matchLabels": {"pod": "c"}}}]}]),
    )])?;
    lab.until_reachability(80, ALL)?;
    // Both in one entry: pods labelled c outside x (none).
    lab.api.apply(
        Resource::NetworkPolicies,
        a_takes(
            "not-x-or-c",
            json!([{"from": [{
                "namespaceSelector": {"matchExpressions": [
                    {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["x"]}]},
                "podSelector": {"matchLabels": {"pod": "c"}}}]}]),
        ),
    );
    lab.until_reachability(80, a_reached_by([F, F, F]))
}

#[test]
fn should_enforce_policy_based_on_pod_selector_and_namespace_selector() -> anyhow::Result<()> {
    // pod=b outside x: y/b and z/b.
    let lab = lab_with(&[a_takes(
        "allow-ns-y-podselector-and-nsselector",
        json!([{"from": [{
            "namespaceSelector": {"matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["x"]}]},
            "podSelector": {"matchLabels": {"pod": "b"}}}]}]),
    )])?;
    lab.until_reachability(80, a_reached_by([T, F, T]))
}

#[test]
fn should_enforce_policy_based_on_multiple_pod_selectors_and_namespace_selectors()
-> anyhow::Result<()> {
    let lab = lab_with(&[a_takes(
        "allow-ns-y-z-pod-b-c",
        json!([{"from": [{
            "namespaceSelector": {"matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["x"]}]},
            "podSelector": {"matchExpressions": [
                {"key": "pod", "operator": "In", "values": ["b", "c"]}]}}]}]),
    )])?;
    lab.until_reachability(80, a_reached_by([T, F, T]))
}

#[test]
fn should_enforce_policy_based_on_any_pod_selectors() -> anyhow::Result<()> {
    // A pod selector alone selects in the policy's namespace: x/c, not the
    // pods labelled b of y and z.
    let lab = lab_with(&[a_takes(
        "allow-ns-x-pod-b-c",
        json!([{"from": [
            {"podSelector": {"matchLabels": {"pod": "b"}}},
            {"podSelector": {"matchLabels": {"pod": "c"}}}]}]),
    )])?;
    lab.until_reachability(80, a_reached_by([F, T, F]))
}

#[test]
fn should_enforce_policy_to_allow_traffic_only_from_a_pod_in_a_different_namespace_based_on_pod_selector_and_namespace_selector()
-> anyhow::Result<()> {
    let lab = lab_with(&[a_takes(
        "allow-ns-y-pod-b-via-namespace-pod-selector",
        json!([{"from": [{
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "y"}},
            "podSelector": {"matchLabels": {"pod": "b"}}}]}]),
    )])?;
    lab.until_reachability(80, a_reached_by([T, F, F]))
}

#[test]
fn should_enforce_updated_policy() -> anyhow::Result<()> {
    let allow_all = |ingress: Value| {
        policy(
            "x",
            "allow-all-mutate-to-deny-all",
            json!({"podSelector": {}, "policyTypes": ["Ingress"], "ingress": ingress}),
        )
    };
    let lab = lab_with(&[allow_all(json!([{}]))])?;
    lab.until_reachability(81, ALL)?;
    lab.api
        .apply(Resource::NetworkPolicies, allow_all(json!([])));
    lab.until_reachability(81, X_CLOSED)
}

#[test]
fn should_deny_ingress_from_pods_on_other_namespaces() -> anyhow::Result<()> {
    let lab = lab_with(&[policy(
        "x",
        "deny-empty-policy",
        json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}),
    )])?;
    lab.until_reachability(80, [[T, T, T, T], [F, T, F, T], [T, T, T, T], [F, T, F, T]])
}

#[test]
fn should_deny_egress_from_pods_based_on_pod_selector() -> anyhow::Result<()> {
    let lab = lab_with(&[a_sends("deny-egress-pod-a", json!([]))])?;
    lab.until_reachability(80, a_reaching([F, F, F]))
}

#[test]
fn should_deny_egress_from_all_pods_in_a_namespace() -> anyhow::Result<()> {
    let lab = lab_with(&[policy(
        "x",
        "deny-egress-ns-x",
        json!({"podSelector": {}, "policyTypes": ["Egress"]}),
    )])?;
    lab.until_reachability(80, X_SILENT)
}

#[test]
fn should_enforce_egress_policy_allowing_traffic_to_a_server_in_a_different_namespace_based_on_pod_selector_and_namespace_selector()
-> anyhow::Result<()> {
    let lab = lab_with(&[a_sends(
        "allow-to-ns-y-pod-b",
        json!([{"to": [{
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "y"}},
            "podSelector": {"matchLabels": {"pod": "b"}}}]}]),
    )])?;
    lab.until_reachability(80, a_reaching([T, F, F]))
}

#[test]
fn should_enforce_multiple_ingress_policies_with_ingress_allow_all_policy_taking_precedence()
-> anyhow::Result<()> {
    let lab = lab_with(&[policy(
        "x",
        "allow-ingress-port-80",
        json!({"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]}),
    )])?;
    lab.until_reachability(81, X_CLOSED)?;
    lab.api.apply(
        Resource::NetworkPolicies,
        policy(
            "x",
            "allow-ingress",
            json!({"podSelector": {}, "ingress": [{}]}),
        ),
    );
    lab.until_reachability(81, ALL)
}

#[test]
fn should_enforce_multiple_egress_policies_with_egress_allow_all_policy_taking_precedence()
-> anyhow::Result<()> {
    let lab = lab_with(&[policy(
        "x",
        "allow-egress-port-80",
        json!({"podSelector": {}, "policyTypes": ["Egress"],
               "egress": [{"ports": [{"port": 80}]}]}),
    )])?;
    lab.until_reachability(81, X_SILENT)?;
    lab.api.apply(
        Resource::NetworkPolicies,
        policy(
            "x",
            "allow-egress",
            json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]}),
        ),
    );
    lab.until_reachability(81, ALL)
}

#[test]
fn should_ensure_an_ip_overlapping_both_ip_block_cidr_and_ip_block_except_is_allowed()
-> anyhow::Result<()> {
    let lab = Lab::with_z()?;
    lab.until_reachability(80, ALL)?;
    let x_c = lab.node().pods[2].ip;
    let to_block = |block: Value| {
        a_sends(
            "allow-client-a-via-cidr-egress-rule",
            json!([{"to": [{"ipBlock": block}]}]),
        )
    };
    // A large block around x/c, but not x/c.
    lab.api.apply(
        Resource::NetworkPolicies,
        to_block(json!({"cidr": "10.0.0.0/8", "except": [format!("{x_c}/32")]})),
    );
    lab.until_reachability(80, a_reaching([T, F, T]))?;
    // Replaced by x/c alone.
    lab.api.apply(
        Resource::NetworkPolicies,
        to_block(json!({"cidr": format!("{x_c}/32")})),
    );
    lab.until_reachability(80, a_reaching([F, T, F]))
}

#[test]
fn should_properly_isolate_pods_that_are_selected_by_a_policy_allowing_sctp_even_if_the_plugin_doesnt_support_sctp()
-> anyhow::Result<()> {
    let lab = lab_with(&[a_takes(
        "allow-only-sctp-ingress-on-port-80",
        json!([{"ports": [{"protocol": "SCTP", "port": 80}]}]),
    )])?;
    lab.until_reachability(81, a_reached_by([F, F, F]))
}

#[test]
fn should_enforce_policy_to_allow_traffic_based_on_namespace_selector_with_match_labels_using_default_ns_label()
-> anyhow::Result<()> {
    let lab = lab_with(&[a_takes(
        "allow-client-a-via-ns-selector-for-immutable-ns-label",
        json!([{"from": [{"namespaceSelector": {
            "matchLabels": {"kubernetes.io/metadata.name": "y"}}}]}]),
    )])?;
    lab.until_reachability(80, a_reached_by([T, F, F]))
}

#[test]
fn should_enforce_policy_based_on_namespace_selector_with_match_expressions_using_default_ns_label()
-> anyhow::Result<()> {
    let lab = lab_with(&[a_sends(
        "allow-ns-y-match-selector-for-immutable-ns-label",
        json!([{"to": [{"namespaceSelector": {"matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["y"]}]}}]}]),
    )])?;
    lab.until_reachability(80, a_reaching([F, T, T]))
}
