//! A stand-in for kube-apiserver on hyper (there is none on these machines):
//! real Kubernetes JSON for list (in pages) and watch of Nodes, Services,
//! EndpointSlices, Namespaces, Pods and NetworkPolicies, watches resumable
//! from a resourceVersion, and the power to drop them or expire their
//! history.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::Ipv4Addr,
    path::Path,
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};

use anyhow::Context as _;
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use hyper::{
    Request, Response, StatusCode,
    body::{Bytes, Frame, Incoming},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::{netns::Netns, traffic::in_netns};

/// The kinds served: their collection path and list kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Resource {
    Nodes,
    Services,
    EndpointSlices,
    Namespaces,
    Pods,
    NetworkPolicies,
}

impl Resource {
    const ALL: [Resource; 6] = [
        Resource::Nodes,
        Resource::Services,
        Resource::EndpointSlices,
        Resource::Namespaces,
        Resource::Pods,
        Resource::NetworkPolicies,
    ];

    fn path(self) -> &'static str {
        match self {
            Resource::Nodes => "/api/v1/nodes",
            Resource::Services => "/api/v1/services",
            Resource::EndpointSlices => "/apis/discovery.k8s.io/v1/endpointslices",
            Resource::Namespaces => "/api/v1/namespaces",
            Resource::Pods => "/api/v1/pods",
            Resource::NetworkPolicies => "/apis/networking.k8s.io/v1/networkpolicies",
        }
    }

    fn list(self) -> (&'static str, &'static str) {
        match self {
            Resource::Nodes => ("v1", "NodeList"),
            Resource::Services => ("v1", "ServiceList"),
            Resource::EndpointSlices => ("discovery.k8s.io/v1", "EndpointSliceList"),
            Resource::Namespaces => ("v1", "NamespaceList"),
            Resource::Pods => ("v1", "PodList"),
            Resource::NetworkPolicies => ("networking.k8s.io/v1", "NetworkPolicyList"),
        }
    }
}

#[derive(Default)]
struct State {
    /// By kind, then "namespace/name" ("name" for cluster-wide kinds).
    objects: BTreeMap<(Resource, String), Value>,
    version: u64,
    /// Every change as (resourceVersion, kind, watch event), for resuming watches.
    events: Vec<(u64, Resource, Value)>,
    /// Bumped to end every open watch.
    watch_generation: u64,
    /// Watches resuming from before this version are answered 410 Gone (the
    /// history was compacted), so the watcher lists everything again.
    compacted_before: u64,
}

/// The state, and a signal to open watches that it changed.
struct Shared {
    state: Mutex<State>,
    changed: watch::Sender<()>,
}

type Body = BoxBody<Bytes, Infallible>;

pub struct FakeApiServer {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    pub port: u16,
}

impl FakeApiServer {
    /// Listens on 127.0.0.1 inside `netns` (where the agent runs).
    pub fn start(netns: &Netns) -> anyhow::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::default(),
            changed: watch::Sender::new(()),
        });
        let (stop, mut stopped) = watch::channel(false);
        let (port_sender, port) = mpsc::channel();
        let serving = Arc::clone(&shared);
        drop(in_netns(netns, move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
                port_sender.send(listener.local_addr()?.port())?;
                loop {
                    let (connection, _) = tokio::select! {
                        accepted = listener.accept() => accepted?,
                        _ = stopped.wait_for(|stopped| *stopped) => return Ok(()),
                    };
                    let shared = Arc::clone(&serving);
                    let service = service_fn(move |request| respond(Arc::clone(&shared), request));
                    // Ends with the runtime when the server stops.
                    tokio::spawn(
                        http1::Builder::new().serve_connection(TokioIo::new(connection), service),
                    );
                }
            })
        }));
        let port = port
            .recv_timeout(Duration::from_secs(5))
            .context("fake API server did not start")?;
        Ok(Self { shared, stop, port })
    }

    /// A kubeconfig pointing at this server.
    pub fn write_kubeconfig(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(
            path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://127.0.0.1:{}\n\
                 contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\n\
                 users:\n- name: fake\n  user: {{}}\n",
                self.port
            ),
        )?;
        Ok(())
    }

    /// Adds or replaces `object` (its metadata names it), as ADDED or MODIFIED.
    pub fn apply(&self, resource: Resource, mut object: Value) {
        let key = (resource, object_key(&object));
        let mut state = self.shared.state.lock().unwrap();
        state.version += 1;
        let version = state.version;
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        let kind = match state.objects.insert(key, object.clone()) {
            Some(_) => "MODIFIED",
            None => "ADDED",
        };
        state
            .events
            .push((version, resource, json!({"type": kind, "object": object})));
        drop(state);
        self.shared.changed.send_replace(());
    }

    /// Deletes the object `namespace/name` (`name` for cluster-wide kinds).
    pub fn delete(&self, resource: Resource, key: &str) {
        let mut state = self.shared.state.lock().unwrap();
        state.version += 1;
        let version = state.version;
        let mut object = state
            .objects
            .remove(&(resource, key.to_string()))
            .unwrap_or_else(|| {
                let (namespace, name) = key.split_once('/').unwrap_or(("", key));
                json!({"metadata": {"name": name, "namespace": namespace}})
            });
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        state.events.push((
            version,
            resource,
            json!({"type": "DELETED", "object": object}),
        ));
        drop(state);
        self.shared.changed.send_replace(());
    }

    pub fn apply_node(&self, name: &str, ip: Ipv4Addr, pod_cidr: &str) {
        self.apply(
            Resource::Nodes,
            json!({
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": name},
                "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
                "status": {"addresses": [{"type": "InternalIP", "address": ip.to_string()}]},
            }),
        );
    }

    pub fn delete_node(&self, name: &str) {
        self.delete(Resource::Nodes, name);
    }

    pub fn drop_watches(&self) {
        self.shared.state.lock().unwrap().watch_generation += 1;
        self.shared.changed.send_replace(());
    }

    /// Ends every watch and forgets the history, as kube-apiserver's
    /// compaction does: every watcher relists.
    pub fn expire_history(&self) {
        let mut state = self.shared.state.lock().unwrap();
        // A listing from now on is at a version no watch has seen.
        state.version += 1;
        state.compacted_before = state.version;
        drop(state);
        self.drop_watches();
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// "namespace/name", or "name" for cluster-wide objects.
fn object_key(object: &Value) -> String {
    let metadata = &object["metadata"];
    let name = metadata["name"].as_str().unwrap_or_default();
    match metadata["namespace"].as_str() {
        Some(namespace) => format!("{namespace}/{name}"),
        None => name.to_string(),
    }
}

/// A list, or a watch of events, of one kind, as kube-apiserver answers them.
async fn respond(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let uri = request.uri();
    let Some(resource) = Resource::ALL
        .into_iter()
        .find(|resource| resource.path() == uri.path())
    else {
        let mut response = Response::new(Full::default().boxed());
        *response.status_mut() = StatusCode::NOT_FOUND;
        return Ok(response);
    };
    let query = uri.query().unwrap_or_default();
    let parameter = |name: &str| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix(&format!("{name}=")))
    };
    if parameter("watch").is_some_and(|watch| watch == "true" || watch == "1") {
        let from = parameter("resourceVersion")
            .and_then(|version| version.parse().ok())
            .unwrap_or(0);
        if from < shared.state.lock().unwrap().compacted_before {
            let gone = json!({"type": "ERROR", "object": {
                "apiVersion": "v1", "kind": "Status", "status": "Failure",
                "message": "too old resource version", "reason": "Expired", "code": 410,
            }});
            return Ok(json_response(
                Full::new(Bytes::from(format!("{gone}\n"))).boxed(),
            ));
        }
        return Ok(json_response(watch_events(shared, resource, from)));
    }
    // Pages as kube-apiserver serves them (`limit`, then `continue` with
    // the offset reached); without `limit`, everything.
    let offset: usize = parameter("continue")
        .and_then(|token| token.parse().ok())
        .unwrap_or(0);
    let limit: usize = parameter("limit")
        .and_then(|limit| limit.parse().ok())
        .unwrap_or(usize::MAX);
    let list = {
        let state = shared.state.lock().unwrap();
        let (api_version, kind) = resource.list();
        let mut of_kind = state
            .objects
            .range((resource, String::new())..)
            .take_while(|((of, _), _)| *of == resource)
            .skip(offset);
        let items: Vec<Value> = of_kind
            .by_ref()
            .take(limit)
            .map(|(_, object)| object.clone())
            .collect();
        let mut metadata = json!({"resourceVersion": state.version.to_string()});
        if of_kind.next().is_some() {
            metadata["continue"] = json!((offset + items.len()).to_string());
        }
        json!({
            "apiVersion": api_version,
            "kind": kind,
            "metadata": metadata,
            "items": items,
        })
    };
    Ok(json_response(
        Full::new(Bytes::from(list.to_string())).boxed(),
    ))
}

fn json_response(body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// Events of `resource` after `from` as JSON lines (hyper sends them
/// chunked), until the watches are dropped.
fn watch_events(shared: Arc<Shared>, resource: Resource, from: u64) -> Body {
    // Subscribed before the first look at the state: no change is missed.
    let changed = shared.changed.subscribe();
    let generation = shared.state.lock().unwrap().watch_generation;
    let events = futures::stream::unfold((from, changed), move |(mut from, mut changed)| {
        let shared = Arc::clone(&shared);
        async move {
            loop {
                let lines = {
                    let state = shared.state.lock().unwrap();
                    if state.watch_generation != generation {
                        // Dropped: what came since is for the next watch.
                        return None;
                    }
                    let mut lines = String::new();
                    // Events are in version order: skip those seen by search,
                    // not by a walk (tens of thousands of objects are applied).
                    let seen = state
                        .events
                        .partition_point(|(version, _, _)| *version <= from);
                    for (version, of, event) in &state.events[seen..] {
                        if *of == resource {
                            lines.push_str(&format!("{event}\n"));
                        }
                        from = *version;
                    }
                    lines
                };
                if !lines.is_empty() {
                    let frame = Ok(Frame::data(Bytes::from(lines)));
                    return Some((frame, (from, changed)));
                }
                if changed.changed().await.is_err() {
                    return None;
                }
            }
        }
    });
    StreamBody::new(events).boxed()
}
