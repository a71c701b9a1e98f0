//! Prometheus metrics: the per-CPU counters of every path and drop reason,
//! summed at scrape time, and the pressure on the tables.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::agent::Agent;

/// Reads the agent's maps on every scrape.
struct DataplaneCollector(Arc<Agent>);

impl std::fmt::Debug for DataplaneCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataplaneCollector")
    }
}

fn counter_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: &[(String, u64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Counter,
    )?;
    for (value_label, value) in values {
        let labels = [(label.to_string(), value_label.clone())];
        ConstCounter::new(*value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let gauge = ConstGauge::new(value);
    gauge.encode(encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Gauge,
    )?)
}

impl Collector for DataplaneCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (Ok(counters), Ok(tables)) = (self.0.counter_entries(), self.0.table_sizes()) else {
            // The maps could not be read: expose nothing rather than wrong values.
            return Ok(());
        };
        let by_kind =
            |drop: bool, field: fn(&crate::api::CounterEntry) -> u64| -> Vec<(String, u64)> {
                counters
                    .iter()
                    .filter(|counter| counter.drop == drop)
                    .map(|counter| {
                        (
                            counter.name.trim_start_matches("drop_").to_string(),
                            field(counter),
                        )
                    })
                    .collect()
            };
        let packets = |counter: &crate::api::CounterEntry| counter.packets;
        let bytes = |counter: &crate::api::CounterEntry| counter.bytes;
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
        let expired = ConstCounter::new(tables.nat.removed_total);
        expired.encode(encoder.encode_descriptor(
            "dataplane_nat_expired",
            "NAT entries removed by garbage collection.",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?)?;
        Ok(())
    }
}

/// Serves `GET /metrics` on `address` for as long as the agent runs.
pub async fn serve(agent: Arc<Agent>, address: SocketAddr) -> anyhow::Result<()> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(DataplaneCollector(agent)));
    let registry = Arc::new(registry);
    let listener = TcpListener::bind(address)
        .await
        .with_context(|| format!("binding the metrics address {address}"))?;
    info!(%address, "serving Prometheus metrics on /metrics");
    loop {
        let (stream, _) = listener
            .accept()
            .await
            .context("accepting a metrics connection")?;
        let registry = Arc::clone(&registry);
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let registry = Arc::clone(&registry);
                async move {
                    Ok::<_, std::convert::Infallible>(respond(&registry, request.uri().path()))
                }
            });
            if let Err(error) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                warn!("metrics connection: {error}");
            }
        });
    }
}

fn respond(registry: &Registry, path: &str) -> Response<Full<Bytes>> {
    let mut text = String::new();
    let (status, body) = if path != "/metrics" {
        (
            StatusCode::NOT_FOUND,
            "not found: metrics are on /metrics\n".to_string(),
        )
    } else if prometheus_client::encoding::text::encode(&mut text, registry).is_ok() {
        (StatusCode::OK, text)
    } else {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics\n".to_string(),
        )
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
