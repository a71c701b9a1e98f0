use super::*;
use crate::model::HostInterface;

#[test]
fn requests_round_trip_as_versioned_tagged_json() {
    let request = Request::AddEndpoint {
        endpoint: EndpointSpec {
            ip: Ipv4Addr::new(10, 244, 0, 2).into(),
            interface: HostInterface::Index(7),
            mac: "02:00:00:00:00:01".parse().unwrap(),
            pod: None,
        },
    };
    let json = serde_json::to_string(&Envelope::new(request.clone())).unwrap();
    assert!(json.contains(r#""version":2"#), "{json}");
    assert!(json.contains(r#""request":"add_endpoint""#), "{json}");
    assert!(json.contains(r#""interface":7"#), "{json}");
    assert!(json.contains(r#""mac":"02:00:00:00:00:01""#), "{json}");
    assert_eq!(decode::<Request>(json.as_bytes()).unwrap(), request);
}

#[test]
fn another_version_is_refused_before_its_body_is_read() {
    let unversioned = br#"{"request":"list_endpoints"}"#;
    let error = decode::<Request>(unversioned).unwrap_err();
    assert!(error.contains("sent version 1"), "{error}");
    let future = br#"{"version":3,"request":"something_new"}"#;
    let error = decode::<Request>(future).unwrap_err();
    assert!(error.contains("sent version 3"), "{error}");
    assert!(decode::<Request>(b"not json").is_err());
}

#[test]
fn packet_filter_matches_on_every_field_it_names() {
    let event = PacketReport {
        reason: CounterName(dataplane_common::Counter::DropSpoofedSource),
        drop: true,
        ifindex: 9,
        protocol: IpProtocol(6),
        source: Ipv4Addr::new(10, 244, 0, 99),
        source_port: Some(40000),
        destination: Ipv4Addr::new(10, 244, 0, 3),
        destination_port: Some(80),
        policy: None,
    };
    assert!(PacketFilter::default().admits(&event));
    let by = |filter: PacketFilter| filter.admits(&event);
    assert!(by(PacketFilter {
        addresses: vec![Ipv4Addr::new(10, 244, 0, 3).into()],
        ports: vec![80],
        interfaces: vec![HostInterface::Index(9)],
        reasons: vec!["drop_spoofed_source".parse().unwrap()],
    }));
    assert!(!by(PacketFilter {
        addresses: vec![Ipv4Addr::new(10, 244, 0, 4).into()],
        ..Default::default()
    }));
    assert!(!by(PacketFilter {
        ports: vec![443],
        ..Default::default()
    }));
    assert!(!by(PacketFilter {
        interfaces: vec![HostInterface::Index(10)],
        ..Default::default()
    }));
    assert!(!by(PacketFilter {
        reasons: vec!["drop_malformed".parse().unwrap()],
        ..Default::default()
    }));
}

#[test]
fn a_policy_drop_names_its_pod_and_the_policies_isolating_it() {
    use crate::model::policy::{PodFacts, PolicyWorld};
    let mut world = PolicyWorld::default();
    let (client, server) = (Ipv4Addr::new(10, 244, 0, 2), Ipv4Addr::new(10, 244, 0, 3));
    for (name, ip) in [("client", client), ("server", server)] {
        world.set_pod(PodFacts {
            namespace: "x".into(),
            name: name.into(),
            ips: vec![ip.into()],
            ..PodFacts::default()
        });
    }
    world.set_policy(
        serde_json::from_value(serde_json::json!({"namespace": "x", "name": "deny-all"}))
            .expect("a valid policy"),
    );
    let dropped = |reason| PacketReport {
        reason: CounterName(reason),
        drop: true,
        ifindex: 9,
        protocol: IpProtocol(6),
        source: client,
        source_port: Some(40000),
        destination: server,
        destination_port: Some(80),
        policy: None,
    };
    let ingress = dropped(dataplane_common::Counter::DropPolicyIngress).with_policy(&world);
    let named = ingress.policy.expect("a policy drop is named");
    assert_eq!(named.pod, "x/server");
    assert_eq!(named.isolated_by, ["x/deny-all"]);
    // deny-all isolates ingress only: the client's egress drop names it
    // with no policy; any other drop is left as it is.
    let egress = dropped(dataplane_common::Counter::DropPolicyEgress).with_policy(&world);
    assert_eq!(egress.policy.map(|drop| drop.pod), Some("x/client".into()));
    let other = dropped(dataplane_common::Counter::DropSpoofedSource).with_policy(&world);
    assert_eq!(other.policy, None);
}
