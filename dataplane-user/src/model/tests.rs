// Above 400 lines: the model's unit tests, one per rule, over shared builders.
//! The rules and the per-source bookkeeping of remote nodes.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
};

use ipnetwork::Ipv4Network;
use macaddr::MacAddr6;

use super::*;

fn node(ip: [u8; 4], cidr: &str) -> NodeSpec {
    NodeSpec::ipv4(Ipv4Addr::from(ip), cidr.parse().unwrap())
}

fn local() -> LocalFacts {
    LocalFacts {
        tunnel: true,
        node_ip: Some(Ipv4Addr::new(192, 0, 2, 10)),
        pod_cidr: Some("10.244.0.0/24".parse().unwrap()),
        pod_cidr_ipv6: Some("fd00:10:244::/64".parse().unwrap()),
        cluster_cidr: Some("10.244.0.0/16".parse().unwrap()),
        routing: Routing::Tunnel,
        uplink_networks: vec!["192.0.2.0/24".parse().unwrap()],
    }
}

#[test]
fn each_routing_mode_picks_the_path_per_node() {
    let neighbour = Ipv4Addr::new(192, 0, 2, 11);
    let routed = Ipv4Addr::new(198, 51, 100, 10);
    let paths = |routing| {
        let local = LocalFacts { routing, ..local() };
        (local.path_to(neighbour), local.path_to(routed))
    };
    assert_eq!(paths(Routing::Tunnel), (NodePath::Tunnel, NodePath::Tunnel));
    assert_eq!(paths(Routing::Direct), (NodePath::Direct, NodePath::Direct));
    assert_eq!(paths(Routing::Auto), (NodePath::Direct, NodePath::Tunnel));
    // Without the uplink's networks known, auto tunnels to everyone.
    let unknown = LocalFacts {
        routing: Routing::Auto,
        uplink_networks: Vec::new(),
        ..local()
    };
    assert_eq!(unknown.path_to(neighbour), NodePath::Tunnel);
}

#[test]
fn direct_routing_refuses_nodes_off_the_uplinks_network() {
    let direct = LocalFacts {
        routing: Routing::Direct,
        ..local()
    };
    let mut set = NodeSet::default();
    assert_eq!(
        set.insert(node([192, 0, 2, 11], "10.244.1.0/24"), &direct),
        Ok(true)
    );
    let (field, problem) = set
        .insert(node([198, 51, 100, 10], "10.244.2.0/24"), &direct)
        .unwrap_err();
    assert_eq!(field, "ip");
    assert!(problem.contains("192.0.2.0/24"), "{problem}");
    assert!(problem.contains("auto"), "{problem}");
    // Auto takes it, through the tunnel.
    let auto = LocalFacts {
        routing: Routing::Auto,
        ..local()
    };
    assert_eq!(
        set.insert(node([198, 51, 100, 10], "10.244.2.0/24"), &auto),
        Ok(true)
    );
}

#[test]
fn overlapping_cidrs_are_found_among_many_nodes() {
    let mut set = NodeSet::default();
    for index in 1..=200u8 {
        let spec = node([192, 0, 3, index], &format!("10.244.{index}.0/24"));
        assert_eq!(set.insert(spec, &local()), Ok(true));
    }
    let inside = node([192, 0, 4, 1], "10.244.77.128/25");
    assert!(
        set.check(&inside, &local())
            .unwrap_err()
            .1
            .contains("10.244.77.0/24")
    );
    let around = node([192, 0, 4, 1], "10.244.64.0/20");
    assert!(set.check(&around, &local()).is_err());
    assert!(
        set.check(&node([192, 0, 4, 1], "10.244.201.0/24"), &local())
            .is_ok()
    );
    // A node moving within its own CIDR's space is not its own overlap.
    assert_eq!(
        set.insert(node([192, 0, 3, 7], "10.244.7.0/25"), &local()),
        Ok(true)
    );
    assert!(
        set.check(&node([192, 0, 3, 10], "10.244.0.0/24"), &local())
            .is_err()
    );
    assert!(
        set.check(&node([192, 0, 2, 10], "10.244.250.0/24"), &local())
            .unwrap_err()
            .1
            .contains("own IP")
    );
}

#[test]
fn a_replacement_that_breaks_a_rule_changes_nothing() {
    let mut nodes = RemoteNodes::default();
    let first = node([192, 0, 2, 11], "10.244.1.0/24");
    let second = node([192, 0, 2, 12], "10.244.2.0/24");
    nodes
        .replace(Source::ConfigFile, &[first, second], &local())
        .unwrap();
    // The first withdrawn, a new one overlapping the second: refused whole.
    let clash = node([192, 0, 2, 13], "10.244.2.128/25");
    assert!(
        nodes
            .replace(Source::ConfigFile, &[second, clash], &local())
            .is_err()
    );
    assert_eq!(
        nodes.effective().iter().collect::<Vec<_>>(),
        [first, second]
    );
    // Two nodes trading CIDRs in one edit is fine.
    let traded = [
        node([192, 0, 2, 11], "10.244.2.0/24"),
        node([192, 0, 2, 12], "10.244.1.0/24"),
    ];
    let changed = nodes
        .replace(Source::ConfigFile, &traded, &local())
        .unwrap();
    assert_eq!(changed.len(), 2);
    assert_eq!(nodes.effective().iter().collect::<Vec<_>>(), traded);
}

#[test]
fn each_source_withdraws_only_what_it_contributed() {
    let mut nodes = RemoteNodes::default();
    let shared = node([192, 0, 2, 11], "10.244.1.0/24");
    let listed = node([192, 0, 2, 12], "10.244.2.0/24");
    nodes
        .replace(Source::ConfigFile, &[shared], &local())
        .unwrap();
    nodes
        .replace(Source::Kubernetes, &[shared, listed], &local())
        .unwrap();
    assert_eq!(
        nodes.replace(Source::Kubernetes, &[], &local()).unwrap(),
        [listed.ip]
    );
    assert_eq!(nodes.effective().iter().collect::<Vec<_>>(), [shared]);
    assert_eq!(nodes.withdraw(None, shared.ip, &local()), [shared.ip]);
    assert!(nodes.effective().is_empty());
}

#[test]
fn an_endpoint_stays_while_any_source_lists_it() {
    let (file_only, both) = (
        IpAddr::V4(Ipv4Addr::new(10, 244, 0, 5)),
        IpAddr::V4(Ipv4Addr::new(10, 244, 0, 6)),
    );
    let mut sources = EndpointSources::default();
    sources.list(file_only, Source::ConfigFile);
    sources.list(both, Source::ConfigFile);
    sources.list(both, Source::Api);
    assert_eq!(
        sources.withdraw(Source::ConfigFile, &BTreeSet::new()),
        vec![file_only]
    );
    assert!(
        sources
            .withdraw(Source::ConfigFile, &BTreeSet::new())
            .is_empty()
    );
    sources.forget(both);
    assert!(sources.withdraw(Source::Api, &BTreeSet::new()).is_empty());
}

fn service(name: &str, port: u16, backends: &[&str]) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        ip: Ipv4Addr::new(10, 96, 0, 10),
        ports: vec![ServicePort {
            port,
            protocol: Protocol::Tcp,
            backends: backends
                .iter()
                .map(|backend| backend.parse().unwrap())
                .collect(),
            terminating_backends: Vec::new(),
            zone_hints: BTreeMap::new(),
            node_port: None,
        }],
        session_affinity_seconds: None,
        external_ips: Vec::new(),
        load_balancer_ips: Vec::new(),
        source_ranges: Vec::new(),
        external_traffic_local: false,
        internal_traffic_local: false,
        health_check_node_port: None,
        address_is_external: false,
        created: None,
    }
}

#[test]
fn node_ports_and_external_addresses_are_frontends_of_the_same_backends() {
    let node_ip = Ipv4Addr::new(192, 0, 2, 10);
    let external = Ipv4Addr::new(198, 51, 100, 7);
    let mut web = service("web", 80, &["10.244.0.2:8080"]);
    web.ports[0].node_port = Some(30080);
    web.external_ips = vec![external];
    let at = |ip: Ipv4Addr, port: u16| Frontend {
        ip,
        port,
        protocol: Protocol::Tcp,
        scope: Scope::Everyone,
    };
    let node = ServingNode {
        ip: Some(node_ip),
        pod_cidr: Some("10.244.0.0/24".parse().unwrap()),
        zone: None,
    };
    let mut services = Services::on_node(node.clone());
    let mut touched = services.upsert(Source::Api, web.clone()).unwrap();
    touched.sort();
    let every_node = Ipv4Addr::UNSPECIFIED;
    let mut wanted = vec![frontend(80), at(every_node, 30080), at(external, 80)];
    wanted.sort();
    assert_eq!(touched, wanted);
    assert!(
        wanted
            .iter()
            .all(|frontend| services.frontends()[frontend].backends.len() == 1)
    );

    // Another Service may not take the same external address and port.
    let mut thief = service("thief", 80, &["10.244.0.3:8080"]);
    thief.ip = Ipv4Addr::new(10, 96, 0, 11);
    thief.external_ips = vec![external];
    assert!(services.upsert(Source::Api, thief).is_err());

    let pods = [Ipv4Network::new(Ipv4Addr::new(10, 244, 0, 0), 16).unwrap()];
    assert!(web.validate(&pods).is_ok());
    let mut inside = web.clone();
    inside.external_ips = vec![Ipv4Addr::new(10, 244, 3, 3)];
    assert!(inside.validate(&pods).is_err());
    let mut twice = web.clone();
    twice.ports.push(ServicePort {
        port: 81,
        ..web.ports[0].clone()
    });
    assert!(twice.validate(&pods).is_err(), "node port 30080/tcp twice");

    // externalTrafficPolicy Local: outside clients at the external frontends
    // get this node's backends only; everyone else (and the Service address)
    // all of them. internalTrafficPolicy Local: the Service address only
    // this node's.
    let mut local = service("local", 80, &["10.244.0.2:8080", "10.244.1.2:8080"]);
    local.ports[0].node_port = Some(30081);
    local.external_traffic_local = true;
    local.internal_traffic_local = true;
    let frontends: BTreeMap<Frontend, FrontendTarget> = local.frontends(&node).collect();
    let node_port = at(every_node, 30081);
    let outside = Frontend {
        scope: Scope::OutsideLocal,
        ..node_port
    };
    let here: Backends = ["10.244.0.2:8080".parse().unwrap()].into();
    assert_eq!(frontends.len(), 3);
    assert_eq!(frontends[&frontend(80)].backends, here);
    assert_eq!(frontends[&node_port].backends.len(), 2);
    assert!(frontends[&node_port].outside_local);
    assert_eq!(frontends[&outside].backends, here);
    // A pod CIDR learned late moves the local backends.
    let mut services = Services::on_node(ServingNode {
        pod_cidr: None,
        ..node.clone()
    });
    services.upsert(Source::Api, local).unwrap();
    assert!(services.frontends()[&outside].backends.is_empty());
    let changed = services.serve_on(node);
    assert!(changed.contains(&outside) && changed.contains(&frontend(80)));
    assert_eq!(services.frontends()[&outside].backends, here);
}

fn frontend(port: u16) -> Frontend {
    Frontend {
        ip: Ipv4Addr::new(10, 96, 0, 10),
        port,
        protocol: Protocol::Tcp,
        scope: Scope::Everyone,
    }
}

#[test]
fn only_frontends_whose_backends_changed_are_reported() {
    let mut services = Services::default();
    let web = service("web", 80, &["10.244.0.2:8080"]);
    assert_eq!(
        services.upsert(Source::Api, web.clone()).unwrap(),
        vec![frontend(80)]
    );
    assert!(services.upsert(Source::Api, web).unwrap().is_empty());
    let moved = service("web", 80, &["10.244.0.3:8080", "10.244.0.3:8080"]);
    assert_eq!(
        services.upsert(Source::Api, moved).unwrap(),
        vec![frontend(80)]
    );
    assert_eq!(
        services.frontends()[&frontend(80)].backends.len(),
        1,
        "repeats folded"
    );
    // A Service that moves to another port: the old frontend goes, the new comes.
    let renumbered = service("web", 81, &["10.244.0.3:8080"]);
    assert_eq!(
        services.upsert(Source::Api, renumbered).unwrap(),
        vec![frontend(80), frontend(81)]
    );
    assert_eq!(services.withdraw(None, "web"), vec![frontend(81)]);
    assert!(services.frontends().is_empty());
    assert!(services.withdraw(None, "web").is_empty());
}

#[test]
fn two_services_of_one_source_cannot_share_a_frontend() {
    let mut services = Services::default();
    services
        .upsert(Source::Api, service("web", 80, &["10.244.0.2:8080"]))
        .unwrap();
    let (field, problem) = services
        .upsert(Source::Api, service("other", 80, &["10.244.0.9:80"]))
        .unwrap_err();
    assert_eq!(field, "ports");
    assert!(
        problem.contains("web") && problem.contains("other"),
        "{problem}"
    );
    assert_eq!(services.list().len(), 1, "nothing changed");
    let both = vec![service("a", 80, &[]), service("b", 80, &[])];
    assert!(services.replace(Source::ConfigFile, both).is_err());
    assert_eq!(services.list().len(), 1, "nothing changed");
}

#[test]
fn a_replacement_touches_only_what_changed() {
    let mut services = Services::default();
    let web = service("web", 80, &["10.244.0.2:8080"]);
    let api = service("api", 81, &["10.244.0.3:8080"]);
    services
        .replace(Source::Kubernetes, vec![web.clone(), api.clone()])
        .unwrap();
    assert!(
        services
            .replace(Source::Kubernetes, vec![web.clone(), api])
            .unwrap()
            .is_empty()
    );
    let moved = service("api", 81, &["10.244.0.4:8080"]);
    assert_eq!(
        services
            .replace(Source::Kubernetes, vec![web.clone(), moved])
            .unwrap(),
        vec![frontend(81)]
    );
    assert_eq!(
        services.replace(Source::Kubernetes, vec![web]).unwrap(),
        vec![frontend(81)]
    );
    assert_eq!(services.list().len(), 1);
}

#[test]
fn a_frontend_is_taken_from_its_highest_ranking_source() {
    let mut services = Services::default();
    services
        .upsert(Source::Pinned, service("pinned", 80, &["10.244.0.7:80"]))
        .unwrap();
    services
        .upsert(Source::Api, service("api", 80, &["10.244.0.2:8080"]))
        .unwrap();
    let from_file = service("file", 80, &["10.244.0.3:8080"]);
    assert_eq!(
        services
            .replace(Source::ConfigFile, vec![from_file])
            .unwrap(),
        vec![frontend(80)]
    );
    let wanted: Backends = ["10.244.0.3:8080".parse().unwrap()].into();
    assert_eq!(services.frontends()[&frontend(80)].backends, wanted);
    // The file no longer lists it: the API's entry takes over.
    assert_eq!(
        services.replace(Source::ConfigFile, Vec::new()).unwrap(),
        vec![frontend(80)]
    );
    let wanted: Backends = ["10.244.0.2:8080".parse().unwrap()].into();
    assert_eq!(services.frontends()[&frontend(80)].backends, wanted);
}

#[test]
fn a_service_address_stays_out_of_the_pod_addresses() {
    let cidrs: Vec<Ipv4Network> = vec!["10.96.0.0/16".parse().unwrap()];
    let (field, _) = service("web", 80, &[]).validate(&cidrs).unwrap_err();
    assert_eq!(field, "ip");
    let mut twice = service("web", 80, &[]);
    twice.ports.push(twice.ports[0].clone());
    assert_eq!(twice.validate(&[]).unwrap_err().0, "ports");
    assert_eq!(service("web", 0, &[]).validate(&[]).unwrap_err().0, "ports");
    assert_eq!(
        service("web", 80, &["10.244.0.2:0"])
            .validate(&[])
            .unwrap_err()
            .0,
        "ports"
    );
    assert!(service("web", 80, &["10.244.0.2:80"]).validate(&[]).is_ok());
    let mut sticky = service("web", 80, &[]);
    sticky.session_affinity_seconds = Some(0);
    assert_eq!(
        sticky.validate(&[]).unwrap_err().0,
        "session_affinity_seconds"
    );
    sticky.session_affinity_seconds = Some(10_800);
    assert!(sticky.validate(&[]).is_ok());
}

#[test]
fn health_checks_follow_the_services_that_ask_for_one() {
    let node = ServingNode {
        ip: Some(Ipv4Addr::new(192, 0, 2, 10)),
        pod_cidr: Some("10.244.0.0/24".parse().unwrap()),
        zone: None,
    };
    let checked = |name: &str, port: u16| {
        let mut spec = service(name, 80, &["10.244.0.2:8080", "10.244.1.2:8080"]);
        spec.ip = Ipv4Addr::new(10, 96, 0, port as u8);
        spec.external_traffic_local = true;
        spec.health_check_node_port = Some(port);
        spec
    };
    let mut services = Services::on_node(node);
    services.upsert(Source::Api, checked("api", 31000)).unwrap();
    services
        .replace(
            Source::Kubernetes,
            vec![checked("kube", 31000), checked("other", 31001)],
        )
        .unwrap();
    let checks = services.health_checks();
    assert_eq!(checks.len(), 2);
    // One port, two Services: the higher-ranking source's; one local backend.
    assert_eq!(checks[&31000].service, "api");
    assert_eq!(checks[&31000].local_endpoints, 1);
    assert_eq!(checks[&31001].service, "other");
    services.withdraw(Some(Source::Api), "api");
    assert_eq!(services.health_checks()[&31000].service, "kube");
    // Policy Cluster: no health check, whatever the port says.
    let mut cluster = checked("other", 31001);
    cluster.external_traffic_local = false;
    services.upsert(Source::Kubernetes, cluster).unwrap();
    assert_eq!(
        services.health_checks().keys().collect::<Vec<_>>(),
        [&31000]
    );
    services.replace(Source::Kubernetes, Vec::new()).unwrap();
    assert!(services.health_checks().is_empty());
}

#[test]
fn from_kubernetes_the_older_of_two_services_is_served_at_a_shared_frontend() {
    let mut services = Services::default();
    let aged = |name: &str, created: i64, backend: &str| {
        let mut spec = service(name, 80, &[backend]);
        spec.ip = Ipv4Addr::new(10, 96, 0, created as u8);
        spec.external_ips = vec![Ipv4Addr::new(203, 0, 113, 7)];
        spec.created = Some(created);
        spec
    };
    let shared = Frontend {
        ip: Ipv4Addr::new(203, 0, 113, 7),
        ..frontend(80)
    };
    let (old, young) = (
        aged("a/old", 20, "10.244.0.2:8080"),
        aged("b/young", 30, "10.244.0.3:8080"),
    );
    // Listed in any order, both are programmed; the older is served at the
    // frontend they share, each at its own ClusterIP.
    services
        .replace(Source::Kubernetes, vec![young.clone(), old.clone()])
        .unwrap();
    let served = |services: &Services, frontend: &Frontend| -> Vec<String> {
        services.frontends()[frontend]
            .backends
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    assert_eq!(served(&services, &shared), ["10.244.0.2:8080"]);
    let young_cluster_ip = Frontend {
        ip: young.ip,
        ..frontend(80)
    };
    assert_eq!(served(&services, &young_cluster_ip), ["10.244.0.3:8080"]);
    assert_eq!(
        services.shadowed(Source::Kubernetes, &young),
        [(shared, "a/old".to_string())]
    );
    assert!(services.shadowed(Source::Kubernetes, &old).is_empty());
    assert_eq!(services.shadowed_claims(), 1);
    // An update of the younger one does not take the frontend over.
    let mut moved = young.clone();
    moved.ports[0].backends = vec!["10.244.0.4:8080".parse().unwrap()];
    services.upsert(Source::Kubernetes, moved).unwrap();
    assert_eq!(served(&services, &shared), ["10.244.0.2:8080"]);
    // The older one goes: the younger is served there.
    assert_eq!(
        services.withdraw(Some(Source::Kubernetes), "a/old"),
        vec![
            Frontend {
                ip: old.ip,
                ..frontend(80)
            },
            shared
        ]
    );
    assert_eq!(served(&services, &shared), ["10.244.0.4:8080"]);
    assert_eq!(services.shadowed_claims(), 0);
}

#[test]
fn a_refused_service_is_listed_with_its_reason_until_it_is_fixed() {
    let mut services = Services::default();
    let web = service("web", 80, &["10.244.0.2:8080"]);
    services.upsert(Source::Kubernetes, web.clone()).unwrap();
    let changed = services.refuse(Source::Kubernetes, web.clone(), "no good".into());
    assert_eq!(changed, vec![frontend(80)], "what it had is withdrawn");
    assert!(services.frontends().is_empty());
    let refused: Vec<_> = services.refused().collect();
    assert_eq!(refused, [(Source::Kubernetes, &web, "no good")]);
    services.upsert(Source::Kubernetes, web).unwrap();
    assert_eq!(services.refused().count(), 0);
    assert_eq!(services.frontends().len(), 1);
}

#[test]
fn terminating_endpoints_serve_where_none_is_ready_per_traffic_policy_and_are_not_counted_healthy()
{
    let node = ServingNode {
        ip: Some(Ipv4Addr::new(192, 0, 2, 10)),
        pod_cidr: Some("10.244.0.0/24".parse().unwrap()),
        zone: None,
    };
    // A ready endpoint on another node, a terminating one here.
    let mut spec = service("web", 80, &["10.244.1.2:8080"]);
    spec.ports[0].terminating_backends = vec!["10.244.0.2:8080".parse().unwrap()];
    spec.ports[0].node_port = Some(30080);
    spec.external_traffic_local = true;
    spec.internal_traffic_local = true;
    spec.health_check_node_port = Some(31000);
    let mut services = Services::on_node(node);
    services.upsert(Source::Kubernetes, spec.clone()).unwrap();
    let backends_at = |services: &Services, ip: [u8; 4], port: u16, scope: Scope| -> Vec<String> {
        services.frontends()[&Frontend {
            ip: Ipv4Addr::from(ip),
            port,
            protocol: Protocol::Tcp,
            scope,
        }]
            .backends
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    // Local policies: no local endpoint is ready, so the local terminating one.
    assert_eq!(
        backends_at(&services, [10, 96, 0, 10], 80, Scope::Everyone),
        ["10.244.0.2:8080"]
    );
    assert_eq!(
        backends_at(&services, [0; 4], 30080, Scope::OutsideLocal),
        ["10.244.0.2:8080"]
    );
    // Cluster-wide, one is ready: the terminating one is not used.
    assert_eq!(
        backends_at(&services, [0; 4], 30080, Scope::Everyone),
        ["10.244.1.2:8080"]
    );
    // The load balancer's check sees no ready local endpoint: 503, so it drains the node.
    assert_eq!(services.health_checks()[&31000].local_endpoints, 0);
    // Nothing ready anywhere: the terminating one cluster-wide too.
    spec.ports[0].backends.clear();
    services.upsert(Source::Kubernetes, spec).unwrap();
    assert_eq!(
        backends_at(&services, [0; 4], 30080, Scope::Everyone),
        ["10.244.0.2:8080"]
    );
}

#[test]
fn endpoints_hinted_for_the_nodes_zone_are_preferred_where_every_one_has_a_hint() {
    let in_zone = |zone: Option<&str>| ServingNode {
        ip: Some(Ipv4Addr::new(192, 0, 2, 10)),
        pod_cidr: Some("10.244.0.0/24".parse().unwrap()),
        zone: zone.map(Into::into),
    };
    let mut spec = service("web", 80, &["10.244.1.2:8080", "10.244.2.2:8080"]);
    let hint = |spec: &mut ServiceSpec, backend: &str, zone: &str| {
        spec.ports[0]
            .zone_hints
            .entry(backend.parse().unwrap())
            .or_default()
            .insert(zone.to_string());
    };
    hint(&mut spec, "10.244.1.2:8080", "zone-a");
    hint(&mut spec, "10.244.2.2:8080", "zone-b");
    let mut services = Services::on_node(in_zone(Some("zone-a")));
    services.upsert(Source::Kubernetes, spec.clone()).unwrap();
    let served = |services: &Services| services.frontends()[&frontend(80)].backends.len();
    assert_eq!(served(&services), 1, "only zone-a's");
    // The node's zone changes: the frontends follow.
    assert_eq!(
        services.serve_on(in_zone(Some("zone-c"))),
        vec![frontend(80)]
    );
    assert_eq!(served(&services), 2, "none for zone-c: all of them");
    services.serve_on(in_zone(None));
    assert_eq!(served(&services), 2, "zone unknown: all of them");
    // One endpoint without a hint (a half-updated slice): all of them.
    services.serve_on(in_zone(Some("zone-a")));
    spec.ports[0]
        .backends
        .push("10.244.3.2:8080".parse().unwrap());
    services.upsert(Source::Kubernetes, spec).unwrap();
    assert_eq!(served(&services), 3);
}

#[test]
fn load_balancer_source_ranges_limit_the_load_balancer_ips_only() {
    let node = ServingNode {
        ip: Some(Ipv4Addr::new(192, 0, 2, 10)),
        ..ServingNode::default()
    };
    let mut spec = service("lb", 80, &["10.244.1.2:8080"]);
    spec.ports[0].node_port = Some(30080);
    spec.external_ips = vec![Ipv4Addr::new(198, 51, 100, 1)];
    spec.load_balancer_ips = vec![Ipv4Addr::new(203, 0, 113, 1)];
    spec.source_ranges = vec!["192.0.2.0/24".parse().unwrap()];
    let ranged: Vec<(Ipv4Addr, bool)> = spec
        .frontends(&node)
        .map(|(frontend, target)| (frontend.ip, !target.source_ranges.is_empty()))
        .collect();
    assert_eq!(
        ranged,
        [
            (Ipv4Addr::new(10, 96, 0, 10), false),
            (Ipv4Addr::new(198, 51, 100, 1), false),
            (Ipv4Addr::new(203, 0, 113, 1), true),
            (Ipv4Addr::UNSPECIFIED, false),
        ]
    );
    // An address listed as both is one frontend too many.
    spec.load_balancer_ips.push(Ipv4Addr::new(198, 51, 100, 1));
    assert_eq!(spec.validate(&[]).unwrap_err().0, "load_balancer_ips");
}

#[test]
fn a_pod_cidrs_network_and_broadcast_addresses_are_no_pods() {
    let cidrs = PodCidrs {
        ipv4: Some("10.244.0.0/24".parse().unwrap()),
        ipv6: None,
    };
    let endpoint = |ip: [u8; 4]| EndpointSpec {
        ip: Ipv4Addr::from(ip).into(),
        interface: HostInterface::Name("veth0".into()),
        mac: MacAddr6::new(0x02, 0, 0, 0, 0, 1),
        pod: None,
    };
    for (ip, role) in [
        ([10, 244, 0, 0], "network"),
        ([10, 244, 0, 255], "broadcast"),
    ] {
        let (field, problem) = validate_endpoint(&endpoint(ip), &cidrs).expect_err(role);
        assert_eq!(field, "ip");
        assert!(problem.contains(role), "{problem}");
    }
    assert!(validate_endpoint(&endpoint([10, 244, 0, 254]), &cidrs).is_ok());
}

#[test]
fn nodes_need_a_unicast_address_and_a_pod_cidr_without_host_bits() {
    let set = NodeSet::default();
    for ip in [
        [0, 0, 0, 0],
        [224, 0, 0, 1],
        [255, 255, 255, 255],
        [127, 0, 0, 1],
    ] {
        let (field, _) = set.check(&node(ip, "10.244.9.0/24"), &local()).unwrap_err();
        assert_eq!(field, "ip", "{ip:?}");
    }
    let (field, problem) = set
        .check(&node([192, 0, 2, 20], "10.244.54.7/24"), &local())
        .unwrap_err();
    assert_eq!(field, "pod_cidr");
    assert!(problem.contains("10.244.54.0/24"), "{problem}");
}

#[test]
fn a_service_name_has_a_bound() {
    let long = service(&"n".repeat(service_rules::MAX_NAME_LEN + 1), 80, &[]);
    assert_eq!(long.validate(&[]).unwrap_err().0, "name");
}

#[test]
fn addresses_of_either_family_are_read_and_ipv6_refused_in_one_place() {
    use super::family::{IPV6_NOT_SUPPORTED, parse};
    assert_eq!(
        parse::<Ipv4Addr>("10.0.0.1"),
        Ok(Ipv4Addr::new(10, 0, 0, 1))
    );
    assert_eq!(
        parse::<std::net::SocketAddrV4>("10.0.0.1:80")
            .unwrap()
            .port(),
        80
    );
    for refused in [
        parse::<Ipv4Addr>("fd00::1").unwrap_err(),
        parse::<Ipv4Network>("fd00::/64").unwrap_err(),
        parse::<std::net::SocketAddrV4>("[fd00::1]:80").unwrap_err(),
    ] {
        assert!(refused.ends_with(IPV6_NOT_SUPPORTED), "{refused}");
    }
    assert!(
        !parse::<Ipv4Addr>("example")
            .unwrap_err()
            .contains(IPV6_NOT_SUPPORTED)
    );
    // A pod's addresses are of either family: one endpoint each.
    let endpoint = serde_json::from_value::<EndpointSpec>(serde_json::json!({
        "ip": "fd00::5", "interface": "veth1", "mac": "02:00:00:00:00:01"
    }))
    .unwrap();
    assert_eq!(validate_endpoint(&endpoint, &PodCidrs::default()), Ok(()));
    for (no_pod, kind) in [
        ("fe80::5", "link-local"),
        ("ff02::1", "multicast"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("::ffff:10.0.0.1", "IPv4-mapped"),
    ] {
        let endpoint = EndpointSpec {
            ip: no_pod.parse().unwrap(),
            ..endpoint.clone()
        };
        let (field, problem) = validate_endpoint(&endpoint, &PodCidrs::default()).unwrap_err();
        assert_eq!(field, "ip");
        assert!(problem.contains(kind), "{problem}");
    }
    // With an IPv6 pod CIDR, a pod's IPv6 address is in it.
    let cidrs = PodCidrs {
        ipv4: None,
        ipv6: Some("fd00::/64".parse().unwrap()),
    };
    assert_eq!(validate_endpoint(&endpoint, &cidrs), Ok(()));
    let outside = EndpointSpec {
        ip: "fd00:1::5".parse().unwrap(),
        ..endpoint
    };
    let (field, problem) = validate_endpoint(&outside, &cidrs).unwrap_err();
    assert_eq!(field, "ip");
    assert!(
        problem.contains("outside the node's IPv6 pod CIDR fd00::/64"),
        "{problem}"
    );
}
