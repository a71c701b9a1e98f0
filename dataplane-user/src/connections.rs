//! The accept loop the servers (the API socket, the metrics port, the
//! health check ports) share: a bounded number of connections at once, and
//! accept errors survived; and the HTTP connection the TCP ones serve.

use std::{sync::Arc, time::Duration};

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

/// A listening socket of either server.
pub trait Listener {
    type Stream;
    fn next_stream(&self) -> impl Future<Output = std::io::Result<Self::Stream>> + Send;
}

impl Listener for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn next_stream(&self) -> std::io::Result<Self::Stream> {
        self.accept().await.map(|(stream, _)| stream)
    }
}

impl Listener for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn next_stream(&self) -> std::io::Result<Self::Stream> {
        self.accept().await.map(|(stream, _)| stream)
    }
}

/// Accepts connections for as long as the agent runs and hands each to
/// `serve` in a task of its own, at most `max` at once (the others wait in
/// the listen backlog). Accept errors are logged and never end the loop.
pub async fn accept_forever<L: Listener, F>(
    what: &'static str,
    max: usize,
    listener: L,
    serve: impl Fn(L::Stream) -> F,
) where
    F: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(max));
    loop {
        let slot = Arc::clone(&slots)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        match listener.next_stream().await {
            Ok(stream) => {
                let connection = serve(stream);
                tokio::spawn(async move {
                    connection.await;
                    drop(slot);
                });
            }
            Err(error) => {
                warn!("accepting a {what} connection: {error}; retrying");
                tokio::time::sleep(ACCEPT_RETRY).await;
            }
        }
    }
}
