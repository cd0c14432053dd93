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

use http::header::{
    HeaderMap, HeaderName, HeaderValue, COOKIE, FORWARDED, HOST, STRICT_TRANSPORT_SECURITY,
};
use http::request::Parts;
use http::{Method, Request, Response, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use pillion_identity::server_cert::ServerCert;
use tokio::io::{AsyncRead, AsyncWrite};

use super::host::request_host;
use crate::app::inputs::Inputs;
use crate::detect::Protocol;
use crate::http::body::ResponseBody;
use crate::http::errors::{api_key_refused, rate_limited, HttpError};
use crate::http::hop::{self, strip_own_headers};
use crate::http::{grpc, server};
use crate::inbound::token;
use crate::outbound::http::OutboundConn;
use crate::policy::api_key::KeyRefusal;
use crate::state::gateway::HostKeys;
use crate::state::outbound::Target;
use crate::telemetry::metrics::http::no_peer;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

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
    // HTTP/2 may split cookies into fields of their own; HTTP/1.1 has one (RFC 9113
    // §8.2.3), and many servers read only the first.
    if parts.headers.get_all(COOKIE).iter().nth(1).is_some() {
        let joined: Vec<&[u8]> = (parts.headers.get_all(COOKIE).iter())
            .map(HeaderValue::as_bytes)
            .collect();
        if let Ok(value) = HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
            parts.headers.insert(COOKIE, value);
        }
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

/// Serves one decrypted connection from `client` that arrived at gateway listener
/// `local`, whose handshake presented `cert` (requests must be for hosts it covers;
/// `None`: the certificate is gone since, and every request is misdirected).
pub(crate) async fn serve<IO>(
    inputs: Arc<Inputs>,
    io: IO,
    protocol: Protocol,
    (client, local): (SocketAddr, SocketAddr),
    cert: Option<Arc<ServerCert>>,
    hsts: Option<HeaderValue>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shutdown = inputs.shutdown();
    let address = client.ip().to_canonical().to_string();
    let conn = Arc::new(GatewayConn {
        outbound: OutboundConn::new(Arc::clone(&inputs), local),
        inputs,
        cert,
        hsts,
        forwarded_for: HeaderValue::from_str(&address).ok(),
        client: Arc::from(address.as_str()),
        no_peer: no_peer(),
    });
    let service = service_fn(move |req| {
        let conn = Arc::clone(&conn);
        let grpc = hop::is_grpc(req.headers());
        async move {
            let mut response = grpc::for_caller(grpc, conn.handle(req).await);
            if let Some(hsts) = &conn.hsts {
                (response.headers_mut().entry(STRICT_TRANSPORT_SECURITY))
                    .or_insert_with(|| hsts.clone());
            }
            Ok::<_, Infallible>(response)
        }
    });
    server::serve(io, protocol, service, shutdown).await;
}

/// What every request of one gateway connection shares.
struct GatewayConn {
    inputs: Arc<Inputs>,
    outbound: OutboundConn,
    cert: Option<Arc<ServerCert>>,
    /// `Strict-Transport-Security` for answers without one.
    hsts: Option<HeaderValue>,
    /// The visitor's address: the key of limits by `client_identity` at the edge.
    client: Arc<str>,
    /// The same, as the `X-Forwarded-For` the application gets.
    forwarded_for: Option<HeaderValue>,
    no_peer: Arc<str>,
}

impl GatewayConn {
    /// What the visitor wrote about proxies before this one is not believed: the
    /// forwarding headers are replaced by the gateway's own account (RFC 7239's
    /// `Forwarded` and the `X-Forwarded-*` family), so a limit or a log keyed on them
    /// sees the real address.
    fn forwarding_headers(&self, headers: &mut HeaderMap) {
        for name in [
            FORWARDED,
            X_FORWARDED_FOR,
            X_FORWARDED_PROTO,
            X_FORWARDED_HOST,
            X_REAL_IP,
        ] {
            headers.remove(name);
        }
        if let Some(value) = &self.forwarded_for {
            headers.insert(X_FORWARDED_FOR, value.clone());
        }
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<ResponseBody> {
        let start = Instant::now();
        let (mut parts, body) = req.into_parts();
        if let Err(bad) = hop::check_head(&parts) {
            return bad.response();
        }
        if parts.method == Method::CONNECT {
            return HttpError::Unsupported("CONNECT is not served at the edge").response();
        }
        let (target, policy) = {
            let host = match request_host(&parts) {
                Ok(host) => host,
                Err(bad) => return bad.response(),
            };
            if !self.cert.as_ref().is_some_and(|c| c.covers(&host)) {
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
            (target, Arc::clone(&found.policy))
        };
        strip_own_headers(&mut parts.headers);
        self.forwarding_headers(&mut parts.headers);
        let route = policy.select(&parts);
        route.metrics.request(&self.no_peer);
        let refuse = |response: Response<ResponseBody>| {
            route
                .metrics
                .response(&self.no_peer, response.status().as_u16(), start.elapsed());
            response
        };
        let checked = token::check(&self.inputs, &policy, route, &mut parts.headers, None);
        if let Err(failure) = checked.await {
            tracing::info!(route = %route.name, reason = %failure.reason(),
                "gateway request refused: end-user token");
            route.metrics.action(failure.action());
            return refuse(failure.response());
        }
        if let Some(limiter) = &route.limiter {
            let key = limiter.key(Some(&self.client), &parts.headers);
            if let Err(wait) = limiter.check(key, start) {
                route.metrics.rate_limited.inc();
                return refuse(rate_limited(limiter, &route.name, &wait));
            }
        }
        let downstream = parts.version;
        toward_the_application(&mut parts);
        let request = Request::from_parts(parts, body);
        let visitor = Some(Arc::clone(&self.client));
        let mut response = (self.outbound)
            .to_target(request, target, visitor, start)
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
        let mut split = parts(Version::HTTP_2, None);
        split
            .headers
            .append(COOKIE, HeaderValue::from_static("a=1"));
        split
            .headers
            .append(COOKIE, HeaderValue::from_static("b=2"));
        toward_the_application(&mut split);
        let cookies: Vec<_> = split.headers.get_all(COOKIE).iter().collect();
        assert_eq!(cookies, ["a=1; b=2"], "one cookie field in HTTP/1.1");
        let mut h1 = parts(Version::HTTP_11, None);
        toward_the_application(&mut h1);
        assert_eq!(h1.version, Version::HTTP_11);
        assert!(!h1.headers.contains_key(HOST), "left as the client sent it");
    }
}
