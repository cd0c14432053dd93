//! The outbound HTTP path: requests from the local application to a known service.
//!
//! Per request: pick the route in the newest state, apply its client-side rate
//! limit and its injected faults (a delay within the route's timeout, an abort
//! answered here), clean and edit the headers, rewrite the path into the head every
//! try sends, start a copy for the route's mirror ([`super::mirror`]), then hand it
//! to [`super::retry`]; edit the response on its way back and count it. A route
//! with a cache goes through [`super::cache`] first; one with a body transform
//! has its bodies rewritten on the way ([`super::transform`]); an aggregation route
//! is answered from its parts' calls ([`super::aggregate`]). Upgrades and `CONNECT` take
//! [`crate::http::upgrade`] to one endpoint.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use tokio::io::{AsyncRead, AsyncWrite};

use super::retry::{self, pick_backend, Outgoing, Template};
use super::{aggregate, cache, mirror, transform};
use crate::app::inputs::Inputs;
use crate::detect::Protocol;
use crate::http::body::{declared_len, ResponseBody};
use crate::http::errors::{fault_response, rate_limited, HttpError};
use crate::http::hop::{self, strip_hop_by_hop, strip_own_headers, upgrade_requested};
use crate::http::tee::CallerBody;
use crate::http::{grpc, server, upgrade};
use crate::policy::fault::Faults;
use crate::policy::mirror::Admit;
use crate::policy::transform::Transforms;
use crate::state::outbound::{RouteState, Target};
use crate::telemetry::metrics::http::{no_peer, Action};
use crate::telemetry::RequestObserver;

/// Serves one HTTP connection from the local application to `orig_dst` (a known
/// service or endpoint) until it closes or `shutdown` resolves.
pub(crate) async fn serve<IO, F>(
    inputs: Arc<Inputs>,
    io: IO,
    protocol: Protocol,
    orig_dst: SocketAddr,
    shutdown: F,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Future<Output = ()>,
{
    let conn = Arc::new(OutboundConn::new(inputs, orig_dst));
    let service = service_fn(move |req| {
        let conn = Arc::clone(&conn);
        let grpc = hop::is_grpc(req.headers());
        async move { Ok::<_, Infallible>(grpc::for_caller(grpc, conn.handle(req).await)) }
    });
    server::serve(io, protocol, service, shutdown).await;
}

/// What every request of one connection shares.
pub(crate) struct OutboundConn {
    inputs: Arc<Inputs>,
    orig_dst: SocketAddr,
    no_peer: Arc<str>,
}

impl OutboundConn {
    /// The shared part of requests to `orig_dst` (a gateway's: its listener).
    pub(crate) fn new(inputs: Arc<Inputs>, orig_dst: SocketAddr) -> OutboundConn {
        OutboundConn {
            inputs,
            orig_dst,
            no_peer: no_peer(),
        }
    }

    /// With on-demand discovery, a service forgotten while this connection stayed
    /// idle is asked about again.
    async fn rediscover(&self) -> Option<Target> {
        let resolver = self.inputs.resolver.as_ref()?;
        resolver.resolve(self.orig_dst).await.ok()?;
        let state = self.inputs.state.load();
        state.outbound().target(self.orig_dst).cloned()
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<ResponseBody> {
        let start = Instant::now();
        let (target, identity) = {
            let state = self.inputs.state.load();
            (
                state.outbound().target(self.orig_dst).cloned(),
                state.identity().cloned(),
            )
        };
        let target = match target {
            Some(target) => target,
            None => match self.rediscover().await {
                Some(target) => target,
                // The view dropped the service while this connection was open.
                None => {
                    return HttpError::NoEndpoints {
                        service: self.orig_dst.to_string(),
                    }
                    .response()
                }
            },
        };
        self.to_target(req, target, identity, start).await
    }

    /// Serves one request to a known service port (or a gateway host's routes):
    /// route, limit, faults, cache, the tries, the answer's way back. `identity` is
    /// this proxy's own, for client-side limits keyed by it.
    pub(crate) async fn to_target(
        &self,
        req: Request<Incoming>,
        target: Target,
        identity: Option<Arc<str>>,
        start: Instant,
    ) -> Response<ResponseBody> {
        let (parts, body) = req.into_parts();
        let (route, matched_prefix) = target.port.select(&parts);
        // A gateway host's port has no default route to send to: a request no
        // declared route matches is 404, an upgrade included.
        if target.port.only_declared_routes() && target.port.is_default(route) {
            return HttpError::NotFound("no route of the host matches the request").response();
        }
        if upgrade_requested(&parts.method, parts.version, &parts.headers) {
            // Their bytes would pass untouched: refused where the route reads them.
            if route.aggregate.is_some() {
                return HttpError::Unsupported("upgrades on an aggregation route").response();
            }
            if route.transform.is_some() {
                return HttpError::Unsupported("upgrades on a route that transforms bodies")
                    .response();
            }
            return (self.upgrade(Request::from_parts(parts, body), &target, route)).await;
        }
        let recorders = &self.inputs.settings.recorders;
        let mut observer = match route.aggregate {
            None => recorders.client(&parts, self.orig_dst),
            Some(_) => recorders.composer(&parts, self.orig_dst),
        };
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
        if let Some(faults) = &route.faults {
            // Boxed: only routes with faults pay for the timer in their future, so
            // the one every request of every other route carries stays as it was.
            if let Some(answer) = Box::pin(inject(faults, route, &parts, start)).await {
                let status = answer.status().as_u16();
                route
                    .metrics
                    .response(&self.no_peer, status, start.elapsed());
                return ResponseBody::observed(observer, answer);
            }
        }
        if let Some(aggregation) = &route.aggregate {
            // Boxed, as faults are; the caller's body is not sent anywhere.
            drop(body);
            let serve = aggregate::serve(self, &target, route, aggregation, parts, start, observer);
            return Box::pin(serve).await;
        }
        if let Some(cache) = &route.cache {
            // Boxed, as faults are: routes without a cache keep their future's size.
            let through = cache::Through {
                conn: self,
                target: &target,
                route,
                cache,
                matched_prefix,
                start,
            };
            return Box::pin(through.serve(parts, body, observer)).await;
        }
        let version = parts.version;
        let (response, peer) = self
            .send(
                &target,
                route,
                matched_prefix,
                parts,
                body,
                start,
                &mut observer,
            )
            .await;
        self.finish(route, version, response, &peer, start, observer)
    }

    /// Sends a request upstream as the route says: the head every try sends, a
    /// copy for the mirror, then the tries. Returns the upstream's answer (or the
    /// error's) and the peer it came from.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn send(
        &self,
        target: &Target,
        route: &RouteState,
        matched_prefix: Option<&str>,
        mut parts: Parts,
        body: Incoming,
        start: Instant,
        observer: &mut RequestObserver,
    ) -> (Response<ResponseBody>, Arc<str>) {
        if let Some(transforms) = route.transform.as_deref() {
            // Boxed: only routes that transform bodies carry that path's state in
            // their future (each HTTP/2 stream's future is a task of its own).
            let send = self.send_transformed(
                target,
                route,
                transforms,
                (matched_prefix, parts, body),
                start,
                observer,
            );
            return Box::pin(send).await;
        }
        let mut template = match self.template(&mut parts, route, matched_prefix) {
            Ok(t) => t,
            Err(e) => return (e.response(), Arc::clone(&self.no_peer)),
        };
        observer.inject(&mut template.headers);
        let outgoing = Outgoing::Stream(match self.shadow(route) {
            Some(shadow) => shadow.spawn(&template, body),
            None => CallerBody::new(body),
        });
        match retry::forward(target, route, template, outgoing, start, observer).await {
            Ok((response, peer)) => (response.map(ResponseBody::Upstream), peer),
            Err(e) => {
                tracing::debug!(service = %target.port.service, route = %route.name, error = %e, "request failed");
                (e.response(), Arc::clone(&self.no_peer))
            }
        }
    }

    /// [`OutboundConn::send`] on a route with body transforms: the request's body
    /// read whole and rewritten before the tries, the answer's after.
    async fn send_transformed(
        &self,
        target: &Target,
        route: &RouteState,
        transforms: &Transforms,
        (matched_prefix, mut parts, body): (Option<&str>, Parts, Incoming),
        start: Instant,
        observer: &mut RequestObserver,
    ) -> (Response<ResponseBody>, Arc<str>) {
        let mut template = match self.template(&mut parts, route, matched_prefix) {
            Ok(t) => t,
            Err(e) => return (e.response(), Arc::clone(&self.no_peer)),
        };
        observer.inject(&mut template.headers);
        let shadow = self.shadow(route);
        let outgoing = match &transforms.request {
            Some(rewrite) => {
                let rewritten = transform::request(
                    transforms,
                    rewrite,
                    &mut template.headers,
                    body,
                    route.timeout,
                    start,
                );
                let bytes = match rewritten.await {
                    Ok(bytes) => bytes,
                    Err(e) => return (e.response(), Arc::clone(&self.no_peer)),
                };
                if let Some(shadow) = shadow {
                    shadow.spawn_whole(&template, bytes.clone());
                }
                Outgoing::Whole(bytes)
            }
            None => Outgoing::Stream(match shadow {
                Some(shadow) => shadow.spawn(&template, body),
                None => CallerBody::new(body),
            }),
        };
        let answer_rewrite = transforms.response.as_ref();
        let head = answer_rewrite.map(|rewrite| {
            transform::ask_for_whole_answer(&mut template.headers, rewrite);
            template.method.clone()
        });
        let answered = retry::forward(target, route, template, outgoing, start, observer).await;
        let (response, peer) = match answered {
            Ok(answered) => answered,
            Err(e) => {
                tracing::debug!(service = %target.port.service, route = %route.name, error = %e, "request failed");
                return (e.response(), Arc::clone(&self.no_peer));
            }
        };
        let (Some(rewrite), Some(method)) = (answer_rewrite, head) else {
            return (response.map(ResponseBody::Upstream), peer);
        };
        let deadline = route.timeout.map(|t| (start + t, t));
        match transform::response(transforms, rewrite, &method, response, deadline).await {
            Ok(response) => (response, peer),
            Err(e) => {
                tracing::debug!(service = %target.port.service, route = %route.name, error = %e, "answer not transformed");
                (e.response(), peer)
            }
        }
    }

    /// The copy of this request the route's mirror takes, if it takes one.
    fn shadow(&self, route: &RouteState) -> Option<mirror::Shadow> {
        let (backend, share) = route.mirror.as_ref()?;
        match share.admit(rand::random()) {
            Admit::Copy(permit) => Some(mirror::Shadow::new(
                permit,
                Arc::clone(backend),
                route.timeout,
                route.metrics.clone(),
            )),
            Admit::Full => {
                route.metrics.action(Action::MirrorSkipped);
                None
            }
            Admit::No => None,
        }
    }

    /// The answer's way back to the application: hop-by-hop fields out, the route's
    /// edits, the caller's HTTP version, the route's metrics and the request's
    /// telemetry.
    pub(super) fn finish(
        &self,
        route: &RouteState,
        version: http::Version,
        mut response: Response<ResponseBody>,
        peer: &Arc<str>,
        start: Instant,
        observer: RequestObserver,
    ) -> Response<ResponseBody> {
        strip_hop_by_hop(response.headers_mut());
        route.response_edits.apply(response.headers_mut());
        *response.version_mut() = version;
        route
            .metrics
            .response(peer, response.status().as_u16(), start.elapsed());
        ResponseBody::observed(observer, response)
    }

    /// The tracer and access log requests are recorded with.
    pub(super) fn recorders(&self) -> &crate::telemetry::Recorders {
        &self.inputs.settings.recorders
    }

    /// The address the application's connection was aimed at.
    pub(super) fn orig_dst(&self) -> SocketAddr {
        self.orig_dst
    }

    /// The peer label of answers the proxy made itself.
    pub(super) fn no_peer(&self) -> &Arc<str> {
        &self.no_peer
    }

    /// Cleans, edits and rewrites the request head into what every try sends.
    fn template(
        &self,
        parts: &mut Parts,
        route: &RouteState,
        matched_prefix: Option<&str>,
    ) -> Result<Template, HttpError> {
        hop::check_head(parts)?;
        let headers = &mut parts.headers;
        strip_hop_by_hop(headers);
        strip_own_headers(headers);
        route.request_edits.apply(headers);
        let path_and_query = match (&route.rewrite, matched_prefix) {
            (Some(rewriter), Some(prefix)) => {
                let rewritten = rewriter.rewrite_path_and_query(&parts.uri, prefix);
                PathAndQuery::try_from(rewritten)
                    .map_err(|_| HttpError::BadRequest("the rewritten path is not valid"))?
            }
            _ => hop::path_and_query(parts),
        };
        let uri = hop::upstream_uri(parts, self.orig_dst, path_and_query)?;
        Ok(Template {
            method: parts.method.clone(),
            uri,
            version: parts.version,
            headers: std::mem::take(&mut parts.headers),
        })
    }

    /// An upgrade (or `CONNECT`) on `route`: to one endpoint, then bytes.
    async fn upgrade(
        &self,
        mut req: Request<Incoming>,
        target: &Target,
        route: &RouteState,
    ) -> Response<ResponseBody> {
        let start = Instant::now();
        route.metrics.request(&self.no_peer);
        strip_own_headers(req.headers_mut());
        let backend = pick_backend(target, route);
        let (response, peer) = match backend.pick(start, rand::random(), None) {
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

/// Applies a route's faults to one request: waits out an injected delay (within the
/// route's timeout: past it, the request ends 504 like a slow upstream's would) and
/// returns the answer of an injected abort; `None` lets the request go on.
async fn inject(
    faults: &Faults,
    route: &RouteState,
    parts: &Parts,
    start: Instant,
) -> Option<Response<ResponseBody>> {
    let decision = faults.decide(rand::random(), rand::random());
    if let Some(delay) = decision.delay {
        route.metrics.action(Action::FaultDelay);
        match route.timeout {
            Some(limit) if delay >= limit => {
                tokio::time::sleep_until((start + limit).into()).await;
                return Some(HttpError::Timeout(limit).response());
            }
            _ => tokio::time::sleep(delay).await,
        }
    }
    let abort = decision.abort?;
    route.metrics.action(Action::FaultAbort);
    Some(fault_response(abort, hop::is_grpc(&parts.headers)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` returns, known from its type alone.
    fn future_size<F, Fut>(_: F) -> usize
    where
        F: FnOnce(&'static OutboundConn, Request<Incoming>) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// hyper's HTTP/2 server makes each stream's service future a task of its own:
    /// this future is allocated and moved per request, so what only some routes
    /// need is boxed behind it. The bound guards against it growing back unseen
    /// (6,336 bytes when it was set, 4,008 of them the tries' own future).
    #[test]
    fn the_per_request_future_stays_small() {
        let handle = future_size(|conn, req| conn.handle(req));
        println!("OutboundConn::handle: {handle} bytes");
        assert!(
            handle <= 6400,
            "OutboundConn::handle's future is {handle} bytes"
        );
    }
}
