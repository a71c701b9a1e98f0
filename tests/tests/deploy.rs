//! The Kubernetes deployment files parse into the API types, and what they
//! configure fits the binaries they run.

use std::path::Path;

use dataplane_user::config::Config;
use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{ConfigMap, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use serde::Deserialize as _;
use serde_json::Value;

const MANIFEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/dataplane.yaml");

fn documents() -> Vec<Value> {
    let text = std::fs::read_to_string(MANIFEST).expect("deploy/dataplane.yaml");
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|document| Value::deserialize(document).expect("valid YAML"))
        .filter(|document| !document.is_null())
        .collect()
}

fn typed<T: serde::de::DeserializeOwned>(kind: &str) -> T {
    let document = documents()
        .into_iter()
        .find(|document| document["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in the manifest"));
    serde_json::from_value(document).unwrap_or_else(|error| panic!("{kind}: {error}"))
}

#[test]
fn every_document_is_a_valid_kubernetes_object() {
    let kinds: Vec<String> = documents()
        .iter()
        .map(|document| document["kind"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        kinds,
        [
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "DaemonSet"
        ]
    );
    let _: ServiceAccount = typed("ServiceAccount");
    let _: ClusterRoleBinding = typed("ClusterRoleBinding");
}

#[test]
fn rbac_allows_reading_nodes_services_and_endpoint_slices_and_nothing_else() {
    let role: ClusterRole = typed("ClusterRole");
    let rules = role.rules.expect("rules");
    let readable: Vec<(String, String)> = rules
        .iter()
        .flat_map(|rule| {
            let mut verbs = rule.verbs.clone();
            verbs.sort();
            assert_eq!(verbs, ["get", "list", "watch"], "read-only");
            let groups = rule.api_groups.clone().unwrap_or_default();
            let resources = rule.resources.clone().unwrap_or_default();
            groups.into_iter().flat_map(move |group| {
                resources
                    .clone()
                    .into_iter()
                    .map(move |resource| (group.clone(), resource))
            })
        })
        .collect();
    let wanted = [
        ("", "nodes"),
        ("", "services"),
        ("", "namespaces"),
        ("", "pods"),
        ("discovery.k8s.io", "endpointslices"),
        ("networking.k8s.io", "networkpolicies"),
    ]
    .map(|(group, resource)| (group.to_string(), resource.to_string()));
    assert_eq!(readable, wanted);
}

#[test]
fn the_config_map_holds_a_config_the_agent_accepts() {
    let config_map: ConfigMap = typed("ConfigMap");
    let text = &config_map.data.expect("data")["config.toml"];
    let config = Config::parse(text, Path::new("configmap/config.toml")).expect("agent config");
    assert!(config.kubernetes.enabled);
    assert!(config.node.uplink.is_some() && config.node.cluster_cidr.is_some());
}

#[test]
fn the_daemon_set_runs_the_installer_and_the_agent_as_configured() {
    let daemon_set: DaemonSet = typed("DaemonSet");
    let pod = daemon_set
        .spec
        .expect("spec")
        .template
        .spec
        .expect("pod spec");
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.service_account_name.as_deref(), Some("dataplane"));
    let installer = &pod.init_containers.expect("init containers")[0];
    assert!(
        installer
            .command
            .as_ref()
            .expect("command")
            .contains(&"install-cni".to_string())
    );
    let agent = &pod.containers[0];
    let command = agent.command.as_ref().expect("command").join(" ");
    assert!(
        command.contains("agent --config=/etc/dataplane/config.toml"),
        "{command}"
    );
    let mounts = agent.volume_mounts.as_ref().expect("mounts");
    assert!(
        mounts
            .iter()
            .any(|mount| mount.mount_path == "/etc/dataplane")
    );
    assert!(
        mounts.iter().any(|mount| mount.mount_path == "/sys/fs/bpf"),
        "bpffs must outlive the pod"
    );
    let node_name = agent
        .env
        .as_ref()
        .expect("env")
        .iter()
        .find(|variable| variable.name == "NODE_NAME");
    let field = node_name.and_then(|variable| variable.value_from.as_ref()?.field_ref.as_ref());
    assert_eq!(
        field.map(|field| field.field_path.as_str()),
        Some("spec.nodeName")
    );
}
