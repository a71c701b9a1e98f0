use super::*;

/// The Service as programmed from these objects, as the watch builds it.
fn service_spec(service: &Service, slices: &[&EndpointSlice]) -> Option<ServiceSpec> {
    let slices: Vec<SliceFacts> = slices.iter().map(|slice| slice_facts(slice)).collect();
    let slices: Vec<&SliceFacts> = slices.iter().collect();
    Some(service_facts(service)?.spec(&object_key(&service.metadata), &slices))
}

fn service(json: serde_json::Value) -> Service {
    serde_json::from_value(json).unwrap()
}

fn slice(json: serde_json::Value) -> EndpointSlice {
    serde_json::from_value(json).unwrap()
}

fn web(extra: serde_json::Value) -> Service {
    let mut json = serde_json::json!({
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"},
                           {"name": "dns", "port": 53, "protocol": "UDP"},
                           {"name": "sig", "port": 99, "protocol": "SCTP"}]}
    });
    json_merge(&mut json, extra);
    service(json)
}

fn json_merge(target: &mut serde_json::Value, extra: serde_json::Value) {
    if let (Some(target), serde_json::Value::Object(extra)) = (target.as_object_mut(), extra) {
        for (key, value) in extra {
            match target.get_mut(&key) {
                Some(existing) if value.is_object() => json_merge(existing, value),
                _ => {
                    target.insert(key, value);
                }
            }
        }
    }
}

fn endpoint(ip: &str, ready: bool, serving: bool, terminating: bool) -> serde_json::Value {
    serde_json::json!({"addresses": [ip],
        "conditions": {"ready": ready, "serving": serving, "terminating": terminating}})
}

fn web_slice(name: &str, endpoints: Vec<serde_json::Value>) -> EndpointSlice {
    slice(serde_json::json!({
        "metadata": {"name": name, "namespace": "shop",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                  {"name": "dns", "port": 5353, "protocol": "UDP"}]
    }))
}

fn backends_of(spec: &ServiceSpec, port: u16) -> Vec<String> {
    spec.ports
        .iter()
        .find(|candidate| candidate.port == port)
        .unwrap()
        .backends
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn ports_resolve_by_name_across_slices_and_only_ready_endpoints_serve() {
    let first = web_slice(
        "web-a",
        vec![
            endpoint("10.244.1.5", true, true, false),
            endpoint("10.244.1.6", false, false, false),
        ],
    );
    let second = web_slice("web-b", vec![endpoint("10.244.2.7", true, true, false)]);
    let spec = service_spec(&web(serde_json::json!({})), &[&first, &second]).unwrap();
    assert_eq!(spec.name, "shop/web");
    assert_eq!(spec.ip, Ipv4Addr::new(10, 96, 0, 10));
    assert_eq!(spec.ports.len(), 2, "SCTP left out");
    assert_eq!(
        backends_of(&spec, 80),
        ["10.244.1.5:8080", "10.244.2.7:8080"]
    );
    assert_eq!(
        backends_of(&spec, 53),
        ["10.244.1.5:5353", "10.244.2.7:5353"]
    );
}

#[test]
fn serving_terminating_endpoints_are_kept_apart_and_not_ready_ones_only_when_published() {
    let slices = web_slice(
        "web-a",
        vec![
            endpoint("10.244.1.5", false, true, true),
            endpoint("10.244.1.6", false, false, false),
            endpoint("10.244.1.7", false, false, true),
            serde_json::json!({"addresses": ["10.244.1.8"],
                "conditions": {"ready": false, "terminating": true}}),
        ],
    );
    let spec = service_spec(&web(serde_json::json!({})), &[&slices]).unwrap();
    assert!(backends_of(&spec, 80).is_empty(), "none ready");
    let terminating: Vec<String> = spec.ports[0]
        .terminating_backends
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        terminating,
        ["10.244.1.5:8080", "10.244.1.8:8080"],
        "serving unset means serving"
    );
    let published = web(serde_json::json!({"spec": {"publishNotReadyAddresses": true}}));
    let spec = service_spec(&published, &[&slices]).unwrap();
    assert_eq!(
        backends_of(&spec, 80),
        [
            "10.244.1.5:8080",
            "10.244.1.6:8080",
            "10.244.1.7:8080",
            "10.244.1.8:8080"
        ],
        "all published"
    );
    let none = service_spec(&web(serde_json::json!({})), &[]).unwrap();
    assert!(backends_of(&none, 80).is_empty(), "no endpoints: refused");
}

#[test]
fn client_ip_affinity_comes_with_its_timeout_or_kubernetes_default() {
    let sticky = web(serde_json::json!({"spec": {"sessionAffinity": "ClientIP",
        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}}));
    assert_eq!(
        service_spec(&sticky, &[]).unwrap().session_affinity_seconds,
        Some(60)
    );
    let default = web(serde_json::json!({"spec": {"sessionAffinity": "ClientIP"}}));
    assert_eq!(
        service_spec(&default, &[])
            .unwrap()
            .session_affinity_seconds,
        Some(10_800)
    );
    let none = web(serde_json::json!({"spec": {"sessionAffinity": "None"}}));
    assert_eq!(
        service_spec(&none, &[]).unwrap().session_affinity_seconds,
        None
    );
}

#[test]
fn node_ports_external_ips_and_load_balancer_ingress_are_served() {
    // ports is a list: merged whole, so the node ports are given in full.
    let balanced = web(serde_json::json!({
        "spec": {"type": "LoadBalancer", "externalIPs": ["198.51.100.7", "2001:db8::7"],
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080},
                           {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053}]},
        "status": {"loadBalancer": {"ingress": [
            {"ip": "203.0.113.9"},
            {"ip": "203.0.113.10", "ipMode": "Proxy"},
            {"hostname": "lb.example"}]}}
    }));
    let spec = service_spec(&balanced, &[]).unwrap();
    let node_ports: Vec<Option<u16>> = spec.ports.iter().map(|port| port.node_port).collect();
    assert_eq!(node_ports, [Some(30080), Some(30053)]);
    assert_eq!(
        spec.external_ips,
        [Ipv4Addr::new(198, 51, 100, 7)],
        "IPv4 external IPs"
    );
    assert_eq!(
        spec.load_balancer_ips,
        [Ipv4Addr::new(203, 0, 113, 9)],
        "VIP-mode ingress IPs"
    );
    let ranged = web(serde_json::json!({"spec": {"type": "LoadBalancer",
        "loadBalancerSourceRanges": ["192.0.2.7/24", " 10.0.0.0/8", "2001:db8::/32", "nonsense"]}}));
    let ranges: Vec<String> = service_spec(&ranged, &[])
        .unwrap()
        .source_ranges
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(ranges, ["10.0.0.0/8", "192.0.2.0/24"], "IPv4, normalised");
    let cluster_ip = service_spec(&web(serde_json::json!({})), &[]).unwrap();
    assert!(cluster_ip.ports.iter().all(|port| port.node_port.is_none()));
    assert!(cluster_ip.external_ips.is_empty());
}

#[test]
fn headless_external_name_and_other_proxies_services_are_left_alone() {
    let headless = web(serde_json::json!({"spec": {"clusterIP": "None", "clusterIPs": ["None"]}}));
    assert!(service_spec(&headless, &[]).is_none());
    let external = web(serde_json::json!({"spec": {"type": "ExternalName"}}));
    assert!(service_spec(&external, &[]).is_none());
    let other = web(serde_json::json!({"metadata": {"labels":
        {"service.kubernetes.io/service-proxy-name": "someone-else"}}}));
    assert!(service_spec(&other, &[]).is_none());
    let labelled = web(serde_json::json!({"metadata": {"labels":
        {"service.kubernetes.io/headless": ""}}}));
    assert!(service_spec(&labelled, &[]).is_none());
}
