//! The dataplane's mirrors and the reconciler over fake maps and links:
//! rollbacks, full maps, injected write failures and their retries.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
};

use dataplane_common::{MAX_HOST_ADDRESSES, names};
use ipnetwork::Ipv4Network;

use super::{
    Dataplane, FrontendSettings,
    fake::{FailingInterfaces, FakeLinks},
};
use crate::{
    interfaces::Interface,
    maps::{Maps, MapsError, ProgrammedNode, backend_entry, fake::Faults, service_key},
    model::{Frontend, LocalFacts, NodePath, NodeSet, NodeSpec, Protocol, Scope},
    state::{DesiredNodes, Reconciler},
};

struct Fixture {
    dataplane: Dataplane,
    faults: Faults,
    failing: FailingInterfaces,
}

fn fixture() -> Fixture {
    let (faults, failing) = (Faults::default(), FailingInterfaces::default());
    let dataplane = Dataplane::with(Maps::fake(&faults), Box::new(FakeLinks::new(&failing)))
        .expect("empty fake maps");
    Fixture {
        dataplane,
        faults,
        failing,
    }
}

fn veth(index: u32) -> Interface {
    Interface {
        index,
        name: format!("veth{index}"),
        mac: [2, 0, 0, 0, 0, index as u8],
        mtu: 1500,
        peer_index: None,
    }
}

const POD: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 244, 0, 2));

#[test]
fn only_veths_with_an_ipv6_endpoint_are_noted_for_link_local_answers() {
    let mut fixture = fixture();
    let ipv6: IpAddr = "fd00:10:244::2".parse().unwrap();
    let dataplane = &mut fixture.dataplane;
    dataplane.add_endpoint(POD, &veth(7), [1; 6]).unwrap();
    assert_eq!(dataplane.host_veths().unwrap(), vec![]);
    dataplane.add_endpoint(ipv6, &veth(7), [1; 6]).unwrap();
    assert_eq!(dataplane.host_veths().unwrap(), vec![(7, veth(7).mac)]);
    // The IPv6 address gone, the IPv4 one still there: no longer noted.
    dataplane.remove_endpoint(ipv6).unwrap();
    assert_eq!(dataplane.host_veths().unwrap(), vec![]);
    // An IPv6 endpoint that cannot be written leaves no note behind.
    fixture.faults.fail_writes(names::ENDPOINTS6_MAP, 1);
    let dataplane = &mut fixture.dataplane;
    assert!(dataplane.add_endpoint(ipv6, &veth(7), [1; 6]).is_err());
    assert_eq!(dataplane.host_veths().unwrap(), vec![]);
    assert!(
        dataplane.is_attached(7),
        "the IPv4 endpoint keeps its programs"
    );
}

#[test]
fn an_endpoint_attaches_both_programs_and_a_failed_write_leaves_nothing_attached() {
    let mut fixture = fixture();
    let dataplane = &mut fixture.dataplane;
    dataplane.add_endpoint(POD, &veth(7), [1; 6]).unwrap();
    assert!(dataplane.is_attached(7));
    assert_eq!(dataplane.attachments().len(), 2);
    assert_eq!(dataplane.endpoints().unwrap().len(), 1);

    fixture.faults.fail_writes(names::ENDPOINTS_MAP, 1);
    let other = IpAddr::V4(Ipv4Addr::new(10, 244, 0, 3));
    assert!(dataplane.add_endpoint(other, &veth(8), [1; 6]).is_err());
    assert!(!dataplane.is_attached(8), "rolled back");
    assert_eq!(dataplane.endpoint(other), None);
    // The same write again succeeds (what the CNI plugin's retry does).
    dataplane.add_endpoint(other, &veth(8), [1; 6]).unwrap();
    assert!(dataplane.is_attached(8));
}

#[test]
fn an_endpoint_moved_to_another_veth_leaves_the_old_one_without_programs() {
    let mut fixture = fixture();
    let dataplane = &mut fixture.dataplane;
    dataplane.add_endpoint(POD, &veth(7), [1; 6]).unwrap();
    dataplane.add_endpoint(POD, &veth(9), [1; 6]).unwrap();
    assert!(!dataplane.is_attached(7));
    assert!(dataplane.is_attached(9));
    assert_eq!(dataplane.endpoints_behind(7), Vec::<IpAddr>::new());
    assert!(dataplane.remove_endpoint(POD).unwrap());
    assert!(dataplane.attachments().is_empty());
    assert!(!dataplane.remove_endpoint(POD).unwrap(), "idempotent");
}

#[test]
fn a_veth_that_cannot_take_the_second_program_keeps_neither() {
    let mut fixture = fixture();
    // Ingress attaches, egress does not: the ingress program goes again.
    fixture.failing.fail(7, true);
    assert!(
        fixture
            .dataplane
            .add_endpoint(POD, &veth(7), [1; 6])
            .is_err()
    );
    assert!(fixture.dataplane.attachments().is_empty());
    assert!(fixture.dataplane.endpoints().unwrap().is_empty());
}

#[test]
fn the_host_address_set_keeps_what_fit_when_the_map_is_full_and_retries_other_failures() {
    let mut fixture = fixture();
    let dataplane = &mut fixture.dataplane;
    let too_many: BTreeSet<IpAddr> = (0..=MAX_HOST_ADDRESSES)
        .map(|index| Ipv4Addr::from(0x0a00_0000 + index).into())
        .collect();
    match dataplane.set_host_addresses(too_many.clone()) {
        Err(super::DataplaneError::Maps(MapsError::HostAddressesFull { missing })) => {
            assert_eq!(missing, 1);
        }
        other => panic!("expected a full map, got {other:?}"),
    }
    // Kept as wanted: the same set again writes nothing (no spinning).
    assert!(!dataplane.set_host_addresses(too_many).unwrap());

    let few: BTreeSet<IpAddr> = [Ipv4Addr::new(192, 0, 2, 10).into()].into();
    fixture.faults.fail_writes(names::HOST_ADDRESSES_MAP, 1);
    assert!(dataplane.set_host_addresses(few.clone()).is_err());
    assert!(dataplane.set_host_addresses(few).unwrap(), "tried again");
}

fn node(ip: [u8; 4], pod_cidr: &str) -> NodeSpec {
    NodeSpec::ipv4(Ipv4Addr::from(ip), pod_cidr.parse().unwrap())
}

#[test]
fn node_writes_that_fail_are_retried_and_a_new_pod_cidr_replaces_the_route() {
    let mut fixture = fixture();
    let local = LocalFacts {
        tunnel: true,
        node_ip: Some(Ipv4Addr::new(192, 0, 2, 10)),
        pod_cidr: Some("10.244.0.0/24".parse().unwrap()),
        ..LocalFacts::default()
    };
    let mut nodes = NodeSet::default();
    let spec = node([192, 0, 2, 11], "10.244.1.0/24");
    nodes.insert(spec, &local).unwrap();
    let macs = BTreeMap::new();
    let mut reconciler = Reconciler::default();

    fixture.faults.fail_writes(names::NODE_ROUTES_MAP, 1);
    let desired = DesiredNodes {
        nodes: &nodes,
        local: &local,
        macs: &macs,
    };
    assert!(
        reconciler
            .write_nodes(&mut fixture.dataplane, &desired, &[spec.ip])
            .is_err()
    );
    assert_eq!(reconciler.failed_nodes(), vec![spec.ip]);
    // The failed route took its node entry back out: no half-programmed node.
    assert_eq!(fixture.dataplane.programmed_node(spec.ip), None);
    reconciler.retry_nodes(&mut fixture.dataplane, &desired);
    assert!(reconciler.failed_nodes().is_empty());
    assert_eq!(
        fixture.dataplane.programmed_node(spec.ip),
        Some(ProgrammedNode {
            pod_cidr: spec.pod_cidr,
            pod_cidr_ipv6: None,
            path: NodePath::Tunnel,
            mac: None,
        })
    );

    nodes.remove(spec.ip);
    let moved = node([192, 0, 2, 11], "10.244.7.0/24");
    nodes.insert(moved, &local).unwrap();
    let desired = DesiredNodes {
        nodes: &nodes,
        local: &local,
        macs: &macs,
    };
    reconciler
        .write_nodes(&mut fixture.dataplane, &desired, &[spec.ip])
        .unwrap();
    let programmed: Vec<Ipv4Network> = fixture
        .dataplane
        .maps
        .remote_nodes()
        .unwrap()
        .into_iter()
        .map(|(_, node)| node.pod_cidr)
        .collect();
    assert_eq!(programmed, vec![moved.pod_cidr]);
}

fn frontend() -> Frontend {
    Frontend {
        ip: Ipv4Addr::new(10, 96, 0, 10),
        port: 80,
        protocol: Protocol::Tcp,
        scope: Scope::Everyone,
    }
}

fn backends(last_octets: &[u8]) -> BTreeSet<dataplane_common::Backend> {
    last_octets
        .iter()
        .map(|octet| backend_entry(SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, *octet), 8080)))
        .collect()
}

#[test]
fn a_frontend_whose_slots_fail_to_write_is_written_whole_on_the_next_try() {
    let mut fixture = fixture();
    let key = service_key(&frontend());
    let dataplane = &mut fixture.dataplane;
    dataplane
        .program_service(key, Some(&backends(&[2, 3])), FrontendSettings::default())
        .unwrap();
    let first = dataplane.programmed_services()[&key].clone();

    fixture.faults.fail_writes(names::BACKENDS_MAP, 1);
    let wanted = backends(&[2, 4, 5]);
    assert!(
        dataplane
            .program_service(key, Some(&wanted), FrontendSettings::default())
            .is_err()
    );
    assert_eq!(
        dataplane.programmed_services()[&key],
        first,
        "the mirror keeps what was written before"
    );
    dataplane
        .program_service(key, Some(&wanted), FrontendSettings::default())
        .unwrap();
    let programmed = &dataplane.programmed_services()[&key];
    assert_eq!(programmed.id, first.id);
    // Backend 2 kept its slot; 4 and 5 took 3's and a new one.
    assert_eq!(programmed.backends[0], first.backends[0]);
    assert_eq!(
        programmed.backends.iter().copied().collect::<BTreeSet<_>>(),
        wanted
    );
    let slots = dataplane.backend_slots().unwrap();
    assert_eq!(slots.len(), 3);

    dataplane
        .program_service(key, None, FrontendSettings::default())
        .unwrap();
    assert!(dataplane.programmed_services().is_empty());
    assert!(dataplane.backend_slots().unwrap().is_empty());
}

/// A policy world where x's pods take ingress from y's pods at TCP 80 only.
fn policy_world() -> crate::model::policy::PolicyWorld {
    use crate::model::policy::{PodFacts, PolicyWorld};
    let mut world = PolicyWorld::default();
    for (namespace, name, last) in [("x", "a", 2), ("y", "b", 3)] {
        world.set_pod(PodFacts {
            namespace: namespace.into(),
            name: name.into(),
            ips: vec![Ipv4Addr::new(10, 244, 0, last).into()],
            ..PodFacts::default()
        });
    }
    world.set_policy(
        serde_json::from_value(serde_json::json!({
            "namespace": "x", "name": "from-y",
            "ingress": [{"peers": [{"pods": {"namespace_selector": {}}}],
                         "ports": [{"protocol": "TCP", "port": 80},
                                   {"protocol": "UDP", "port": 8000, "end_port": 8003}]}],
        }))
        .unwrap(),
    );
    world
}

#[test]
fn policy_goes_into_the_idle_table_whole_and_a_full_map_only_ever_allows_less() {
    use crate::maps::PolicyTable;
    use dataplane_common::{
        POLICY_PORT_PREFIX, POLICY_TABLE_BIT, policy_rule_prefix, policy_table,
    };
    let mut fixture = fixture();
    let dataplane = &mut fixture.dataplane;
    let compiled = policy_world().compile(&[POD]);
    assert_eq!(dataplane.policy_switch().generation, 0);
    // The programs read table 0: the change goes into table 1, its ids
    // tagged with it, and the active table is untouched.
    let idle = policy_table(1);
    let wanted = PolicyTable::of(&compiled, idle);
    assert_eq!(wanted.subjects.len(), 1, "{wanted:?}");
    assert!(
        wanted
            .subjects
            .values()
            .all(|s| s.id & POLICY_TABLE_BIT != 0)
    );
    assert!(!wanted.rules.is_empty() && !wanted.classes.is_empty());
    // The single port in the hash, the range (a port prefix) in the trie:
    // read back whole, as one table.
    let prefixes: BTreeSet<u32> = wanted.rules.iter().map(|(prefix, _)| *prefix).collect();
    assert_eq!(
        prefixes,
        BTreeSet::from([policy_rule_prefix(14), POLICY_PORT_PREFIX])
    );
    dataplane.write_idle_policy(&wanted).unwrap();
    assert_eq!(*dataplane.active_policy(), PolicyTable::default());
    assert_eq!(dataplane.maps.policy.programmed().unwrap()[1], wanted);
    // Written again unchanged: nothing to write, nothing fails.
    fixture.faults.fail_writes(names::POLICY_RULES_MAP, 100);
    fixture.faults.fail_writes(names::POLICY_PORTS_MAP, 100);
    fixture.dataplane.write_idle_policy(&wanted).unwrap();
    // Its entries do not fit (either map): the pod is isolated with what
    // did (less).
    for map in [names::POLICY_RULES_MAP, names::POLICY_PORTS_MAP] {
        let mut fixture = self::fixture();
        fixture.faults.fill(map, 100);
        let partial = fixture.dataplane.write_idle_policy(&wanted).unwrap_err();
        assert!(partial.error.is_full(), "{map}: {}", partial.error);
        assert_eq!(partial.pods, BTreeSet::from([POD]));
        let written = &fixture.dataplane.maps.policy.programmed().unwrap()[1];
        assert_eq!(written.subjects, wanted.subjects, "isolated all the same");
        assert_eq!(written.rules.len(), wanted.rules.len() - 1, "{map}");
    }
    // Its classes (the pods' own addresses', in the hash) do not fit: every
    // isolated pod denies everything.
    let mut fixture = self::fixture();
    fixture.faults.fill(names::POLICY_HOSTS_MAP, 1);
    let partial = fixture.dataplane.write_idle_policy(&wanted).unwrap_err();
    assert_eq!(partial.pods, BTreeSet::from([POD]));
    let written = &fixture.dataplane.maps.policy.programmed().unwrap()[1];
    assert_eq!(*written, wanted.denying_all());
    assert!(
        written
            .subjects
            .values()
            .all(|s| s.ingress == 1 && s.egress == 1)
    );
}
