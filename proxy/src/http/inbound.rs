//! The inbound HTTP path: requests from elsewhere to the local application.
//!
//! Per request: the caller's claimed identity header is removed and the verified one
//! (from mesh TLS) set; the port's or route's allow list decides (403 otherwise); the
//! route's server-side rate limit applies (429); the request goes to the application
//! on loopback as the version the original client spoke (`pillion-orig-proto`, which
//! is removed), over connections pooled per application port.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwapOption;
use std::time::Instant;

use http::header::{HeaderValue, HOST};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use hyper::body::{Body as _, Incoming};
use hyper::service::service_fn;
use tokio::io::{AsyncRead, AsyncWrite};

use super::body::{RequestBody, ResponseBody};
use super::connect::UpstreamConnector;
use super::errors::{rate_limited, HttpError};
use super::hop::{strip_hop_by_hop, take_orig_proto, upgrade_requested};
use super::inbound_table::InboundPort;
use super::metrics::no_peer;
use super::outbound::declared_len;
use super::tables::HttpTables;
use super::upstream::{Upstream, Wire};
use super::{server, upgrade};
use crate::detect::Protocol;
use crate::policy::authz::{peer_identity_value, set_peer_identity, Denied};
use crate::telemetry::span::Inbound as SpanConn;
use crate::telemetry::RequestObserver;

/// The inbound HTTP layer: tables plus the application's connection pools, shared by
/// every inbound connection.
#[derive(Debug)]
pub struct InboundHttp {
    tables: Arc<HttpTables>,
    apps: Mutex<HashMap<SocketAddr, Arc<Upstream>>>,
}

/// The verified caller of one connection.
#[derive(Debug, Clone)]
pub struct Peer {
    identity: Arc<str>,
    header: HeaderValue,
}

impl Peer {
    /// A caller whose mesh TLS certificate proved `identity`; `None` when the
    /// identity cannot travel in a header (then the caller counts as unauthenticated).
    pub fn verified(identity: &str) -> Option<Peer> {
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

impl InboundHttp {
    /// The inbound layer over `tables`.
    pub fn new(tables: Arc<HttpTables>) -> Arc<InboundHttp> {
        Arc::new(InboundHttp {
            tables,
            apps: Mutex::new(HashMap::new()),
        })
    }

    /// The pools towards the application at `target` (loopback and its port).
    fn app(&self, target: SocketAddr) -> Arc<Upstream> {
        let mut apps = self.apps.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(apps.entry(target).or_insert_with(|| {
            Arc::new(Upstream::new(UpstreamConnector::new(
                target,
                None,
                self.tables.settings().connect_timeout,
            )))
        }))
    }

    /// Serves one HTTP connection towards the application at `target` from a caller
    /// (`peer` when it proved an identity) until it closes or `shutdown` resolves.
    pub async fn serve<IO, F>(
        self: &Arc<Self>,
        io: IO,
        protocol: Protocol,
        target: SocketAddr,
        peer: Option<Peer>,
        shutdown: F,
    ) where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        F: Future<Output = ()>,
    {
        self.serve_from(io, protocol, target, peer, None, shutdown)
            .await;
    }

    /// [`InboundHttp::serve`] for a caller at `remote` (its address goes into spans).
    pub async fn serve_from<IO, F>(
        self: &Arc<Self>,
        io: IO,
        protocol: Protocol,
        target: SocketAddr,
        peer: Option<Peer>,
        remote: Option<SocketAddr>,
        shutdown: F,
    ) where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        F: Future<Output = ()>,
    {
        let conn = Arc::new(InboundConn {
            remote,
            tables: Arc::clone(&self.tables),
            app: self.app(target),
            target,
            peer_label: peer
                .as_ref()
                .map_or_else(no_peer, |p| Arc::clone(&p.identity)),
            peer,
            policy: ArcSwapOption::empty(),
        });
        let service = service_fn(move |req| {
            let conn = Arc::clone(&conn);
            async move { Ok::<_, Infallible>(conn.handle(req).await) }
        });
        server::serve(io, protocol, service, shutdown).await;
    }
}

/// What every request of one inbound connection shares.
struct InboundConn {
    /// The caller's address, when known.
    remote: Option<SocketAddr>,
    tables: Arc<HttpTables>,
    app: Arc<Upstream>,
    target: SocketAddr,
    peer: Option<Peer>,
    peer_label: Arc<str>,
    /// The port policy of the view version last used.
    /// Read without a lock: one HTTP/2 connection from a peer proxy carries many
    /// concurrent requests.
    policy: ArcSwapOption<(Option<u64>, Arc<InboundPort>)>,
}

impl InboundConn {
    fn policy(&self) -> Arc<InboundPort> {
        let table = self.tables.inbound();
        if let Some(cached) = &*self.policy.load() {
            if cached.0 == table.version() {
                return Arc::clone(&cached.1);
            }
        }
        // A new view (rare): build once; racing requests may each build one.
        let port = table.port(self.target.port(), self.tables.metrics());
        self.policy
            .store(Some(Arc::new((table.version(), Arc::clone(&port)))));
        port
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<ResponseBody> {
        let start = Instant::now();
        let policy = self.policy();
        let (mut parts, body) = req.into_parts();
        let downstream_version = parts.version;
        // Only this proxy says who called, and only from mesh TLS.
        set_peer_identity(&mut parts.headers, self.peer.as_ref().map(|p| &p.header));
        let app_version = take_orig_proto(&mut parts.headers).unwrap_or(parts.version);
        let route = policy.select(&parts);
        route.metrics.request(&self.peer_label);
        let peer = self.peer.as_ref().map(|p| &*p.identity);
        let mut observer = self.tables.settings().recorders.server(
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
        if let Err(denied) = route.authz.check(peer) {
            tracing::info!(port = self.target.port(), route = %route.name, peer = %self.peer_label,
                reason = ?denied, "request refused by authorization");
            let why = match denied {
                Denied::Unauthenticated => "this route needs a verified mesh identity",
                Denied::NotAllowed => "the caller's identity is not allowed on this route",
            };
            return done(observer, HttpError::Forbidden(why).response());
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
        let authority = match parts.uri.authority().cloned() {
            Some(a) => Some(a),
            None => parts
                .headers
                .get(HOST)
                .and_then(|h| Authority::try_from(h.as_bytes()).ok()),
        };
        let authority = match authority {
            Some(a) => a,
            None => match Authority::try_from(self.target.to_string()) {
                Ok(a) => a,
                Err(_) => return done(observer, HttpError::BadRequest("no authority").response()),
            },
        };
        let path_and_query = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(authority)
            .path_and_query(path_and_query)
            .build();
        let Ok(uri) = uri else {
            return done(
                observer,
                HttpError::BadRequest("the request target is not valid").response(),
            );
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
            RequestBody::Stream(body)
        };
        let response = match self.app.send(wire, Request::from_parts(parts, body)).await {
            Ok(response) => {
                let mut response = response.map(ResponseBody::Upstream);
                strip_hop_by_hop(response.headers_mut());
                *response.version_mut() = downstream_version;
                response
            }
            Err(e) => {
                let error = if e.is_connect() {
                    HttpError::Connect {
                        endpoint: format!("the application on port {}", self.target.port()),
                        reason: std::error::Error::source(&e)
                            .map_or_else(|| e.to_string(), |s| s.to_string()),
                    }
                } else {
                    HttpError::Upstream {
                        endpoint: format!("the application on port {}", self.target.port()),
                        reason: e.to_string(),
                    }
                };
                tracing::debug!(port = self.target.port(), error = %error, "request to the application failed");
                error.response()
            }
        };
        done(observer, response)
    }
}
