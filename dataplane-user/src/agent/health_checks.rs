//! The health check ports of Services with external traffic policy Local,
//! answered as kube-proxy answers them: a load balancer sends its clients
//! only to nodes that say 200 (they have endpoints of the Service), never
//! to those that say 503 (outside clients would be dropped there).

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
};

use http_body_util::Full;
use hyper::{Response, StatusCode, body::Bytes};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tracing::{info, warn};

use crate::{connections, model::HealthCheck};

/// Connections served at once on one port (more wait), and from one
/// address: a client holding connections open (slowloris) keeps no load
/// balancer's probe waiting.
pub const LIMITS: connections::Limits = connections::Limits {
    total: 256,
    per_source: 8,
};

type Checks = watch::Receiver<BTreeMap<u16, HealthCheck>>;

/// Listens on every port `checks` names, for as long as it names it.
pub async fn serve(mut checks: Checks) {
    let mut listening: BTreeMap<u16, JoinHandle<()>> = BTreeMap::new();
    loop {
        let wanted: Vec<u16> = checks.borrow_and_update().keys().copied().collect();
        listening.retain(|port, server| {
            let keep = wanted.contains(port);
            if !keep {
                server.abort();
                info!(port, "health check port closed");
            }
            keep
        });
        for port in wanted {
            listening
                .entry(port)
                .or_insert_with(|| tokio::spawn(listen(port, checks.clone())));
        }
        if checks.changed().await.is_err() {
            return;
        }
    }
}

async fn listen(port: u16, checks: Checks) {
    let address = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    let listener = match TcpListener::bind(address).await {
        Ok(listener) => listener,
        Err(error) => {
            warn!(
                port,
                "cannot answer health checks: binding {address}: {error}"
            );
            return;
        }
    };
    info!(port, "answering health checks");
    connections::accept_forever("health check", LIMITS, listener, |stream| {
        let checks = checks.clone();
        connections::serve_http("health check", stream, move |_request| {
            let answer = answer(checks.borrow().get(&port));
            async move { answer }
        })
    })
    .await;
}

/// kube-proxy's answer: the Service, its endpoints on this node, and 200
/// when there are any (503 when not, or when the port is being closed).
fn answer(check: Option<&HealthCheck>) -> Response<Full<Bytes>> {
    let local_endpoints = check.map_or(0, |check| check.local_endpoints);
    let (namespace, name) = check
        .and_then(|check| check.service.split_once('/'))
        .unwrap_or(("", ""));
    let body = serde_json::json!({
        "service": {"namespace": namespace, "name": name},
        "localEndpoints": local_endpoints,
        "serviceProxyHealthy": true,
    });
    let status = if local_endpoints > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .header("X-Content-Type-Options", "nosniff")
        .header(
            "X-Load-Balancing-Endpoint-Weight",
            local_endpoints.to_string(),
        )
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("static response parts")
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;

    use super::*;

    #[tokio::test]
    async fn answers_like_kube_proxy() {
        let check = HealthCheck {
            service: "shop/ingress".into(),
            local_endpoints: 2,
        };
        let healthy = answer(Some(&check));
        assert_eq!(healthy.status(), StatusCode::OK);
        assert_eq!(healthy.headers()["X-Load-Balancing-Endpoint-Weight"], "2");
        let body = healthy.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["service"]["namespace"], "shop");
        assert_eq!(json["service"]["name"], "ingress");
        assert_eq!(json["localEndpoints"], 2);
        let none = HealthCheck {
            local_endpoints: 0,
            ..check
        };
        assert_eq!(
            answer(Some(&none)).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
