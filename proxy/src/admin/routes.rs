//! What each admin path answers. State-changing endpoints answer loopback callers only.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use prometheus_client::registry::Registry;

use crate::admin::readiness::Readiness;
use crate::telemetry::metrics;
use crate::transport::drain::Drain;

/// What the admin endpoints read and control.
#[derive(Clone, Debug)]
pub(crate) struct AdminState {
    /// Conditions `/ready` reports.
    pub readiness: Readiness,
    /// Metrics `/metrics` renders.
    pub registry: Arc<Registry>,
    /// The drain `/shutdown` starts.
    pub drain: Drain,
    /// What `/config` shows: the effective configuration and the agent's view.
    pub config: ConfigDump,
    /// The log filter `/log-level` reads and changes (none when the proxy runs
    /// without a subscriber of its own, as in tests).
    pub log: Option<crate::app::logging::LogLevel>,
}

/// Renders the proxy's effective configuration, certificate and view as JSON for
/// `/config`, so an operator can see what the proxy acts on; no key material.
#[derive(Clone)]
pub(crate) struct ConfigDump(pub Arc<dyn Fn() -> serde_json::Value + Send + Sync>);

impl ConfigDump {
    /// A dump that always shows `value`.
    #[cfg(test)]
    pub(crate) fn fixed(value: serde_json::Value) -> ConfigDump {
        ConfigDump(Arc::new(move || value.clone()))
    }
}

impl std::fmt::Debug for ConfigDump {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConfigDump")
    }
}

/// Content type of every plain-text answer.
const TEXT: &str = "text/plain; charset=utf-8";

/// Answers one admin request from `peer`; `body` is what a `PUT` carried.
pub(crate) fn respond(
    state: &AdminState,
    method: &Method,
    path: &str,
    peer: SocketAddr,
    body: &[u8],
) -> Response<Full<Bytes>> {
    match (method, path) {
        (&Method::GET, "/live") => text(StatusCode::OK, "live\n".into()),
        (&Method::GET, "/ready") => ready(&state.readiness),
        (&Method::GET, "/metrics") => match metrics::encode(&state.registry) {
            Ok(body) => with_type(StatusCode::OK, metrics::CONTENT_TYPE, body),
            Err(err) => {
                tracing::error!(error = %err, "cannot encode metrics");
                text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "cannot encode metrics\n".into(),
                )
            }
        },
        (&Method::POST, "/shutdown") => shutdown(&state.drain, peer),
        (&Method::GET, "/config") => config(&state.config, peer),
        (&Method::GET, "/log-level") => match &state.log {
            Some(log) => text(StatusCode::OK, format!("{}\n", log.current())),
            None => no_log_level(),
        },
        (&Method::PUT, "/log-level") => set_log_level(state.log.as_ref(), peer, body),
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

/// 200 `ready` when every condition holds, else 503 naming what is missing.
fn ready(readiness: &Readiness) -> Response<Full<Bytes>> {
    let missing = readiness.missing();
    if missing.is_empty() {
        return text(StatusCode::OK, "ready\n".into());
    }
    let names: Vec<&str> = missing.iter().map(|n| &**n).collect();
    text(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("not ready; unmet: {}\n", names.join(", ")),
    )
}

/// The configuration dump for loopback callers; 403 for anyone else (it names the
/// workload's identity, files and peers).
fn config(dump: &ConfigDump, peer: SocketAddr) -> Response<Full<Bytes>> {
    if !peer.ip().to_canonical().is_loopback() {
        return text(
            StatusCode::FORBIDDEN,
            "config answers loopback callers only\n".into(),
        );
    }
    match serde_json::to_string_pretty(&(dump.0)()) {
        Ok(body) => with_type(StatusCode::OK, "application/json", body),
        Err(err) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the configuration: {err}\n"),
        ),
    }
}

fn no_log_level() -> Response<Full<Bytes>> {
    text(
        StatusCode::NOT_FOUND,
        "this proxy has no log subscriber of its own\n".into(),
    )
}

/// Puts the filter in `body` (e.g. `debug` or `pillion_proxy=debug,warn`) in force
/// for loopback callers; 403 for anyone else, 400 for a filter that does not parse.
fn set_log_level(
    log: Option<&crate::app::logging::LogLevel>,
    peer: SocketAddr,
    body: &[u8],
) -> Response<Full<Bytes>> {
    if !peer.ip().to_canonical().is_loopback() {
        tracing::warn!(%peer, "refusing /log-level from a non-loopback caller");
        return text(
            StatusCode::FORBIDDEN,
            "log-level answers loopback callers only\n".into(),
        );
    }
    let Some(log) = log else {
        return no_log_level();
    };
    let Ok(value) = std::str::from_utf8(body).map(str::trim) else {
        return text(StatusCode::BAD_REQUEST, "the filter is not UTF-8\n".into());
    };
    match log.set(value) {
        Ok(()) => {
            tracing::info!(%peer, filter = value, "log filter changed through the admin server");
            text(StatusCode::OK, format!("{value}\n"))
        }
        Err(reason) => text(StatusCode::BAD_REQUEST, format!("{reason}\n")),
    }
}

/// Starts the drain for loopback callers; 403 for anyone else.
fn shutdown(drain: &Drain, peer: SocketAddr) -> Response<Full<Bytes>> {
    if !peer.ip().to_canonical().is_loopback() {
        tracing::warn!(%peer, "refusing /shutdown from a non-loopback caller");
        return text(
            StatusCode::FORBIDDEN,
            "shutdown answers loopback callers only\n".into(),
        );
    }
    tracing::info!(%peer, "shutdown requested through the admin server");
    drain.trigger();
    text(StatusCode::OK, "shutting down\n".into())
}

/// A plain-text response.
pub(crate) fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    with_type(status, TEXT, body)
}

/// A response with a body and a static content type.
fn with_type(
    status: StatusCode,
    content_type: &'static str,
    body: String,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn state() -> AdminState {
        AdminState {
            readiness: Readiness::new(),
            registry: Arc::new(Registry::default()),
            drain: Drain::new(),
            config: ConfigDump::fixed(serde_json::json!({"outbound": ["127.0.0.1:15001"]})),
            log: None,
        }
    }

    async fn call(
        state: &AdminState,
        method: Method,
        path: &str,
        peer: &str,
    ) -> (StatusCode, String) {
        call_with(state, method, path, peer, b"").await
    }

    async fn call_with(
        state: &AdminState,
        method: Method,
        path: &str,
        peer: &str,
        body: &[u8],
    ) -> (StatusCode, String) {
        let response = respond(state, &method, path, peer.parse().unwrap(), body);
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn readiness_names_what_is_missing() {
        let s = state();
        let c = s.readiness.condition("listeners bound");
        let (status, body) = call(&s, Method::GET, "/ready", "198.18.0.2:1").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("listeners bound"), "{body}");
        c.set(true);
        assert_eq!(
            call(&s, Method::GET, "/ready", "198.18.0.2:1").await,
            (StatusCode::OK, "ready\n".into())
        );
    }

    #[tokio::test]
    async fn config_is_loopback_only_json() {
        let s = state();
        let (status, _) = call(&s, Method::GET, "/config", "198.18.0.2:1").await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, body) = call(&s, Method::GET, "/config", "127.0.0.1:1").await;
        assert_eq!(status, StatusCode::OK);
        let value: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(value["outbound"][0], "127.0.0.1:15001");
    }

    #[tokio::test]
    async fn the_log_level_changes_for_loopback_callers_only() {
        let mut s = state();
        let (status, _) = call(&s, Method::GET, "/log-level", "127.0.0.1:1").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "no subscriber of its own");
        let applied = Arc::new(std::sync::Mutex::new(0));
        let count = applied.clone();
        s.log = Some(crate::app::logging::LogLevel::new("info", move |_| {
            *count.lock().unwrap() += 1;
            Ok(())
        }));
        let put = |peer: &'static str, body: &'static [u8]| {
            let s = s.clone();
            async move { call_with(&s, Method::PUT, "/log-level", peer, body).await }
        };
        assert_eq!(put("198.18.0.2:1", b"debug").await.0, StatusCode::FORBIDDEN);
        let (status, body) = put("127.0.0.1:1", b"pillion_proxy=loud").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("not a valid filter"), "{body}");
        assert_eq!(put("[::1]:1", b"\xff").await.0, StatusCode::BAD_REQUEST);
        let (status, body) = put("127.0.0.1:1", b"pillion_proxy=debug,warn\n").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "pillion_proxy=debug,warn\n")
        );
        let (status, body) = call(&s, Method::GET, "/log-level", "198.18.0.2:1").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "pillion_proxy=debug,warn\n")
        );
        assert_eq!(
            *applied.lock().unwrap(),
            1,
            "only the good filter was applied"
        );
    }

    #[tokio::test]
    async fn shutdown_is_loopback_only() {
        let s = state();
        let (status, _) = call(&s, Method::POST, "/shutdown", "198.18.0.2:1").await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(!s.drain.is_draining());
        let (status, _) = call(&s, Method::POST, "/shutdown", "[::ffff:127.0.0.1]:1").await;
        assert_eq!(status, StatusCode::OK);
        assert!(s.drain.is_draining());
    }

    #[tokio::test]
    async fn unknown_paths_and_methods_are_404() {
        let s = state();
        for (method, path) in [
            (Method::GET, "/"),
            (Method::GET, "/shutdown"),
            (Method::POST, "/live"),
            (Method::GET, "/metricsx"),
        ] {
            assert_eq!(
                call(&s, method, path, "127.0.0.1:1").await.0,
                StatusCode::NOT_FOUND,
                "{path}"
            );
        }
    }
}
