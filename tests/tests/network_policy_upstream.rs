//! More of the upstream NetworkPolicy e2e cases (kubernetes
//! `test/e2e/network/netpol/network_policy.go`), each named after its
//! upstream title, on the lab of `dataplane_tests::netpol`: x/a, y/b, x/c,
//! TCP at 80 and 81. Truth tables: rows are the clients, columns the
//! servers, both in that order; a pod always reaches itself (upstream's
//! AllowLoopback).

use dataplane_tests::{
    kube_api::Resource,
    netpol::{ALL, Lab, X_ISOLATED, a_takes, deny_ingress_in_x, policy},
};
use serde_json::{Value, json};

const T: bool = true;
const F: bool = false;

/// A lab with `policies` applied.
fn lab_with(policies: &[Value]) -> anyhow::Result<Lab> {
    let lab = Lab::new()?;
    lab.apply_once_open(policies)?;
    Ok(lab)
}

/// Only x/a's ingress cut, from everyone but itself.
const A_CLOSED: [[bool; 3]; 3] = [[T, T, T], [F, T, T], [F, T, T]];

#[test]
fn should_support_a_default_deny_all_policy() -> anyhow::Result<()> {
    let lab = lab_with(&[policy(
        "x",
        "deny-all",
        json!({
            "podSelector": {}, "policyTypes": ["Ingress", "Egress"],
        }),
    )])?;
    lab.until_reachability(80, [[T, F, F], [F, T, F], [F, F, T]])
}

#[test]
fn should_support_allow_all_policy() -> anyhow::Result<()> {
    let lab = lab_with(&[
        policy(
            "x",
            "deny-all",
            json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
        ),
        policy(
            "x",
            "allow-all",
            json!({"podSelector": {}, "ingress": [{}]}),
        ),
    ])?;
    lab.until_reachability(80, ALL)
}

#[test]
fn should_enforce_policy_to_allow_traffic_from_pods_within_server_namespace_based_on_pod_selector()
-> anyhow::Result<()> {
    let lab = lab_with(&[a_takes(
        "from-c",
        json!([{"from": [
        {"podSelector": {"matchLabels": {"pod": "c"}}}]}]),
    )])?;
    lab.until_reachability(80, [[T, T, T], [F, T, T], [T, T, T]])
}

#[test]
fn should_enforce_policy_based_on_pod_selector_with_match_expressions() -> anyhow::Result<()> {
    let lab = lab_with(&[a_takes(
        "from-c",
        json!([{"from": [{"podSelector": {
        "matchExpressions": [{"key": "pod", "operator": "In", "values": ["c"]}]}}]}]),
    )])?;
    lab.until_reachability(80, [[T, T, T], [F, T, T], [T, T, T]])
}

#[test]
fn should_enforce_policy_based_on_namespace_selector_with_match_expressions() -> anyhow::Result<()>
{
    let lab = lab_with(&[a_takes(
        "from-y",
        json!([{"from": [{"namespaceSelector": {
        "matchExpressions": [{"key": "ns", "operator": "NotIn", "values": ["x"]}]}}]}]),
    )])?;
    lab.until_reachability(80, [[T, T, T], [T, T, T], [F, T, T]])
}

#[test]
fn should_enforce_policy_based_on_pod_selector_and_namespace_selector() -> anyhow::Result<()> {
    // Both in one entry: pods labelled c in namespaces labelled y (none).
    let lab = lab_with(&[a_takes(
        "c-in-y",
        json!([{"from": [{
        "namespaceSelector": {"matchLabels": {"ns": "y"}},
        "podSelector": {"matchLabels": {"pod": "c"}}}]}]),
    )])?;
    lab.until_reachability(80, A_CLOSED)?;
    // "should enforce policy based on PodSelector or NamespaceSelector":
    // as two entries, either.
    lab.api.apply(
        Resource::NetworkPolicies,
        a_takes(
            "c-in-y",
            json!([{"from": [
            {"namespaceSelector": {"matchLabels": {"ns": "y"}}},
            {"podSelector": {"matchLabels": {"pod": "c"}}}]}]),
        ),
    );
    lab.until_reachability(80, ALL)
}

#[test]
fn should_enforce_policy_based_on_ports() -> anyhow::Result<()> {
    let lab = lab_with(&[a_takes("81-only", json!([{"ports": [{"port": 81}]}]))])?;
    lab.until_reachability(80, A_CLOSED)?;
    lab.until_reachability(81, ALL)
}

#[test]
fn should_enforce_policy_based_on_any_port_from_80_to_81() -> anyhow::Result<()> {
    let lab = lab_with(&[a_takes(
        "range-from-y",
        json!([{
        "from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
        "ports": [{"port": 80, "endPort": 81, "protocol": "TCP"}]}]),
    )])?;
    lab.until_reachability(80, [[T, T, T], [T, T, T], [F, T, T]])?;
    lab.until_reachability(81, [[T, T, T], [T, T, T], [F, T, T]])
}

#[test]
fn should_enforce_multiple_stacked_policies_with_overlapping_pod_selectors() -> anyhow::Result<()> {
    let lab = lab_with(&[
        a_takes(
            "80-from-b",
            json!([{"from": [{"podSelector": {}, "namespaceSelector": {
            "matchLabels": {"ns": "y"}}}], "ports": [{"port": 80}]}]),
        ),
        a_takes(
            "81-from-c",
            json!([{"from": [{"podSelector": {"matchLabels": {"pod": "c"}}}],
            "ports": [{"port": 81}]}]),
        ),
    ])?;
    lab.until_reachability(80, [[T, T, T], [T, T, T], [F, T, T]])?;
    lab.until_reachability(81, [[T, T, T], [F, T, T], [T, T, T]])
}

#[test]
fn should_allow_ingress_access_from_namespace_on_one_named_port() -> anyhow::Result<()> {
    let lab = lab_with(&[a_takes(
        "y-on-81",
        json!([{
        "from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
        "ports": [{"port": "serve-81-tcp", "protocol": "TCP"}]}]),
    )])?;
    lab.until_reachability(81, [[T, T, T], [T, T, T], [F, T, T]])?;
    lab.until_reachability(80, A_CLOSED)
}

#[test]
fn should_allow_egress_access_on_one_named_port() -> anyhow::Result<()> {
    // y/b may open connections to serve-81-tcp only (resolved on each
    // destination pod).
    let lab = lab_with(&[policy(
        "y",
        "named-81",
        json!({
            "podSelector": {}, "policyTypes": ["Egress"],
            "egress": [{"ports": [{"port": "serve-81-tcp", "protocol": "TCP"}]}],
        }),
    )])?;
    lab.until_reachability(81, ALL)?;
    lab.until_reachability(80, [[T, T, T], [F, T, F], [T, T, T]])
}

#[test]
fn should_deny_ingress_access_to_updated_pod() -> anyhow::Result<()> {
    let lab = lab_with(&[policy(
        "x",
        "deny-targets",
        json!({
            "podSelector": {"matchLabels": {"target": "true"}}, "policyTypes": ["Ingress"],
        }),
    )])?;
    lab.until_reachability(80, ALL)?;
    lab.relabel_pod(2, json!({"target": "true"}));
    lab.until_reachability(80, [[T, T, F], [T, T, F], [T, T, T]])
}

#[test]
fn should_allow_ingress_access_from_updated_namespace() -> anyhow::Result<()> {
    let lab = lab_with(&[a_takes(
        "from-blue",
        json!([{"from": [
        {"namespaceSelector": {"matchLabels": {"team": "blue"}}}]}]),
    )])?;
    lab.until_reachability(80, A_CLOSED)?;
    lab.relabel_namespace("y", json!({"team": "blue"}));
    lab.until_reachability(80, [[T, T, T], [T, T, T], [F, T, T]])
}

#[test]
fn should_allow_ingress_access_from_updated_pod() -> anyhow::Result<()> {
    let lab = lab_with(&[a_takes(
        "from-friends",
        json!([{"from": [
        {"podSelector": {"matchLabels": {"friend": "true"}}}]}]),
    )])?;
    lab.until_reachability(80, A_CLOSED)?;
    lab.relabel_pod(2, json!({"friend": "true"}));
    lab.until_reachability(80, [[T, T, T], [F, T, T], [T, T, T]])
}

#[test]
fn should_allow_egress_access_to_server_in_cidr_block() -> anyhow::Result<()> {
    let lab = Lab::new()?;
    let a = lab.node().pods[0].ip;
    lab.api.apply(
        Resource::NetworkPolicies,
        policy(
            "y",
            "to-a",
            json!({
                "podSelector": {}, "policyTypes": ["Egress"],
                "egress": [{"to": [{"ipBlock": {"cidr": format!("{a}/32")}}]}],
            }),
        ),
    );
    lab.until_reachability(80, [[T, T, T], [T, T, F], [T, T, T]])
}

#[test]
fn should_enforce_except_clause_while_egress_access_to_server_in_cidr_block() -> anyhow::Result<()>
{
    let lab = Lab::new()?;
    let node = lab.node();
    let (cidr, a) = (node.pod_cidr, node.pods[0].ip);
    lab.api.apply(
        Resource::NetworkPolicies,
        policy(
            "y",
            "all-but-a",
            json!({
                "podSelector": {}, "policyTypes": ["Egress"],
                "egress": [{"to": [{"ipBlock": {"cidr": cidr.to_string(),
                                                "except": [format!("{a}/32")]}}]}],
            }),
        ),
    );
    lab.until_reachability(80, [[T, T, T], [F, T, T], [T, T, T]])
}

#[test]
fn should_not_allow_access_by_tcp_when_a_policy_specifies_only_udp() -> anyhow::Result<()> {
    let lab = lab_with(&[a_takes(
        "udp-only",
        json!([{"ports": [
        {"port": 80, "protocol": "UDP"}]}]),
    )])?;
    lab.until_reachability(80, A_CLOSED)
}

#[test]
fn should_not_mistakenly_treat_protocol_sctp_as_protocol_tcp_even_if_the_plugin_doesnt_support_sctp()
-> anyhow::Result<()> {
    let lab = lab_with(&[
        deny_ingress_in_x(),
        a_takes(
            "allow-only-sctp-ingress-on-port-81",
            json!([{"ports": [{"port": 81, "protocol": "SCTP"}]}]),
        ),
    ])?;
    lab.until_reachability(81, X_ISOLATED)
}

#[test]
fn should_enforce_ingress_policy_allowing_any_port_traffic_to_a_server_on_a_specific_protocol()
-> anyhow::Result<()> {
    let lab = lab_with(&[a_takes(
        "any-tcp",
        json!([{"ports": [{"protocol": "TCP"}]}]),
    )])?;
    lab.until_reachability(80, ALL)?;
    lab.until_reachability(81, ALL)
}

#[test]
fn should_support_denying_of_egress_traffic_on_the_client_side_even_if_the_server_explicitly_allows_this_traffic()
-> anyhow::Result<()> {
    let lab = lab_with(&[
        policy(
            "y",
            "deny-egress",
            json!({"podSelector": {}, "policyTypes": ["Egress"]}),
        ),
        a_takes(
            "from-y",
            json!([{"from": [
            {"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]),
        ),
    ])?;
    lab.until_reachability(80, [[T, T, T], [F, T, F], [F, T, T]])
}

#[test]
fn should_enforce_policies_to_check_ingress_and_egress_policies_can_be_controlled_independently_based_on_pod_selector()
-> anyhow::Result<()> {
    // x/a: egress denied, ingress open; then ingress denied too.
    let lab = lab_with(&[policy(
        "x",
        "a-no-egress",
        json!({
            "podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
        }),
    )])?;
    lab.until_reachability(80, [[T, F, F], [T, T, T], [T, T, T]])?;
    lab.api.apply(
        Resource::NetworkPolicies,
        policy(
            "x",
            "a-no-ingress",
            json!({
                "podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Ingress"],
            }),
        ),
    );
    lab.until_reachability(80, [[T, F, F], [F, T, T], [F, T, T]])
}

#[test]
fn should_work_with_ingress_egress_specified_together() -> anyhow::Result<()> {
    // x/a takes connections from y only and opens them to y only.
    let lab = lab_with(&[policy(
        "x",
        "a-with-y",
        json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}],
            "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}],
        }),
    )])?;
    lab.until_reachability(80, [[T, T, F], [T, T, T], [F, T, T]])
}
