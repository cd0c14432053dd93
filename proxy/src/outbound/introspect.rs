//! Token introspection's call (RFC 7662 §2.1): the token posted as a form to the
//! endpoint's service through this proxy's own outbound path — the service port's
//! routes, balancing and breakers, mesh TLS as this workload — so the endpoint can
//! tell callers apart by mesh identity and no credential is configured here.
//!
//! What the answer means is [`crate::policy::jwt::introspect`]'s to say; this
//! module fails closed on everything short of a `200` with a body of at most
//! [`MAX_ANSWER_BYTES`] within the endpoint's timeout: `503` when the service has
//! no endpoint to send to (none in the view, none up, its breaker full), `504` when
//! it is too slow, `502` otherwise (a failed connection, another status, a broken
//! answer). Traced as a CLIENT span, a child of the request's span where there is
//! one.

use std::fmt::Write as _;
use std::time::Instant;

use bytes::Bytes;
use http::header::{ACCEPT, ACCEPT_ENCODING, CONTENT_TYPE};
use http::uri::{PathAndQuery, Scheme};
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
            .introspection(&endpoint.service_port)
            .cloned()
    };
    let Some((target, addr)) = found else {
        let why = format!("{} is not in this proxy's view", endpoint.service_port.0);
        return Err(failed(StatusCode::SERVICE_UNAVAILABLE, why));
    };
    let uri = Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(endpoint.authority.clone())
        .path_and_query(endpoint.path.clone())
        .build()
        .map_err(|e| failed(StatusCode::BAD_GATEWAY, e.to_string()))?;
    let (mut head, ()) = Request::post(uri)
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
    // The service port's route, as for any request: its header edits and path
    // rewrite (a client credential, the server's own path), backends, timeouts,
    // retries and breakers. Not its mirror, cache, transforms or faults: the token
    // goes nowhere else and the answer is the endpoint's own.
    let (route, prefix) = target.port.select(&head);
    route.request_edits.apply(&mut head.headers);
    if let (Some(rewriter), Some(prefix)) = (&route.rewrite, prefix) {
        let rewritten = rewriter.rewrite_path_and_query(&head.uri, prefix);
        let path = PathAndQuery::try_from(rewritten)
            .map_err(|_| failed(StatusCode::BAD_GATEWAY, "the rewritten path is not valid"))?;
        head.uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(endpoint.authority.clone())
            .path_and_query(path)
            .build()
            .map_err(|e| failed(StatusCode::BAD_GATEWAY, e.to_string()))?;
    }
    let mut observer = inputs.settings.recorders.client(&head, addr);
    observer.set_route(&route.name);
    observer.inject(&mut head.headers);
    let caller = no_peer();
    route.metrics.request(&caller);
    let template = Template {
        method: Method::POST,
        uri: head.uri,
        version: Version::HTTP_11,
        headers: head.headers,
    };
    let form = Outgoing::Whole(Bytes::from(form(token)));
    let deadline = start + endpoint.timeout;
    let sent = retry::forward(&target, route, template, form, start, &mut observer);
    let answered = tokio::time::timeout_at(deadline.into(), sent).await;
    let (result, status, peer) = match answered {
        Ok(Ok((response, peer))) => {
            let status = response.status();
            (
                read(response, status, deadline, endpoint).await,
                status,
                peer,
            )
        }
        Ok(Err(e)) => {
            let status = e.status();
            (Err(failed(status, e.to_string())), status, caller)
        }
        Err(_) => {
            let why = format!("no answer within {:?}", endpoint.timeout);
            let status = StatusCode::GATEWAY_TIMEOUT;
            (Err(failed(status, why)), status, caller)
        }
    };
    // Recorded once the answer is whole (or given up on), with its length.
    let bytes = result.as_ref().map_or(0, |b| b.len() as u64);
    let recorded = match &result {
        Err(HttpError::Introspection { status, .. }) if status.as_u16() == 504 => *status,
        _ => status,
    };
    route
        .metrics
        .response(&peer, recorded.as_u16(), start.elapsed());
    observer.finish(Some(recorded), bytes);
    result
}

/// The body of the endpoint's answer, when it is a `200` read whole in time.
async fn read(
    response: http::Response<crate::upstream::pool::UpstreamBody>,
    status: StatusCode,
    deadline: Instant,
    endpoint: &Endpoint,
) -> Result<Bytes, HttpError> {
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
