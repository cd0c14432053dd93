//! Aggregation routes: the proxy answers a `GET` itself by calling each part's
//! service at once and merging their JSON into one object, a member per part.
//!
//! Each part is a route of its own: the backend it names (balanced, under its
//! circuit breaker, over mesh TLS), its timeout and retries, its metrics
//! (`route/part`). Every part is asked with the caller's headers (cleaned and
//! edited as the route says, never its preconditions or `Range`), `GET`, the
//! part's path plus the caller's query, `Accept: application/json` and
//! uncompressed. A part fails unless it answers `2xx` with JSON within its time
//! and [`Aggregation::max_part_bytes`]. With `on_partial: fail` the first failure
//! ends the request (`502`, `504` for a timeout) and the other calls are dropped;
//! with `partial` the answer carries `null` for each failed part and its reason
//! under `_errors` (all failed: `502`). The route's `timeout` bounds the whole.
//!
//! Traced as one SERVER span (this proxy answers) with a CLIENT span per call.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use http::header::{
    ACCEPT, ACCEPT_ENCODING, ALLOW, CONTENT_LENGTH, CONTENT_TYPE, EXPECT, HOST, IF_MATCH,
    IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE, RANGE,
};
use http::request::Parts;
use http::uri::{PathAndQuery, Scheme};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
};
use serde_json::{Map, Value};

use super::http::OutboundConn;
use super::retry::{self, Outgoing, Template};
use super::transform::{read_whole, Whole};
use crate::http::body::ResponseBody;
use crate::http::errors::HttpError;
use crate::http::hop::{self, strip_hop_by_hop, strip_own_headers};
use crate::policy::transform::is_json;
use crate::state::outbound::{Aggregation, PartState, RouteState, Target};
use crate::telemetry::RequestObserver;
use pillion_api::aggregate::{OnPartial, ERRORS_MEMBER};

/// Says whether the answer holds every part (`complete`) or not (`partial`).
pub(crate) const AGGREGATE_HEADER: HeaderName = HeaderName::from_static("pillion-aggregate");

/// Request fields no part is asked with: the caller's preconditions and ranges
/// are about the merged answer, not the parts'; its body is never sent.
const NOT_FOR_PARTS: [HeaderName; 10] = [
    HOST,
    CONTENT_LENGTH,
    CONTENT_TYPE,
    EXPECT,
    RANGE,
    IF_RANGE,
    IF_MATCH,
    IF_NONE_MATCH,
    IF_MODIFIED_SINCE,
    IF_UNMODIFIED_SINCE,
];

/// Why one part gave nothing to merge.
struct PartError {
    timeout: bool,
    reason: String,
}

type PartFuture<'a> = Pin<Box<dyn Future<Output = (usize, Result<Value, PartError>)> + Send + 'a>>;

/// Answers the caller's request from the route's parts.
pub(super) async fn serve(
    conn: &OutboundConn,
    target: &Target,
    route: &RouteState,
    aggregation: &Aggregation,
    mut parts: Parts,
    start: Instant,
    observer: RequestObserver,
) -> Response<ResponseBody> {
    let version = parts.version;
    let no_peer = Arc::clone(conn.no_peer());
    let fail = |e: HttpError, observer: RequestObserver| {
        let mut response = e.response();
        if matches!(e, HttpError::Method(_)) {
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        }
        conn.finish(route, version, response, &no_peer, start, observer)
    };
    if parts.method != Method::GET && parts.method != Method::HEAD {
        return fail(
            HttpError::Method("an aggregation route answers GET and HEAD"),
            observer,
        );
    }
    if let Err(e) = hop::check_head(&parts) {
        return fail(e, observer);
    }
    let headers = part_headers(&mut parts.headers, route, &observer);
    let query = parts.uri.query();
    let calls: FuturesUnordered<PartFuture<'_>> = (aggregation.parts.iter().enumerate())
        .map(|(i, part)| {
            let call = call(
                conn,
                target,
                part,
                &headers,
                query,
                aggregation.max_part_bytes,
            );
            Box::pin(async move { (i, call.await) }) as PartFuture<'_>
        })
        .collect();
    let deadline = route.timeout.map(|limit| (start + limit, limit));
    let merged = gather(calls, aggregation, deadline).await;
    let (body, complete) = match merged {
        Ok(merged) => merged,
        Err(e) => return fail(e, observer),
    };
    let mut response = Response::new(ResponseBody::local(body.clone()));
    let h = response.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    h.insert(
        AGGREGATE_HEADER,
        HeaderValue::from_static(if complete { "complete" } else { "partial" }),
    );
    conn.finish(route, version, response, &no_peer, start, observer)
}

/// The fields every part is asked with: the caller's, cleaned and edited as the
/// route says, with the request's trace context (each call's span replaces it).
fn part_headers(
    caller: &mut HeaderMap,
    route: &RouteState,
    observer: &RequestObserver,
) -> HeaderMap {
    let mut headers = std::mem::take(caller);
    strip_hop_by_hop(&mut headers);
    strip_own_headers(&mut headers);
    route.request_edits.apply(&mut headers);
    for name in &NOT_FOR_PARTS {
        headers.remove(name);
    }
    headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
    headers.insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    observer.inject(&mut headers);
    headers
}

/// Waits for the parts: the merged JSON and whether every part is in it, or the
/// error that ends the request.
async fn gather(
    mut calls: FuturesUnordered<PartFuture<'_>>,
    aggregation: &Aggregation,
    deadline: Option<(Instant, Duration)>,
) -> Result<(Bytes, bool), HttpError> {
    let mut values: Vec<Option<Result<Value, PartError>>> =
        (0..aggregation.parts.len()).map(|_| None).collect();
    loop {
        let next = match deadline {
            None => calls.next().await,
            Some((at, limit)) => match tokio::time::timeout_at(at.into(), calls.next()).await {
                Ok(next) => next,
                // Past the route's timeout: the parts still out are dropped.
                Err(_) => {
                    let reason = format!("no answer within the route's timeout of {limit:?}");
                    for value in values.iter_mut().filter(|v| v.is_none()) {
                        *value = Some(Err(PartError {
                            timeout: true,
                            reason: reason.clone(),
                        }));
                    }
                    if aggregation.on_partial == OnPartial::Fail {
                        return Err(HttpError::Timeout(limit));
                    }
                    break;
                }
            },
        };
        let Some((i, result)) = next else {
            break;
        };
        if let (Err(e), OnPartial::Fail) = (&result, aggregation.on_partial) {
            let what = format!("{}: {}", aggregation.parts[i].name, e.reason);
            return Err(if e.timeout {
                HttpError::PartTimeout(what)
            } else {
                HttpError::PartFailed(what)
            });
        }
        values[i] = Some(result);
    }
    let mut merged = Map::new();
    let mut errors = Map::new();
    for (part, value) in aggregation.parts.iter().zip(values) {
        let name = part.name.to_string();
        match value {
            Some(Ok(value)) => {
                merged.insert(name, value);
            }
            Some(Err(e)) => {
                merged.insert(name.clone(), Value::Null);
                errors.insert(name, Value::String(e.reason));
            }
            None => {
                merged.insert(name.clone(), Value::Null);
                errors.insert(name, Value::String("no answer".into()));
            }
        }
    }
    let complete = errors.is_empty();
    if errors.len() == aggregation.parts.len() {
        let why: Vec<String> = errors
            .iter()
            .map(|(name, why)| format!("{name}: {}", why.as_str().unwrap_or_default()))
            .collect();
        return Err(HttpError::PartFailed(format!(
            "every part failed ({})",
            why.join("; ")
        )));
    }
    if !complete {
        merged.insert(ERRORS_MEMBER.to_string(), Value::Object(errors));
    }
    let body = serde_json::to_vec(&Value::Object(merged))
        .map_err(|e| HttpError::PartFailed(format!("the merged answer: {e}")))?;
    Ok((Bytes::from(body), complete))
}

/// One part's call: sent through its route (backend, retries, timeout), its
/// answer read whole and parsed.
async fn call(
    conn: &OutboundConn,
    target: &Target,
    part: &PartState,
    headers: &HeaderMap,
    query: Option<&str>,
    max_bytes: u64,
) -> Result<Value, PartError> {
    let start = Instant::now();
    let failed = |reason: String| PartError {
        timeout: false,
        reason,
    };
    let uri = part_uri(part, query)
        .map_err(|_| failed("the caller's query makes no valid target".into()))?;
    let (mut head, ()) = Request::get(uri.clone())
        .body(())
        .map_err(|e| failed(e.to_string()))?
        .into_parts();
    head.headers = headers.clone();
    let mut observer = conn.recorders().client(&head, conn.orig_dst());
    observer.set_route(&part.route.name);
    observer.inject(&mut head.headers);
    let route = &part.route;
    route.metrics.request(conn.no_peer());
    let template = Template {
        method: Method::GET,
        uri,
        version: Version::HTTP_11,
        headers: head.headers,
    };
    // Every try goes to the part's backend.
    let to = Target {
        port: Arc::clone(&target.port),
        pinned: route.backends.first().cloned(),
    };
    let body = Outgoing::Whole(Bytes::new());
    let answered = retry::forward(&to, route, template, body, start, &mut observer).await;
    let (response, peer) = match answered {
        Ok(answered) => answered,
        Err(e) => {
            let status = e.status();
            route
                .metrics
                .response(conn.no_peer(), status.as_u16(), start.elapsed());
            observer.finish(Some(status), 0);
            return Err(PartError {
                timeout: status == StatusCode::GATEWAY_TIMEOUT,
                reason: e.to_string(),
            });
        }
    };
    let status = response.status();
    route
        .metrics
        .response(&peer, status.as_u16(), start.elapsed());
    let deadline = route.timeout.map(|t| start + t);
    let (parts, body) = response.into_parts();
    let outcome = if !status.is_success() {
        Err(failed(format!("answered {status}")))
    } else if !is_json(&parts.headers) {
        Err(failed(
            "answered something other than uncompressed JSON".into(),
        ))
    } else {
        match read_whole(body, max_bytes, deadline).await {
            Whole::Read(bytes) => serde_json::from_slice::<Value>(&bytes)
                .map_err(|e| failed(format!("answered JSON that does not parse: {e}"))),
            Whole::TooLarge => Err(failed(format!("answered more than {max_bytes} bytes"))),
            Whole::Broken(why) => Err(failed(format!("its answer broke off: {why}"))),
            Whole::Late => Err(PartError {
                timeout: true,
                reason: "its answer did not arrive in time".into(),
            }),
        }
    };
    observer.finish(Some(status), 0);
    outcome
}

/// The part's target: `http://`, its authority, its path plus the caller's query.
fn part_uri(part: &PartState, query: Option<&str>) -> Result<Uri, http::Error> {
    let path_and_query = match query {
        None => part.path.clone(),
        Some(q) => {
            let joined = match part.path.query() {
                Some(_) => format!("{}&{q}", part.path.as_str()),
                None => format!("{}?{q}", part.path.as_str()),
            };
            PathAndQuery::try_from(joined)?
        }
    };
    Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(part.authority.clone())
        .path_and_query(path_and_query)
        .build()
}
