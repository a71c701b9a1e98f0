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
    let key = "shop/web".to_string();
    store.service_event(watcher::Event::Apply(service(serde_json::json!({}))));
    assert!(store.spec_of(&key).is_some());
    // Another proxy's now: this dataplane stops programming it.
    store.service_event(watcher::Event::Apply(service(serde_json::json!({
        "service.kubernetes.io/service-proxy-name": "other"
    }))));
    assert!(store.spec_of(&key).is_none());
}

fn service(name: &str) -> Service {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80}]},
    }))
    .unwrap()
}

fn slice(service: &str, address: &str) -> EndpointSlice {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "custom", "namespace": "shop",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": [{"addresses": [address]}],
    }))
    .unwrap()
}

fn backends(store: &Store, service: &str) -> Vec<std::net::SocketAddrV4> {
    store.spec_of(&service.to_string()).unwrap().ports[0]
        .backends
        .clone()
}

#[test]
fn a_relabelled_slice_moves_to_its_new_service() {
    let mut store = Store::default();
    store.service_event(watcher::Event::Apply(service("web")));
    store.service_event(watcher::Event::Apply(service("api")));
    let changed = store.slice_event(watcher::Event::Apply(slice("web", "10.244.1.2")));
    assert_eq!(changed, ["shop/web"]);
    assert_eq!(
        backends(&store, "shop/web"),
        ["10.244.1.2:8080".parse().unwrap()]
    );
    // A tenant relabels its own slice: both Services change.
    let changed = store.slice_event(watcher::Event::Apply(slice("api", "10.244.1.3")));
    assert_eq!(changed, ["shop/web", "shop/api"]);
    assert!(backends(&store, "shop/web").is_empty());
    assert_eq!(
        backends(&store, "shop/api"),
        ["10.244.1.3:8080".parse().unwrap()]
    );
    store.slice_event(watcher::Event::Delete(slice("api", "10.244.1.3")));
    assert!(backends(&store, "shop/api").is_empty());
    // A Service deleted while its slice stays: gone, the slice kept for
    // when it comes back.
    store.slice_event(watcher::Event::Apply(slice("web", "10.244.1.4")));
    store.service_event(watcher::Event::Delete(service("web")));
    assert!(store.spec_of(&"shop/web".to_string()).is_none());
    store.service_event(watcher::Event::Apply(service("web")));
    assert_eq!(
        backends(&store, "shop/web"),
        ["10.244.1.4:8080".parse().unwrap()]
    );
}

#[test]
fn a_relisting_replaces_what_was_known() {
    let mut store = Store::default();
    store.service_event(watcher::Event::Apply(service("web")));
    store.slice_event(watcher::Event::Apply(slice("web", "10.244.1.2")));
    store.service_event(watcher::Event::Init);
    let added = store.service_event(watcher::Event::InitApply(service("api")));
    assert_eq!(added, ["shop/api"]);
    let ended = store.service_event(watcher::Event::InitDone);
    assert_eq!(ended, ["shop/web"]);
    store.slice_event(watcher::Event::Init);
    let moved = store.slice_event(watcher::Event::InitApply(slice("api", "10.244.1.3")));
    assert_eq!(moved, ["shop/web", "shop/api"]);
    store.slice_event(watcher::Event::InitDone);
    let names: Vec<String> = store
        .all_specs()
        .into_iter()
        .map(|spec| spec.name)
        .collect();
    assert_eq!(names, ["shop/api"]);
    assert_eq!(
        backends(&store, "shop/api"),
        ["10.244.1.3:8080".parse().unwrap()]
    );
    assert!(store.services.keys().all(|key| key == "shop/api"));
}

#[test]
fn a_relisting_of_what_is_known_changes_nothing_and_names_what_went() {
    let mut store = Store::default();
    store.service_event(watcher::Event::Apply(service("web")));
    store.slice_event(watcher::Event::Apply(slice("web", "10.244.1.2")));
    store.service_event(watcher::Event::Init);
    let same = store.service_event(watcher::Event::InitApply(service("web")));
    assert!(same.is_empty());
    assert!(store.service_event(watcher::Event::InitDone).is_empty());
    store.slice_event(watcher::Event::Init);
    let same = store.slice_event(watcher::Event::InitApply(slice("web", "10.244.1.2")));
    assert!(same.is_empty());
    assert!(store.slice_event(watcher::Event::InitDone).is_empty());
    // A slice deleted while the watch was down: its Service changes.
    store.slice_event(watcher::Event::Init);
    assert_eq!(store.slice_event(watcher::Event::InitDone), ["shop/web"]);
    assert!(backends(&store, "shop/web").is_empty());
}
