//! The agent's HTTPS API: accepts TLS connections, speaks HTTP/2 or HTTP/1.1 (by
//! ALPN), and routes requests to the certificate and watch handlers.

pub mod answers;
pub mod auth;
pub mod certificates;
pub mod inject;
pub mod reply;
pub mod resolve;
pub mod tls;
pub mod watch;

use crate::ca::AgentCa;
use crate::metrics::METRICS_PATH;
use crate::source::Snapshot;
use auth::TokenAuthenticator;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use inject::{NamespaceSource, INJECT_PATH};
use pillion_api::certs::{error_codes, CERTIFICATES_PATH, HEALTHZ_PATH, WATCH_PATH};
use pillion_api::resolve::{MAX_STREAMS_PER_CONNECTION, RESOLVE_PATH};
use pillion_inject::InjectConfig;
use reply::Body;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tls::ServingCert;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Time a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time an HTTP/1.1 client has to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 PING interval, so dead watchers are noticed and dropped.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// Time a PING has to be answered.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time open connections get to finish after shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What every request handler needs.
#[derive(Debug)]
pub struct Shared {
    /// The published catalogs.
    pub source: tokio::sync::watch::Receiver<Snapshot>,
    /// The CA that signs workload CSRs.
    pub ca: Arc<AgentCa>,
    /// Lifetime of issued workload certificates.
    pub leaf_lifetime: Duration,
    /// Fires when the agent shuts down; ends watch streams.
    pub shutdown: CancellationToken,
    /// Proves the identity behind a bearer token.
    pub auth: Arc<dyn TokenAuthenticator>,
    /// True once the source has published a complete first view (`/ready`).
    pub ready: tokio::sync::watch::Receiver<bool>,
    /// What the webhook injects.
    pub inject: Arc<InjectConfig>,
    /// Namespace annotations for the webhook.
    pub namespaces: Arc<dyn NamespaceSource>,
    /// The agent's own metrics (`GET /metrics`).
    pub metrics: Arc<crate::metrics::AgentMetrics>,
    /// Resolve answers encoded once per version.
    pub answers: Arc<answers::Answers>,
    /// Key sets fetched for token providers' `jwks_uri`.
    pub jwks: Arc<crate::jwks::JwksStore>,
}

/// Readiness probe path: 200 once the first view is loaded, 503 before.
pub const READY_PATH: &str = "/ready";
/// Liveness probe path: 200 while the server answers.
pub const LIVE_PATH: &str = "/live";

/// Serves connections from `listener` until `shared.shutdown` fires, then lets open
/// connections finish for a short grace period. When the CA changes (a rotation),
/// the connections opened before are closed gracefully (HTTP/2 GOAWAY; their view
/// streams end too), so every proxy reconnects and verifies the agent's new chain:
/// a bundle without the old root can then reach it.
pub async fn serve(listener: TcpListener, cert: Arc<ServingCert>, shared: Arc<Shared>) {
    let mut graceful = GracefulShutdown::new();
    let mut ca_changes = shared.ca.subscribe();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        // One stream per destination a proxy resolves, on its one connection.
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            changed = ca_changes.changed() => {
                if changed.is_ok() {
                    let before = std::mem::replace(&mut graceful, GracefulShutdown::new());
                    tokio::spawn(async move {
                        let closed = tokio::time::timeout(SHUTDOWN_GRACE, before.shutdown()).await;
                        tracing::info!(all_closed = closed.is_ok(),
                            "the CA changed; connections from before it were closed");
                    });
                }
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Answers are small frames written as they come: without this, Nagle holds
        // each one for the client's delayed ACK (~40 ms per answer).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        let acceptor = cert.acceptor();
        let shared = shared.clone();
        let watcher = graceful.watcher();
        let builder = builder.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(route(req, &shared).await) }
            });
            let conn = builder
                .serve_connection(TokioIo::new(tls), service)
                .into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::debug!("all connections closed"),
        _ = tokio::time::sleep(SHUTDOWN_GRACE) => tracing::warn!("connections still open after the shutdown grace period"),
    }
}

/// Sends a request to its handler.
async fn route(req: Request<Incoming>, shared: &Shared) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = dispatch(req, &method, &path, shared).await;
    tracing::debug!(%method, %path, status = resp.status().as_u16(), "request");
    resp
}

/// Picks the handler for a method and path.
async fn dispatch(
    req: Request<Incoming>,
    method: &Method,
    path: &str,
    shared: &Shared,
) -> Response<Body> {
    match (method, path) {
        (&Method::POST, CERTIFICATES_PATH) => certificates::handle(req, shared).await,
        (&Method::GET, WATCH_PATH) => watch::handle(&req, shared).await,
        (&Method::GET, RESOLVE_PATH) => resolve::handle(&req, shared).await,
        (&Method::POST, INJECT_PATH) => inject::handle(req, shared).await,
        (&Method::GET, METRICS_PATH) => match shared.metrics.encode() {
            Ok(text) => reply::bytes(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                text,
            ),
            Err(_) => reply::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                error_codes::INTERNAL,
                "cannot encode the metrics",
            ),
        },
        (&Method::GET, HEALTHZ_PATH | LIVE_PATH) => {
            reply::bytes(StatusCode::OK, "text/plain", "ok\n")
        }
        (&Method::GET, READY_PATH) => {
            if *shared.ready.borrow() {
                reply::bytes(StatusCode::OK, "text/plain", "ready\n")
            } else {
                reply::bytes(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready: the first view is still loading\n",
                )
            }
        }
        (
            _,
            CERTIFICATES_PATH | WATCH_PATH | RESOLVE_PATH | INJECT_PATH | HEALTHZ_PATH | LIVE_PATH
            | READY_PATH | METRICS_PATH,
        ) => reply::error(
            StatusCode::METHOD_NOT_ALLOWED,
            error_codes::METHOD_NOT_ALLOWED,
            format!(
                "use POST {CERTIFICATES_PATH}, GET {WATCH_PATH}, GET {RESOLVE_PATH}, \
                     POST {INJECT_PATH}, or GET {HEALTHZ_PATH}, {LIVE_PATH}, {READY_PATH}, {METRICS_PATH}"
            ),
        ),
        _ => reply::error(
            StatusCode::NOT_FOUND,
            error_codes::NOT_FOUND,
            format!(
                "no such endpoint; the agent serves POST {CERTIFICATES_PATH}, GET {WATCH_PATH}, \
                 GET {RESOLVE_PATH}, POST {INJECT_PATH} and GET {HEALTHZ_PATH}, {LIVE_PATH}, {READY_PATH}, {METRICS_PATH}"
            ),
        ),
    }
}
