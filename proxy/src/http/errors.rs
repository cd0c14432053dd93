//! Answers the proxy gives itself, with a status a client can act on and a one-line
//! reason a person can read: 503 when nothing can serve, 502 when the upstream
//! failed, 504 when it was too slow, 429 for rate limits, 403 for authorization,
//! 401 for end-user tokens, 400 for requests the proxy cannot forward (413, 415
//! and 408 for bodies a route must read whole). Every one carries [`PILLION_ERROR`]
//! with a short code, so callers (and tests) can tell them from the application's.

use std::fmt;

use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};

use super::body::ResponseBody;
use crate::policy::api_key::KeyRefusal;
use crate::policy::fault::Abort;
use crate::policy::jwt::Refusal;
use crate::policy::rate_limit::{RateLimiter, RetryAfter, RATELIMIT, RATELIMIT_POLICY};
use crate::upstream::pool::SendError;

/// A gRPC answer's status, sent as a header in a trailers-only answer.
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// A gRPC answer's message.
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// Marks a response the proxy made, with a short machine-readable reason.
pub(crate) const PILLION_ERROR: HeaderName = HeaderName::from_static("pillion-error");
/// The [`PILLION_ERROR`] of an answer about a failed token introspection.
pub(crate) const INTROSPECTION_FAILED: &str = "introspection-failed";

/// Why the proxy answered instead of the application.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    /// The service has no endpoints (in the chosen backend).
    #[error("no endpoints available for {service}")]
    NoEndpoints {
        /// The service (and subset) that was asked for.
        service: String,
    },
    /// Every endpoint is ejected by outlier detection.
    #[error("every endpoint of {service} is ejected after repeated failures")]
    AllEjected {
        /// The service that was asked for.
        service: String,
    },
    /// No connection to the upstream could be made.
    #[error("cannot connect to {endpoint}: {reason}")]
    Connect {
        /// The endpoint tried last.
        endpoint: String,
        /// Why it failed.
        reason: String,
    },
    /// The upstream broke the request or connection.
    #[error("upstream {endpoint} failed: {reason}")]
    Upstream {
        /// The endpoint tried last.
        endpoint: String,
        /// Why it failed.
        reason: String,
    },
    /// The backend's circuit breaker is full: too many requests in flight to it.
    #[error("{backend} has {max} requests in flight, its circuit breaker's max_requests")]
    Overflow {
        /// The backend.
        backend: String,
        /// Its bound.
        max: u32,
    },
    /// Every connection the endpoint's breaker allows is in use and its queue of
    /// waiting requests is full.
    #[error("{endpoint} has every allowed connection in use and {max} requests waiting, its circuit breaker's max_pending_requests")]
    Pending {
        /// The endpoint.
        endpoint: String,
        /// The bound on waiting requests.
        max: u32,
    },
    /// The route's request timeout passed.
    #[error("request timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The last try's per-try timeout passed.
    #[error("upstream did not answer within the per-try timeout of {0:?}")]
    TryTimeout(std::time::Duration),
    /// The caller may not use this port or route.
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    /// The request cannot be forwarded as it is.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// A request kind the proxy does not carry.
    #[error("not supported: {0}")]
    Unsupported(&'static str),
    /// A gateway serves no such host, or no route of the host matches.
    #[error("not found: {0}")]
    NotFound(&'static str),
    /// The host is not one the connection's certificate covers (RFC 9110 §15.5.20).
    #[error("misdirected: {0}")]
    Misdirected(&'static str),
    /// A body the route must read whole is larger than its bound.
    #[error("the request body is larger than the route's {0} bytes")]
    TooLarge(u64),
    /// The caller's body is not in the format the route's transform reads.
    #[error("unsupported media type: {0}")]
    MediaType(String),
    /// The caller's body could not be read or rewritten.
    #[error("bad request body: {0}")]
    BadBody(String),
    /// The caller did not send its body within the route's timeout.
    #[error("the request body did not arrive within {0:?}")]
    BodyTimeout(std::time::Duration),
    /// A part of an aggregation failed, and the route fails with it.
    #[error("part {0}")]
    PartFailed(String),
    /// A part of an aggregation did not answer in time, and the route fails with it.
    #[error("part {0}")]
    PartTimeout(String),
    /// A method the route does not serve.
    #[error("method not allowed: {0}")]
    Method(&'static str),
    /// The upstream's answer could not be read or rewritten.
    #[error("the upstream's answer cannot be transformed: {0}")]
    BadAnswer(String),
    /// The token introspection endpoint gave no usable answer, so the request's
    /// token cannot be judged: 503 (unreachable), 504 (too slow) or 502 (a failure
    /// or an answer that is not one).
    #[error("token introspection failed: {reason}")]
    Introspection {
        /// The status the caller gets.
        status: StatusCode,
        /// Why.
        reason: String,
    },
}

impl HttpError {
    /// A failed send to `endpoint`, as either direction answers it: 502 whether the
    /// connection was never made or the exchange broke, with the whole cause chain
    /// (503 when the endpoint's connection bound refused it).
    pub(crate) fn from_send(endpoint: String, e: &SendError) -> Self {
        if let SendError::Overflow { max, .. } = e {
            return HttpError::Pending {
                endpoint,
                max: *max,
            };
        }
        let reason = pillion_api::error::chain(e);
        if e.is_connect() {
            HttpError::Connect { endpoint, reason }
        } else {
            HttpError::Upstream { endpoint, reason }
        }
    }

    /// The status returned for the error.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            HttpError::NoEndpoints { .. }
            | HttpError::AllEjected { .. }
            | HttpError::Overflow { .. }
            | HttpError::Pending { .. } => StatusCode::SERVICE_UNAVAILABLE,
            HttpError::Connect { .. } | HttpError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            HttpError::Timeout(_) | HttpError::TryTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            HttpError::Forbidden(_) => StatusCode::FORBIDDEN,
            HttpError::BadRequest(_) => StatusCode::BAD_REQUEST,
            HttpError::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
            HttpError::NotFound(_) => StatusCode::NOT_FOUND,
            HttpError::Misdirected(_) => StatusCode::MISDIRECTED_REQUEST,
            HttpError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            HttpError::MediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            HttpError::BadBody(_) => StatusCode::BAD_REQUEST,
            HttpError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            HttpError::BadAnswer(_) | HttpError::PartFailed(_) => StatusCode::BAD_GATEWAY,
            HttpError::PartTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            HttpError::Method(_) => StatusCode::METHOD_NOT_ALLOWED,
            HttpError::Introspection { status, .. } => *status,
        }
    }

    /// The value of [`PILLION_ERROR`].
    pub(crate) fn code(&self) -> &'static str {
        match self {
            HttpError::NoEndpoints { .. } => "no-endpoints",
            HttpError::AllEjected { .. } => "all-ejected",
            HttpError::Overflow { .. } | HttpError::Pending { .. } => "overflow",
            HttpError::Connect { .. } => "connect-failed",
            HttpError::Upstream { .. } => "upstream-failed",
            HttpError::Timeout(_) => "timeout",
            HttpError::TryTimeout(_) => "per-try-timeout",
            HttpError::Forbidden(_) => "forbidden",
            HttpError::BadRequest(_) => "bad-request",
            HttpError::Unsupported(_) => "unsupported",
            HttpError::NotFound(_) => "not-found",
            HttpError::Misdirected(_) => "misdirected",
            HttpError::TooLarge(_) => "body-too-large",
            HttpError::MediaType(_) => "unsupported-media-type",
            HttpError::BadBody(_) => "bad-body",
            HttpError::BodyTimeout(_) => "body-timeout",
            HttpError::BadAnswer(_) => "bad-upstream-body",
            HttpError::PartFailed(_) => "part-failed",
            HttpError::PartTimeout(_) => "part-timeout",
            HttpError::Method(_) => "method-not-allowed",
            HttpError::Introspection { .. } => INTROSPECTION_FAILED,
        }
    }

    /// The response: status, [`PILLION_ERROR`], and `pillion: <reason>` as text.
    pub(crate) fn response(&self) -> Response<ResponseBody> {
        local_response(self.status(), self.code(), self)
    }
}

/// The text of an answer the proxy made (`pillion: <reason>`), kept beside its
/// body for a gRPC caller, who gets it as `grpc-message` instead.
#[derive(Debug, Clone)]
pub(crate) struct LocalReason(pub bytes::Bytes);

/// A short text response made by the proxy.
pub(crate) fn local_response(
    status: StatusCode,
    code: &'static str,
    reason: &dyn fmt::Display,
) -> Response<ResponseBody> {
    let text = bytes::Bytes::from(format!("pillion: {reason}\n"));
    let mut response = Response::new(ResponseBody::local(text.clone()));
    *response.status_mut() = status;
    response.extensions_mut().insert(LocalReason(text));
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(PILLION_ERROR, HeaderValue::from_static(code));
    response
}

/// The answer to a request whose end user's token does not do (RFC 6750 §3): 401,
/// 400 or 403 with `WWW-Authenticate: Bearer` and its error code and reason.
pub(crate) fn unauthenticated(refusal: Refusal) -> Response<ResponseBody> {
    let code = match refusal {
        Refusal::Missing => "unauthenticated",
        Refusal::Invalid(_) => "invalid-token",
        Refusal::Malformed(_) => "bad-request",
        Refusal::Insufficient => "forbidden",
    };
    let mut response = local_response(refusal.status(), code, &refusal.reason());
    let challenge = match refusal.error_code() {
        None => String::from("Bearer realm=\"pillion\""),
        Some(error) => format!(
            "Bearer realm=\"pillion\", error=\"{error}\", error_description=\"{}\"",
            refusal.reason()
        ),
    };
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response.headers_mut().insert(WWW_AUTHENTICATE, value);
    }
    response
}

/// The answer of an injected abort: the HTTP status as a proxy answer, or, to a gRPC
/// request with a gRPC status set, a trailers-only gRPC answer (`200`,
/// `grpc-status`, `grpc-message`) as a gRPC server would send it.
pub(crate) fn fault_response(abort: Abort, grpc_request: bool) -> Response<ResponseBody> {
    const CODE: &str = "fault-injected";
    match abort.grpc {
        Some(grpc) if grpc_request => {
            let mut response = Response::new(ResponseBody::local(String::new()));
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            headers.insert(GRPC_STATUS, HeaderValue::from(grpc));
            headers.insert(
                GRPC_MESSAGE,
                HeaderValue::from_static("fault injected by pillion"),
            );
            headers.insert(PILLION_ERROR, HeaderValue::from_static(CODE));
            response
        }
        _ => local_response(abort.http, CODE, &"fault injected by the route's policy"),
    }
}

/// The answer to a request an API key does not let through: 401 without a known
/// key (`WWW-Authenticate: ApiKey header="…"`), 429 over the plan's rate (as any
/// rate limit) or quota (`RateLimit` with the seconds to the period's end).
pub(crate) fn api_key_refused(
    refusal: KeyRefusal<'_>,
    header: &HeaderName,
) -> Response<ResponseBody> {
    let challenge = |response: &mut Response<ResponseBody>| {
        if let Ok(v) = HeaderValue::from_str(&format!("ApiKey header=\"{header}\"")) {
            response.headers_mut().insert(WWW_AUTHENTICATE, v);
        }
    };
    match refusal {
        KeyRefusal::Missing => {
            let mut r = local_response(
                StatusCode::UNAUTHORIZED,
                "missing-api-key",
                &"this host needs an API key",
            );
            challenge(&mut r);
            r
        }
        KeyRefusal::Unknown => {
            let mut r = local_response(
                StatusCode::UNAUTHORIZED,
                "invalid-api-key",
                &"the API key is not valid here",
            );
            challenge(&mut r);
            r
        }
        KeyRefusal::RateLimited(plan, limiter, wait) => rate_limited(limiter, &plan.name, &wait),
        KeyRefusal::OverQuota(plan, quota, left) => {
            let reason = format_args!(
                "the quota of plan {} ({} requests) is spent; it starts again in {left}s",
                plan.name, quota.requests
            );
            let mut r = local_response(StatusCode::TOO_MANY_REQUESTS, "over-quota", &reason);
            let name = format!("\"{}-quota\"", plan.name);
            let window = crate::policy::api_key::window_seconds(quota.per);
            let headers = r.headers_mut();
            headers.insert(RETRY_AFTER, HeaderValue::from(left.max(1)));
            for (field, value) in [
                (
                    RATELIMIT_POLICY,
                    format!("{name};q={};w={window}", quota.requests),
                ),
                (RATELIMIT, format!("{name};r=0;t={left}")),
            ] {
                if let Ok(v) = HeaderValue::from_str(&value) {
                    headers.insert(field, v);
                }
            }
            r
        }
    }
}

/// The 429 of a rate limit: `Retry-After`, `RateLimit-Policy` and `RateLimit`.
pub(crate) fn rate_limited(
    limiter: &RateLimiter,
    route: &str,
    wait: &RetryAfter,
) -> Response<ResponseBody> {
    let reason = format_args!(
        "rate limit of route {route} exceeded; retry after {}s",
        wait.seconds()
    );
    let mut response = local_response(StatusCode::TOO_MANY_REQUESTS, "rate-limited", &reason);
    let headers = response.headers_mut();
    headers.insert(RETRY_AFTER, wait.header_value());
    headers.insert(RATELIMIT_POLICY, limiter.policy_header().clone());
    headers.insert(RATELIMIT, limiter.refused_header(wait));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn errors_read_well() {
        let e = HttpError::NoEndpoints {
            service: "demo/echo:8080".into(),
        };
        let r = e.response();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()[PILLION_ERROR], "no-endpoints");
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            &body[..],
            b"pillion: no endpoints available for demo/echo:8080\n"
        );
        assert_eq!(
            HttpError::Timeout(std::time::Duration::from_millis(250)).status(),
            504
        );
        assert_eq!(
            HttpError::Connect {
                endpoint: "198.18.0.3:80".into(),
                reason: "refused".into()
            }
            .status(),
            502
        );
    }

    #[test]
    fn a_failed_send_says_each_cause_once() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let addr: std::net::SocketAddr = ([198, 18, 0, 3], 80).into();
        let tcp = crate::transport::connect::ConnectError::Io {
            addr,
            source: refused,
        };
        let e = SendError::Connect(tcp.into());
        let error = HttpError::from_send("the application on port 80".into(), &e);
        assert_eq!(error.status(), 502);
        assert_eq!(
            error.to_string(),
            "cannot connect to the application on port 80: \
             connecting to 198.18.0.3:80 failed: connection refused"
        );
    }
}
