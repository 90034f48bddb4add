//! Connections: how many may be open at once, how long a client may take to send a request's head, and
//! the drain at shutdown. Built from hyper's own HTTP/1 connection builder (its header-read timer, which
//! also runs while a kept-alive connection waits for its next request), hyper-util's graceful-shutdown
//! watcher and a tokio semaphore for the limit; axum's `serve` exposes none of these.
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::api::ApiError;
use crate::metrics::Metrics;

/// Connection limits (see docs/serving.md, "Security").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Most connections open at once; a connection beyond it is answered 503 and closed at once.
    pub max_connections: usize,
    /// Longest a client may take to send a request's head, counted from when the connection starts
    /// waiting for it: a silent or trickling client, and an idle kept-alive connection, is closed after it.
    pub header_timeout: Duration,
}

impl Default for ConnectionLimits {
    /// 256 connections, 10 s.
    fn default() -> Self {
        ConnectionLimits { max_connections: 256, header_timeout: Duration::from_secs(10) }
    }
}

/// The open connections of one listener.
pub struct Connections {
    limits: ConnectionLimits,
    permits: Arc<Semaphore>,
    /// Taken when the drain starts.
    graceful: Mutex<Option<GracefulShutdown>>,
}

impl Connections {
    /// No connection yet.
    pub fn new(limits: ConnectionLimits) -> Self {
        Connections { limits, permits: Arc::new(Semaphore::new(limits.max_connections)), graceful: Mutex::new(Some(GracefulShutdown::new())) }
    }

    /// Serves `app` on every connection `listener` accepts, until this future is dropped.
    pub async fn accept(&self, listener: TcpListener, app: Router, metrics: Arc<Metrics>) {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                // Out of file descriptors or a connection reset before accept: wait a little, go on.
                Err(e) => {
                    if !is_per_connection(&e) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    continue;
                }
            };
            let watcher = self.graceful.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(GracefulShutdown::watcher);
            let (Some(watcher), Ok(permit)) = (watcher, self.permits.clone().try_acquire_owned()) else {
                metrics.refused_connection();
                refuse(stream, self.limits.max_connections);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(self.limits.header_timeout);
            let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
            let served = watcher.watch(conn);
            tokio::spawn(async move {
                let _ = served.await;
                drop(permit);
            });
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.limits.max_connections - self.permits.available_permits()
    }

    /// Tells every connection to finish its current request and close (idle ones close at once); see
    /// [`Connections::open`] for how many are left. Must be called within the tokio runtime.
    pub fn start_drain(&self) {
        if let Some(graceful) = self.graceful.lock().unwrap_or_else(|e| e.into_inner()).take() {
            tokio::spawn(graceful.shutdown());
        }
    }
}

/// Accept errors that concern one connection only (retrying at once is right).
fn is_per_connection(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset)
}

/// Answers a connection over the limit with a 503 in OpenAI's error format, without reading its request,
/// and closes it. One non-blocking write: a fresh socket's buffer holds it, and a client that does not read
/// loses nothing it asked for.
fn refuse(stream: tokio::net::TcpStream, limit: usize) {
    let error = ApiError::status(
        StatusCode::SERVICE_UNAVAILABLE,
        "too_many_connections",
        format!("too many open connections (this server's limit is {limit}); retry later"),
    );
    let body = error.json().to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(response.as_bytes());
}
