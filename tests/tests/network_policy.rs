//! NetworkPolicy from a Kubernetes API server (a local one speaking real
//! Kubernetes JSON) into the agent's policy model, read back through the
//! CLI: which of this node's pods each policy isolates (`policy list`) and
//! the verdict on a connection with the policy and rule deciding it
//! (`policy explain`). Enforcement: `network_policy_enforced.rs`.

use dataplane_tests::{
    eventually,
    kube_api::Resource,
    netpol::{Lab, WATCH_TIMEOUT, allow_named_port_from_y},
};
use serde_json::json;

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
