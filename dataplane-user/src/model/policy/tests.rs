// Above 400 lines: the upstream cases, one test each, over one shared model of the cluster.
//! The upstream method (`test/e2e/network/netpol`) on the model: namespaces
//! x, y, z with pods a, b, c serving 80 and 81 (named `serve-80-tcp`, ...),
//! every ordered pair probed, the truth table compared whole and printed
//! whole on failure. Cases named after their upstream titles.

use std::net::{IpAddr, Ipv4Addr};

use super::*;

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];

fn address(namespace: usize, pod: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 244, namespace as u8 + 1, pod as u8 + 10))
}

/// The upstream model: namespaces labelled `ns=<name>`, pods `pod=<name>`.
fn world() -> PolicyWorld {
    let mut world = PolicyWorld::default();
    for (n, namespace) in NAMESPACES.iter().enumerate() {
        world.set_namespace(
            namespace,
            Labels::from([("ns".into(), namespace.to_string())]),
        );
        for (p, pod) in PODS.iter().enumerate() {
            let ports = [80, 81]
                .into_iter()
                .flat_map(|port| {
                    [
                        (PolicyProtocol::Tcp, "tcp"),
                        (PolicyProtocol::Udp, "udp"),
                        (PolicyProtocol::Sctp, "sctp"),
                    ]
                    .map(|(protocol, name)| (format!("serve-{port}-{name}"), protocol, port))
                })
                .collect();
            world.set_pod(PodFacts {
                namespace: namespace.to_string(),
                name: pod.to_string(),
                labels: Labels::from([("pod".into(), pod.to_string())]),
                ips: vec![address(n, p)],
                host_network: false,
                ports,
            });
        }
    }
    world
}

fn labels(pairs: &[(&str, &str)]) -> Selector {
    Selector {
        match_labels: pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect(),
        match_expressions: Vec::new(),
    }
}

fn policy(namespace: &str, name: &str, pod_selector: Selector) -> PolicySpec {
    PolicySpec {
        namespace: namespace.into(),
        name: name.into(),
        pod_selector,
        policy_types: Vec::new(),
        ingress: Vec::new(),
        egress: Vec::new(),
    }
}

/// One rule allowing `peers` on every port.
fn from_peers(peers: Vec<Peer>) -> Vec<Rule> {
    vec![Rule {
        peers,
        ports: Vec::new(),
    }]
}

/// One rule allowing everyone on `ports`.
fn on_ports(ports: Vec<PortMatch>) -> Vec<Rule> {
    vec![Rule {
        peers: Vec::new(),
        ports,
    }]
}

fn pods(namespace_selector: Option<Selector>, pod_selector: Option<Selector>) -> Peer {
    Peer::Pods {
        namespace_selector,
        pod_selector,
    }
}

fn tcp(port: PortRef) -> PortMatch {
    PortMatch {
        protocol: PolicyProtocol::Tcp,
        port: Some(port),
        end_port: None,
    }
}

/// "x/a" style names of the nine pods, in table order.
fn names() -> Vec<String> {
    NAMESPACES
        .iter()
        .flat_map(|namespace| PODS.iter().map(move |pod| format!("{namespace}/{pod}")))
        .collect()
}

fn all_addresses() -> Vec<IpAddr> {
    (0..3)
        .flat_map(|n| (0..3).map(move |p| address(n, p)))
        .collect()
}

/// Every ordered pair probed on `port`/`protocol`: `table[from][to]`.
fn probe(world: &PolicyWorld, protocol: PolicyProtocol, port: u16) -> Vec<Vec<bool>> {
    let all = all_addresses();
    all.iter()
        .map(|from| {
            all.iter()
                .map(|to| {
                    world
                        .verdict(&Connection {
                            from: *from,
                            to: *to,
                            protocol,
                            port,
                        })
                        .allowed()
                })
                .collect()
        })
        .collect()
}

/// The expected table: everything allowed but what `denied(from, to)` says.
fn expect(denied: impl Fn(&str, &str) -> bool) -> Vec<Vec<bool>> {
    let names = names();
    names
        .iter()
        .map(|from| names.iter().map(|to| !denied(from, to)).collect())
        .collect()
}

fn show(table: &[Vec<bool>]) -> String {
    let names = names();
    let header: Vec<String> = names.iter().map(|name| format!("{name:^5}")).collect();
    let mut text = format!("{:>5} {}\n", "", header.join(" "));
    for (from, row) in names.iter().zip(table) {
        let cells: Vec<&str> = row
            .iter()
            .map(|allowed| if *allowed { "  .  " } else { "  X  " })
            .collect();
        text += &format!("{from:>5} {}\n", cells.join(" "));
    }
    text
}

/// Checks the model's table, and that the compiled policy (every pod
/// local) decides each pair as the model does.
fn assert_table(world: &PolicyWorld, protocol: PolicyProtocol, port: u16, wanted: Vec<Vec<bool>>) {
    let got = probe(world, protocol, port);
    assert!(
        got == wanted,
        "{protocol:?}/{port}: expected\n{}got\n{}",
        show(&wanted),
        show(&got)
    );
    let compiled = world.compile(&all_addresses());
    let by_lookups: Vec<Vec<bool>> = all_addresses()
        .iter()
        .map(|from| {
            all_addresses()
                .iter()
                .map(|to| {
                    compiled.allows(&Connection {
                        from: *from,
                        to: *to,
                        protocol,
                        port,
                    })
                })
                .collect()
        })
        .collect();
    assert!(
        by_lookups == got,
        "{protocol:?}/{port}: the model says\n{}the compiled lookups say\n{}{compiled:#?}",
        show(&got),
        show(&by_lookups)
    );
}

#[test]
fn should_support_a_default_deny_ingress_policy() {
    let mut world = world();
    world.set_policy(policy("x", "deny-ingress", Selector::default()));
    let wanted = expect(|_, to| to.starts_with("x/"));
    assert_table(&world, PolicyProtocol::Tcp, 80, wanted.clone());
    assert_table(&world, PolicyProtocol::Udp, 81, wanted);
}

#[test]
fn should_support_a_default_deny_all_policy() {
    let mut world = world();
    let mut deny_all = policy("x", "deny-all", Selector::default());
    deny_all.policy_types = vec![Direction::Ingress, Direction::Egress];
    world.set_policy(deny_all);
    assert_table(
        &world,
        PolicyProtocol::Tcp,
        80,
        expect(|from, to| from.starts_with("x/") || to.starts_with("x/")),
    );
}

#[test]
fn should_enforce_policy_to_allow_traffic_from_pods_within_server_namespace_based_on_pod_selector()
{
    let mut world = world();
    let mut allow = policy("x", "allow-b", labels(&[("pod", "a")]));
    allow.ingress = from_peers(vec![pods(None, Some(labels(&[("pod", "b")])))]);
    world.set_policy(allow);
    assert_table(
        &world,
        PolicyProtocol::Tcp,
        80,
        expect(|from, to| to == "x/a" && from != "x/b"),
    );
}

#[test]
fn should_enforce_policy_based_on_pod_selector_and_namespace_selector() {
    let mut world = world();
    let mut allow = policy("x", "allow-y-or-z-b", labels(&[("pod", "a")]));
    allow.ingress = from_peers(vec![pods(
        Some(Selector {
            match_labels: Labels::new(),
            match_expressions: vec![Requirement {
                key: "ns".into(),
                operator: Operator::NotIn,
                values: vec!["x".into()],
            }],
        }),
        Some(labels(&[("pod", "b")])),
    )]);
    world.set_policy(allow);
    assert_table(
        &world,
        PolicyProtocol::Tcp,
        80,
        expect(|from, to| to == "x/a" && !["y/b", "z/b"].contains(&from)),
    );
}

#[test]
fn should_allow_ingress_access_on_one_named_port() {
    let mut world = world();
    let mut allow = policy("x", "allow-81", Selector::default());
    allow.ingress = on_ports(vec![tcp(PortRef::Name("serve-81-tcp".into()))]);
    world.set_policy(allow);
    assert_table(&world, PolicyProtocol::Tcp, 81, expect(|_, _| false));
    assert_table(
        &world,
        PolicyProtocol::Tcp,
        80,
        expect(|_, to| to.starts_with("x/")),
    );
    // The name is the TCP port's: UDP 81 stays isolated.
    assert_table(
        &world,
        PolicyProtocol::Udp,
        81,
        expect(|_, to| to.starts_with("x/")),
    );
}

#[test]
fn should_enforce_policy_based_on_any_port_from_80_to_81_with_end_port() {
    let mut world = world();
    let mut allow = policy("x", "range", Selector::default());
    allow.ingress = on_ports(vec![PortMatch {
        protocol: PolicyProtocol::Tcp,
        port: Some(PortRef::Number(80)),
        end_port: Some(81),
    }]);
    world.set_policy(allow);
    assert_table(&world, PolicyProtocol::Tcp, 80, expect(|_, _| false));
    assert_table(&world, PolicyProtocol::Tcp, 81, expect(|_, _| false));
    assert_table(
        &world,
        PolicyProtocol::Tcp,
        82,
        expect(|_, to| to.starts_with("x/")),
    );
}

#[test]
fn should_not_allow_access_by_tcp_when_a_policy_specifies_only_sctp() {
    let mut world = world();
    let mut allow = policy("x", "sctp-only", labels(&[("pod", "a")]));
    allow.ingress = on_ports(vec![PortMatch {
        protocol: PolicyProtocol::Sctp,
        port: Some(PortRef::Number(80)),
        end_port: None,
    }]);
    world.set_policy(allow);
    assert_table(&world, PolicyProtocol::Sctp, 80, expect(|_, _| false));
    assert_table(&world, PolicyProtocol::Tcp, 80, expect(|_, to| to == "x/a"));
}

#[test]
fn should_enforce_except_clause_while_egress_access_to_server_in_cidr_block() {
    let mut world = world();
    let mut allow = policy("x", "egress-block", labels(&[("pod", "a")]));
    // Without policyTypes, egress rules make it isolate both directions.
    allow.policy_types = vec![Direction::Egress];
    allow.egress = from_peers(vec![Peer::Block {
        cidr: "10.244.0.0/16".parse().unwrap(),
        except: vec!["10.244.2.11/32".parse().unwrap()],
    }]);
    world.set_policy(allow);
    // 10.244.2.11 is y/b.
    assert_table(
        &world,
        PolicyProtocol::Tcp,
        80,
        expect(|from, to| from == "x/a" && to == "y/b"),
    );
}

#[test]
fn should_enforce_updated_policy_and_stop_enforcing_policies_after_they_are_deleted() {
    let mut world = world();
    world.set_policy(policy("x", "deny", Selector::default()));
    assert_table(
        &world,
        PolicyProtocol::Tcp,
        80,
        expect(|_, to| to.starts_with("x/")),
    );
    // Updated: now only x/c is isolated.
    world.set_policy(policy("x", "deny", labels(&[("pod", "c")])));
    assert_table(&world, PolicyProtocol::Tcp, 80, expect(|_, to| to == "x/c"));
    world.remove_policy("x", "deny");
    assert_table(&world, PolicyProtocol::Tcp, 80, expect(|_, _| false));
}

#[test]
fn pod_and_namespace_label_changes_are_followed() {
    let mut world = world();
    let mut allow = policy("x", "from-team", Selector::default());
    allow.ingress = from_peers(vec![pods(Some(labels(&[("team", "blue")])), None)]);
    world.set_policy(allow);
    assert_table(
        &world,
        PolicyProtocol::Tcp,
        80,
        expect(|_, to| to.starts_with("x/")),
    );
    world.set_namespace(
        "y",
        Labels::from([("ns".into(), "y".into()), ("team".into(), "blue".into())]),
    );
    assert_table(
        &world,
        PolicyProtocol::Tcp,
        80,
        expect(|from, to| to.starts_with("x/") && !from.starts_with("y/")),
    );
    // The namespace's own name label is always there.
    let mut by_name = policy("z", "from-x", Selector::default());
    by_name.ingress = from_peers(vec![pods(
        Some(labels(&[(NAMESPACE_NAME_LABEL, "x")])),
        None,
    )]);
    world.set_policy(by_name);
    let verdict = world.verdict(&Connection {
        from: address(0, 0),
        to: address(2, 0),
        protocol: PolicyProtocol::Tcp,
        port: 80,
    });
    assert_eq!(
        verdict.ingress,
        Decision::Allowed {
            policy: "z/from-x".into(),
            rule: 0
        }
    );
}

#[test]
fn the_node_reaches_its_pods_and_host_network_pods_are_never_selected() {
    let mut world = world();
    world.set_policy(policy("x", "deny", Selector::default()));
    let node: IpAddr = "192.0.2.10".parse().unwrap();
    let to_a = |from| Connection {
        from,
        to: address(0, 0),
        protocol: PolicyProtocol::Tcp,
        port: 80,
    };
    assert!(!world.verdict(&to_a(node)).allowed());
    world.set_node_addresses(vec![node]);
    assert!(world.verdict(&to_a(node)).allowed());
    // A hostNetwork pod at the node's address is not a pod to selectors.
    world.set_pod(PodFacts {
        namespace: "x".into(),
        name: "agent".into(),
        host_network: true,
        ips: vec![node],
        ..PodFacts::default()
    });
    assert!(world.pod(node).is_none());
    assert!(world.verdict(&to_a(node)).allowed());
}

#[test]
fn egress_rules_without_policy_types_isolate_both_directions() {
    let mut world = world();
    let mut allow = policy("x", "egress-only-rules", labels(&[("pod", "a")]));
    allow.egress = vec![Rule::default()];
    world.set_policy(allow);
    assert_table(&world, PolicyProtocol::Tcp, 80, expect(|_, to| to == "x/a"));
}

#[test]
fn the_deciding_policy_and_rule_are_named() {
    let mut world = world();
    world.set_policy(policy("x", "deny", Selector::default()));
    let verdict = world.verdict(&Connection {
        from: address(1, 0),
        to: address(0, 0),
        protocol: PolicyProtocol::Tcp,
        port: 80,
    });
    assert_eq!(verdict.egress, Decision::NotIsolated);
    assert_eq!(
        verdict.ingress,
        Decision::Denied {
            policies: vec!["x/deny".into()]
        }
    );
}

#[test]
fn what_the_api_server_refuses_is_refused() {
    let mut bad_selector = policy("x", "bad", Selector::default());
    bad_selector.pod_selector.match_expressions = vec![Requirement {
        key: "pod".into(),
        operator: Operator::In,
        values: Vec::new(),
    }];
    assert!(bad_selector.problem().unwrap().contains("need values"));
    let mut outside = policy("x", "outside", Selector::default());
    outside.egress = from_peers(vec![Peer::Block {
        cidr: "10.0.0.0/16".parse().unwrap(),
        except: vec!["10.1.0.0/24".parse().unwrap()],
    }]);
    assert!(outside.problem().unwrap().contains("not within"));
    let mut named_range = policy("x", "range", Selector::default());
    named_range.ingress = on_ports(vec![PortMatch {
        protocol: PolicyProtocol::Tcp,
        port: Some(PortRef::Name("http".into())),
        end_port: Some(90),
    }]);
    assert!(named_range.problem().unwrap().contains("numeric"));
    assert_eq!(policy("x", "fine", Selector::default()).problem(), None);
}

#[test]
fn ipv6_peers_are_matched_by_family() {
    let mut world = world();
    let mut allow = policy("x", "v6", Selector::default());
    allow.ingress = from_peers(vec![Peer::Block {
        cidr: "fd00::/8".parse().unwrap(),
        except: Vec::new(),
    }]);
    world.set_policy(allow);
    let from = |ip: &str| Connection {
        from: ip.parse().unwrap(),
        to: address(0, 1),
        protocol: PolicyProtocol::Tcp,
        port: 80,
    };
    assert!(world.verdict(&from("fd00::5")).allowed());
    assert!(!world.verdict(&from("10.0.0.5")).allowed());
}

#[test]
fn port_ranges_become_the_fewest_prefixes() {
    assert_eq!(compile::port_prefixes(80, 80), [(80, 16)]);
    assert_eq!(compile::port_prefixes(80, 81), [(80, 15)]);
    assert_eq!(compile::port_prefixes(0, 65535), [(0, 0)]);
    assert_eq!(
        compile::port_prefixes(81, 84),
        [(81, 16), (82, 15), (84, 16)]
    );
    let covered: u32 = compile::port_prefixes(1000, 33000)
        .iter()
        .map(|(_, bits)| 1u32 << (16 - bits))
        .sum();
    assert_eq!(covered, 32001);
}

#[test]
fn egress_to_a_named_port_resolves_on_each_destination() {
    let mut world = world();
    // y/b serves its "serve-80-tcp" on 8080 instead.
    let mut moved = world.pod(address(1, 1)).unwrap().clone();
    for port in &mut moved.ports {
        if port.0 == "serve-80-tcp" {
            port.2 = 8080;
        }
    }
    world.set_pod(moved);
    let mut allow = policy("x", "egress-named", labels(&[("pod", "a")]));
    allow.policy_types = vec![Direction::Egress];
    allow.egress = on_ports(vec![tcp(PortRef::Name("serve-80-tcp".into()))]);
    world.set_policy(allow);
    assert_table(
        &world,
        PolicyProtocol::Tcp,
        80,
        expect(|from, to| from == "x/a" && to == "y/b"),
    );
    assert_table(
        &world,
        PolicyProtocol::Tcp,
        8080,
        expect(|from, to| from == "x/a" && to != "y/b"),
    );
}

#[test]
fn a_pod_bound_by_name_is_isolated_before_its_address_is_known() {
    let mut world = world();
    world.set_policy(PolicySpec {
        policy_types: vec![Direction::Ingress],
        ..policy("x", "deny", Selector::default())
    });
    let joining: IpAddr = Ipv4Addr::new(10, 244, 9, 9).into();
    // Not known to the API server yet, in a namespace with policies:
    // isolated both ways with nothing allowed.
    world.bind(joining, ("x".into(), "late".into()));
    assert_eq!(world.awaited(joining), Some(&("x".into(), "late".into())));
    let compiled = world.compile(&[joining]);
    let subject = compiled.subjects[&joining];
    assert!(subject.ingress && subject.egress);
    assert!(
        !compiled
            .allowed
            .iter()
            .any(|entry| entry.subject == subject.id)
    );
    // In a namespace without policies: not isolated.
    world.bind(joining, ("z".into(), "late".into()));
    assert!(!world.compile(&[joining]).subjects.contains_key(&joining));
    // Known (its status without an address yet): the bound address is its.
    world.bind(joining, ("x".into(), "late".into()));
    world.set_pod(PodFacts {
        namespace: "x".into(),
        name: "late".into(),
        ..PodFacts::default()
    });
    assert_eq!(world.awaited(joining), None);
    assert_eq!(
        world.pod(joining).map(|pod| pod.name.as_str()),
        Some("late")
    );
    let subject = world.compile(&[joining]).subjects[&joining];
    assert!(subject.ingress && !subject.egress);
    world.unbind(joining);
    assert_eq!(world.awaited(joining), None);
}

#[test]
fn one_peer_written_into_policies_of_two_namespaces_selects_in_each_its_own() {
    // The compiler matches pods once per distinct peer: a pod selector
    // alone reads its policy's namespace, so x's and y's copies differ.
    let mut world = world();
    for namespace in ["x", "y"] {
        let mut allow = policy(namespace, "allow-b", labels(&[("pod", "a")]));
        allow.ingress = from_peers(vec![pods(None, Some(labels(&[("pod", "b")])))]);
        world.set_policy(allow);
    }
    assert_table(
        &world,
        PolicyProtocol::Tcp,
        80,
        expect(|from, to| (to == "x/a" && from != "x/b") || (to == "y/a" && from != "y/b")),
    );
}
