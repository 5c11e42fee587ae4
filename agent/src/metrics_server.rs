//! `--metrics ADDR`: `/metrics` over HTTP/1.1 (hyper), for Prometheus.
//!
//! The listener is bound before the probes are attached (a port below
//! 1024 needs a capability the agent gives up after attaching, and a port
//! in use is a usage error, said before anything is traced). Scrapers are
//! served from the last [`Snapshot`]; nothing here touches the event path.
//! Whoever can reach the port can make requests, so each connection is
//! bounded: at most [`MAX_CONNECTIONS`] at once (others wait in the
//! kernel's backlog), headers within [`HEADER_TIMEOUT`], the whole
//! connection within [`CONNECTION_TIMEOUT`]; request bodies are never read.

use crate::metrics::{encode, Format, Snapshot};
use http_body_util::Full;
// A rendered exposition is handed to hyper as one `Bytes` (no copy of
// the String); `bytes` is the buffer type hyper's bodies are made of.
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{ACCEPT, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub const MAX_CONNECTIONS: usize = 16;
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// The snapshot the event loop updates and the server reads.
pub type Shared = Arc<Mutex<Snapshot>>;

/// A bound listener, not yet serving.
pub struct MetricsListener {
    listener: TcpListener,
    pub addr: SocketAddr,
}

/// Binds `addr` (`HOST:PORT`, `[::]:9464`). The error is one line.
pub async fn bind(addr: &str) -> Result<MetricsListener, String> {
    let parsed: SocketAddr = addr.parse().map_err(|_| {
        format!("--metrics {addr:?}: not an address (try 127.0.0.1:9464 or [::]:9464)")
    })?;
    let listener = TcpListener::bind(parsed)
        .await
        .map_err(|e| format!("--metrics {addr}: cannot listen: {e}"))?;
    let addr = listener.local_addr().unwrap_or(parsed);
    Ok(MetricsListener { listener, addr })
}

/// Serves until the returned task is aborted (or the process ends).
pub fn serve(l: MetricsListener, shared: Shared) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let stream = match l.listener.accept().await {
                Ok((s, _)) => s,
                // Out of descriptors, or a connection reset before accept:
                // wait a moment rather than spin.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let shared = shared.clone();
                    async move { Ok::<_, std::convert::Infallible>(respond(&req, &shared)) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .max_buf_size(16 * 1024)
                    .serve_connection(TokioIo::new(stream), service);
                let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
                drop(permit);
            });
        }
    })
}

fn respond(req: &Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    let plain = |status: StatusCode, body: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *r.status_mut() = status;
        r.headers_mut().insert(
            CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD\n");
        r.headers_mut()
            .insert(ALLOW, hyper::header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        "/metrics" => {
            let format =
                Format::from_accept(req.headers().get(ACCEPT).and_then(|v| v.to_str().ok()));
            let snap = shared.lock().map(|s| s.clone()).unwrap_or_default();
            let mut r = Response::new(Full::new(Bytes::from(encode(&snap, format))));
            r.headers_mut().insert(
                CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(format.content_type()),
            );
            r
        }
        "/" => plain(StatusCode::OK, "cowtrace: metrics at /metrics\n"),
        _ => plain(
            StatusCode::NOT_FOUND,
            "not found: metrics are at /metrics\n",
        ),
    }
}
