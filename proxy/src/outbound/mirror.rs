//! Request mirroring: a copy of a share of a route's requests goes to the route's
//! mirror backend, in a task of its own, and its answer is read and thrown away.
//!
//! The primary request never waits for the copy and never fails because of it: its
//! body is passed on frame by frame while a reference to each frame is kept
//! ([`CallerBody::teed`]), and the copy is sent once the body has ended (at once
//! for a request without a body). A body over 64 KiB, or one that fails, is not
//! copied. The copy's `Host` (or authority) gets `-shadow` appended, so the shadow
//! service can tell copies from its own traffic; it is bounded by the route's
//! timeout, or [`MIRROR_TIMEOUT`], and by the route's copies in flight
//! ([`crate::policy::mirror`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HOST;
use http::uri::Authority;
use http::{HeaderValue, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use tokio::sync::oneshot;

use super::retry::{request_for, Head, Template};
use crate::http::body::RequestBody;
use crate::http::tee::CallerBody;
use crate::policy::mirror::MirrorPermit;
use crate::telemetry::metrics::http::{Action, RouteMetrics};
use crate::upstream::endpoint::Backend;
use crate::upstream::Wire;

/// Longest a copy may take on a route without a timeout.
pub(crate) const MIRROR_TIMEOUT: Duration = Duration::from_secs(10);

/// One copy about to be made: where it goes, within what time, and where it counts.
pub(super) struct Shadow {
    permit: MirrorPermit,
    backend: Arc<Backend>,
    limit: Duration,
    metrics: RouteMetrics,
}

impl Shadow {
    /// A copy to `backend` within the route's `timeout` (at most [`MIRROR_TIMEOUT`]).
    pub(super) fn new(
        permit: MirrorPermit,
        backend: Arc<Backend>,
        timeout: Option<Duration>,
        metrics: RouteMetrics,
    ) -> Shadow {
        Shadow {
            permit,
            backend,
            limit: timeout.unwrap_or(MIRROR_TIMEOUT).min(MIRROR_TIMEOUT),
            metrics,
        }
    }

    /// Starts the copy of the request `template` heads and returns the primary's
    /// body.
    pub(super) fn spawn(self, template: &Template, body: Incoming) -> CallerBody {
        let head = shadow_head(template);
        if body.is_end_stream() {
            tokio::spawn(self.send(head, Bytes::new()));
            return CallerBody::new(body);
        }
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            match rx.await {
                // The primary's body ended within the size limit: send the copy.
                Ok(copy) => self.send(head, copy).await,
                Err(_) => self.metrics.action(Action::MirrorDropped),
            }
        });
        CallerBody::teed(body, tx)
    }

    /// Starts the copy of a request whose body is already whole (a rewritten one).
    pub(super) fn spawn_whole(self, template: &Template, body: Bytes) {
        tokio::spawn(self.send(shadow_head(template), body));
    }

    /// Sends the copy to an endpoint of the backend and drains the answer.
    async fn send(self, head: Template, body: Bytes) {
        let answered = send(&self.backend, head, body, self.limit).await;
        self.metrics.action(if answered {
            Action::MirrorSent
        } else {
            Action::MirrorDropped
        });
        drop(self.permit);
    }
}

/// The copy's head: the primary's, with `-shadow` after its host.
fn shadow_head(template: &Template) -> Template {
    let mut headers = template.headers.clone();
    if let Some(host) = headers.get(HOST).and_then(|h| h.to_str().ok()) {
        if let Ok(shadow) = HeaderValue::from_str(&shadowed(host)) {
            headers.insert(HOST, shadow);
        }
    }
    let uri = match template.uri.authority() {
        Some(authority) => {
            let mut parts = template.uri.clone().into_parts();
            parts.authority = Authority::try_from(shadowed(authority.as_str())).ok();
            Uri::from_parts(parts).unwrap_or_else(|_| template.uri.clone())
        }
        None => template.uri.clone(),
    };
    Template {
        method: template.method.clone(),
        uri,
        version: template.version,
        headers,
    }
}

/// `host[:port]` with `-shadow` after the host.
fn shadowed(authority: &str) -> String {
    let (host, rest) = match authority.find(']') {
        Some(end) if authority.starts_with('[') => authority.split_at(end + 1),
        _ => match authority.rsplit_once(':') {
            Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
                authority.split_at(host.len())
            }
            _ => (authority, ""),
        },
    };
    format!("{host}-shadow{rest}")
}

/// Sends a copy to an endpoint of `backend` within `limit` and drains the answer;
/// whether an answer came.
async fn send(backend: &Backend, head: Template, body: Bytes, limit: Duration) -> bool {
    let Ok((_, endpoint)) = backend.pick(Instant::now(), rand::random(), None) else {
        tracing::debug!("mirror: no endpoint to send the copy to");
        return false;
    };
    let endpoint = Arc::clone(endpoint);
    let wants = if head.version == Version::HTTP_2 {
        Wire::Http2
    } else {
        Wire::Http1
    };
    let wire = endpoint.upstream.wire_for(wants);
    let body = if body.is_empty() {
        RequestBody::Empty
    } else {
        RequestBody::Whole(Some(body))
    };
    let request = request_for(Head::Owned(head), body, wire);
    let exchange = async {
        let response = endpoint.upstream.send(wire, request).await?;
        let status = response.status();
        let _ = response.into_body().collect().await;
        Ok::<_, crate::upstream::pool::SendError>(status)
    };
    match tokio::time::timeout(limit, exchange).await {
        Ok(Ok(status)) => {
            tracing::debug!(endpoint = %endpoint.addr, %status, "mirror answered");
            true
        }
        Ok(Err(e)) => {
            tracing::debug!(endpoint = %endpoint.addr, error = %e, "mirror failed");
            false
        }
        Err(_) => {
            tracing::debug!(endpoint = %endpoint.addr, "mirror timed out");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_name_the_shadow_host() {
        for (authority, want) in [
            ("orders", "orders-shadow"),
            ("orders.shop:8080", "orders.shop-shadow:8080"),
            ("198.18.1.100:80", "198.18.1.100-shadow:80"),
            ("[2001:2::1]:80", "[2001:2::1]-shadow:80"),
            ("[2001:2::1]", "[2001:2::1]-shadow"),
        ] {
            assert_eq!(shadowed(authority), want, "{authority}");
        }
    }
}
