//! Unit tests of the plugin's input handling.
use super::*;

fn environment(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

fn code_of(result: CniResult<Option<String>>) -> u32 {
    result.expect_err("must fail").code
}

const ADD: [(&str, &str); 4] = [
    ("CNI_COMMAND", "ADD"),
    ("CNI_CONTAINERID", "c1"),
    ("CNI_IFNAME", "eth0"),
    ("CNI_NETNS", "/nonexistent"),
];

#[test]
fn version_lists_the_supported_versions() {
    let output = run(
        &environment(&[("CNI_COMMAND", "VERSION")]),
        r#"{"cniVersion":"1.0.0"}"#,
    )
    .unwrap()
    .unwrap();
    let output: Value = serde_json::from_str(&output).unwrap();
    assert_eq!(output["cniVersion"], "1.0.0");
    assert_eq!(
        output["supportedVersions"].as_array().unwrap().len(),
        SUPPORTED_VERSIONS.len()
    );
}

#[test]
fn input_errors_have_their_codes() {
    assert_eq!(
        code_of(run(&environment(&[]), "{}")),
        code::INVALID_ENVIRONMENT
    );
    assert_eq!(
        code_of(run(&environment(&ADD), "{not json")),
        code::DECODE_FAILURE
    );
    let old = r#"{"cniVersion":"0.2.0","name":"n","type":"dataplane-cni"}"#;
    assert_eq!(
        code_of(run(&environment(&ADD), old)),
        code::INCOMPATIBLE_VERSION
    );
    let unchained = r#"{"cniVersion":"1.0.0","name":"n","type":"dataplane-cni"}"#;
    assert_eq!(
        code_of(run(&environment(&ADD), unchained)),
        code::INVALID_CONFIG
    );
    let no_ipv4 =
        r#"{"cniVersion":"1.0.0","name":"n","type":"dataplane-cni","prevResult":{"ips":[]}}"#;
    assert_eq!(
        code_of(run(&environment(&ADD), no_ipv4)),
        code::INVALID_CONFIG
    );
    let missing_id = [("CNI_COMMAND", "DEL"), ("CNI_IFNAME", "eth0")];
    assert_eq!(
        code_of(run(&environment(&missing_id), unchained)),
        code::INVALID_ENVIRONMENT
    );
    let unknown = [("CNI_COMMAND", "FROB")];
    assert_eq!(
        code_of(run(&environment(&unknown), unchained)),
        code::INVALID_ENVIRONMENT
    );
}

#[test]
fn missing_or_bad_identifiers_are_environment_errors() {
    let unchained = r#"{"cniVersion":"1.0.0","name":"n","type":"dataplane-cni"}"#;
    for command in ["ADD", "DEL", "CHECK"] {
        let no_ifname = [
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/nonexistent"),
        ];
        let error = run(&environment(&no_ifname), unchained).expect_err(command);
        assert_eq!(
            error.code,
            code::INVALID_ENVIRONMENT,
            "{command}: {error:?}"
        );
        assert!(error.msg.contains("CNI_IFNAME"), "{error:?}");
    }
    for container_id in ["../x/evil", "a/b", ".hidden", "-dash", "a b", "x:y"] {
        let evil = [("CNI_CONTAINERID", container_id), ADD[0], ADD[2], ADD[3]];
        let error = run(&environment(&evil), unchained).expect_err(container_id);
        assert_eq!(error.code, code::INVALID_ENVIRONMENT, "{container_id}");
        assert!(error.msg.contains("CNI_CONTAINERID"), "{error:?}");
    }
    for ifname in ["../../etc", "a:b", "sixteen-chars-xx", ".", "a b"] {
        let bad = [("CNI_IFNAME", ifname), ADD[0], ADD[1], ADD[3]];
        assert_eq!(
            code_of(run(&environment(&bad), unchained)),
            code::INVALID_ENVIRONMENT,
            "{ifname}"
        );
    }
    let bad_name = r#"{"cniVersion":"1.0.0","name":"../up","type":"dataplane-cni"}"#;
    assert_eq!(
        code_of(run(&environment(&ADD), bad_name)),
        code::INVALID_CONFIG
    );
}

#[test]
fn unknown_keys_are_refused_by_name() {
    for (key, value) in [("sokcet", "\"/run/x.sock\""), ("datadir", "\"/tmp/x\"")] {
        let conf = format!(
            r#"{{"cniVersion":"1.0.0","name":"n","type":"dataplane-cni","{key}":{value}}}"#
        );
        let error = run(&environment(&ADD), &conf).expect_err(key);
        assert_eq!(error.code, code::INVALID_CONFIG);
        assert!(error.msg.contains(key), "{error:?}");
    }
    // The keys the spec gives every plugin are fine.
    let conf = r#"{"cniVersion":"1.0.0","name":"n","type":"dataplane-cni",
        "runtimeConfig":{},"args":{},"capabilities":{},"dns":{},
        "prevResult":{"ips":[]}}"#;
    let error = run(&environment(&ADD), conf).expect_err("no address");
    assert!(error.msg.contains("no address"), "{error:?}");
}

#[test]
fn sockets_that_can_never_work_are_configuration_errors() {
    let directory = tempfile::tempdir().unwrap();
    let file = directory.path().join("file");
    std::fs::write(&file, "").unwrap();
    let status = [("CNI_COMMAND", "STATUS")];
    let with_socket = |socket: &str| {
        format!(
            r#"{{"cniVersion":"1.1.0","name":"n","type":"dataplane-cni","socket":{}}}"#,
            Value::from(socket)
        )
    };
    for socket in [
        "",
        "relative.sock",
        file.to_str().unwrap(),
        directory.path().to_str().unwrap(),
        file.join("below").to_str().unwrap(),
    ] {
        assert_eq!(
            code_of(run(&environment(&status), &with_socket(socket))),
            code::INVALID_CONFIG,
            "{socket:?}"
        );
    }
    // Not there yet: the agent is not up, so not ready (ADD: try again later).
    let absent = directory.path().join("agent.sock");
    assert_eq!(
        code_of(run(
            &environment(&status),
            &with_socket(absent.to_str().unwrap())
        )),
        code::NOT_READY
    );
    let add = with_socket(absent.to_str().unwrap()).replace(
        "}",
        r#","prevResult":{"ips":[{"address":"10.244.0.5/24"}]}}"#,
    );
    assert_eq!(
        code_of(run(&environment(&ADD), &add.replace("1.1.0", "1.0.0"))),
        code::TRY_AGAIN_LATER
    );
}

#[test]
fn commands_need_the_version_that_introduced_them() {
    for (command, version) in [("CHECK", "0.3.1"), ("GC", "1.0.0"), ("STATUS", "1.0.0")] {
        let conf = format!(r#"{{"cniVersion":"{version}","name":"n","type":"dataplane-cni"}}"#);
        let command_environment = [("CNI_COMMAND", command), ADD[1], ADD[2], ADD[3]];
        assert_eq!(
            code_of(run(&environment(&command_environment), &conf)),
            code::INCOMPATIBLE_VERSION,
            "{command} at {version}"
        );
    }
}

#[test]
fn record_names_round_trip_and_stay_inside_the_network_directory() {
    let conf = parse_conf(r#"{"cniVersion":"1.1.0","name":"pods","dataDir":"/d"}"#).unwrap();
    let attachment = Attachment {
        container_id: "ab-c.d_1".into(),
        ifname: "eth-0.json".into(),
    };
    let path = record_path(&conf, &attachment);
    assert_eq!(path, PathBuf::from("/d/pods/ab-c.d_1:eth-0.json.json"));
    let name = path.file_name().unwrap().to_str().unwrap();
    assert_eq!(attachment_of_record(name), Some(attachment));
    assert_eq!(attachment_of_record("stray.json"), None);
}

#[test]
fn addresses_come_from_the_previous_result() {
    let result: Value = serde_json::from_str(
        r#"{"ips":[{"address":"10.244.0.5/24","gateway":"10.244.0.1"},{"address":"fd00::5/64"}]}"#,
    )
    .unwrap();
    let addresses: Vec<IpAddr> = result_addresses(&result).collect();
    assert_eq!(
        addresses,
        vec![
            IpAddr::from([10, 244, 0, 5]),
            "fd00::5".parse::<IpAddr>().unwrap()
        ]
    );
}

#[test]
fn runtime_keys_under_cni_dev_are_ignored_and_own_misspellings_still_refused() {
    // libcni 1.2.3 and later send cni.dev/attachments beside
    // cni.dev/valid-attachments on GC.
    let conf = r#"{"cniVersion":"1.1.0","name":"n","type":"dataplane-cni",
        "cni.dev/attachments":[{"containerID":"c1","ifname":"eth0"}],
        "cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}],
        "cni.dev/some-future-key":true}"#;
    let parsed = parse_conf(conf).expect("runtime keys are the runtime's");
    assert_eq!(parsed.valid_attachments.map(|valid| valid.len()), Some(1));
    let misspelled = r#"{"cniVersion":"1.1.0","name":"n","type":"dataplane-cni","sockett":"/x"}"#;
    assert_eq!(
        parse_conf(misspelled).expect_err("own key misspelled").code,
        code::INVALID_CONFIG
    );
}

#[test]
fn an_ipv6_address_is_taken_only_inside_the_nodes_ipv6_pod_cidr() {
    let ips: Vec<IpAddr> = ["10.244.0.5", "fd00:10:244::5"]
        .iter()
        .map(|ip| ip.parse().unwrap())
        .collect();
    let error = check_ipv6_served(&ips, None).expect_err("no IPv6 pod CIDR");
    assert_eq!(error.code, code::INVALID_CONFIG);
    assert!(
        error.msg.contains("fd00:10:244::5") && error.msg.contains("no IPv6 pod CIDR"),
        "{error:?}"
    );
    let elsewhere = check_ipv6_served(&ips, Some("fd00:10:245::/64".parse().unwrap()))
        .expect_err("outside the CIDR");
    assert!(
        elsewhere
            .msg
            .contains("outside this node's IPv6 pod CIDR fd00:10:245::/64")
    );
    assert!(check_ipv6_served(&ips, Some("fd00:10:244::/64".parse().unwrap())).is_ok());
    // IPv4 alone needs no IPv6 CIDR.
    assert!(check_ipv6_served(&ips[..1], None).is_ok());
}

#[test]
fn gc_reports_an_unreadable_record_and_keeps_it() {
    let data = tempfile::tempdir().unwrap();
    let conf = format!(
        r#"{{"cniVersion":"1.1.0","name":"n","type":"dataplane-cni","dataDir":"{}",
        "cni.dev/valid-attachments":[]}}"#,
        data.path().display()
    );
    let conf = parse_conf(&conf).unwrap();
    let attachment = Attachment {
        container_id: "c9".into(),
        ifname: "eth0".into(),
    };
    let path = record_path(&conf, &attachment);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, b"").unwrap();
    let error = collect_garbage(&conf).expect_err("an empty record is reported");
    assert_eq!(error.code, code::IO_FAILURE);
    assert!(error.details.contains("stay registered"), "{error:?}");
    assert!(path.exists(), "kept to be looked at");
}

#[test]
fn a_relative_data_dir_is_a_configuration_error() {
    let conf = r#"{"cniVersion":"1.0.0","name":"n","type":"dataplane-cni","dataDir":"records"}"#;
    let error = parse_conf(conf).expect_err("relative");
    assert_eq!(error.code, code::INVALID_CONFIG);
    assert!(error.msg.contains("absolute"), "{error:?}");
}

#[test]
fn a_container_id_too_long_for_a_file_name_gets_a_record_name_that_fits() {
    let long = |last: char| Attachment {
        container_id: format!("{}{last}", "a".repeat(249)),
        ifname: "eth0".into(),
    };
    let (one, other) = (record_name(&long('b')), record_name(&long('c')));
    assert!(one.len() <= 255 && other.len() <= 255, "{one}");
    assert_ne!(one, other, "IDs that differ only past the cut");
    // The name stands for itself: GC finds the same record by it.
    let parsed = attachment_of_record(&one).unwrap();
    assert_eq!(record_name(&parsed), one);
    let short = Attachment {
        container_id: "c1".into(),
        ifname: "eth0".into(),
    };
    assert_eq!(record_name(&short), "c1:eth0.json");
}

#[test]
fn agent_errors_get_the_cni_code_of_their_kind() {
    use crate::api::ErrorKind;
    assert_eq!(code_for(ErrorKind::Refused), code::INVALID_CONFIG);
    // A full map or an agent that cannot answer now is worth a retry, not
    // "invalid config".
    assert_eq!(code_for(ErrorKind::Full), code::TRY_AGAIN_LATER);
    assert_eq!(code_for(ErrorKind::Unavailable), code::TRY_AGAIN_LATER);
    assert_eq!(code_for(ErrorKind::Failed), code::IO_FAILURE);
    // An agent from before the kind was sent: failed.
    let old: Response = serde_json::from_str(r#"{"response":"error","message":"x"}"#)
        .expect("an old agent's error");
    assert!(matches!(
        old,
        Response::Error {
            kind: ErrorKind::Failed,
            ..
        }
    ));
}

#[test]
fn the_pod_name_comes_from_the_runtimes_cni_args() {
    let args = |value: &str| environment(&[("CNI_ARGS", value)]);
    let named = pod_name(&args(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME=a-7f9;K8S_POD_INFRA_CONTAINER_ID=c9",
    ));
    assert_eq!(
        named,
        Some(PodName {
            namespace: "x".into(),
            name: "a-7f9".into()
        })
    );
    // Outside Kubernetes, or half given: no name (policy by address then).
    assert_eq!(pod_name(&environment(&[])), None);
    assert_eq!(pod_name(&args("K8S_POD_NAMESPACE=x")), None);
    assert_eq!(pod_name(&args("K8S_POD_NAMESPACE=x;K8S_POD_NAME=")), None);
}
