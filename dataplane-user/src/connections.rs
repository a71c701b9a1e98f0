//! The accept loop the servers (the API socket, the metrics port, the
//! health check ports) share: a bounded number of connections at once, and
//! accept errors survived; and the HTTP connection the TCP ones serve.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

/// A client must send its request headers within this time.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves one HTTP/1.1 connection (no keep-alive, a header timeout): every
/// request gets `respond`'s answer.
pub async fn serve_http<F, R>(what: &'static str, stream: tokio::net::TcpStream, respond: F)
where
    F: Fn(Request<hyper::body::Incoming>) -> R + Clone + Send + 'static,
    R: Future<Output = Response<Full<Bytes>>> + Send,
{
    let service = service_fn(move |request| {
        let respond = respond.clone();
        async move { Ok::<_, std::convert::Infallible>(respond(request).await) }
    });
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(error) = served {
        debug!("{what} connection: {error}");
    }
}

/// Pause after an accept error (out of descriptors, say) before trying again.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// How many connections a server serves at once: in all, and from one
/// client address, so that a client holding connections open without a
/// request (slowloris) takes its own share and no more.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub total: usize,
    pub per_source: usize,
}

/// A listening socket of either server.
pub trait Listener {
    type Stream;
    /// The next connection, and its client's address (none on a Unix socket).
    fn next_stream(
        &self,
    ) -> impl Future<Output = std::io::Result<(Self::Stream, Option<IpAddr>)>> + Send;
}

impl Listener for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn next_stream(&self) -> std::io::Result<(Self::Stream, Option<IpAddr>)> {
        self.accept().await.map(|(stream, _)| (stream, None))
    }
}

impl Listener for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn next_stream(&self) -> std::io::Result<(Self::Stream, Option<IpAddr>)> {
        self.accept()
            .await
            .map(|(stream, peer)| (stream, Some(peer.ip())))
    }
}

/// Connections open per client address.
#[derive(Debug, Default)]
struct Sources(Mutex<HashMap<IpAddr, usize>>);

/// One connection of `source` counted in `Sources` while it lives.
struct SourceShare {
    sources: Arc<Sources>,
    source: IpAddr,
}

impl Sources {
    /// A share for one more connection of `source`, unless it holds `limit`.
    fn take(self: &Arc<Self>, source: IpAddr, limit: usize) -> Option<SourceShare> {
        let mut open = self.0.lock().expect("no panics while held");
        let held = open.entry(source).or_default();
        if *held >= limit {
            return None;
        }
        *held += 1;
        Some(SourceShare {
            sources: Arc::clone(self),
            source,
        })
    }
}

impl Drop for SourceShare {
    fn drop(&mut self) {
        let mut open = self.sources.0.lock().expect("no panics while held");
        if let Some(held) = open.get_mut(&self.source) {
            *held -= 1;
            if *held == 0 {
                open.remove(&self.source);
            }
        }
    }
}

/// Accepts connections for as long as the agent runs and hands each to
/// `serve` in a task of its own, within `limits` (beyond the total, the
/// others wait in the listen backlog; beyond a client's share, its new
/// connection is closed at once). Accept errors are logged and never end
/// the loop.
pub async fn accept_forever<L: Listener, F>(
    what: &'static str,
    limits: Limits,
    listener: L,
    serve: impl Fn(L::Stream) -> F,
) where
    F: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.total));
    let sources = Arc::new(Sources::default());
    loop {
        let slot = Arc::clone(&slots)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        match listener.next_stream().await {
            Ok((stream, source)) => {
                let share = match source {
                    Some(source) => match sources.take(source, limits.per_source) {
                        Some(share) => Some(share),
                        None => {
                            debug!(%source, "{what}: the client holds its share of connections; closed");
                            continue;
                        }
                    },
                    None => None,
                };
                let connection = serve(stream);
                tokio::spawn(async move {
                    connection.await;
                    drop((share, slot));
                });
            }
            Err(error) => {
                warn!("accepting a {what} connection: {error}; retrying");
                tokio::time::sleep(ACCEPT_RETRY).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_holds_its_share_and_gets_it_back_as_connections_end() {
        let sources = Arc::new(Sources::default());
        let (slow, other) = (IpAddr::from([192, 0, 2, 66]), IpAddr::from([192, 0, 2, 1]));
        let held: Vec<SourceShare> = (0..2).filter_map(|_| sources.take(slow, 2)).collect();
        assert_eq!(held.len(), 2);
        assert!(sources.take(slow, 2).is_none(), "over its share");
        assert!(sources.take(other, 2).is_some(), "others are not held back");
        drop(held);
        assert!(sources.take(slow, 2).is_some());
        assert!(
            sources.0.lock().unwrap().is_empty(),
            "ended shares leave nothing"
        );
    }
}
