//! Prometheus metrics: the per-CPU counters of every path and drop reason,
//! summed at scrape time, and the pressure on the tables.

use std::net::SocketAddr;

use anyhow::Context as _;
use http_body_util::Full;
use hyper::{Response, StatusCode, body::Bytes};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use tokio::net::TcpListener;
use tracing::info;

use dataplane_common::PolicyDrops;

use crate::{
    api::{CounterEntry, PodNatUsage},
    connections,
    state::{Command, StateHandle, TableSizes},
};

/// The counters and table sizes as the owner read them for one scrape.
#[derive(Debug)]
struct Scrape {
    counters: Vec<CounterEntry>,
    tables: TableSizes,
}

/// Label names and values of one series.
type Labels = Vec<(&'static str, String)>;

fn counter_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &'static str,
    values: &[(String, u64)],
) -> Result<(), std::fmt::Error> {
    let series: Vec<(Labels, u64)> = values
        .iter()
        .map(|(value_label, value)| (vec![(label, value_label.clone())], *value))
        .collect();
    family(encoder, name, help, MetricType::Counter, &series)
}

/// A family of counters or gauges, one series per label set.
fn family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    series: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, value) in series {
        let encoder = family.encode_family(labels)?;
        match metric_type {
            MetricType::Gauge => {
                ConstGauge::new(i64::try_from(*value).unwrap_or(i64::MAX)).encode(encoder)?;
            }
            _ => ConstCounter::new(*value).encode(encoder)?,
        }
    }
    Ok(())
}

/// Each pod's share of the NAT table, as the last collection found it.
fn pod_nat_families(
    encoder: &mut DescriptorEncoder,
    pods: &[PodNatUsage],
) -> Result<(), std::fmt::Error> {
    let pod = |usage: &PodNatUsage| vec![("pod", usage.holder())];
    let held: Vec<(Labels, u64)> = pods
        .iter()
        .map(|usage| (pod(usage), usage.connections))
        .collect();
    family(
        encoder,
        "dataplane_nat_pod_connections",
        "Masqueraded connections a pod holds, at the last collection.",
        MetricType::Gauge,
        &held,
    )?;
    let evicted: Vec<(Labels, u64)> = pods
        .iter()
        .map(|usage| (pod(usage), usage.evicted))
        .collect();
    family(
        encoder,
        "dataplane_nat_pod_evicted",
        "A pod's connections that were never established, evicted to make room (pod=\"outside\": outside clients of Services).",
        MetricType::Counter,
        &evicted,
    )?;
    let refused: Vec<(Labels, u64)> = pods
        .iter()
        .flat_map(|usage| {
            [
                ("table_share", usage.refused_share),
                ("ports", usage.refused_ports),
                ("table_full", usage.refused_full),
            ]
            .map(|(reason, value)| {
                let mut labels = pod(usage);
                labels.push(("reason", reason.to_string()));
                (labels, value)
            })
        })
        .collect();
    family(
        encoder,
        "dataplane_nat_pod_refused",
        "A pod's new masqueraded connections refused, by reason.",
        MetricType::Counter,
        &refused,
    )
}

/// Each pod's packets its NetworkPolicy dropped, by direction.
fn policy_drop_family(
    encoder: &mut DescriptorEncoder,
    pods: &[(String, PolicyDrops)],
) -> Result<(), std::fmt::Error> {
    let series: Vec<(Labels, u64)> = pods
        .iter()
        .flat_map(|(pod, drops)| {
            [("ingress", drops.ingress), ("egress", drops.egress)].map(|(direction, value)| {
                (
                    vec![("pod", pod.clone()), ("direction", direction.to_string())],
                    value,
                )
            })
        })
        .collect();
    family(
        encoder,
        "dataplane_policy_pod_dropped_packets",
        "Packets a pod's NetworkPolicy dropped, by direction (pod: namespace/name, or its address).",
        MetricType::Counter,
        &series,
    )
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let gauge = ConstGauge::new(value);
    gauge.encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    ConstCounter::new(value).encode(encoder.encode_descriptor(
        name,
        help,
        None,
        MetricType::Counter,
    )?)
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Self { counters, tables } = self;
        let by_kind = |drop: bool, field: fn(&CounterEntry) -> u64| -> Vec<(String, u64)> {
            counters
                .iter()
                .filter(|entry| entry.name.0.is_drop() == drop)
                .map(|entry| (entry.name.0.label().to_string(), field(entry)))
                .collect()
        };
        let packets = |counter: &CounterEntry| counter.packets;
        let bytes = |counter: &CounterEntry| counter.bytes;
        counter_family(
            &mut encoder,
            "dataplane_forwarded_packets",
            "Packets handled, by path.",
            "path",
            &by_kind(false, packets),
        )?;
        counter_family(
            &mut encoder,
            "dataplane_forwarded_bytes",
            "Bytes handled, by path.",
            "path",
            &by_kind(false, bytes),
        )?;
        counter_family(
            &mut encoder,
            "dataplane_dropped_packets",
            "Packets dropped, by reason.",
            "reason",
            &by_kind(true, packets),
        )?;
        counter_family(
            &mut encoder,
            "dataplane_dropped_bytes",
            "Bytes dropped, by reason.",
            "reason",
            &by_kind(true, bytes),
        )?;
        let count = |value: usize| i64::try_from(value).unwrap_or(i64::MAX);
        gauge(
            &mut encoder,
            "dataplane_endpoints",
            "Pods registered on this node.",
            count(tables.endpoints),
        )?;
        gauge(
            &mut encoder,
            "dataplane_remote_nodes",
            "Other nodes in the tunnel maps.",
            count(tables.remote_nodes),
        )?;
        gauge(
            &mut encoder,
            "dataplane_service_frontends",
            "Service frontends (address, port, protocol) programmed.",
            count(tables.service_frontends),
        )?;
        gauge(
            &mut encoder,
            "dataplane_services_refused",
            "Services not programmed because they break a rule (see `dataplane service list`).",
            count(tables.services_refused),
        )?;
        gauge(
            &mut encoder,
            "dataplane_service_frontends_shadowed",
            "Frontends a Service claims that an older Service is served at.",
            count(tables.services_shadowed),
        )?;
        counter(
            &mut encoder,
            "dataplane_node_mac_changes",
            "MAC changes of nodes reached directly: a node replaced, or a forged ARP reply.",
            tables.node_mac_changes,
        )?;
        gauge(
            &mut encoder,
            "dataplane_service_backends",
            "Backend slots of all Service frontends.",
            count(tables.service_backends),
        )?;
        gauge(
            &mut encoder,
            "dataplane_service_connection_entries",
            "Halves of connections to Services tracked (two per connection; expired by \
             protocol and state; LRU: the least recently used are forgotten when full), at \
             the last count.",
            count(tables.service_tables.connection_halves),
        )?;
        gauge(
            &mut encoder,
            "dataplane_service_connection_capacity",
            "Capacity of the Service connection table.",
            count(dataplane_common::MAX_SERVICE_FLOWS as usize),
        )?;
        gauge(
            &mut encoder,
            "dataplane_service_socket_entries",
            "Entries for the node's own sockets' Service backends (two per socket and \
             frontend; LRU), at the last count.",
            count(tables.service_tables.socket_entries),
        )?;
        gauge(
            &mut encoder,
            "dataplane_service_socket_capacity",
            "Capacity of the node's socket Service table.",
            count(dataplane_common::MAX_SOCKET_FLOWS as usize),
        )?;
        gauge(
            &mut encoder,
            "dataplane_nat_entries",
            "NAT table entries (two per connection) at the last collection.",
            count(tables.nat.entries),
        )?;
        gauge(
            &mut encoder,
            "dataplane_nat_capacity",
            "NAT table capacity.",
            count(dataplane_common::MAX_NAT_ENTRIES as usize),
        )?;
        counter(
            &mut encoder,
            "dataplane_nat_expired",
            "NAT entries removed by garbage collection.",
            tables.nat.removed_total,
        )?;
        counter(
            &mut encoder,
            "dataplane_service_connection_expired",
            "Halves of connections to Services removed by garbage collection.",
            tables.service_tables.expired_total,
        )?;
        pod_nat_families(&mut encoder, &tables.nat.pods)?;
        policy_drop_family(&mut encoder, &tables.policy_drops)
    }
}

/// Scrapes served at once (more wait in the listen backlog), and from one
/// address.
const LIMITS: connections::Limits = connections::Limits {
    total: 64,
    per_source: 16,
};

/// Serves `GET /metrics` on `address` for as long as the agent runs.
pub async fn serve(state: StateHandle, address: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(address)
        .await
        .with_context(|| format!("binding the metrics address {address}"))?;
    info!(%address, "serving Prometheus metrics on /metrics");
    connections::accept_forever("metrics", LIMITS, listener, |stream| {
        serve_connection(stream, state.clone())
    })
    .await;
    Ok(())
}

async fn serve_connection(stream: tokio::net::TcpStream, state: StateHandle) {
    connections::serve_http("metrics", stream, move |request| {
        let state = state.clone();
        async move { respond(&state, request.uri().path()).await }
    })
    .await;
}

/// Reads the maps through the owner and encodes them.
async fn encode(state: &StateHandle) -> anyhow::Result<String> {
    let scrape = Scrape {
        counters: state.ask(Command::Counters).await?,
        tables: state.ask(Command::Tables).await?,
    };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

async fn respond(state: &StateHandle, path: &str) -> Response<Full<Bytes>> {
    let (status, body) = if path != "/metrics" {
        (
            StatusCode::NOT_FOUND,
            "not found: metrics are on /metrics\n".to_string(),
        )
    } else {
        match encode(state).await {
            Ok(text) => (StatusCode::OK, text),
            // Nothing rather than wrong values.
            Err(error) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot read the metrics: {error:#}\n"),
            ),
        }
    };
    Response::builder()
        .status(status)
        .header(
            "Content-Type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts")
}
