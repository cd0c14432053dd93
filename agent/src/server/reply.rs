//! Building responses: JSON bodies, [`ErrorBody`] errors, and the one body type every
//! handler returns.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use pillion_api::certs::ErrorBody;
use serde::Serialize;
use std::convert::Infallible;

/// The body of every response: a whole buffer or a stream.
pub type Body = BoxBody<Bytes, Infallible>;

/// A response with a fixed body and content type.
pub fn bytes(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()).boxed());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// A JSON response; a value that fails to serialize becomes a 500.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(body) => bytes(status, "application/json", body),
        Err(e) => {
            tracing::error!(error = %e, "cannot serialize a response");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                pillion_api::certs::error_codes::INTERNAL,
                "the agent failed to encode its answer",
            )
        }
    }
}

/// An error response with an [`ErrorBody`]; 401s also say which scheme to use.
pub fn error(status: StatusCode, code: &str, reason: impl Into<String>) -> Response<Body> {
    let body = ErrorBody {
        error: code.to_string(),
        reason: reason.into(),
    };
    let encoded = serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = bytes(status, "application/json", encoded);
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}
