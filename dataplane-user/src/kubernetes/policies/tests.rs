use serde_json::json;

use super::*;

fn policy(spec: serde_json::Value) -> NetworkPolicy {
    serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "allow", "namespace": "x"},
        "spec": spec,
    }))
    .unwrap()
}

#[test]
fn an_upstream_policy_reads_as_written() {
    // "should allow ingress access from namespace on one named port", with
    // an ipBlock and a port range beside it.
    let read = policy_spec(&policy(json!({
        "podSelector": {"matchLabels": {"pod": "a"}},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [{
            "from": [
                {"namespaceSelector": {"matchExpressions": [
                    {"key": "ns", "operator": "In", "values": ["y"]}]}},
                {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}},
            ],
            "ports": [{"port": "serve-81-tcp"}, {"protocol": "SCTP", "port": 80, "endPort": 82}],
        }],
        "egress": [{}],
    })))
    .unwrap();
    assert_eq!(
        (read.namespace.as_str(), read.name.as_str()),
        ("x", "allow")
    );
    assert_eq!(read.policy_types, [Direction::Ingress, Direction::Egress]);
    assert_eq!(read.pod_selector.match_labels["pod"], "a");
    let rule = &read.ingress[0];
    assert!(matches!(
        &rule.peers[0],
        Peer::Pods { namespace_selector: Some(namespaces), pod_selector: None }
            if namespaces.match_expressions[0].operator == Operator::In
    ));
    assert!(matches!(
        &rule.peers[1],
        Peer::Block { cidr, except } if cidr.to_string() == "10.0.0.0/8" && except.len() == 1
    ));
    assert_eq!(
        rule.ports,
        [
            PortMatch {
                protocol: PolicyProtocol::Tcp,
                port: Some(PortRef::Name("serve-81-tcp".into())),
                end_port: None,
            },
            PortMatch {
                protocol: PolicyProtocol::Sctp,
                port: Some(PortRef::Number(80)),
                end_port: Some(82),
            },
        ]
    );
    // An egress rule with nothing in it allows everything.
    assert_eq!(read.egress, [Rule::default()]);
}

#[test]
fn an_empty_spec_is_default_deny_ingress_for_every_pod() {
    let read = policy_spec(&policy(json!({"podSelector": {}}))).unwrap();
    assert_eq!(read.pod_selector, Selector::default());
    assert!(read.isolates(Direction::Ingress) && !read.isolates(Direction::Egress));
}

#[test]
fn what_cannot_be_enforced_as_written_is_refused_with_the_reason() {
    for (spec, reason) in [
        (
            json!({"ingress": [{"ports": [{"protocol": "ICMP"}]}]}),
            "unknown protocol",
        ),
        (
            json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]}),
            "ipBlock",
        ),
        (
            json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["192.168.0.0/16"]}}]}]}),
            "not within",
        ),
        (
            json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]}),
            "takes no selectors",
        ),
        (json!({"ingress": [{"from": [{}]}]}), "needs ipBlock"),
        (
            json!({"ingress": [{"ports": [{"port": 90, "endPort": 80}]}]}),
            "below port",
        ),
        (json!({"ingress": [{"ports": [{"port": 0}]}]}), "not a port"),
        (
            json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}}),
            "operator",
        ),
        (json!({"policyTypes": ["Sideways"]}), "policyTypes"),
    ] {
        let refused = policy_spec(&policy(spec.clone())).unwrap_err();
        assert!(refused.contains(reason), "{spec}: {refused}");
    }
}

#[test]
fn a_pod_reads_as_labels_addresses_and_named_ports() {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "a", "namespace": "x", "labels": {"pod": "a"}},
        "spec": {"containers": [{"name": "c", "ports": [
            {"name": "serve-80-udp", "containerPort": 80, "protocol": "UDP"},
            {"containerPort": 81},
        ]}]},
        "status": {"podIPs": [{"ip": "10.244.0.5"}, {"ip": "fd00::5"}]},
    }))
    .unwrap();
    let facts = pod_facts(&pod);
    assert_eq!(facts.labels["pod"], "a");
    assert_eq!(
        facts.ips,
        [
            "10.244.0.5".parse::<IpAddr>().unwrap(),
            "fd00::5".parse().unwrap()
        ]
    );
    assert_eq!(
        facts.ports,
        [("serve-80-udp".to_string(), PolicyProtocol::Udp, 80)]
    );
    assert!(!facts.host_network);
    let host: Pod = serde_json::from_value(json!({
        "metadata": {"name": "h", "namespace": "kube-system"},
        "spec": {"hostNetwork": true, "containers": []},
    }))
    .unwrap();
    assert!(pod_facts(&host).host_network);
}
