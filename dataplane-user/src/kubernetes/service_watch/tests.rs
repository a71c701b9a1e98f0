use super::*;

#[test]
fn compacted_objects_give_the_same_service() {
    let mut service: Service = serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": "web", "namespace": "shop",
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}"},
            "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
            "labels": {"app": "web"},
        },
        "spec": {
            "clusterIP": "10.96.0.10", "type": "LoadBalancer",
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080}],
            "sessionAffinity": "ClientIP",
        },
        "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}},
    }))
    .unwrap();
    let mut slice: EndpointSlice = serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": "web-abc", "namespace": "shop",
            "labels": {SERVICE_NAME_LABEL: "web", "endpointslice.kubernetes.io/managed-by": "x"},
            "annotations": {"a": "b"},
            "managedFields": [{"manager": "kube-controller-manager"}],
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{
            "addresses": ["10.244.1.2"],
            "conditions": {"ready": true},
            "hints": {"forZones": [{"name": "zone-a"}]},
            "nodeName": "n1", "hostname": "web-0",
            "targetRef": {"kind": "Pod", "name": "web-0", "namespace": "shop"},
        }],
    }))
    .unwrap();
    let whole = service_spec(&service, &[&slice]);
    let (service_bytes, slice_bytes) = (
        serde_json::to_vec(&service).unwrap().len(),
        serde_json::to_vec(&slice).unwrap().len(),
    );
    compact_service(&mut service);
    compact_slice(&mut slice);
    assert_eq!(service_spec(&service, &[&slice]), whole);
    assert!(whole.is_some());
    assert!(serde_json::to_vec(&service).unwrap().len() < service_bytes);
    assert!(serde_json::to_vec(&slice).unwrap().len() < slice_bytes);
}
