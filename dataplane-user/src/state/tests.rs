// Above 400 lines: one unit test per state owner command, over shared fakes.
//! The state owner over fake maps, links and host: every command through
//! the handle the sources use, injected write failures and their retries.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
    time::Duration,
};

use dataplane_common::{MAX_SERVICE_FLOWS, MAX_SOCKET_FLOWS, names};
use macaddr::MacAddr6;

use super::{
    Command, NatTable, NodeFacts, Owner, ServiceTables, StateHandle, Tables, UplinkFacts,
    error_kind, fake_host::FakeHost,
};
use crate::{
    api::ErrorKind,
    config::Config,
    dataplane::{
        Dataplane,
        fake::{FailingInterfaces, FakeLinks},
    },
    maps::{
        Maps,
        fake::{FakeTable, Faults},
    },
    model::{
        EndpointSpec, HostInterface, NodeSpec, PodName, ServiceSpec, Source,
        policy::{Connection, Decision, PodFacts, PolicyProtocol, SharedPolicies},
    },
    nat::Timeouts,
};

const UPLINK: u32 = 2;
const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 2);

struct Lab {
    state: StateHandle,
    host: FakeHost,
    faults: Faults,
    /// The policy model, as its source writes it.
    policies: SharedPolicies,
}

fn config(routing: &str) -> Config {
    let text = format!(
        "[agent]\nbpf_root = \"/sys/fs/bpf/unit\"\n\n[node]\npod_cidr = \"10.244.0.0/24\"\n\
         cluster_cidr = \"10.244.0.0/16\"\nuplink = \"eth0\"\nrouting = \"{routing}\"\n"
    );
    Config::parse(&text, Path::new("unit.toml")).expect("a valid config")
}

/// An owner on a node with an uplink on 192.0.2.0/24, started the way the
/// agent starts it.
fn lab(routing: &str) -> Lab {
    let config = config(routing);
    let (faults, host) = (Faults::default(), FakeHost::default());
    host.add_link(UPLINK, "eth0");
    host.set_uplink_networks(&["192.0.2.0/24".parse().unwrap()]);
    let mut settings = config.node.clone();
    settings.node_ip = Some(NODE_IP);
    let facts = NodeFacts {
        settings,
        node_ipv6_configured: false,
        uplink: Some(UplinkFacts {
            ifindex: UPLINK,
            mac: [0x02, 0, 0, 0, 2, 0x10],
            mtu: 1500,
            tunnel_mtu: 1450,
        }),
        uplink_networks: vec!["192.0.2.0/24".parse().unwrap()],
        masquerading: true,
        nat: config.nat.clone(),
        host_netns_cookie: 1,
        sources: Vec::new(),
    };
    let mut maps = Maps::fake(&faults);
    let timeouts = Timeouts::from(&config.nat);
    let nat = NatTable::new(
        maps.take_nat().expect("fake NAT tables"),
        timeouts,
        u64::from(config.nat.pod_connection_limit()),
    );
    let dataplane = Dataplane::with(
        maps,
        Box::new(FakeLinks::new(&FailingInterfaces::default())),
    )
    .unwrap();
    let tables = Tables {
        flows: Box::new(FakeTable::new(
            names::SERVICE_FLOWS_MAP,
            MAX_SERVICE_FLOWS,
            &faults,
        )),
        sockets: Box::new(FakeTable::new(
            names::SOCKET_FLOWS_MAP,
            MAX_SOCKET_FLOWS,
            &faults,
        )),
    };
    let owner = Owner::new(
        facts,
        host.clone(),
        dataplane,
        nat,
        ServiceTables::with(tables, timeouts),
    );
    let policies = owner.policies();
    Lab {
        state: StateHandle::spawn(owner),
        host,
        faults,
        policies,
    }
}

fn endpoint(ip: Ipv4Addr, veth: &str) -> EndpointSpec {
    EndpointSpec {
        ip: ip.into(),
        interface: HostInterface::Name(veth.into()),
        mac: MacAddr6::new(2, 1, 1, 1, 1, 1),
        pod: None,
    }
}

fn node(last: u8, pod_cidr: &str) -> NodeSpec {
    NodeSpec::ipv4(Ipv4Addr::new(192, 0, 2, last), pod_cidr.parse().unwrap())
}

fn service(json: serde_json::Value) -> ServiceSpec {
    serde_json::from_value(json).expect("a valid Service")
}

fn web(backends: &[&str]) -> ServiceSpec {
    service(serde_json::json!({
        "name": "default/web",
        "ip": "10.96.0.10",
        "ports": [{"port": 80, "protocol": "tcp", "backends": backends}],
    }))
}

impl Lab {
    async fn endpoints(&self) -> Vec<(std::net::IpAddr, bool)> {
        self.state
            .ask(Command::Endpoints)
            .await
            .unwrap()
            .into_iter()
            .map(|entry| (entry.ip, entry.attached))
            .collect()
    }

    async fn nodes(&self) -> Vec<Ipv4Addr> {
        let nodes = self.state.ask(Command::Nodes).await.unwrap();
        nodes.into_iter().map(|entry| entry.ip).collect()
    }

    async fn frontends(&self) -> Vec<String> {
        let (frontends, _) = self.state.ask(Command::ServiceMaps).await.unwrap();
        frontends
            .into_iter()
            .map(|entry| {
                let backends: Vec<String> =
                    entry.backends.iter().map(ToString::to_string).collect();
                format!("{} -> {}", entry.frontend, backends.join(","))
            })
            .collect()
    }
}

#[tokio::test]
async fn endpoints_are_added_listed_and_removed_only_from_their_own_veth() {
    let lab = lab("tunnel");
    let veth = lab.host.add_link(7, "veth7");
    lab.state
        .add_endpoint(endpoint(POD, "veth7"))
        .await
        .unwrap();
    assert_eq!(lab.endpoints().await, vec![(POD.into(), true)]);

    let unknown = lab
        .state
        .add_endpoint(endpoint(Ipv4Addr::new(10, 244, 0, 3), "nope"))
        .await
        .unwrap_err();
    assert!(format!("{unknown:#}").contains("nope"), "{unknown:#}");
    assert_eq!(error_kind(&unknown), ErrorKind::Refused);
    // A full map is no refusal: the CNI plugin says "try again later".
    lab.host.add_link(5, "veth5");
    lab.faults.fill(names::ENDPOINTS_MAP, 1);
    let full = lab
        .state
        .add_endpoint(endpoint(Ipv4Addr::new(10, 244, 0, 5), "veth5"))
        .await
        .unwrap_err();
    assert_eq!(error_kind(&full), ErrorKind::Full, "{full:#}");
    // The address is behind a live veth: another veth cannot take it.
    lab.host.add_link(8, "veth8");
    assert!(
        lab.state
            .add_endpoint(endpoint(POD, "veth8"))
            .await
            .is_err()
    );

    assert!(
        !lab.state
            .remove_endpoint(POD.into(), Some(8))
            .await
            .unwrap()
    );
    assert_eq!(
        lab.endpoints().await.len(),
        1,
        "kept: asked for another veth"
    );
    assert!(
        lab.state
            .remove_endpoint(POD.into(), Some(veth.index))
            .await
            .unwrap()
    );
    assert!(lab.endpoints().await.is_empty());
    let status = lab.state.ask(Command::Status).await.unwrap();
    assert_eq!((status.endpoints, status.attachments.len()), (0, 0));
}

#[tokio::test]
async fn a_deleted_veth_takes_its_endpoints_and_a_resync_finds_one_missed() {
    let lab = lab("tunnel");
    lab.host.add_link(7, "veth7");
    lab.host.add_link(9, "veth9");
    let other = Ipv4Addr::new(10, 244, 0, 9);
    lab.state
        .add_endpoint(endpoint(POD, "veth7"))
        .await
        .unwrap();
    lab.state
        .add_endpoint(endpoint(other, "veth9"))
        .await
        .unwrap();

    lab.host.remove_link(7);
    lab.state.tell(Command::InterfaceRemoved(7)).await.unwrap();
    assert_eq!(lab.endpoints().await, vec![(other.into(), true)]);

    // Gone without a notification: the resync notices.
    lab.host.remove_link(9);
    lab.state.ask(Command::ResyncHost).await.unwrap();
    assert!(lab.endpoints().await.is_empty());
}

#[tokio::test]
async fn the_node_addresses_are_followed() {
    let lab = lab("tunnel");
    lab.host
        .set_addresses(&[NODE_IP, Ipv4Addr::new(198, 51, 100, 4)]);
    lab.state.ask(Command::SyncHostAddresses).await.unwrap();
    let status = lab.state.ask(Command::Status).await.unwrap();
    let fill = |name: &str| {
        status
            .maps
            .iter()
            .find(|fill| fill.name == name)
            .map(|fill| fill.entries)
    };
    assert_eq!(fill("HOST_ADDRESSES"), Some(2), "{:?}", status.maps);
}

#[tokio::test]
async fn the_node_ipv6_address_follows_the_uplinks() {
    let lab = lab("tunnel");
    let node_ipv6 = |status: &crate::api::Status| status.node_ipv6;
    assert_eq!(
        node_ipv6(&lab.state.ask(Command::Status).await.unwrap()),
        None
    );
    // SLAAC done after start: taken.
    let (first, second): (Ipv6Addr, Ipv6Addr) = (
        "2001:db8::10".parse().unwrap(),
        "2001:db8::11".parse().unwrap(),
    );
    lab.host.set_uplink_ipv6(&[first]);
    lab.state.ask(Command::SyncHostAddresses).await.unwrap();
    assert_eq!(
        node_ipv6(&lab.state.ask(Command::Status).await.unwrap()),
        Some(first)
    );
    // Kept while the uplink has it, even when another comes first.
    lab.host.set_uplink_ipv6(&[second, first]);
    lab.state.ask(Command::SyncHostAddresses).await.unwrap();
    assert_eq!(
        node_ipv6(&lab.state.ask(Command::Status).await.unwrap()),
        Some(first)
    );
    // Removed: the next one; none left: none.
    lab.host.set_uplink_ipv6(&[second]);
    lab.state.ask(Command::SyncHostAddresses).await.unwrap();
    assert_eq!(
        node_ipv6(&lab.state.ask(Command::Status).await.unwrap()),
        Some(second)
    );
    lab.host.set_uplink_ipv6(&[]);
    lab.state.ask(Command::SyncHostAddresses).await.unwrap();
    assert_eq!(
        node_ipv6(&lab.state.ask(Command::Status).await.unwrap()),
        None
    );
}

#[tokio::test]
async fn nodes_come_and_go_per_source_and_a_broken_one_is_refused_alone() {
    let lab = lab("tunnel");
    let (first, second) = (node(11, "10.244.1.0/24"), node(12, "10.244.2.0/24"));
    lab.state.upsert_node(Source::Api, first).await.unwrap();
    assert_eq!(lab.nodes().await, vec![first.ip]);
    // Another node claiming the same pod CIDR breaks a rule.
    let overlapping = node(13, "10.244.1.0/24");
    let refused = lab
        .state
        .upsert_node(Source::Api, overlapping)
        .await
        .unwrap_err();
    assert_eq!(error_kind(&refused), ErrorKind::Refused, "{refused:#}");

    lab.state
        .replace_nodes(Source::Kubernetes, vec![second])
        .await
        .unwrap();
    assert_eq!(lab.nodes().await, vec![first.ip, second.ip]);
    assert!(
        lab.state
            .withdraw_node(Some(Source::Api), first.ip)
            .await
            .unwrap()
    );
    assert!(
        !lab.state
            .withdraw_node(Some(Source::Api), first.ip)
            .await
            .unwrap()
    );
    assert_eq!(lab.nodes().await, vec![second.ip]);
}

#[tokio::test(start_paused = true)]
async fn a_node_whose_write_fails_is_programmed_by_the_retry_and_learns_its_mac() {
    let lab = lab("direct");
    let remote = node(11, "10.244.1.0/24");
    lab.faults.fail_writes(names::REMOTE_NODES_MAP, 1);
    let refused = lab
        .state
        .upsert_node(Source::Api, remote)
        .await
        .unwrap_err();
    assert!(format!("{refused:#}").contains("retried"), "{refused:#}");
    assert_eq!(error_kind(&refused), ErrorKind::Failed);
    let programmed = |lab: &Lab| {
        let state = lab.state.clone();
        async move { state.ask(Command::Status).await.unwrap().direct_nodes }
    };
    // (Paused time jumps to the retry whenever every task waits: the
    // refusal above is what shows the first write failed.)
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(programmed(&lab).await, 1, "programmed by the retry");

    let mac = [2, 9, 9, 9, 9, 9];
    lab.state
        .tell(Command::NeighbourResolved {
            ifindex: UPLINK,
            ip: remote.ip,
            mac,
        })
        .await
        .unwrap();
    let nodes = lab.state.ask(Command::Nodes).await.unwrap();
    assert_eq!(nodes[0].mac, Some(MacAddr6::from(mac)));
}

#[tokio::test(start_paused = true)]
async fn services_are_programmed_replaced_withdrawn_and_a_failed_write_is_retried() {
    let lab = lab("tunnel");
    lab.state
        .ask(|reply| Command::UpsertService(Source::Api, web(&["10.244.1.2:8080"]), reply))
        .await
        .unwrap();
    assert_eq!(
        lab.frontends().await,
        vec!["10.96.0.10:80/tcp -> 10.244.1.2:8080"]
    );
    let listed = lab.state.ask(Command::Services).await.unwrap();
    assert_eq!(
        (listed.len(), listed[0].source, listed[0].refused.clone()),
        (1, Source::Api, None)
    );

    lab.faults.fail_writes(names::BACKENDS_MAP, 1);
    let changed = web(&["10.244.1.2:8080", "10.244.1.3:8080"]);
    let failed = lab
        .state
        .ask(|reply| Command::UpsertService(Source::Api, changed, reply))
        .await;
    assert!(format!("{failed:?}").contains("retried"), "{failed:?}");
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        lab.frontends().await,
        vec!["10.96.0.10:80/tcp -> 10.244.1.2:8080,10.244.1.3:8080"],
        "written whole by the retry"
    );

    let other = service(serde_json::json!({
        "name": "default/dns",
        "ip": "10.96.0.53",
        "ports": [{"port": 53, "protocol": "udp", "backends": ["10.244.1.9:53"]}],
    }));
    lab.state
        .ask(|reply| Command::ReplaceServices(Source::Kubernetes, vec![other], reply))
        .await
        .unwrap();
    assert_eq!(lab.frontends().await.len(), 2);
    assert!(
        lab.state
            .ask(|reply| Command::WithdrawService(None, "default/web".into(), reply))
            .await
            .unwrap()
    );
    assert_eq!(
        lab.frontends().await,
        vec!["10.96.0.53:53/udp -> 10.244.1.9:53"]
    );
    let sizes = lab.state.ask(Command::Tables).await.unwrap();
    assert_eq!((sizes.service_frontends, sizes.service_backends), (1, 1));
}

#[tokio::test]
async fn the_config_file_is_applied_as_a_whole_or_not_at_all() {
    let lab = lab("tunnel");
    lab.host.add_link(7, "veth7");
    let nodes = vec![node(11, "10.244.1.0/24")];
    let endpoints = vec![endpoint(POD, "veth7")];
    let services = vec![web(&["10.244.1.2:8080"])];
    lab.state
        .ask(|reply| Command::ApplyConfigFile {
            nodes: nodes.clone(),
            endpoints: endpoints.clone(),
            services: services.clone(),
            reply,
        })
        .await
        .unwrap();
    assert_eq!(lab.nodes().await.len(), 1);
    assert_eq!(lab.endpoints().await, vec![(POD.into(), true)]);
    let listed = lab.state.ask(Command::Services).await.unwrap();
    assert_eq!(listed[0].source, Source::ConfigFile);

    // An endpoint on a veth that does not exist: nothing of the file changes.
    let broken = vec![endpoint(Ipv4Addr::new(10, 244, 0, 5), "gone")];
    assert!(
        lab.state
            .ask(|reply| Command::ApplyConfigFile {
                nodes: Vec::new(),
                endpoints: broken,
                services: Vec::new(),
                reply,
            })
            .await
            .is_err()
    );
    assert_eq!(lab.nodes().await.len(), 1);
    assert_eq!(lab.state.ask(Command::Services).await.unwrap().len(), 1);
}

#[tokio::test]
async fn this_nodes_pod_cidr_learned_late_is_used_and_the_readers_are_answered() {
    let lab = lab("tunnel");
    lab.state
        .tell(Command::LocalNode {
            pod_cidr: "10.244.5.0/24".parse().unwrap(),
            pod_cidr_ipv6: Some("fd00:10:244:5::/64".parse().unwrap()),
            zone: Some("zone-a".into()),
        })
        .await
        .unwrap();
    let status = lab.state.ask(Command::Status).await.unwrap();
    assert_eq!(status.pod_cidr, Some("10.244.5.0/24".parse().unwrap()));
    assert_eq!(
        status.pod_cidr_ipv6,
        Some("fd00:10:244:5::/64".parse().unwrap())
    );
    assert_eq!(status.pod_mtu, Some(1450));

    let counters = lab.state.ask(Command::Counters).await.unwrap();
    assert!(!counters.is_empty());
    assert!(counters.iter().all(|counter| counter.packets == 0));
    lab.state
        .ask(|reply| Command::Watch(true, reply))
        .await
        .unwrap();
    lab.state.tell(Command::Unwatch(true)).await.unwrap();
    // Still answering after the monitor went.
    assert!(lab.state.ask(Command::Tables).await.is_ok());
}

#[tokio::test]
async fn policies_are_reported_per_pod_and_explained_per_connection() {
    let lab = lab("tunnel");
    lab.host.add_link(7, "veth7");
    lab.state
        .add_endpoint(endpoint(POD, "veth7"))
        .await
        .unwrap();
    let stranger = Ipv4Addr::new(10, 244, 0, 3);
    lab.host.add_link(8, "veth8");
    lab.state
        .add_endpoint(endpoint(stranger, "veth8"))
        .await
        .unwrap();
    {
        let mut model = lab.policies.write().unwrap();
        model.world.set_pod(PodFacts {
            namespace: "x".into(),
            name: "a".into(),
            ips: vec![POD.into()],
            ..PodFacts::default()
        });
        // Default deny ingress for every pod of x.
        model.world.set_policy(
            serde_json::from_value(serde_json::json!({"namespace": "x", "name": "deny"})).unwrap(),
        );
        model
            .refused
            .insert(("x".into(), "icmp".into()), "unknown protocol".into());
    }
    let report = lab.state.ask(Command::Policies).await.unwrap();
    assert!(!report.enforced);
    assert_eq!(
        report.refused,
        [("x/icmp".into(), "unknown protocol".into())]
    );
    let pod = report.pods.iter().find(|pod| pod.ip == POD).unwrap();
    assert_eq!(pod.pod.as_deref(), Some("x/a"));
    assert_eq!(
        (pod.ingress.as_slice(), pod.egress.len()),
        (&["x/deny".to_string()][..], 0)
    );
    let unknown = report.pods.iter().find(|pod| pod.ip == stranger).unwrap();
    assert_eq!(unknown.pod, None, "a pod the policy source does not know");
    let connection = Connection {
        from: stranger.into(),
        to: POD.into(),
        protocol: PolicyProtocol::Tcp,
        port: 80,
    };
    let verdict = lab
        .state
        .ask(|reply| Command::ExplainPolicy(connection, reply))
        .await
        .unwrap();
    assert_eq!(
        (verdict.egress, verdict.ingress),
        (
            Decision::NotIsolated,
            Decision::Denied {
                policies: vec!["x/deny".into()]
            }
        )
    );
}

#[tokio::test]
async fn a_pod_is_isolated_before_it_is_registered_and_a_failed_switch_is_retried() {
    let lab = lab("tunnel");
    {
        let mut model = lab.policies.write().unwrap();
        // Default deny ingress in x, and the listing complete.
        model.world.set_policy(
            serde_json::from_value(serde_json::json!({"namespace": "x", "name": "deny"})).unwrap(),
        );
        model.synced = true;
    }
    // x/a registered by its CNI ADD before the API server has its address:
    // bound by name, it is unknown yet, so isolated both ways.
    lab.host.add_link(7, "veth7");
    let mut pod = endpoint(POD, "veth7");
    pod.pod = Some(PodName {
        namespace: "x".into(),
        name: "a".into(),
    });
    lab.state.add_endpoint(pod).await.unwrap();
    let report = lab.state.ask(Command::Policies).await.unwrap();
    assert!(report.enforced);
    assert_eq!(report.generation, 1, "switched once, before the reply");
    let listed = report.pods.iter().find(|pod| pod.ip == POD).unwrap();
    assert!(listed.programmed, "{report:?}");
    // Its facts arrive: isolated for ingress only now, in the other table.
    lab.policies.write().unwrap().world.set_pod(PodFacts {
        namespace: "x".into(),
        name: "a".into(),
        ..PodFacts::default()
    });
    lab.state.tell(Command::PoliciesChanged).await.unwrap();
    let report = lab.state.ask(Command::Policies).await.unwrap();
    assert_eq!(report.generation, 2);
    let listed = report.pods.iter().find(|pod| pod.ip == POD).unwrap();
    assert_eq!(listed.pod.as_deref(), Some("x/a"), "bound by name");
    assert_eq!(listed.ingress, ["x/deny"]);
    // Nothing changed: no switch (connections are not judged again).
    lab.state.tell(Command::PoliciesChanged).await.unwrap();
    assert_eq!(
        lab.state.ask(Command::Policies).await.unwrap().generation,
        2
    );
    // The switch fails: nothing switched, retried until it is.
    lab.policies
        .write()
        .unwrap()
        .world
        .remove_policy("x", "deny");
    lab.faults.fail_writes(names::NODE_CONFIG_MAP, 1);
    lab.state.tell(Command::PoliciesChanged).await.unwrap();
    assert_eq!(
        lab.state.ask(Command::Policies).await.unwrap().generation,
        2
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    let report = lab.state.ask(Command::Policies).await.unwrap();
    assert_eq!(report.generation, 3, "switched by the retry");
    let listed = report.pods.iter().find(|pod| pod.ip == POD).unwrap();
    assert!(listed.ingress.is_empty() && !listed.programmed);
}
