//! The proxy's own answers to gRPC callers. A gRPC client takes its status from
//! `grpc-status`, not from HTTP, and reads any body as length-prefixed frames, so
//! an HTTP `401` with a text body reaches it as `INTERNAL` ("invalid compression
//! flag"). Where an answer leaves the mesh towards a gRPC caller (the application,
//! through the outbound proxy; a caller without a sidecar, at the inbound proxy; a
//! visitor, at the gateway) every answer the proxy made ([`PILLION_ERROR`], not
//! `200`) is sent trailers-only instead: `200`, `application/grpc`, the status as
//! [`grpc_code`] maps it, the reason as `grpc-message`, and the other fields
//! (`pillion-error`, `WWW-Authenticate`, `Retry-After`, `RateLimit`) as they were.
//! Metrics and logs keep the HTTP status the proxy decided. Between two proxies the
//! answer stays HTTP, so the calling proxy's retries still see what happened.

use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderName, HeaderValue, Response, StatusCode};

use super::body::ResponseBody;
use super::errors::{LocalReason, PILLION_ERROR};

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// The gRPC status of an answer the proxy made with `status`: gRPC's HTTP mapping
/// (401 `UNAUTHENTICATED`, 403 `PERMISSION_DENIED`, 404 `UNIMPLEMENTED`, 502 and
/// 503 `UNAVAILABLE`), made exact where the proxy knows more: a limit or quota is
/// `RESOURCE_EXHAUSTED`, a timeout `DEADLINE_EXCEEDED`, a request it cannot carry
/// `INVALID_ARGUMENT` or `UNIMPLEMENTED`.
pub(crate) fn grpc_code(status: StatusCode) -> u16 {
    match status.as_u16() {
        400 | 414 | 431 => 3,  // INVALID_ARGUMENT
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        404 | 405 | 501 => 12, // UNIMPLEMENTED
        408 | 504 => 4,        // DEADLINE_EXCEEDED
        413 | 429 => 8,        // RESOURCE_EXHAUSTED
        415 => 3,              // INVALID_ARGUMENT
        421 | 502 | 503 => 14, // UNAVAILABLE
        _ => 2,                // UNKNOWN
    }
}

/// `response` as a gRPC caller must get it (see the module docs); unchanged
/// unless the request was gRPC and the proxy made the answer.
pub(crate) fn for_caller(
    grpc: bool,
    mut response: Response<ResponseBody>,
) -> Response<ResponseBody> {
    let status = response.status();
    if !grpc || status == StatusCode::OK || !response.headers().contains_key(PILLION_ERROR) {
        return response;
    }
    let message = match response.extensions().get::<LocalReason>() {
        Some(LocalReason(text)) => percent_encode(String::from_utf8_lossy(text).trim_end()),
        // Another proxy's answer: its code says what happened.
        None => {
            let code = response.headers().get(PILLION_ERROR);
            let code = code.and_then(|v| v.to_str().ok()).unwrap_or("error");
            percent_encode(&format!("pillion: {code}"))
        }
    };
    *response.status_mut() = StatusCode::OK;
    response.body_mut().empty();
    let headers = response.headers_mut();
    headers.remove(CONTENT_LENGTH);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(GRPC_STATUS, HeaderValue::from(grpc_code(status)));
    if let Ok(value) = HeaderValue::from_str(&message) {
        headers.insert(GRPC_MESSAGE, value);
    }
    response
}

/// `grpc-message`'s encoding: printable ASCII but `%` as it is, the rest `%XX`.
fn percent_encode(text: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::errors::{unauthenticated, HttpError};
    use crate::policy::jwt::Refusal;
    use http_body_util::BodyExt;

    async fn body(response: Response<ResponseBody>) -> bytes::Bytes {
        response.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn the_proxys_answers_to_grpc_callers_are_trailers_only() {
        let refused = for_caller(true, unauthenticated(Refusal::Missing));
        assert_eq!(refused.status(), StatusCode::OK);
        let h = refused.headers();
        assert_eq!(h[CONTENT_TYPE], "application/grpc");
        assert_eq!(h[GRPC_STATUS], "16");
        assert_eq!(h[GRPC_MESSAGE], "pillion: this route needs a bearer token");
        // What the proxy said in HTTP is still there.
        assert_eq!(h[PILLION_ERROR], "unauthenticated");
        assert!(h.contains_key(http::header::WWW_AUTHENTICATE));
        assert!(!h.contains_key(CONTENT_LENGTH));
        assert!(body(refused).await.is_empty());

        let cases = [
            (HttpError::Forbidden("no"), "7"),
            (HttpError::NotFound("no route"), "12"),
            (HttpError::Timeout(std::time::Duration::from_secs(1)), "4"),
            (
                HttpError::NoEndpoints {
                    service: "a/b".into(),
                },
                "14",
            ),
            (HttpError::TooLarge(1), "8"),
            (HttpError::BadRequest("x"), "3"),
        ];
        for (error, code) in cases {
            let answer = for_caller(true, error.response());
            assert_eq!(answer.headers()[GRPC_STATUS], code, "{error}");
        }
        // Non-ASCII and `%` in a reason are percent-encoded.
        assert_eq!(percent_encode("100% café\n"), "100%25 caf%C3%A9%0A");
    }

    #[tokio::test]
    async fn other_answers_pass_as_they_are() {
        // Not gRPC: the HTTP answer.
        let plain = for_caller(false, HttpError::Forbidden("no").response());
        assert_eq!(plain.status(), StatusCode::FORBIDDEN);
        assert!(!body(plain).await.is_empty());
        // The application's own answer (no pillion-error): not the proxy's to change.
        let mut app = Response::new(ResponseBody::local("app"));
        *app.status_mut() = StatusCode::NOT_FOUND;
        let app = for_caller(true, app);
        assert_eq!(app.status(), StatusCode::NOT_FOUND);
        assert!(!app.headers().contains_key(GRPC_STATUS));
        // Another proxy's answer, already gRPC: unchanged.
        let mut done = Response::new(ResponseBody::local(""));
        done.headers_mut()
            .insert(PILLION_ERROR, HeaderValue::from_static("fault-injected"));
        done.headers_mut()
            .insert(GRPC_STATUS, HeaderValue::from_static("14"));
        assert_eq!(for_caller(true, done).headers()[GRPC_STATUS], "14");
        // Another proxy's HTTP answer (no reason kept here): the code as the message.
        let mut remote = Response::new(ResponseBody::local("pillion: x\n"));
        *remote.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        remote
            .headers_mut()
            .insert(PILLION_ERROR, HeaderValue::from_static("rate-limited"));
        let remote = for_caller(true, remote);
        assert_eq!(remote.headers()[GRPC_STATUS], "8");
        assert_eq!(remote.headers()[GRPC_MESSAGE], "pillion: rate-limited");
    }
}
