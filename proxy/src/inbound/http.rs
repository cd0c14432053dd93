//! The inbound HTTP path: requests from elsewhere to the local application.
//!
//! Per request: the caller's claimed identity header is removed and the verified one
//! (from mesh TLS) set; the port's or route's allow list decides (403 otherwise); the
//! end user's token is verified where the port has JWT providers, and the route's
//! claims checked (401/403, `WWW-Authenticate`); the
//! route's server-side rate limit applies (429); the request goes to the application
//! on loopback as the version the original client spoke (`pillion-orig-proto`, which
//! is removed), over connections pooled per application port.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwapOption;
use http::header::HeaderValue;
use http::{Request, Response, Version};
use hyper::body::{Body as _, Incoming};
use hyper::service::service_fn;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::app::inputs::Inputs;
use crate::detect::Protocol;
use crate::http::body::{declared_len, RequestBody, ResponseBody};
use crate::http::errors::{rate_limited, HttpError};
use crate::http::hop::{
    self, strip_hop_by_hop, strip_own_headers, take_orig_proto, upgrade_requested,
};
use crate::http::tee::CallerBody;
use crate::http::{grpc, server, upgrade};
use crate::inbound::token;
use crate::policy::authz::{peer_identity_value, set_peer_identity, Denied};
use crate::state::inbound::InboundPort;
use crate::telemetry::metrics::http::no_peer;
use crate::telemetry::span::Inbound as SpanConn;
use crate::telemetry::RequestObserver;
use crate::upstream::{Upstream, Wire};

/// The verified caller of one connection.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    identity: Arc<str>,
    header: HeaderValue,
}

impl Peer {
    /// A caller whose mesh TLS certificate proved `identity`; `None` when the
    /// identity cannot travel in a header (then the caller counts as unauthenticated).
    pub(crate) fn verified(identity: &str) -> Option<Peer> {
        match peer_identity_value(identity) {
            Ok(header) => Some(Peer {
                identity: Arc::from(identity),
                header,
            }),
            Err(e) => {
                tracing::warn!(error = %e, "peer identity unusable in a header; treating the caller as unauthenticated");
                None
            }
        }
    }
}

/// Serves one HTTP connection towards the application at `target` through `app`'s
/// pools, from a caller at `remote` (`peer` when it proved an identity), until it
/// closes or the drain starts.
pub(crate) async fn serve<IO>(
    inputs: Arc<Inputs>,
    app: Arc<Upstream>,
    io: IO,
    protocol: Protocol,
    target: SocketAddr,
    peer: Option<Peer>,
    remote: Option<SocketAddr>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shutdown = inputs.shutdown();
    let conn = Arc::new(InboundConn {
        remote,
        inputs,
        app,
        target,
        peer_label: peer
            .as_ref()
            .map_or_else(no_peer, |p| Arc::clone(&p.identity)),
        peer,
        policy: ArcSwapOption::empty(),
    });
    // A peer proxy gets the proxy's answers in HTTP (its retries read them, and it
    // answers its own gRPC caller); anyone else gets them as gRPC asks.
    let to_caller = conn.peer.is_none();
    let service = service_fn(move |req| {
        let conn = Arc::clone(&conn);
        let grpc = to_caller && hop::is_grpc(req.headers());
        async move { Ok::<_, Infallible>(grpc::for_caller(grpc, conn.handle(req).await)) }
    });
    server::serve(io, protocol, service, shutdown).await;
}

/// What every request of one inbound connection shares.
struct InboundConn {
    /// The caller's address, when known.
    remote: Option<SocketAddr>,
    inputs: Arc<Inputs>,
    app: Arc<Upstream>,
    target: SocketAddr,
    peer: Option<Peer>,
    peer_label: Arc<str>,
    /// The port policy of the state generation last used.
    /// Read without a lock: one HTTP/2 connection from a peer proxy carries many
    /// concurrent requests.
    policy: ArcSwapOption<(u64, Arc<InboundPort>)>,
}

impl InboundConn {
    fn policy(&self) -> Arc<InboundPort> {
        let state = self.inputs.state.load();
        if let Some(cached) = &*self.policy.load() {
            if cached.0 == state.generation() {
                return Arc::clone(&cached.1);
            }
        }
        // A new view (rare): look up once; racing requests may each look up.
        let port = state
            .inbound()
            .port(self.target.port(), &self.inputs.http_metrics);
        self.policy
            .store(Some(Arc::new((state.generation(), Arc::clone(&port)))));
        port
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<ResponseBody> {
        let start = Instant::now();
        let policy = self.policy();
        let (mut parts, body) = req.into_parts();
        let downstream_version = parts.version;
        // The proxy's own headers count only from a verified peer proxy, and only
        // this proxy says who called.
        let orig_proto = match self.peer {
            Some(_) => take_orig_proto(&mut parts.headers),
            None => None,
        };
        let app_version = orig_proto.unwrap_or(parts.version);
        strip_own_headers(&mut parts.headers);
        set_peer_identity(&mut parts.headers, self.peer.as_ref().map(|p| &p.header));
        let route = policy.select(&parts);
        route.metrics.request(&self.peer_label);
        let peer = self.peer.as_ref().map(|p| &*p.identity);
        let mut observer = self.inputs.settings.recorders.server(
            &parts,
            SpanConn {
                peer_addr: self.remote,
                peer_identity: peer,
                server_port: self.target.port(),
            },
        );
        observer.set_route(&route.name);
        observer.set_upstream(self.target, None);
        observer.set_request_bytes(declared_len(&body));
        let done = |observer: RequestObserver, response: Response<ResponseBody>| {
            route.metrics.response(
                &self.peer_label,
                response.status().as_u16(),
                start.elapsed(),
            );
            ResponseBody::observed(observer, response)
        };
        if let Err(bad) = hop::check_head(&parts) {
            return done(observer, bad.response());
        }
        if let Err(denied) = route.authz.check(peer) {
            tracing::info!(port = self.target.port(), route = %route.name, peer = %self.peer_label,
                reason = ?denied, "request refused by authorization");
            let why = match denied {
                Denied::Unauthenticated => "this route needs a verified mesh identity",
                Denied::NotAllowed => "the caller's identity is not allowed on this route",
            };
            return done(observer, HttpError::Forbidden(why).response());
        }
        let checked = token::check(
            &self.inputs,
            &policy,
            route,
            &mut parts.headers,
            Some(&observer),
        );
        if let Err(failure) = checked.await {
            tracing::info!(port = self.target.port(), route = %route.name, peer = %self.peer_label,
                reason = %failure.reason(), "request refused: end-user token");
            route.metrics.action(failure.action());
            return done(observer, failure.response());
        }
        if let Some(limiter) = &route.limiter {
            let key = limiter.key(peer, &parts.headers);
            if let Err(wait) = limiter.check(key, start) {
                route.metrics.rate_limited.inc();
                return done(observer, rate_limited(limiter, &route.name, &wait));
            }
        }
        if upgrade_requested(&parts.method, parts.version, &parts.headers) {
            let response = upgrade::forward(Request::from_parts(parts, body), &self.app).await;
            return done(observer, response.unwrap_or_else(|e| e.response()));
        }
        strip_hop_by_hop(&mut parts.headers);
        let path_and_query = hop::path_and_query(&parts);
        let uri = match hop::upstream_uri(&parts, self.target, path_and_query) {
            Ok(uri) => uri,
            Err(e) => return done(observer, e.response()),
        };
        parts.uri = uri;
        observer.inject(&mut parts.headers);
        let wire = if app_version == Version::HTTP_2 {
            Wire::Http2
        } else {
            Wire::Http1
        };
        parts.version = app_version;
        let body = if body.is_end_stream() {
            RequestBody::Empty
        } else {
            RequestBody::Stream(CallerBody::new(body))
        };
        let response = match self.app.send(wire, Request::from_parts(parts, body)).await {
            Ok(response) => {
                let mut response = response.map(ResponseBody::Upstream);
                strip_hop_by_hop(response.headers_mut());
                // Only this proxy speaks as a proxy: an application's `pillion-error`
                // would be taken for a refusal (and its gRPC form) downstream.
                strip_own_headers(response.headers_mut());
                *response.version_mut() = downstream_version;
                response
            }
            Err(e) => {
                let app = format!("the application on port {}", self.target.port());
                let error = HttpError::from_send(app, &e);
                tracing::debug!(port = self.target.port(), error = %error, "request to the application failed");
                error.response()
            }
        };
        done(observer, response)
    }
}
