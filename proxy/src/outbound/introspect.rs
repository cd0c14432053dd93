//! Token introspection's call (RFC 7662 §2.1): the token posted as a form to the
//! endpoint's service through this proxy's own outbound path — the service port's
//! routes, balancing and breakers, mesh TLS as this workload — so the endpoint can
//! tell callers apart by mesh identity and no credential is configured here.
//!
//! What the answer means is [`crate::policy::jwt::introspect`]'s to say; this
//! module fails closed on everything short of a `200` with a body of at most
//! [`MAX_ANSWER_BYTES`] within the endpoint's timeout: `503` when the service
//! cannot be reached, `504` when it is too slow, `502` otherwise. Traced as a
//! CLIENT span, a child of the request's span where there is one.

use std::fmt::Write as _;
use std::time::Instant;

use bytes::Bytes;
use http::header::{ACCEPT, ACCEPT_ENCODING, CONTENT_TYPE};
use http::uri::Scheme;
use http::{HeaderValue, Method, Request, StatusCode, Uri, Version};

use super::retry::{self, Outgoing, Template};
use super::transform::{read_whole, Whole};
use crate::app::inputs::Inputs;
use crate::http::errors::HttpError;
use crate::policy::jwt::Endpoint;
use crate::telemetry::metrics::http::no_peer;
use crate::telemetry::RequestObserver;

/// Largest answer read from the endpoint.
pub(crate) const MAX_ANSWER_BYTES: u64 = 64 * 1024;

fn failed(status: StatusCode, reason: impl Into<String>) -> HttpError {
    HttpError::Introspection {
        status,
        reason: reason.into(),
    }
}

/// Posts `token` to `endpoint`; its answer's body when it answered `200`.
pub(crate) async fn ask(
    inputs: &Inputs,
    endpoint: &Endpoint,
    token: &str,
    parent: Option<&RequestObserver>,
) -> Result<Bytes, HttpError> {
    let start = Instant::now();
    let found = {
        let state = inputs.state.load();
        (state.outbound())
            .introspection(&endpoint.service, endpoint.port)
            .cloned()
    };
    let Some((target, addr)) = found else {
        let why = format!("{} is not in this proxy's view", endpoint.service);
        return Err(failed(StatusCode::SERVICE_UNAVAILABLE, why));
    };
    let uri = Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(endpoint.authority.clone())
        .path_and_query(endpoint.path.clone())
        .build()
        .map_err(|e| failed(StatusCode::BAD_GATEWAY, e.to_string()))?;
    let (mut head, ()) = Request::post(uri.clone())
        .body(())
        .map_err(|e| failed(StatusCode::BAD_GATEWAY, e.to_string()))?
        .into_parts();
    let h = &mut head.headers;
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    h.insert(ACCEPT, HeaderValue::from_static("application/json"));
    h.insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    if let Some(parent) = parent {
        parent.inject(h);
    }
    let (route, _) = target.port.select(&head);
    let mut observer = inputs.settings.recorders.client(&head, addr);
    observer.set_route(&route.name);
    observer.inject(&mut head.headers);
    let caller = no_peer();
    route.metrics.request(&caller);
    let template = Template {
        method: Method::POST,
        uri,
        version: Version::HTTP_11,
        headers: head.headers,
    };
    let form = Outgoing::Whole(Bytes::from(form(token)));
    let deadline = start + endpoint.timeout;
    let sent = retry::forward(&target, route, template, form, start, &mut observer);
    let answered = tokio::time::timeout_at(deadline.into(), sent).await;
    let (response, peer) = match answered {
        Ok(Ok(answered)) => answered,
        Ok(Err(e)) => {
            let status = e.status();
            route
                .metrics
                .response(&caller, status.as_u16(), start.elapsed());
            observer.finish(Some(status), 0);
            return Err(failed(status, e.to_string()));
        }
        Err(_) => {
            route.metrics.response(&caller, 504, start.elapsed());
            observer.finish(Some(StatusCode::GATEWAY_TIMEOUT), 0);
            let why = format!("no answer within {:?}", endpoint.timeout);
            return Err(failed(StatusCode::GATEWAY_TIMEOUT, why));
        }
    };
    let status = response.status();
    route
        .metrics
        .response(&peer, status.as_u16(), start.elapsed());
    observer.finish(Some(status), 0);
    if status != StatusCode::OK {
        let why = format!("the endpoint answered {status}");
        return Err(failed(StatusCode::BAD_GATEWAY, why));
    }
    match read_whole(response.into_body(), MAX_ANSWER_BYTES, Some(deadline)).await {
        Whole::Read(bytes) => Ok(bytes),
        Whole::TooLarge => Err(failed(
            StatusCode::BAD_GATEWAY,
            format!("the answer is longer than {MAX_ANSWER_BYTES} bytes"),
        )),
        Whole::Broken(why) => Err(failed(StatusCode::BAD_GATEWAY, why)),
        Whole::Late => Err(failed(
            StatusCode::GATEWAY_TIMEOUT,
            format!("the answer did not end within {:?}", endpoint.timeout),
        )),
    }
}

/// The request's body: `token=…&token_type_hint=access_token`, form-encoded.
fn form(token: &str) -> String {
    let mut body = String::with_capacity(token.len() + 40);
    body.push_str("token=");
    for byte in token.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                body.push(char::from(byte))
            }
            other => {
                let _ = write!(body, "%{other:02X}");
            }
        }
    }
    body.push_str("&token_type_hint=access_token");
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_form_encoded() {
        assert_eq!(
            form("a.b-c_d~e"),
            "token=a.b-c_d~e&token_type_hint=access_token"
        );
        assert_eq!(
            form("x+y/z= &é"),
            "token=x%2By%2Fz%3D%20%26%C3%A9&token_type_hint=access_token"
        );
    }
}
