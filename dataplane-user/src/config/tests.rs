//! The config file parser against good and bad files.

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/etc/dataplane/node.toml"))
}

#[test]
fn full_config_parses() {
    let config = parse(
        r#"
        [agent]
        api_socket = "/tmp/a.sock"
        [node]
        pod_cidr = "10.244.1.0/24"
        [[endpoints]]
        ip = "10.244.1.2"
        interface = "veth0"
        mac = "02:00:00:00:00:01"
        "#,
    )
    .unwrap();
    assert_eq!(config.agent.api_socket, PathBuf::from("/tmp/a.sock"));
    assert_eq!(config.agent.bpf_root, PathBuf::from(DEFAULT_BPF_ROOT));
    assert_eq!(config.endpoints[0].mac.as_bytes(), &[2, 0, 0, 0, 0, 1]);
}

#[test]
fn empty_config_uses_defaults() {
    assert_eq!(parse("").unwrap(), Config::default());
}

fn error_of(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn errors_name_file_field_and_problem() {
    let error = error_of(
        "[[endpoints]]\nip = \"10.244.1.300\"\ninterface = \"v\"\nmac = \"02:00:00:00:00:01\"",
    );
    assert!(error.contains("/etc/dataplane/node.toml"), "{error}");
    assert!(error.contains("endpoints[0].ip"), "{error}");
    assert!(error.contains("invalid"), "{error}");

    let error = error_of("[node]\npod_cidr = \"10.244.1.0/33\"");
    assert!(error.contains("node.pod_cidr"), "{error}");

    let error = error_of("[agent]\nsocket = \"/x\"");
    assert!(error.contains("unknown field `socket`"), "{error}");

    let error = error_of("[[endpoints]]\nip = \"10.244.1.2\"\ninterface = \"v\"\nmac = \"zz\"");
    assert!(error.contains("endpoints[0].mac"), "{error}");

    let error = error_of("[[endpoints]]\nip = \"10.244.1.2\"\ninterface = \"v\"");
    assert!(error.contains("missing field `mac`"), "{error}");
}

#[test]
fn semantic_errors() {
    let endpoint = |ip: &str, interface: &str, mac: &str| {
        format!("[[endpoints]]\nip = \"{ip}\"\ninterface = \"{interface}\"\nmac = \"{mac}\"\n")
    };
    let cidr = "[node]\npod_cidr = \"10.244.1.0/24\"\n";
    let mac = "02:00:00:00:00:01";

    let error = error_of(&format!("{cidr}{}", endpoint("10.244.2.2", "v", mac)));
    assert!(
        error.contains("endpoints[0].ip") && error.contains("outside"),
        "{error}"
    );

    let error = error_of(&endpoint("10.244.1.2", "a-name-that-is-too-long", mac));
    assert!(error.contains("endpoints[0].interface"), "{error}");

    let error = error_of(&endpoint("10.244.1.2", "v", "01:00:5e:00:00:01"));
    assert!(
        error.contains("endpoints[0].mac") && error.contains("unicast"),
        "{error}"
    );

    let twice = format!(
        "{}{}",
        endpoint("10.244.1.2", "a", mac),
        endpoint("10.244.1.2", "b", mac)
    );
    let error = error_of(&twice);
    assert!(
        error.contains("endpoints[1].ip") && error.contains("endpoints[0]"),
        "{error}"
    );
}

#[test]
fn remote_nodes_and_tunnel_settings() {
    let base = "[node]\nuplink = \"eth0\"\npod_cidr = \"10.244.0.0/24\"\ncluster_cidr = \"10.244.0.0/16\"\n";
    let node = |ip: &str, cidr: &str| format!("[[nodes]]\nip = \"{ip}\"\npod_cidr = \"{cidr}\"\n");
    let config = parse(&format!("{base}{}", node("192.0.2.11", "10.244.1.0/24"))).unwrap();
    assert_eq!(config.node.vni, DEFAULT_VNI);
    assert_eq!(config.node.vxlan_port, DEFAULT_VXLAN_PORT);
    assert_eq!(config.nodes[0].ip, Ipv4Addr::new(192, 0, 2, 11));

    let cases = [
        (
            format!("{base}{}", node("192.0.2.11", "10.244.0.128/25")),
            "nodes[0].pod_cidr",
            "overlaps this node",
        ),
        (
            format!("{base}{}", node("192.0.2.11", "10.99.0.0/24")),
            "nodes[0].pod_cidr",
            "not inside cluster_cidr",
        ),
        (
            format!(
                "{base}{}{}",
                node("192.0.2.11", "10.244.1.0/24"),
                node("192.0.2.12", "10.244.1.0/25")
            ),
            "nodes[1].pod_cidr",
            "overlaps 10.244.1.0/24",
        ),
        (
            format!(
                "{base}{}{}",
                node("192.0.2.11", "10.244.1.0/24"),
                node("192.0.2.11", "10.244.2.0/24")
            ),
            "nodes[1].ip",
            "already nodes[0]",
        ),
        (
            node("192.0.2.11", "10.244.1.0/24"),
            "nodes",
            "set node.uplink",
        ),
        (format!("{base}vni = 16777216\n"), "node.vni", "not in 1..="),
        (
            format!("{base}vxlan_port = 0\n"),
            "node.vxlan_port",
            "not a usable UDP port",
        ),
        (
            "[node]\npod_cidr = \"10.1.0.0/24\"\ncluster_cidr = \"10.244.0.0/16\"".to_string(),
            "node.pod_cidr",
            "not inside",
        ),
    ];
    for (text, field, problem) in cases {
        let error = error_of(&text);
        assert!(
            error.contains(field) && error.contains(problem),
            "{text}\n=> {error}"
        );
    }
}

#[test]
fn syntax_error_names_the_file() {
    let error = error_of("[agent\n");
    assert!(error.contains("/etc/dataplane/node.toml"), "{error}");
}

#[test]
fn missing_file_is_reported_with_its_path() {
    let error = Config::load(Path::new("/nonexistent/dataplane.toml")).unwrap_err();
    assert!(error.to_string().contains("/nonexistent/dataplane.toml"));
}

#[test]
fn services_parse_and_their_mistakes_are_named() {
    let config = parse(
        r#"
        [node]
        cluster_cidr = "10.244.0.0/16"
        [[services]]
        name = "default/web"
        ip = "10.96.0.10"
        session_affinity_seconds = 60
        ports = [
          { port = 80, backends = ["10.244.1.2:8080"] },
          { port = 53, protocol = "udp" },
        ]
        "#,
    )
    .unwrap();
    assert_eq!(config.services[0].session_affinity_seconds, Some(60));
    let ports = &config.services[0].ports;
    assert_eq!(
        ports[0].protocol,
        crate::model::Protocol::Tcp,
        "the default"
    );
    assert!(ports[1].backends.is_empty());

    let inside = error_of(
        r#"
        [node]
        cluster_cidr = "10.244.0.0/16"
        [[services]]
        name = "a"
        ip = "10.244.9.9"
        ports = [{ port = 80 }]
        "#,
    );
    assert!(
        inside.contains("services[0].ip") && inside.contains("pod CIDR"),
        "{inside}"
    );
    let shared = error_of(
        r#"
        [[services]]
        name = "a"
        ip = "10.96.0.10"
        ports = [{ port = 80 }]
        [[services]]
        name = "b"
        ip = "10.96.0.10"
        ports = [{ port = 80 }]
        "#,
    );
    assert!(shared.contains("already Service a's"), "{shared}");
    let sctp = error_of(
        r#"
        [[services]]
        name = "a"
        ip = "10.96.0.10"
        ports = [{ port = 80, protocol = "sctp" }]
        "#,
    );
    assert!(sctp.contains("services[0].ports[0].protocol"), "{sctp}");
}

#[test]
fn node_ports_external_addresses_and_the_service_cidr_are_checked() {
    let config = parse(
        r#"
        [node]
        cluster_cidr = "10.244.0.0/16"
        service_cidr = "10.96.0.0/12"
        [[services]]
        name = "default/ingress"
        ip = "10.96.0.10"
        external_ips = ["198.51.100.7"]
        external_traffic_local = true
        health_check_node_port = 32000
        ports = [{ port = 80, node_port = 30080, backends = ["10.244.1.2:8080"] }]
        "#,
    )
    .unwrap();
    let ingress = &config.services[0];
    assert_eq!(ingress.ports[0].node_port, Some(30080));
    assert_eq!(ingress.health_check_node_port, Some(32000));
    assert!(ingress.external_traffic_local);

    let outside_range = error_of(
        r#"
        [[services]]
        name = "a"
        ip = "10.96.0.10"
        ports = [{ port = 80, node_port = 8080 }]
        "#,
    );
    assert!(
        outside_range.contains("node port 8080 is outside node.node_port_range"),
        "{outside_range}"
    );
    let overlapping = error_of(
        r#"
        [node]
        node_port_range = "30000-62000"
        "#,
    );
    assert!(
        overlapping.contains("node.node_port_range") && overlapping.contains("nat.port_range"),
        "{overlapping}"
    );
    let services_in_pods = error_of(
        r#"
        [node]
        cluster_cidr = "10.0.0.0/8"
        service_cidr = "10.96.0.0/12"
        "#,
    );
    assert!(
        services_in_pods.contains("node.service_cidr"),
        "{services_in_pods}"
    );
    let internal = error_of(
        r#"
        [[services]]
        name = "a"
        ip = "10.96.0.10"
        address_is_external = true
        ports = [{ port = 80 }]
        "#,
    );
    assert!(internal.contains("address_is_external"), "{internal}");
}

#[test]
fn routing_modes_parse_and_need_an_uplink() {
    assert_eq!(parse("").unwrap().node.routing, Routing::Tunnel);
    for (text, routing) in [
        ("tunnel", Routing::Tunnel),
        ("direct", Routing::Direct),
        ("auto", Routing::Auto),
    ] {
        let config = parse(&format!("[node]\nuplink = \"eth0\"\nrouting = \"{text}\"")).unwrap();
        assert_eq!(config.node.routing, routing);
    }
    let error = error_of("[node]\nuplink = \"eth0\"\nrouting = \"sideways\"");
    assert!(error.contains("node.routing"), "{error}");
    assert!(error.contains("unknown variant `sideways`"), "{error}");
    let error = error_of("[node]\nrouting = \"direct\"");
    assert!(error.contains("node.routing"), "{error}");
    assert!(error.contains("set node.uplink"), "{error}");
}

#[test]
fn cidrs_with_host_bits_and_oversized_files_are_refused() {
    let error = error_of("[node]\npod_cidr = \"10.244.54.7/24\"\n");
    assert!(
        error.contains("node.pod_cidr") && error.contains("10.244.54.0/24"),
        "{error}"
    );
    let error = error_of("[node]\nservice_cidr = \"10.96.3.1/12\"\n");
    assert!(error.contains("node.service_cidr"), "{error}");
    // /dev/zero says its size is 0: read to the bound, not to the end.
    let error = Config::load(Path::new("/dev/zero"))
        .unwrap_err()
        .to_string();
    assert!(error.contains("longer than"), "{error}");
}

#[test]
fn a_services_address_must_not_be_the_nodes_nor_outside_the_service_cidr() {
    let config = |ip: &str| {
        format!(
            "[node]\nnode_ip = \"192.0.2.10\"\nservice_cidr = \"10.96.0.0/12\"\n\
             [[services]]\nname = \"web\"\nip = \"{ip}\"\nports = [{{ port = 80 }}]\n"
        )
    };
    assert!(parse(&config("10.96.0.10")).is_ok());
    for (ip, problem) in [("192.0.2.10", "own IP"), ("10.200.0.1", "service_cidr")] {
        let error = error_of(&config(ip));
        assert!(error.contains(problem), "{ip}: {error}");
    }
}

#[test]
fn ipv6_values_are_read_and_refused_as_not_supported_yet() {
    for (text, field) in [
        ("[node]\npod_cidr = \"fd00:10:244:1::/64\"\n", "pod_cidr"),
        ("[node]\nnode_ip = \"fd00::1\"\n", "node_ip"),
        (
            "[nat]\nno_masquerade_cidrs = [\"10.0.0.0/8\", \"fd00::/8\"]\n",
            "no_masquerade_cidrs",
        ),
        (
            "[[nodes]]\nip = \"192.168.1.2\"\npod_cidr = \"fd00:10:244:2::/64\"\n",
            "pod_cidr",
        ),
        (
            "[[services]]\nname = \"web\"\nip = \"10.96.0.10\"\n\
             [[services.ports]]\nport = 80\nbackends = [\"[fd00::5]:8080\"]\n",
            "backends",
        ),
    ] {
        let error = error_of(text);
        assert!(
            error.contains(crate::model::family::IPV6_NOT_SUPPORTED) && error.contains(field),
            "{text}: {error}"
        );
    }
    // A pod's IPv6 address is read (and checked: never link-local).
    let config = parse(
        "[[endpoints]]\nip = \"fd00:10:244:1::5\"\ninterface = \"v\"\nmac = \"02:00:00:00:00:01\"\n",
    )
    .unwrap();
    assert!(config.endpoints[0].ip.is_ipv6());
    let error = error_of(
        "[[endpoints]]\nip = \"fe80::5\"\ninterface = \"v\"\nmac = \"02:00:00:00:00:01\"\n",
    );
    assert!(
        error.contains("endpoints[0].ip") && error.contains("link-local"),
        "{error}"
    );
    // Syntax errors stay syntax errors.
    let error = error_of("[node]\nnode_ip = \"10.0.0.300\"\n");
    assert!(error.contains("invalid"), "{error}");
}
