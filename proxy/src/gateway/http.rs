//! The gateway's HTTP path: one request from outside the mesh.
//!
//! Per request: the head is checked as everywhere ([`crate::http::hop::check_head`]);
//! the host is read once ([`super::host`]); a host the connection's certificate does
//! not cover is misdirected (421: a client reusing one TLS connection for another
//! host must not be served under the wrong name); a host the view does not serve is
//! 404. The proxy's own headers are removed (nobody outside is a verified peer), the
//! host's end-user policy applies as an inbound port's does (token: 401; claims:
//! 403; server rate limit: 429), and the request takes the outbound path
//! ([`crate::outbound::http::OutboundConn::to_target`]) with the host's routes: a
//! path no route matches is 404, never sent anywhere.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::header::{HeaderValue, HOST};
use http::request::Parts;
use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use pillion_identity::server_cert::ServerCert;
use tokio::io::{AsyncRead, AsyncWrite};

use super::host::request_host;
use crate::app::inputs::Inputs;
use crate::detect::Protocol;
use crate::http::body::ResponseBody;
use crate::http::errors::{api_key_refused, rate_limited, unauthenticated, HttpError};
use crate::http::hop::{self, strip_own_headers};
use crate::http::server;
use crate::inbound::http::authenticate;
use crate::outbound::http::OutboundConn;
use crate::policy::api_key::KeyRefusal;
use crate::state::gateway::HostKeys;
use crate::state::outbound::Target;
use crate::telemetry::metrics::http::{no_peer, Action};

/// The host's API key check ([`crate::policy::api_key::KeyTable::admit`]): the
/// answer when the request may not go on, `None` when it may.
fn refused_by_key(
    keys: &HostKeys,
    headers: &mut http::HeaderMap,
    start: Instant,
) -> Option<Response<ResponseBody>> {
    let table = match keys {
        HostKeys::Off => return None,
        HostKeys::Unusable => {
            return Some(HttpError::Forbidden("this host's API keys are unusable").response())
        }
        HostKeys::On(table) => table,
    };
    match table.admit(headers, start, SystemTime::now()) {
        Ok(_) => None,
        Err(refusal) => {
            tracing::info!(
                reason = refusal_kind(&refusal),
                "gateway request refused: API key"
            );
            Some(api_key_refused(refusal, table.header()))
        }
    }
}

/// A refusal's kind for the log (never the key).
fn refusal_kind(refusal: &KeyRefusal<'_>) -> &'static str {
    match refusal {
        KeyRefusal::Missing => "missing",
        KeyRefusal::Unknown => "unknown",
        KeyRefusal::RateLimited(..) => "rate-limited",
        KeyRefusal::OverQuota(..) => "over-quota",
    }
}

/// The version the application is asked in: HTTP/1.1, which every HTTP server
/// speaks, whatever the visitor negotiated with the gateway; gRPC stays HTTP/2, the
/// only version it runs on. A request made HTTP/1.1 gets the `Host` its authority
/// names.
fn toward_the_application(parts: &mut Parts) {
    if parts.version != Version::HTTP_2 || hop::is_grpc(&parts.headers) {
        return;
    }
    if !parts.headers.contains_key(HOST) {
        if let Some(Ok(host)) = parts
            .uri
            .authority()
            .map(|a| HeaderValue::from_str(a.as_str()))
        {
            parts.headers.insert(HOST, host);
        }
    }
    parts.version = Version::HTTP_11;
}

/// Serves one decrypted connection that arrived at gateway listener `local`,
/// whose handshake presented `cert` (requests must be for hosts it covers).
pub(crate) async fn serve<IO>(
    inputs: Arc<Inputs>,
    io: IO,
    protocol: Protocol,
    local: SocketAddr,
    cert: Option<ServerCert>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shutdown = inputs.shutdown();
    let conn = Arc::new(GatewayConn {
        outbound: OutboundConn::new(Arc::clone(&inputs), local),
        inputs,
        cert,
        no_peer: no_peer(),
    });
    let service = service_fn(move |req| {
        let conn = Arc::clone(&conn);
        async move { Ok::<_, Infallible>(conn.handle(req).await) }
    });
    server::serve(io, protocol, service, shutdown).await;
}

/// What every request of one gateway connection shares.
struct GatewayConn {
    inputs: Arc<Inputs>,
    outbound: OutboundConn,
    cert: Option<ServerCert>,
    no_peer: Arc<str>,
}

impl GatewayConn {
    async fn handle(&self, req: Request<Incoming>) -> Response<ResponseBody> {
        let start = Instant::now();
        let (mut parts, body) = req.into_parts();
        if let Err(bad) = hop::check_head(&parts) {
            return bad.response();
        }
        let (target, policy, identity) = {
            let host = match request_host(&parts) {
                Ok(host) => host,
                Err(bad) => return bad.response(),
            };
            if self.cert.as_ref().is_some_and(|c| !c.covers(&host)) {
                tracing::debug!(%host, "request for a host the connection's certificate does not cover");
                return HttpError::Misdirected(
                    "this connection's certificate does not cover the host",
                )
                .response();
            }
            let state = self.inputs.state.load();
            let Some(found) = state.gateway().host(&host) else {
                tracing::debug!(%host, "request for a host the gateway does not serve");
                return HttpError::NotFound("the gateway serves no such host").response();
            };
            let target = Target {
                port: Arc::clone(&found.routes),
                pinned: None,
            };
            if let Some(refused) = refused_by_key(&found.api_keys, &mut parts.headers, start) {
                return refused;
            }
            (target, Arc::clone(&found.policy), state.identity().cloned())
        };
        strip_own_headers(&mut parts.headers);
        let route = policy.select(&parts);
        route.metrics.request(&self.no_peer);
        let refuse = |response: Response<ResponseBody>| {
            route
                .metrics
                .response(&self.no_peer, response.status().as_u16(), start.elapsed());
            response
        };
        if let Err(refusal) = authenticate(&policy.jwt, route, &mut parts.headers) {
            tracing::info!(route = %route.name, reason = refusal.reason(),
                "gateway request refused: end-user token");
            route.metrics.action(Action::TokenRefused);
            return refuse(unauthenticated(refusal));
        }
        if let Some(limiter) = &route.limiter {
            let key = limiter.key(None, &parts.headers);
            if let Err(wait) = limiter.check(key, start) {
                route.metrics.rate_limited.inc();
                return refuse(rate_limited(limiter, &route.name, &wait));
            }
        }
        let downstream = parts.version;
        toward_the_application(&mut parts);
        let request = Request::from_parts(parts, body);
        let mut response = (self.outbound)
            .to_target(request, target, identity, start)
            .await;
        *response.version_mut() = downstream;
        route
            .metrics
            .response(&self.no_peer, response.status().as_u16(), start.elapsed());
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(version: Version, content_type: Option<&str>) -> Parts {
        let mut b = Request::builder()
            .uri("https://shop.test:8443/x")
            .version(version);
        if let Some(ct) = content_type {
            b = b.header(http::header::CONTENT_TYPE, ct);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn applications_are_asked_in_http1_unless_the_request_is_grpc() {
        let mut h2 = parts(Version::HTTP_2, Some("text/plain"));
        toward_the_application(&mut h2);
        assert_eq!(h2.version, Version::HTTP_11);
        assert_eq!(h2.headers[HOST], "shop.test:8443");
        let mut grpc = parts(Version::HTTP_2, Some("application/grpc+proto"));
        toward_the_application(&mut grpc);
        assert_eq!(grpc.version, Version::HTTP_2);
        let mut h1 = parts(Version::HTTP_11, None);
        toward_the_application(&mut h1);
        assert_eq!(h1.version, Version::HTTP_11);
        assert!(!h1.headers.contains_key(HOST), "left as the client sent it");
    }
}
