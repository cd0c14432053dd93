//! The tries of one outbound request: [`one_try`] picks a backend by weight and an
//! endpoint by load (a retry: another endpoint than the one that just failed),
//! takes a place under the backend's circuit breaker (none left: `503` at once),
//! sends within the try's time limit and reports the outcome to the endpoint's
//! latency estimate and the backend's outlier detector;
//! [`retry_delay`] decides whether another try may follow (the route's conditions
//! and attempts, its budget, the deadline, a replayable body) and after how long.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, Method, Request, Response, Uri, Version};
use hyper::body::Body as _;

use crate::http::body::RequestBody;
use crate::http::errors::{HttpError, INTROSPECTION_FAILED, PILLION_ERROR};
use crate::http::hop::{orig_proto_value, ORIG_PROTO};
use crate::http::replay::ReplayBody;
use crate::http::tee::CallerBody;
use crate::policy::backoff::full_jitter;
use crate::policy::retry::{should_retry, Outcome};
use crate::state::outbound::{RouteState, Target};
use crate::telemetry::metrics::http::Action;
use crate::telemetry::RequestObserver;
use crate::upstream::endpoint::{Backend, EndpointState};
use crate::upstream::pool::{SendError, UpstreamBody};
use crate::upstream::Wire;

/// The parts of a request every try sends.
pub(super) struct Template {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
}

/// What a request sends upstream: the caller's body as it streams, or a body
/// already whole in memory (a transform's rewrite), sent again as it is by a retry.
pub(super) enum Outgoing {
    /// The caller's body.
    Stream(CallerBody),
    /// A whole body.
    Whole(bytes::Bytes),
}

/// Where a retry's body comes from.
enum Again {
    /// Nowhere: the request had no body (or may not be retried).
    Nothing,
    /// The record of the caller's body.
    Replay(ReplayBody),
    /// The whole body, shared.
    Whole(bytes::Bytes),
}

/// A response and the identity of the endpoint that gave it (the metrics' `peer`).
pub(super) type Answered = (Response<UpstreamBody>, Arc<str>);

/// How one try went.
struct Tried {
    endpoint: Arc<EndpointState>,
    outcome: Outcome,
    /// The server's proxy answered for a third party (its token introspection
    /// endpoint failed): final, and not held against the endpoint.
    blameless: bool,
    result: Result<Response<UpstreamBody>, HttpError>,
    done: Instant,
}

/// The request's time limits.
#[derive(Clone, Copy)]
struct Limits {
    deadline: Option<Instant>,
    timeout: Option<Duration>,
    per_try: Option<Duration>,
}

/// Sends the request, trying again while the route allows (see the module docs).
pub(super) async fn forward(
    target: &Target,
    route: &RouteState,
    template: Template,
    body: Outgoing,
    start: Instant,
    observer: &mut RequestObserver,
) -> Result<Answered, HttpError> {
    let retry = route.retry.as_ref();
    if let Some((_, budget)) = retry {
        budget.deposit(start);
    }
    // With retries, keep a recording handle and give each try a replay of it.
    let (mut body, again) = match body {
        Outgoing::Whole(bytes) if bytes.is_empty() => (Some(RequestBody::Empty), Again::Nothing),
        Outgoing::Whole(bytes) => (
            Some(RequestBody::Whole(Some(bytes.clone()))),
            Again::Whole(bytes),
        ),
        Outgoing::Stream(body) if body.is_end_stream() => {
            (Some(RequestBody::Empty), Again::Nothing)
        }
        Outgoing::Stream(body) if retry.is_some() => {
            let recording = ReplayBody::new(body);
            (
                recording.replay().map(RequestBody::Replay),
                Again::Replay(recording),
            )
        }
        Outgoing::Stream(body) => (Some(RequestBody::Stream(body)), Again::Nothing),
    };
    let limits = Limits {
        deadline: route.timeout.map(|t| start + t),
        timeout: route.timeout,
        per_try: route.per_try_timeout,
    };
    // Without retries, the head moves into the only try instead of a copy.
    let mut template = Some(template);
    let mut attempt: u32 = 1;
    // The endpoint the last try failed on: the next try goes elsewhere if it can.
    let mut failed_on: Option<Arc<EndpointState>> = None;
    loop {
        let Some(this_body) = body.take() else {
            return Err(HttpError::Upstream {
                endpoint: target.port.label(),
                reason: "the request body could not be replayed".into(),
            });
        };
        let head = match (retry.is_some(), &template) {
            (true, Some(tpl)) => Head::Copy(tpl),
            (false, Some(_)) => match template.take() {
                Some(tpl) => Head::Owned(tpl),
                None => return Err(HttpError::BadRequest("request already sent")),
            },
            (_, None) => return Err(HttpError::BadRequest("request already sent")),
        };
        let tried = one_try(
            target,
            route,
            head,
            this_body,
            limits,
            failed_on.as_ref(),
            observer,
        )
        .await?;
        let Some((policy, budget)) = retry else {
            return tried.into_answer();
        };
        let method = template.as_ref().map(|t| &t.method);
        let replayable = match &again {
            Again::Replay(recording) => recording.is_replayable(),
            Again::Nothing | Again::Whole(_) => true,
        };
        match retry_delay(policy, method, &tried, attempt, limits.deadline) {
            Some(wait) if replayable && budget.try_withdraw(tried.done) => {
                route.metrics.retries.inc();
                tracing::debug!(service = %target.port.service, route = %route.name,
                    endpoint = %tried.endpoint.addr, attempt, outcome = ?tried.outcome, "retrying");
                failed_on = Some(Arc::clone(&tried.endpoint));
                drop(tried);
                tokio::time::sleep(wait).await;
                body = match &again {
                    Again::Replay(recording) => recording.replay().map(RequestBody::Replay),
                    Again::Whole(bytes) => Some(RequestBody::Whole(Some(bytes.clone()))),
                    Again::Nothing => Some(RequestBody::Empty),
                };
                attempt += 1;
            }
            _ => return tried.into_answer(),
        }
    }
}

/// The head of a try: a copy of the template (more tries may follow) or the
/// template itself (the only try).
// It lives on the stack for one try; boxing the owned head would allocate per request.
#[allow(clippy::large_enum_variant)]
pub(super) enum Head<'a> {
    Copy(&'a Template),
    Owned(Template),
}

/// One try, elsewhere than `failed_on` when the backend has another endpoint; an
/// error means nothing was sent (no endpoint to send to), which is final.
async fn one_try(
    target: &Target,
    route: &RouteState,
    head: Head<'_>,
    body: RequestBody,
    limits: Limits,
    failed_on: Option<&Arc<EndpointState>>,
    observer: &mut RequestObserver,
) -> Result<Tried, HttpError> {
    let now = Instant::now();
    let backend = pick_backend(target, route);
    let (index, endpoint) = backend.pick(now, rand::random(), failed_on)?;
    let endpoint = Arc::clone(endpoint);
    // Refused before anything is sent: final, not retried, not the endpoint's fault.
    let Some(admitted) = backend.breaker().admit() else {
        route.metrics.action(Action::Overflow);
        return Err(HttpError::Overflow {
            backend: backend.name.to_string(),
            max: backend.breaker().max(),
        });
    };
    // Only a retry may be sent to an ejected endpoint.
    let sent_ejected = failed_on.is_some() && backend.is_ejected(index, now);
    let version = match &head {
        Head::Copy(t) => t.version,
        Head::Owned(t) => t.version,
    };
    let wants = if version == Version::HTTP_2 {
        Wire::Http2
    } else {
        Wire::Http1
    };
    let wire = endpoint.upstream.wire_for(wants);
    observer.set_upstream(
        endpoint.addr,
        Some(&*endpoint.peer_label).filter(|id| !id.is_empty()),
    );
    let request = request_for(head, body, wire);
    let limit = match (limits.per_try, limits.deadline) {
        (Some(t), Some(d)) => Some(t.min(d.saturating_duration_since(now))),
        (Some(t), None) => Some(t),
        (None, Some(d)) => Some(d.saturating_duration_since(now)),
        (None, None) => None,
    };
    let in_flight = endpoint.ewma.start(now);
    let sent = endpoint.upstream.send(wire, request);
    let result = match limit {
        Some(limit) => tokio::time::timeout(limit, sent).await.ok(),
        None => Some(sent.await),
    };
    let done = Instant::now();
    if let Some(Err(SendError::Overflow { max, .. })) = &result {
        // Refused by the endpoint's connection bound before anything was sent:
        // final, not retried, not the endpoint's fault.
        drop(in_flight);
        route.metrics.action(Action::Overflow);
        return Err(HttpError::Pending {
            endpoint: endpoint.addr.to_string(),
            max: *max,
        });
    }
    let mut blameless = false;
    let (outcome, result) = match result {
        Some(Ok(response)) => {
            blameless = third_party_failure(response.headers());
            (
                Outcome::Status(response.status()),
                Ok(response.map(|body| body.holding(admitted))),
            )
        }
        Some(Err(e)) => {
            let outcome = if e.is_connect() {
                Outcome::ConnectFailure
            } else {
                Outcome::Reset
            };
            (
                outcome,
                Err(HttpError::from_send(endpoint.addr.to_string(), &e)),
            )
        }
        None => {
            let overall = limits.deadline.is_some_and(|d| done >= d);
            let error = match (overall, limits.timeout, limits.per_try) {
                (true, Some(t), _) => HttpError::Timeout(t),
                (_, _, Some(t)) => HttpError::TryTimeout(t),
                (_, Some(t), None) => HttpError::Timeout(t),
                (_, None, None) => HttpError::Timeout(limit.unwrap_or_default()),
            };
            (Outcome::Timeout, Err(error))
        }
    };
    match outcome {
        Outcome::Status(_) | Outcome::Timeout => in_flight.finish(done),
        // A refused connection is fast; that must not make the endpoint look cheap.
        Outcome::ConnectFailure | Outcome::Reset => drop(in_flight),
    }
    let ok = blameless || matches!(outcome, Outcome::Status(s) if !s.is_server_error());
    backend.report(index, ok, done, sent_ejected);
    Ok(Tried {
        endpoint,
        outcome,
        blameless,
        result,
        done,
    })
}

impl Tried {
    fn into_answer(self) -> Result<Answered, HttpError> {
        self.result
            .map(|response| (response, Arc::clone(&self.endpoint.peer_label)))
    }
}

/// Whether an answer is a server proxy's about a third party it depends on (its
/// token introspection endpoint), not about the endpoint: another endpoint would
/// ask the same party, and ejecting this one for it would let an outsider's bad
/// tokens empty the backend.
fn third_party_failure(headers: &http::HeaderMap) -> bool {
    headers
        .get(PILLION_ERROR)
        .is_some_and(|code| code.as_bytes() == INTROSPECTION_FAILED.as_bytes())
}

/// The wait before another try, or `None` when this outcome is final: the route's
/// conditions and attempts allow it and the wait ends before the deadline.
fn retry_delay(
    policy: &pillion_api::policy::RetryPolicy,
    method: Option<&Method>,
    tried: &Tried,
    attempt: u32,
    deadline: Option<Instant>,
) -> Option<Duration> {
    let method = method?;
    if tried.blameless || !should_retry(policy, method, tried.outcome, attempt) {
        return None;
    }
    let wait = full_jitter(
        attempt,
        policy.backoff_base,
        policy.backoff_max,
        rand::random(),
    );
    deadline
        .is_none_or(|d| tried.done + wait < d)
        .then_some(wait)
}

/// The backend of this try: the pinned endpoint, or one of the route's by weight.
pub(super) fn pick_backend<'a>(target: &'a Target, route: &'a RouteState) -> &'a Arc<Backend> {
    if let Some(pinned) = &target.pinned {
        return pinned;
    }
    let i = route.split.pick(rand::random());
    // The split has one weight per backend, so `i` is always in range.
    route
        .backends
        .get(i)
        .unwrap_or_else(|| target.port.default_backend())
}

/// A try's request from the head; an HTTP/1.x request on HTTP/2 carries its version.
pub(super) fn request_for(head: Head<'_>, body: RequestBody, wire: Wire) -> Request<RequestBody> {
    let mut request = Request::new(body);
    let version = match head {
        Head::Copy(t) => {
            *request.method_mut() = t.method.clone();
            *request.uri_mut() = t.uri.clone();
            *request.headers_mut() = t.headers.clone();
            t.version
        }
        Head::Owned(t) => {
            *request.method_mut() = t.method;
            *request.uri_mut() = t.uri;
            *request.headers_mut() = t.headers;
            t.version
        }
    };
    match wire {
        Wire::Http1 => *request.version_mut() = version,
        Wire::Http2 => {
            *request.version_mut() = Version::HTTP_2;
            if let Some(value) = orig_proto_value(version) {
                request.headers_mut().insert(ORIG_PROTO, value);
            }
        }
    }
    request
}
