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
//! How they are followed: `service_watch.rs`.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
};

use dataplane_common::MAX_BACKENDS_PER_SERVICE;
use ipnetwork::Ipv4Network;
use k8s_openapi::{
    api::{core::v1::Service, discovery::v1::EndpointSlice},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use tracing::warn;

use crate::model::{Protocol, ServicePort, ServiceSpec};

/// Services another proxy implements carry this label (kube-proxy skips them too).
const PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// Services labelled so are not proxied, whatever their ClusterIP (kube-proxy
/// skips them too; upstream e2e "should implement service.kubernetes.io/headless").
const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// An EndpointSlice's Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
const DEFAULT_AFFINITY_SECONDS: u32 = 10_800;
/// What the dataplane reads of a Service, taken as it arrives (the object
/// itself is not kept: whole, a Service is about 2 KB here): the Service
/// with its backends still to come from its EndpointSlices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceFacts {
    /// Everything but the backends.
    spec: ServiceSpec,
    /// The name of each of `spec.ports`, which the slices' ports carry.
    port_names: Box<[String]>,
    publish_not_ready: bool,
}

/// A namespaced object's name as Services are named here: "namespace/name".
pub fn object_key(metadata: &ObjectMeta) -> String {
    format!(
        "{}/{}",
        metadata.namespace.as_deref().unwrap_or("default"),
        metadata.name.as_deref().unwrap_or_default()
    )
}

/// What the dataplane reads of a Service; `None` for one it leaves alone.
pub fn service_facts(service: &Service) -> Option<ServiceFacts> {
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
    // Named by its object key (`object_key`); a Service without a name is none.
    metadata.name.as_ref()?;
    let (port_names, mut ports): (Vec<String>, Vec<ServicePort>) = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|port| {
            // SCTP is not balanced: its frontend is not programmed.
            let protocol = protocol(port.protocol.as_deref())?;
            let service_port = ServicePort {
                port: u16::try_from(port.port).ok()?,
                protocol,
                backends: Vec::new(),
                terminating_backends: Vec::new(),
                zone_hints: BTreeMap::new(),
                // Set for NodePort and LoadBalancer Services (unless their
                // node ports are switched off).
                node_port: port.node_port.and_then(|port| u16::try_from(port).ok()),
            };
            Some((port.name.clone().unwrap_or_default(), service_port))
        })
        .unzip();
    if ports.is_empty() {
        return None;
    }
    ports.shrink_to_fit();
    let external_ips = external_ips(service);
    Some(ServiceFacts {
        spec: ServiceSpec {
            // The store's key (`object_key`): not kept twice.
            name: String::new(),
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
            load_balancer_ips: load_balancer_ips(service, &external_ips),
            source_ranges: source_ranges(service),
            external_ips,
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
        },
        port_names: port_names.into(),
        publish_not_ready: spec.publish_not_ready_addresses == Some(true),
    })
}

impl ServiceFacts {
    /// The Service `name` (its `object_key`) as the dataplane programs it,
    /// given its EndpointSlices.
    pub fn spec(&self, name: &str, slices: &[&SliceFacts]) -> ServiceSpec {
        let mut spec = self.spec.clone();
        spec.name = name.to_string();
        for (port, port_name) in spec.ports.iter_mut().zip(self.port_names.iter()) {
            let found = backends(slices, port_name, port.protocol, self.publish_not_ready);
            port.backends = at_most_max(&spec.name, port.port, found.ready);
            port.terminating_backends = at_most_max(&spec.name, port.port, found.terminating);
            port.zone_hints = found.zone_hints;
        }
        spec
    }
}

/// What the dataplane reads of an EndpointSlice, taken as it arrives (whole,
/// a slice of 10 endpoints is about 6 KB here; this, a tenth of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceFacts {
    /// The ports of the endpoints (TCP and UDP ones with a number).
    ports: Box<[SlicePort]>,
    endpoints: Box<[SliceEndpoint]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct SlicePort {
    /// The Service port's name it serves.
    name: String,
    protocol: Protocol,
    port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct SliceEndpoint {
    /// The first address (the API says only it counts).
    address: IpAddr,
    /// Unset conditions mean ready and serving, as kube-proxy reads them.
    ready: bool,
    serving: bool,
    terminating: bool,
    /// The zones it is hinted for (no allocation when there are none).
    zones: Box<[String]>,
}

/// What the dataplane reads of an EndpointSlice.
pub fn slice_facts(slice: &EndpointSlice) -> SliceFacts {
    let ports = slice
        .ports
        .iter()
        .flatten()
        .filter_map(|port| {
            Some(SlicePort {
                name: port.name.clone().unwrap_or_default(),
                protocol: protocol(port.protocol.as_deref())?,
                port: u16::try_from(port.port?).ok()?,
            })
        })
        .collect();
    let endpoints = slice
        .endpoints
        .iter()
        .filter_map(|endpoint| {
            let address = endpoint.addresses.first()?.parse::<IpAddr>().ok()?;
            let conditions = endpoint.conditions.as_ref();
            Some(SliceEndpoint {
                address,
                ready: conditions.and_then(|c| c.ready).unwrap_or(true),
                serving: conditions.and_then(|c| c.serving).unwrap_or(true),
                terminating: conditions.and_then(|c| c.terminating) == Some(true),
                zones: endpoint
                    .hints
                    .iter()
                    .flat_map(|hints| hints.for_zones.iter().flatten())
                    .map(|zone| zone.name.clone())
                    .collect(),
            })
        })
        .collect();
    SliceFacts { ports, endpoints }
}

/// The `object_key` of a slice's Service (label `kubernetes.io/service-name`).
pub fn owner_of(slice: &EndpointSlice) -> Option<String> {
    let service = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some(object_key(&ObjectMeta {
        namespace: slice.metadata.namespace.clone(),
        name: Some(service.clone()),
        ..ObjectMeta::default()
    }))
}

/// The first `MAX_BACKENDS_PER_SERVICE` of `backends` (in address order):
/// a Service larger than one frontend may be is served by that many, with a
/// warning, never dropped.
fn at_most_max(service: &str, port: u16, backends: BTreeSet<SocketAddrV4>) -> Vec<SocketAddrV4> {
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
/// terminating ones; those of the Service's family only.
fn backends(
    slices: &[&SliceFacts],
    port_name: &str,
    protocol_wanted: Protocol,
    publish_not_ready: bool,
) -> PortEndpoints {
    let mut found = PortEndpoints::default();
    for slice in slices {
        let Some(target) = slice
            .ports
            .iter()
            .find(|port| port.name == port_name && port.protocol == protocol_wanted)
        else {
            continue;
        };
        for endpoint in &slice.endpoints {
            let IpAddr::V4(address) = endpoint.address else {
                continue;
            };
            let backend = SocketAddrV4::new(address, target.port);
            if endpoint.ready || publish_not_ready {
                found.ready.insert(backend);
                if !endpoint.zones.is_empty() {
                    found
                        .zone_hints
                        .entry(backend)
                        .or_default()
                        .extend(endpoint.zones.iter().cloned());
                }
            } else if endpoint.serving && endpoint.terminating {
                found.terminating.insert(backend);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests;
