//! The outbound HTTP path: requests from the local application to a known service.
//!
//! Per request: pick the route, apply its client-side rate limit, clean and edit the
//! headers, rewrite the path, then try: pick a backend by weight and an endpoint by
//! load, send (HTTP/2 inside mesh TLS to meshed endpoints, the client's own version
//! otherwise), and on a retryable outcome back off and try again while the route's
//! attempts, budget and deadline allow. Every outcome feeds the endpoint's latency
//! estimate and the backend's outlier detector.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::HOST;
use http::request::Parts;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use hyper::body::{Body as _, Incoming};
use hyper::service::service_fn;
use tokio::io::{AsyncRead, AsyncWrite};

use super::backend::Backend;
use super::body::{RequestBody, ResponseBody};
use super::errors::{rate_limited, HttpError};
use super::hop::{orig_proto_value, strip_hop_by_hop, wants_upgrade, ORIG_PROTO};
use super::metrics::no_peer;
use super::outbound_table::{RouteState, Target};
use super::pool::UpstreamBody;
use super::replay::ReplayBody;
use super::tables::HttpTables;
use super::upstream::Wire;
use super::{server, upgrade};
use crate::detect::Protocol;
use crate::policy::authz::set_peer_identity;
use crate::policy::backoff::full_jitter;
use crate::policy::retry::{should_retry, Outcome};
use crate::telemetry::RequestObserver;

/// Serves one HTTP connection from the local application to `orig_dst` (a known
/// service or endpoint) until it closes or `shutdown` resolves.
pub async fn serve<IO, F>(
    tables: Arc<HttpTables>,
    io: IO,
    protocol: Protocol,
    orig_dst: SocketAddr,
    shutdown: F,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Future<Output = ()>,
{
    let conn = Arc::new(OutboundConn {
        tables,
        orig_dst,
        no_peer: no_peer(),
    });
    let service = service_fn(move |req| {
        let conn = Arc::clone(&conn);
        async move { Ok::<_, Infallible>(conn.handle(req).await) }
    });
    server::serve(io, protocol, service, shutdown).await;
}

/// What every request of one connection shares.
struct OutboundConn {
    tables: Arc<HttpTables>,
    orig_dst: SocketAddr,
    no_peer: Arc<str>,
}

/// The parts of a request every try sends.
struct Template {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl OutboundConn {
    async fn handle(&self, req: Request<Incoming>) -> Response<ResponseBody> {
        let start = Instant::now();
        let (target, identity) = {
            let table = self.tables.outbound();
            (
                table.target(self.orig_dst).cloned(),
                table.identity().cloned(),
            )
        };
        let Some(target) = target else {
            // The view dropped the service while this connection was open.
            return HttpError::NoEndpoints {
                service: self.orig_dst.to_string(),
            }
            .response();
        };
        if wants_upgrade(&req) {
            return self.upgrade(req, &target).await;
        }
        let (mut parts, body) = req.into_parts();
        let (route, matched_prefix) = target.port.select(&parts);
        let mut observer = self
            .tables
            .settings()
            .recorders
            .client(&parts, self.orig_dst);
        observer.set_route(&route.name);
        observer.set_request_bytes(declared_len(&body));
        route.metrics.request(&self.no_peer);
        if let Some(limiter) = &route.limiter {
            let key = limiter.key(identity.as_deref(), &parts.headers);
            if let Err(wait) = limiter.check(key, start) {
                route.metrics.rate_limited.inc();
                route.metrics.response(&self.no_peer, 429, start.elapsed());
                return ResponseBody::observed(observer, rate_limited(limiter, &route.name, &wait));
            }
        }
        let mut template = match self.template(&mut parts, route, matched_prefix) {
            Ok(t) => t,
            Err(e) => {
                route
                    .metrics
                    .response(&self.no_peer, e.status().as_u16(), start.elapsed());
                return ResponseBody::observed(observer, e.response());
            }
        };
        observer.inject(&mut template.headers);
        let forwarded = self
            .forward(&target, route, template, body, start, &mut observer)
            .await;
        let (mut response, peer) = match forwarded {
            Ok((response, peer)) => (response.map(ResponseBody::Upstream), peer),
            Err(e) => {
                tracing::debug!(service = %target.port.service, route = %route.name, error = %e, "request failed");
                (e.response(), Arc::clone(&self.no_peer))
            }
        };
        strip_hop_by_hop(response.headers_mut());
        route.response_edits.apply(response.headers_mut());
        *response.version_mut() = parts.version;
        route
            .metrics
            .response(&peer, response.status().as_u16(), start.elapsed());
        ResponseBody::observed(observer, response)
    }

    /// Cleans, edits and rewrites the request head into what every try sends.
    fn template(
        &self,
        parts: &mut Parts,
        route: &RouteState,
        matched_prefix: Option<&str>,
    ) -> Result<Template, HttpError> {
        let headers = &mut parts.headers;
        strip_hop_by_hop(headers);
        headers.remove(ORIG_PROTO);
        set_peer_identity(headers, None);
        route.request_edits.apply(headers);
        let path_and_query = match (&route.rewrite, matched_prefix) {
            (Some(rewriter), Some(prefix)) => {
                let rewritten = rewriter.rewrite_path_and_query(&parts.uri, prefix);
                PathAndQuery::try_from(rewritten)
                    .map_err(|_| HttpError::BadRequest("the rewritten path is not valid"))?
            }
            _ => parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        };
        let authority = authority(parts, self.orig_dst)?;
        let uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(authority)
            .path_and_query(path_and_query)
            .build()
            .map_err(|_| HttpError::BadRequest("the request target is not valid"))?;
        Ok(Template {
            method: parts.method.clone(),
            uri,
            version: parts.version,
            headers: std::mem::take(&mut parts.headers),
        })
    }

    /// The tries of one request; see the module docs.
    async fn forward(
        &self,
        target: &Target,
        route: &RouteState,
        template: Template,
        body: Incoming,
        start: Instant,
        observer: &mut RequestObserver,
    ) -> Result<(Response<UpstreamBody>, Arc<str>), HttpError> {
        let retry = route.retry.as_ref();
        if let Some((_, budget)) = retry {
            budget.deposit(start);
        }
        // With retries, keep a recording handle and give each try a replay of it.
        let (mut body, recording) = if body.is_end_stream() {
            (Some(RequestBody::Empty), None)
        } else if retry.is_some() {
            let recording = ReplayBody::new(body);
            (recording.replay().map(RequestBody::Replay), Some(recording))
        } else {
            (Some(RequestBody::Stream(body)), None)
        };
        let wants = if template.version == Version::HTTP_2 {
            Wire::Http2
        } else {
            Wire::Http1
        };
        let deadline = route.timeout.map(|t| start + t);
        let method = template.method.clone();
        let mut template = Some(template);
        let mut attempt: u32 = 1;
        loop {
            let now = Instant::now();
            let Some(this_body) = body.take() else {
                return Err(HttpError::Upstream {
                    endpoint: target.port.label(),
                    reason: "the request body could not be replayed".into(),
                });
            };
            let backend = pick_backend(target, route);
            let (index, endpoint) = backend.pick(now, rand::random())?;
            let Some(tpl) = template.as_ref() else {
                return Err(HttpError::BadRequest("request already sent"));
            };
            let wire = endpoint.upstream.wire_for(wants);
            observer.set_upstream(
                endpoint.addr,
                Some(&*endpoint.peer_label).filter(|id| !id.is_empty()),
            );
            // Without retries, the head moves into the only try instead of a copy.
            let request = if retry.is_some() {
                build(tpl, this_body, wire)
            } else {
                match template.take() {
                    Some(tpl) => build_owned(tpl, this_body, wire),
                    None => return Err(HttpError::BadRequest("request already sent")),
                }
            };
            let limit = match (route.per_try_timeout, deadline) {
                (Some(t), Some(d)) => Some(t.min(d.saturating_duration_since(now))),
                (Some(t), None) => Some(t),
                (None, Some(d)) => Some(d.saturating_duration_since(now)),
                (None, None) => None,
            };
            let in_flight = endpoint.ewma.start(now);
            let sent = endpoint.upstream.send(wire, request);
            let result = match limit {
                Some(limit) => tokio::time::timeout(limit, sent).await.ok(),
                None => Some(sent.await),
            };
            let done = Instant::now();
            let (outcome, error) = match &result {
                Some(Ok(response)) => (Outcome::Status(response.status()), None),
                Some(Err(e)) if e.is_connect() => (
                    Outcome::ConnectFailure,
                    Some(HttpError::Connect {
                        endpoint: endpoint.addr.to_string(),
                        reason: error_chain(e),
                    }),
                ),
                Some(Err(e)) => (
                    Outcome::Reset,
                    Some(HttpError::Upstream {
                        endpoint: endpoint.addr.to_string(),
                        reason: error_chain(e),
                    }),
                ),
                None => {
                    let overall = deadline.is_some_and(|d| done >= d);
                    let error = match (overall, route.timeout, route.per_try_timeout) {
                        (true, Some(t), _) => HttpError::Timeout(t),
                        (_, _, Some(t)) => HttpError::TryTimeout(t),
                        (_, Some(t), None) => HttpError::Timeout(t),
                        (_, None, None) => HttpError::Timeout(limit.unwrap_or_default()),
                    };
                    (Outcome::Timeout, Some(error))
                }
            };
            match outcome {
                Outcome::Status(_) | Outcome::Timeout => in_flight.finish(done),
                // A refused connection is fast; that must not make the endpoint look cheap.
                Outcome::ConnectFailure | Outcome::Reset => drop(in_flight),
            }
            let ok = matches!(outcome, Outcome::Status(s) if !s.is_server_error());
            backend.report(index, ok, done);

            if let Some((policy, budget)) = retry {
                if should_retry(policy, &method, outcome, attempt) {
                    let wait = full_jitter(
                        attempt,
                        policy.backoff_base,
                        policy.backoff_max,
                        rand::random(),
                    );
                    let in_time = deadline.is_none_or(|d| done + wait < d);
                    let replayable = recording.as_ref().is_none_or(ReplayBody::is_replayable);
                    if in_time && replayable && budget.try_withdraw(done) {
                        route.metrics.retries.inc();
                        tracing::debug!(service = %target.port.service, route = %route.name,
                            endpoint = %endpoint.addr, attempt, ?outcome, "retrying");
                        drop(result);
                        tokio::time::sleep(wait).await;
                        body = match &recording {
                            Some(recording) => recording.replay().map(RequestBody::Replay),
                            None => Some(RequestBody::Empty),
                        };
                        attempt += 1;
                        continue;
                    }
                }
            }
            return match (result, error) {
                (Some(Ok(response)), _) => Ok((response, Arc::clone(&endpoint.peer_label))),
                (_, Some(error)) => Err(error),
                (_, None) => Err(HttpError::Upstream {
                    endpoint: endpoint.addr.to_string(),
                    reason: "no response".into(),
                }),
            };
        }
    }

    async fn upgrade(&self, req: Request<Incoming>, target: &Target) -> Response<ResponseBody> {
        let start = Instant::now();
        let (parts, body) = req.into_parts();
        let (route, _) = target.port.select(&parts);
        let mut req = Request::from_parts(parts, body);
        route.metrics.request(&self.no_peer);
        set_peer_identity(req.headers_mut(), None);
        req.headers_mut().remove(ORIG_PROTO);
        let backend = pick_backend(target, route);
        let (response, peer) = match backend.pick(start, rand::random()) {
            Ok((_, endpoint)) => (
                upgrade::forward(req, &endpoint.upstream).await,
                Arc::clone(&endpoint.peer_label),
            ),
            Err(e) => (Err(e), Arc::clone(&self.no_peer)),
        };
        let response = response.unwrap_or_else(|e| e.response());
        route
            .metrics
            .response(&peer, response.status().as_u16(), start.elapsed());
        response
    }
}

/// The backend of this try: the pinned endpoint, or one of the route's by weight.
fn pick_backend<'a>(target: &'a Target, route: &'a RouteState) -> &'a Arc<Backend> {
    if let Some(pinned) = &target.pinned {
        return pinned;
    }
    let i = route.split.pick(rand::random());
    // The split has one weight per backend, so `i` is always in range.
    route
        .backends
        .get(i)
        .unwrap_or_else(|| target.port.default_backend())
}

/// A try's request from the template (copied, so later tries can use it again).
fn build(template: &Template, body: RequestBody, wire: Wire) -> Request<RequestBody> {
    let mut request = Request::new(body);
    *request.method_mut() = template.method.clone();
    *request.uri_mut() = template.uri.clone();
    *request.headers_mut() = template.headers.clone();
    set_wire(&mut request, template.version, wire);
    request
}

/// The only try's request, moving the template.
fn build_owned(template: Template, body: RequestBody, wire: Wire) -> Request<RequestBody> {
    let mut request = Request::new(body);
    *request.method_mut() = template.method;
    *request.uri_mut() = template.uri;
    *request.headers_mut() = template.headers;
    set_wire(&mut request, template.version, wire);
    request
}

/// Sets the version for the wire; an HTTP/1.x request on HTTP/2 carries its version.
fn set_wire(request: &mut Request<RequestBody>, version: Version, wire: Wire) {
    match wire {
        Wire::Http1 => *request.version_mut() = version,
        Wire::Http2 => {
            *request.version_mut() = Version::HTTP_2;
            if let Some(value) = orig_proto_value(version) {
                request.headers_mut().insert(ORIG_PROTO, value);
            }
        }
    }
}

/// The request's authority: from its URI (HTTP/2, absolute form), its `Host` header,
/// or the address it was sent to.
fn authority(parts: &Parts, orig_dst: SocketAddr) -> Result<Authority, HttpError> {
    if let Some(authority) = parts.uri.authority() {
        return Ok(authority.clone());
    }
    match parts.headers.get(HOST) {
        Some(host) => Authority::try_from(host.as_bytes())
            .map_err(|_| HttpError::BadRequest("the Host header is not a valid authority")),
        None => Authority::try_from(orig_dst.to_string())
            .map_err(|_| HttpError::BadRequest("no authority for the request")),
    }
}

/// The request body's declared size (its exact size hint, e.g. `Content-Length`);
/// a streamed body of unknown length counts its known lower bound.
pub(crate) fn declared_len(body: &impl hyper::body::Body) -> u64 {
    let hint = body.size_hint();
    hint.exact().unwrap_or_else(|| hint.lower())
}

/// An error and its causes on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
