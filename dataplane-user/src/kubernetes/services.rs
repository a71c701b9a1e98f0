//! Kubernetes as a source of Services: every Service with an IPv4 ClusterIP
//! and its EndpointSlices become a [`ServiceSpec`], read as kube-proxy reads
//! them. Headless and ExternalName Services, and those labelled
//! `service.kubernetes.io/service-proxy-name` (another proxy's) or
//! `service.kubernetes.io/headless`, are left alone. Backends are the ready
//! endpoints (all of them with `publishNotReadyAddresses`), and beside them
//! the serving terminating ones, which the model uses where none is ready
//! (KEP-1669). Named target ports are resolved by the EndpointSlices, whose
//! ports carry the Service port's name. A Service that breaks a rule is
//! refused on its own; every other one is programmed.
//!
//! Both kinds are watched; each complete listing (at start, after errors,
//! every few minutes) replaces what this source contributed, and the first
//! one also what an earlier run left pinned.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use anyhow::Context as _;
use dataplane_common::MAX_BACKENDS_PER_SERVICE;
use futures::{FutureExt as _, StreamExt as _};
use ipnetwork::Ipv4Network;
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt as _, watcher},
};
use tracing::{info, warn};

use crate::{
    model::{Protocol, ServicePort, ServiceSpec, Source},
    state::{Command, StateHandle},
};

/// Services another proxy implements carry this label (kube-proxy skips them too).
const PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// Services labelled so are not proxied, whatever their ClusterIP (kube-proxy
/// skips them too; upstream e2e "should implement service.kubernetes.io/headless").
const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// An EndpointSlice's Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
const DEFAULT_AFFINITY_SECONDS: u32 = 10_800;
/// How often both kinds are relisted and reconciled even without errors.
const RESYNC_INTERVAL: Duration = Duration::from_secs(300);

/// A namespaced object: (namespace, name).
type Key = (String, String);

/// The Service as the dataplane programs it, given its EndpointSlices;
/// `None` for a Service the dataplane leaves alone.
pub fn service_spec(service: &Service, slices: &[&EndpointSlice]) -> Option<ServiceSpec> {
    let metadata = &service.metadata;
    if metadata.labels.as_ref().is_some_and(|labels| {
        labels.contains_key(PROXY_NAME_LABEL) || labels.contains_key(HEADLESS_LABEL)
    }) {
        return None;
    }
    let spec = service.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    // Headless Services have "None", which is no address.
    let ip = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .find_map(|ip| ip.parse::<Ipv4Addr>().ok())?;
    let publish_not_ready = spec.publish_not_ready_addresses == Some(true);
    let name = format!(
        "{}/{}",
        metadata.namespace.as_deref().unwrap_or("default"),
        metadata.name.as_deref()?
    );
    let ports: Vec<ServicePort> = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|port| {
            // SCTP is not balanced: its frontend is not programmed.
            let protocol = protocol(port.protocol.as_deref())?;
            let port_name = port.name.as_deref().unwrap_or_default();
            let found = backends(slices, port_name, protocol, publish_not_ready);
            Some(ServicePort {
                port: u16::try_from(port.port).ok()?,
                protocol,
                backends: at_most_max(&name, port.port, found.ready),
                terminating_backends: at_most_max(&name, port.port, found.terminating),
                zone_hints: found.zone_hints,
                // Set for NodePort and LoadBalancer Services (unless their
                // node ports are switched off).
                node_port: port.node_port.and_then(|port| u16::try_from(port).ok()),
            })
        })
        .collect();
    if ports.is_empty() {
        return None;
    }
    Some(ServiceSpec {
        name,
        ip,
        ports,
        session_affinity_seconds: (spec.session_affinity.as_deref() == Some("ClientIP")).then(
            || {
                spec.session_affinity_config
                    .as_ref()
                    .and_then(|config| config.client_ip.as_ref()?.timeout_seconds)
                    .and_then(|seconds| u32::try_from(seconds).ok())
                    .unwrap_or(DEFAULT_AFFINITY_SECONDS)
            },
        ),
        load_balancer_ips: load_balancer_ips(service, &external_ips(service)),
        source_ranges: source_ranges(service),
        external_ips: external_ips(service),
        external_traffic_local: spec.external_traffic_policy.as_deref() == Some("Local"),
        internal_traffic_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
        health_check_node_port: spec
            .health_check_node_port
            .and_then(|port| u16::try_from(port).ok()),
        address_is_external: false,
        created: metadata
            .creation_timestamp
            .as_ref()
            .map(|created| created.0.as_second()),
    })
}

/// The first `MAX_BACKENDS_PER_SERVICE` of `backends` (in address order):
/// a Service larger than one frontend may be is served by that many, with a
/// warning, never dropped.
fn at_most_max(service: &str, port: i32, backends: BTreeSet<SocketAddrV4>) -> Vec<SocketAddrV4> {
    let mut backends: Vec<SocketAddrV4> = backends.into_iter().collect();
    let max = MAX_BACKENDS_PER_SERVICE as usize;
    if backends.len() > max {
        warn!(
            service,
            port,
            endpoints = backends.len(),
            "more endpoints than one frontend holds: the first {max} serve"
        );
        backends.truncate(max);
    }
    backends
}

/// `spec.externalIPs` (IPv4), as kube-proxy serves them.
fn external_ips(service: &Service) -> Vec<Ipv4Addr> {
    sorted_addresses(
        service
            .spec
            .iter()
            .flat_map(|spec| spec.external_ips.iter().flatten()),
    )
}

/// The load balancer's ingress IPs (IPv4) that are not external IPs too;
/// an ingress whose `ipMode` is `Proxy` is reached through the load
/// balancer's own proxy, not at its IP (KEP-1860).
fn load_balancer_ips(service: &Service, external: &[Ipv4Addr]) -> Vec<Ipv4Addr> {
    let mut addresses = sorted_addresses(
        service
            .status
            .iter()
            .filter_map(|status| status.load_balancer.as_ref()?.ingress.as_ref())
            .flatten()
            .filter(|ingress| ingress.ip_mode.as_deref() != Some("Proxy"))
            .filter_map(|ingress| ingress.ip.as_ref()),
    );
    addresses.retain(|address| !external.contains(address));
    addresses
}

fn sorted_addresses<'a>(listed: impl Iterator<Item = &'a String>) -> Vec<Ipv4Addr> {
    let mut addresses: Vec<Ipv4Addr> = listed.filter_map(|ip| ip.parse().ok()).collect();
    addresses.sort_unstable();
    addresses.dedup();
    addresses
}

/// `spec.loadBalancerSourceRanges` (IPv4; what does not parse is left out,
/// as kube-proxy leaves it out).
fn source_ranges(service: &Service) -> Vec<Ipv4Network> {
    let mut ranges: Vec<Ipv4Network> = service
        .spec
        .iter()
        .flat_map(|spec| spec.load_balancer_source_ranges.iter().flatten())
        .filter_map(|range| range.trim().parse::<Ipv4Network>().ok())
        .filter_map(|range| Ipv4Network::new(range.network(), range.prefix()).ok())
        .collect();
    ranges.sort_unstable();
    ranges.dedup();
    ranges
}

fn protocol(name: Option<&str>) -> Option<Protocol> {
    match name.unwrap_or("TCP") {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        _ => None,
    }
}

/// The endpoints of one Service port, as the model takes them.
#[derive(Default)]
struct PortEndpoints {
    ready: BTreeSet<SocketAddrV4>,
    terminating: BTreeSet<SocketAddrV4>,
    /// The zones each ready one is hinted for.
    zone_hints: BTreeMap<SocketAddrV4, BTreeSet<String>>,
}

/// The backends of the Service port `port_name`: the ready endpoints (or
/// all, to publish not-ready ones) with their zone hints, and the serving
/// terminating ones.
fn backends(
    slices: &[&EndpointSlice],
    port_name: &str,
    protocol_wanted: Protocol,
    publish_not_ready: bool,
) -> PortEndpoints {
    let mut found = PortEndpoints::default();
    for slice in slices.iter().filter(|slice| slice.address_type == "IPv4") {
        let target = slice.ports.iter().flatten().find(|port| {
            port.name.as_deref().unwrap_or_default() == port_name
                && protocol(port.protocol.as_deref()) == Some(protocol_wanted)
        });
        let Some(target) = target
            .and_then(|port| port.port)
            .and_then(|port| u16::try_from(port).ok())
        else {
            continue;
        };
        for endpoint in &slice.endpoints {
            // Only the first address counts (the API says so).
            let Some(address) = endpoint
                .addresses
                .first()
                .and_then(|address| address.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            let conditions = endpoint.conditions.clone().unwrap_or_default();
            // Unset conditions mean ready and serving, as kube-proxy reads them.
            let is_ready = conditions.ready.unwrap_or(true);
            let serving = conditions.serving.unwrap_or(true);
            let backend = SocketAddrV4::new(address, target);
            if is_ready || publish_not_ready {
                found.ready.insert(backend);
                let zones: BTreeSet<String> = endpoint
                    .hints
                    .iter()
                    .flat_map(|hints| hints.for_zones.iter().flatten())
                    .map(|zone| zone.name.clone())
                    .collect();
                if !zones.is_empty() {
                    found.zone_hints.entry(backend).or_default().extend(zones);
                }
            } else if serving && conditions.terminating == Some(true) {
                found.terminating.insert(backend);
            }
        }
    }
    found
}

/// Follows the cluster's Services and EndpointSlices for as long as the agent runs.
pub async fn follow_services(state: StateHandle) {
    let mut listed_before = false;
    loop {
        if let Ok(Err(error)) =
            tokio::time::timeout(RESYNC_INTERVAL, watch(&state, &mut listed_before)).await
        {
            warn!("Kubernetes service source: {error:#}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// An event of either watch (boxed: a Service is twice a slice's size).
enum Change {
    Service(Box<watcher::Event<Service>>),
    Slice(Box<watcher::Event<EndpointSlice>>),
}

/// What the watches have told, with each Service's slices indexed.
#[derive(Default)]
struct Store {
    services: BTreeMap<Key, Service>,
    slices: BTreeMap<Key, EndpointSlice>,
    slices_of: BTreeMap<Key, BTreeSet<Key>>,
    /// Listings in progress.
    listing_services: BTreeMap<Key, Service>,
    listing_slices: BTreeMap<Key, EndpointSlice>,
    services_listed: bool,
    slices_listed: bool,
}

fn key_of(metadata: &kube::api::ObjectMeta) -> Key {
    (
        metadata.namespace.clone().unwrap_or_default(),
        metadata.name.clone().unwrap_or_default(),
    )
}

/// The Service a slice belongs to.
fn owner_of(slice: &EndpointSlice) -> Option<Key> {
    let name = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some((
        slice.metadata.namespace.clone().unwrap_or_default(),
        name.clone(),
    ))
}

impl Store {
    fn insert_slice(&mut self, slice: EndpointSlice) -> Option<Key> {
        let key = key_of(&slice.metadata);
        let before = self.remove_slice(&key);
        let owner = owner_of(&slice);
        if let Some(owner) = &owner {
            self.slices_of
                .entry(owner.clone())
                .or_default()
                .insert(key.clone());
        }
        self.slices.insert(key, slice);
        owner.or(before)
    }

    /// Returns the Service the slice belonged to.
    fn remove_slice(&mut self, key: &Key) -> Option<Key> {
        let owner = owner_of(&self.slices.remove(key)?)?;
        if let Some(slices) = self.slices_of.get_mut(&owner) {
            slices.remove(key);
            if slices.is_empty() {
                self.slices_of.remove(&owner);
            }
        }
        Some(owner)
    }

    fn spec_of(&self, key: &Key) -> Option<ServiceSpec> {
        let service = self.services.get(key)?;
        let slices: Vec<&EndpointSlice> = self
            .slices_of
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|slice| self.slices.get(slice))
            .collect();
        service_spec(service, &slices)
    }

    fn listed(&self) -> bool {
        self.services_listed && self.slices_listed
    }

    fn all_specs(&self) -> Vec<ServiceSpec> {
        self.services
            .keys()
            .filter_map(|key| self.spec_of(key))
            .collect()
    }
}

async fn watch(state: &StateHandle, listed_before: &mut bool) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let services = watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|event| event.map(|event| Change::Service(Box::new(event))))
    .boxed();
    let slices = watcher(
        Api::<EndpointSlice>::all(client),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|event| event.map(|event| Change::Slice(Box::new(event))))
    .boxed();
    let mut events = futures::stream::select(services, slices);
    let mut store = Store::default();
    let mut pending: BTreeSet<Key> = BTreeSet::new();
    while let Some(first) = events.next().await {
        // What the watches have ready is taken in before anything is
        // applied: a burst (a large Service's slices, a namespace deleted)
        // costs each Service it touches once.
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(event) = next {
            let changed = match event {
                Ok(Change::Service(event)) => store.service_event(*event),
                Ok(Change::Slice(event)) => store.slice_event(*event),
                Err(error) => {
                    warn!("Kubernetes watch: {error}; resuming");
                    Changed::Nothing
                }
            };
            match changed {
                Changed::Nothing => {}
                Changed::Listing if store.listed() => {
                    pending.clear();
                    replace_all(state, &store, listed_before).await;
                }
                Changed::Listing => {}
                Changed::Service(key) => {
                    pending.insert(key);
                }
            }
            taken += 1;
            next = if taken < MAX_EVENTS_AT_ONCE {
                events.next().now_or_never().flatten()
            } else {
                None
            };
        }
        if store.listed() {
            for key in std::mem::take(&mut pending) {
                apply(state, &store, &key).await?;
            }
        }
    }
    Ok(())
}

/// Events taken in at most before the Services they touched are applied.
const MAX_EVENTS_AT_ONCE: usize = 1_000;

/// A complete listing: the Services as listed replace what this source
/// contributed (and, the first time, what an earlier run left pinned).
async fn replace_all(state: &StateHandle, store: &Store, listed_before: &mut bool) {
    let specs = store.all_specs();
    let count = specs.len();
    // Objects that break a rule are refused one by one; a failure here is a
    // write the agent retries by itself: relisting would not help, so the
    // watch goes on.
    if let Err(error) = state
        .ask(|reply| Command::ReplaceServices(Source::Kubernetes, specs, reply))
        .await
    {
        warn!("Kubernetes services: {error:#}");
    }
    if !*listed_before {
        // What an earlier run programmed and the cluster no longer lists goes.
        if let Err(error) = state
            .ask(|reply| Command::ReplaceServices(Source::Pinned, Vec::new(), reply))
            .await
        {
            warn!("services pinned by an earlier run: {error:#}");
        }
        *listed_before = true;
    }
    info!(services = count, "Kubernetes services listed");
}

/// What an event changed.
enum Changed {
    Nothing,
    /// A listing completed.
    Listing,
    Service(Key),
}

impl Store {
    fn service_event(&mut self, event: watcher::Event<Service>) -> Changed {
        match event {
            watcher::Event::Init => {
                self.listing_services.clear();
                Changed::Nothing
            }
            watcher::Event::InitApply(service) => {
                self.listing_services
                    .insert(key_of(&service.metadata), service);
                Changed::Nothing
            }
            watcher::Event::InitDone => {
                self.services = std::mem::take(&mut self.listing_services);
                self.services_listed = true;
                Changed::Listing
            }
            watcher::Event::Apply(service) => {
                let key = key_of(&service.metadata);
                self.services.insert(key.clone(), service);
                Changed::Service(key)
            }
            watcher::Event::Delete(service) => {
                let key = key_of(&service.metadata);
                self.services.remove(&key);
                Changed::Service(key)
            }
        }
    }

    fn slice_event(&mut self, event: watcher::Event<EndpointSlice>) -> Changed {
        match event {
            watcher::Event::Init => {
                self.listing_slices.clear();
                Changed::Nothing
            }
            watcher::Event::InitApply(slice) => {
                self.listing_slices.insert(key_of(&slice.metadata), slice);
                Changed::Nothing
            }
            watcher::Event::InitDone => {
                self.slices.clear();
                self.slices_of.clear();
                for (_, slice) in std::mem::take(&mut self.listing_slices) {
                    self.insert_slice(slice);
                }
                self.slices_listed = true;
                Changed::Listing
            }
            watcher::Event::Apply(slice) => match self.insert_slice(slice) {
                Some(owner) => Changed::Service(owner),
                None => Changed::Nothing,
            },
            watcher::Event::Delete(slice) => match self.remove_slice(&key_of(&slice.metadata)) {
                Some(owner) => Changed::Service(owner),
                None => Changed::Nothing,
            },
        }
    }
}

/// Programs one Service as the store has it now (or withdraws it).
async fn apply(state: &StateHandle, store: &Store, key: &Key) -> anyhow::Result<()> {
    let name = format!("{}/{}", key.0, key.1);
    match store.spec_of(key) {
        Some(spec) => {
            let upserted = state
                .ask(|reply| Command::UpsertService(Source::Kubernetes, spec, reply))
                .await;
            if let Err(error) = upserted {
                warn!(service = name, "not programmed: {error:#}");
            }
        }
        None => {
            let withdrawn = state
                .ask(|reply| Command::WithdrawService(Some(Source::Kubernetes), name, reply))
                .await;
            if let Err(error) = withdrawn {
                warn!(service = key.1, "not withdrawn yet: {error:#}");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let headless =
            web(serde_json::json!({"spec": {"clusterIP": "None", "clusterIPs": ["None"]}}));
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
}
