//! Serves the admin routes over HTTP/1 (hyper) on its own listener, until told to stop.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::routes::{respond, text, AdminState};
use crate::transport::listen;
use http::StatusCode;

/// Backlog of the admin listener (probes and scrapes, not traffic).
const ADMIN_BACKLOG: u32 = 128;

/// Time a client has to send its request headers before the connection is dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The most a request body may carry (a log filter).
const MAX_BODY: usize = 1024;

/// The admin listener could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot bind --admin-addr address {addr}: {source}")]
pub struct AdminError {
    /// The address that failed.
    pub addr: SocketAddr,
    /// The kernel's reason.
    #[source]
    pub source: io::Error,
}

/// A bound admin server, not yet serving.
#[derive(Debug)]
pub(crate) struct AdminServer {
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl AdminServer {
    /// Binds the admin listener (port 0 picks a free port; see [`Self::local_addr`]).
    pub(crate) fn bind(addr: SocketAddr) -> Result<Self, AdminError> {
        let listener =
            listen::bind(addr, ADMIN_BACKLOG).map_err(|source| AdminError { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| AdminError { addr, source })?;
        Ok(Self {
            listener,
            local_addr,
        })
    }

    /// The address actually bound.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves requests until `stop` resolves; open admin connections are then dropped.
    pub(crate) async fn serve(self, state: AdminState, stop: impl Future<Output = ()>) {
        tracing::info!(addr = %self.local_addr, "admin server listening");
        let mut connections = JoinSet::new();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => break,
                Some(_) = connections.join_next() => {}
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        connections.spawn(serve_connection(stream, peer, state.clone()));
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "admin accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        connections.shutdown().await;
    }
}

/// Serves one admin connection.
async fn serve_connection(stream: tokio::net::TcpStream, peer: SocketAddr, state: AdminState) {
    let service = service_fn(move |request: Request<Incoming>| {
        let state = state.clone();
        async move {
            let (parts, body) = request.into_parts();
            // Only a PUT carries something the admin server reads (a log filter),
            // and only from loopback: anyone else's body is never waited for.
            let wanted =
                parts.method == http::Method::PUT && peer.ip().to_canonical().is_loopback();
            let body = if wanted {
                let read = http_body_util::Limited::new(body, MAX_BODY).collect();
                match tokio::time::timeout(HEADER_READ_TIMEOUT, read).await {
                    Ok(Ok(body)) => body.to_bytes(),
                    Ok(Err(_)) => {
                        return Ok(text(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "the body is over 1 KiB\n".into(),
                        ))
                    }
                    Err(_) => {
                        return Ok(text(
                            StatusCode::REQUEST_TIMEOUT,
                            "the body did not arrive in time\n".into(),
                        ))
                    }
                }
            } else {
                Bytes::new()
            };
            let response = respond(&state, &parts.method, parts.uri.path(), peer, &body);
            Ok::<_, Infallible>(response)
        }
    });
    let result = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(err) = result {
        tracing::debug!(%peer, error = %err, "admin connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::readiness::Readiness;
    use crate::telemetry::metrics::tcp::TcpMetrics;
    use crate::transport::drain::Drain;
    use prometheus_client::registry::Registry;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Sends one raw HTTP/1.1 request and returns the status code and body.
    async fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
        request_with(addr, method, path, "").await
    }

    async fn request_with(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).await.unwrap();
        let status = raw[9..12].parse().unwrap();
        let body = raw.split_once("\r\n\r\n").unwrap().1.to_owned();
        (status, body)
    }

    #[tokio::test]
    async fn answers_real_http_requests() {
        let mut registry = Registry::default();
        TcpMetrics::register(&mut registry);
        let readiness = Readiness::new();
        let bound = readiness.condition("listeners bound");
        let state = AdminState {
            readiness,
            registry: Arc::new(registry),
            drain: Drain::new(),
            config: crate::admin::ConfigDump::fixed(serde_json::Value::Null),
            log: Some(crate::app::logging::LogLevel::new("info", |_| Ok(()))),
        };
        let server = AdminServer::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(server.serve(state.clone(), stop.clone().cancelled_owned()));

        assert_eq!(request(addr, "GET", "/live").await, (200, "live\n".into()));
        let (status, body) = request(addr, "GET", "/ready").await;
        assert_eq!(status, 503);
        assert!(body.contains("listeners bound"));
        bound.set(true);
        assert_eq!(
            request(addr, "GET", "/ready").await,
            (200, "ready\n".into())
        );
        let (status, body) = request(addr, "GET", "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            body.contains("pillion_tcp_connections_opened_total{direction=\"outbound\"} 0"),
            "{body}"
        );
        assert_eq!(request(addr, "GET", "/nope").await.0, 404);
        // The log filter, from the request's body; a body over 1 KiB is refused.
        assert_eq!(
            request_with(addr, "PUT", "/log-level", "debug").await,
            (200, "debug\n".into())
        );
        assert_eq!(
            request(addr, "GET", "/log-level").await,
            (200, "debug\n".into())
        );
        let long = "a".repeat(2048);
        assert_eq!(request_with(addr, "PUT", "/log-level", &long).await.0, 413);
        assert!(!state.drain.is_draining());
        assert_eq!(request(addr, "POST", "/shutdown").await.0, 200);
        assert!(state.drain.is_draining());

        stop.cancel();
        task.await.unwrap();
        assert!(TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_never_comes_is_not_waited_for() {
        let state = AdminState {
            readiness: Readiness::new(),
            registry: Arc::new(Registry::default()),
            drain: Drain::new(),
            config: crate::admin::ConfigDump::fixed(serde_json::Value::Null),
            log: Some(crate::app::logging::LogLevel::new("info", |_| Ok(()))),
        };
        let server = AdminServer::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = server.local_addr();
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(server.serve(state.clone(), stop.clone().cancelled_owned()));
        let mut s = TcpStream::connect(addr).await.unwrap();
        // Promises 5 bytes and sends none.
        s.write_all(b"PUT /log-level HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n")
            .await
            .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).await.unwrap();
        assert!(raw.starts_with("HTTP/1.1 408"), "{raw}");
        assert_eq!(state.log.unwrap().current(), "info");
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_taken_address_names_the_flag() {
        let first = AdminServer::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let err = AdminServer::bind(first.local_addr()).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("cannot bind --admin-addr address 127.0.0.1:"));
    }
}
