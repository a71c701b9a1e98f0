//! NetworkPolicy's verdict in the programs under BPF_PROG_TEST_RUN, policy
//! compiled from the model as the agent compiles it: egress at from-pod
//! (pod A's packets), ingress at to-pod (pod B's packets to pod A), per
//! protocol and port, replies on records, a change judging connections
//! again, ICMP errors about allowed connections, the table switch.

use dataplane_common::{ip_protocol, names};
use std::net::Ipv4Addr;

use dataplane_tests::test_run::{
    Fixture, NODE_IP, POD_A_IP, POD_B_IP, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, icmp,
    ipv4_packet, tcp, udp,
};
use dataplane_user::model::policy::{CompiledPolicy, PodFacts, PolicyWorld};
use serde_json::json;

const SYN: u8 = 0x02;
const SYN_ACK: u8 = 0x12;
const ACK: u8 = 0x10;

/// Pod A is x/a, pod B y/b; `policies` (the model's JSON) in force.
fn compiled(policies: &[serde_json::Value]) -> CompiledPolicy {
    let mut world = PolicyWorld::default();
    for (namespace, name, ip) in [("x", "a", POD_A_IP), ("y", "b", POD_B_IP)] {
        world.set_namespace(namespace, Default::default());
        world.set_pod(PodFacts {
            namespace: namespace.into(),
            name: name.into(),
            labels: [("pod".to_string(), name.to_string())].into(),
            ips: vec![ip.into()],
            ..PodFacts::default()
        });
    }
    for policy in policies {
        world.set_policy(serde_json::from_value(policy.clone()).expect("a valid policy"));
    }
    world.compile(&[POD_A_IP.into(), POD_B_IP.into()])
}

/// A SCTP packet's common header (ports, verification tag, checksum).
fn sctp(src_port: u16, dst_port: u16) -> Vec<u8> {
    [
        src_port.to_be_bytes().as_slice(),
        &dst_port.to_be_bytes(),
        &[0; 8],
    ]
    .concat()
}

fn from_a(protocol: u8, l4: &[u8]) -> Vec<u8> {
    ipv4_packet(POD_A_IP, POD_B_IP, protocol, l4)
}

fn tcp_a_to_b(flags: u8, dst_port: u16) -> Vec<u8> {
    from_a(
        ip_protocol::TCP,
        &tcp((POD_A_IP, 40_000), (POD_B_IP, dst_port), flags),
    )
}

fn tcp_b_to_a(flags: u8, (src_port, dst_port): (u16, u16)) -> Vec<u8> {
    ipv4_packet(
        POD_B_IP,
        POD_A_IP,
        ip_protocol::TCP,
        &tcp((POD_B_IP, src_port), (POD_A_IP, dst_port), flags),
    )
}

#[test]
fn ports_are_judged_per_protocol_sctp_included() -> anyhow::Result<()> {
    let mut fixture = Fixture::new()?;
    fixture.set_policy(&compiled(&[json!({
        "namespace": "x", "name": "sctp-80", "policy_types": ["Egress"],
        "egress": [{"ports": [{"protocol": "SCTP", "port": 80}]}],
    })]))?;
    let sctp_80 = from_a(ip_protocol::SCTP, &sctp(5000, 80));
    assert_eq!(fixture.run(&sctp_80).0, TC_ACT_REDIRECT);
    let drops = fixture.counter("drop_policy_egress");
    for denied in [
        from_a(ip_protocol::SCTP, &sctp(5000, 81)),
        tcp_a_to_b(SYN, 80),
        from_a(
            ip_protocol::UDP,
            &udp((POD_A_IP, 5000), (POD_B_IP, 80), true),
        ),
    ] {
        assert_eq!(fixture.run(&denied).0, TC_ACT_SHOT);
    }
    assert_eq!(fixture.counter("drop_policy_egress"), drops + 3);
    Ok(())
}

#[test]
fn single_ports_ranges_and_whole_protocols_are_each_found() -> anyhow::Result<()> {
    // One port (the hash), a range (port prefixes in the trie), a whole
    // protocol (the trie too): each allows what it names and no more.
    let mut fixture = Fixture::new()?;
    fixture.set_policy(&compiled(&[json!({
        "namespace": "x", "name": "mixed", "policy_types": ["Egress"],
        "egress": [{"ports": [{"protocol": "TCP", "port": 80},
                              {"protocol": "TCP", "port": 8000, "end_port": 8003},
                              {"protocol": "UDP"}]}],
    })]))?;
    let udp_to = |port| {
        from_a(
            ip_protocol::UDP,
            &udp((POD_A_IP, 5000), (POD_B_IP, port), true),
        )
    };
    for port in [80, 8000, 8001, 8003] {
        assert_eq!(
            fixture.run(&tcp_a_to_b(SYN, port)).0,
            TC_ACT_REDIRECT,
            "{port}"
        );
    }
    for port in [53, 65_535] {
        assert_eq!(fixture.run(&udp_to(port)).0, TC_ACT_REDIRECT, "udp {port}");
    }
    let drops = fixture.counter("drop_policy_egress");
    for port in [79, 81, 7999, 8004] {
        assert_eq!(fixture.run(&tcp_a_to_b(SYN, port)).0, TC_ACT_SHOT, "{port}");
    }
    assert_eq!(
        fixture.run(&from_a(ip_protocol::SCTP, &sctp(5000, 80))).0,
        TC_ACT_SHOT
    );
    assert_eq!(fixture.counter("drop_policy_egress"), drops + 5);
    Ok(())
}

#[test]
fn replies_pass_on_records_and_a_change_judges_connections_again() -> anyhow::Result<()> {
    let mut fixture = Fixture::new()?;
    // x/a opens nothing; what others open to it is open.
    let deny_egress = json!({"namespace": "x", "name": "no-egress", "policy_types": ["Egress"]});
    fixture.set_policy(&compiled(std::slice::from_ref(&deny_egress)))?;
    assert_eq!(fixture.run(&tcp_a_to_b(SYN, 80)).0, TC_ACT_SHOT);
    // B opens a connection to A at 80 (at to-pod): recorded; A's answer
    // passes A's egress isolation on that record.
    let to_pod = names::TO_POD_PROGRAM;
    assert_eq!(
        fixture
            .run_program(to_pod, &tcp_b_to_a(SYN, (50_000, 80)))
            .0,
        TC_ACT_OK
    );
    let answer = ipv4_packet(
        POD_A_IP,
        POD_B_IP,
        ip_protocol::TCP,
        &tcp((POD_A_IP, 80), (POD_B_IP, 50_000), SYN_ACK),
    );
    assert_eq!(fixture.run(&answer).0, TC_ACT_REDIRECT);
    // A mid-connection segment of a connection nobody recorded is judged
    // in its own direction and not recorded.
    assert_eq!(fixture.run(&tcp_a_to_b(ACK, 80)).0, TC_ACT_SHOT);
    // x/a isolated for ingress too: the recorded connection is judged again
    // at its next packet, as opened (by B, to A's 80): cut.
    let deny_ingress = json!({"namespace": "x", "name": "no-ingress"});
    fixture.set_policy(&compiled(&[deny_egress, deny_ingress]))?;
    let drops = fixture.counter("drop_policy_ingress");
    assert_eq!(
        fixture
            .run_program(to_pod, &tcp_b_to_a(ACK, (50_000, 80)))
            .0,
        TC_ACT_SHOT
    );
    assert_eq!(fixture.counter("drop_policy_ingress"), drops + 1);
    // The node's own packets always reach it (kubelet's probes).
    let probe = ipv4_packet(
        NODE_IP,
        POD_A_IP,
        ip_protocol::TCP,
        &tcp((NODE_IP, 33_000), (POD_A_IP, 80), SYN),
    );
    assert_eq!(fixture.run_program(to_pod, &probe).0, TC_ACT_OK);
    Ok(())
}

#[test]
fn the_programs_read_the_table_the_switch_names_and_nothing_while_no_pod_is_isolated()
-> anyhow::Result<()> {
    let mut fixture = Fixture::new()?;
    let deny = compiled(&[json!({"namespace": "x", "name": "deny-all",
                                  "policy_types": ["Ingress", "Egress"]})]);
    // Written into the idle table, not switched to: not in force.
    let idle = dataplane_user::maps::PolicyTable::of(&deny, 1);
    fixture.write_policy_table(1, &idle)?;
    assert_eq!(fixture.run(&tcp_a_to_b(SYN, 80)).0, TC_ACT_REDIRECT);
    fixture.set_policy(&deny)?;
    assert_eq!(fixture.run(&tcp_a_to_b(SYN, 81)).0, TC_ACT_SHOT);
    // Switched to an empty table: nothing is isolated, nothing looked up.
    fixture.set_policy(&CompiledPolicy::default())?;
    assert_eq!(fixture.run(&tcp_a_to_b(SYN, 81)).0, TC_ACT_REDIRECT);
    Ok(())
}

/// An ICMP error of `kind` and `code` from `from` to `to` quoting `quoted`
/// (a frame: its IPv4 header and the first 8 bytes after it).
fn icmp_error(from: Ipv4Addr, to: Ipv4Addr, (kind, code): (u8, u8), quoted: &[u8]) -> Vec<u8> {
    const ETHERNET: usize = 14;
    const QUOTED: usize = 20 + 8;
    let body = &quoted[ETHERNET..ETHERNET + QUOTED];
    ipv4_packet(from, to, ip_protocol::ICMP, &icmp(kind, code, [0; 4], body))
}

const UNREACHABLE: u8 = 3;
const FRAGMENTATION_NEEDED: u8 = 4;
const PORT_UNREACHABLE: u8 = 3;
/// A router between the pods and the world: no address of the node.
const ROUTER_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

#[test]
fn icmp_errors_about_allowed_connections_pass_and_others_are_judged() -> anyhow::Result<()> {
    let mut fixture = Fixture::new()?;
    // x/a: nothing may reach it, nothing may leave it but TCP to B's 80.
    fixture.set_policy(&compiled(&[json!({
        "namespace": "x", "name": "only-b-80", "policy_types": ["Ingress", "Egress"],
        "egress": [{"ports": [{"protocol": "TCP", "port": 80}]}],
    })]))?;
    let to_pod = names::TO_POD_PROGRAM;
    // A's connection to B's 80 is allowed and recorded; a router on the way
    // says the path's MTU is smaller: A must hear it.
    let opened = tcp_a_to_b(SYN, 80);
    assert_eq!(fixture.run(&opened).0, TC_ACT_REDIRECT);
    let too_big = icmp_error(
        ROUTER_IP,
        POD_A_IP,
        (UNREACHABLE, FRAGMENTATION_NEEDED),
        &opened,
    );
    assert_eq!(fixture.run_program(to_pod, &too_big).0, TC_ACT_OK);
    // The same error about a connection A never had is judged as the ICMP
    // packet it is: nothing reaches A.
    let drops = fixture.counter("drop_policy_ingress");
    let unknown = icmp_error(
        ROUTER_IP,
        POD_A_IP,
        (UNREACHABLE, FRAGMENTATION_NEEDED),
        &tcp_a_to_b(SYN, 81),
    );
    assert_eq!(fixture.run_program(to_pod, &unknown).0, TC_ACT_SHOT);
    assert_eq!(fixture.counter("drop_policy_ingress"), drops + 1);
    Ok(())
}

#[test]
fn a_pods_own_icmp_errors_about_allowed_connections_leave_it() -> anyhow::Result<()> {
    let mut fixture = Fixture::new()?;
    // x/a may send nothing; anything may reach it.
    fixture.set_policy(&compiled(&[
        json!({"namespace": "x", "name": "no-egress", "policy_types": ["Egress"]}),
    ]))?;
    // B's datagram to A's 5353 is recorded at to-pod; nothing listens, and
    // A's port unreachable about it leaves A.
    let datagram = ipv4_packet(
        POD_B_IP,
        POD_A_IP,
        ip_protocol::UDP,
        &udp((POD_B_IP, 6000), (POD_A_IP, 5353), true),
    );
    assert_eq!(
        fixture.run_program(names::TO_POD_PROGRAM, &datagram).0,
        TC_ACT_OK
    );
    let refused = icmp_error(
        POD_A_IP,
        POD_B_IP,
        (UNREACHABLE, PORT_UNREACHABLE),
        &datagram,
    );
    assert_eq!(fixture.run(&refused).0, TC_ACT_REDIRECT);
    // An error about a datagram A never received does not.
    let never_received = ipv4_packet(
        POD_B_IP,
        POD_A_IP,
        ip_protocol::UDP,
        &udp((POD_B_IP, 6000), (POD_A_IP, 5354), true),
    );
    let unprompted = icmp_error(
        POD_A_IP,
        POD_B_IP,
        (UNREACHABLE, PORT_UNREACHABLE),
        &never_received,
    );
    assert_eq!(fixture.run(&unprompted).0, TC_ACT_SHOT);
    Ok(())
}

#[test]
fn a_pod_cannot_pass_its_isolation_with_an_error_about_another_pods_connection()
-> anyhow::Result<()> {
    let mut fixture = Fixture::new()?;
    // x/a may send nothing; y/b takes anything (isolated, so its
    // connections are recorded).
    fixture.set_policy(&compiled(&[
        json!({"namespace": "x", "name": "no-egress", "policy_types": ["Egress"]}),
        json!({"namespace": "y", "name": "all-in", "ingress": [{}]}),
    ]))?;
    let to_b = ipv4_packet(
        ROUTER_IP,
        POD_B_IP,
        ip_protocol::TCP,
        &tcp((ROUTER_IP, 50_000), (POD_B_IP, 80), SYN),
    );
    assert_eq!(
        fixture.run_program(names::TO_POD_PROGRAM, &to_b).0,
        TC_ACT_OK
    );
    // x/a forges a port unreachable about y/b's connection (to y/b, which
    // would take it): x/a's isolation still holds, as it never received
    // that packet.
    let drops = fixture.counter("drop_policy_egress");
    let forged = icmp_error(POD_A_IP, POD_B_IP, (UNREACHABLE, PORT_UNREACHABLE), &to_b);
    assert_eq!(fixture.run(&forged).0, TC_ACT_SHOT);
    assert_eq!(fixture.counter("drop_policy_egress"), drops + 1);
    Ok(())
}
