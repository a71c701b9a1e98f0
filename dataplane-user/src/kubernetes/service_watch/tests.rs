use super::*;

#[test]
fn a_service_changed_to_one_left_alone_is_withdrawn() {
    let service = |labels: serde_json::Value| -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop", "labels": labels},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]},
        }))
        .unwrap()
    };
    let mut store = Store {
        services_listed: true,
        slices_listed: true,
        ..Store::default()
    };
    let key = ("shop".to_string(), "web".to_string());
    store.service_event(watcher::Event::Apply(service(serde_json::json!({}))));
    assert!(store.spec_of(&key).is_some());
    // Another proxy's now: this dataplane stops programming it.
    store.service_event(watcher::Event::Apply(service(serde_json::json!({
        "service.kubernetes.io/service-proxy-name": "other"
    }))));
    assert!(store.spec_of(&key).is_none());
}
