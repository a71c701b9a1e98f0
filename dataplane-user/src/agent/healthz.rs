//! The node's proxy health server, as kube-proxy's (`--healthz-bind-address`,
//! port 10256): cloud load balancers probe `/healthz` to decide whether to
//! send a node the clients of Services with external traffic policy
//! Cluster (Local ones have a health check port of their own). Healthy
//! while the agent's state owner, which programs every Service change,
//! answers.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use anyhow::Context as _;
use http_body_util::Full;
use hyper::{Response, StatusCode, body::Bytes};
use tokio::net::TcpListener;
use tracing::info;

use super::health_checks;
use crate::{
    connections,
    state::{Command, StateHandle},
};

/// An owner slower than this to answer is not healthy.
const OWNER_DEADLINE: Duration = Duration::from_secs(2);

/// Serves `/healthz` and `/livez` on every address at `port` for as long as
/// the agent runs.
pub async fn serve(state: StateHandle, port: u16) -> anyhow::Result<()> {
    let address = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    let listener = TcpListener::bind(address)
        .await
        .with_context(|| format!("binding the health server's address {address}"))?;
    info!(%address, "answering proxy health probes on /healthz");
    // As the health check ports: probes from load balancers.
    connections::accept_forever("healthz", health_checks::LIMITS, listener, |stream| {
        let state = state.clone();
        connections::serve_http("healthz", stream, move |request| {
            let state = state.clone();
            async move {
                let path = request.uri().path().to_string();
                if path != "/healthz" && path != "/livez" {
                    return answer(StatusCode::NOT_FOUND, "not found: probe /healthz\n".into());
                }
                let healthy = tokio::time::timeout(OWNER_DEADLINE, state.ask(Command::Tables))
                    .await
                    .is_ok_and(|answered| answered.is_ok());
                let now = k8s_openapi::jiff::Timestamp::now().to_string();
                let body = serde_json::json!({
                    "lastUpdated": if healthy { now.clone() } else { String::new() },
                    "currentTime": now,
                    "nodeEligible": true,
                });
                let status = if healthy {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                answer(status, body.to_string())
            }
        })
    })
    .await;
    Ok(())
}

fn answer(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .header("X-Content-Type-Options", "nosniff")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts")
}
