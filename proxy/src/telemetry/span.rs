//! Spans for proxied HTTP requests: an inbound request becomes a SERVER span, an
//! outbound one a CLIENT span. The [`Tracer`] decides (see [`super::sampler`]); an
//! unsampled request gets `None` and costs nothing more. A sampled one carries an
//! [`ActiveSpan`] that injects `traceparent` and, when ended (or dropped, e.g. when
//! the request is cancelled), hands a [`SpanRecord`] to the bounded export queue.
//! Attribute encoding happens later, in the exporter task, off the request path.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, Method, Request, StatusCode, Uri, Version};

use super::context::{self, Format, Outgoing};
use super::export::SpanSink;
use super::ids::{SpanId, TraceId};
use super::sampler::{Decision, Sampler};

/// Which side of a request the proxy's span stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    /// The inbound proxy receiving a request for its application.
    Server,
    /// The outbound proxy sending the application's request on.
    Client,
}

/// Read access to a request's head, so the tracer takes `Request<B>` or `Parts` alike.
pub trait RequestHead {
    /// The method.
    fn method(&self) -> &Method;
    /// The URI (path, and an authority for HTTP/2 or absolute-form requests).
    fn uri(&self) -> &Uri;
    /// The HTTP version.
    fn version(&self) -> Version;
    /// The headers, where the trace context is.
    fn headers(&self) -> &HeaderMap;
}

impl<B> RequestHead for Request<B> {
    fn method(&self) -> &Method {
        Request::method(self)
    }
    fn uri(&self) -> &Uri {
        Request::uri(self)
    }
    fn version(&self) -> Version {
        Request::version(self)
    }
    fn headers(&self) -> &HeaderMap {
        Request::headers(self)
    }
}

impl RequestHead for http::request::Parts {
    fn method(&self) -> &Method {
        &self.method
    }
    fn uri(&self) -> &Uri {
        &self.uri
    }
    fn version(&self) -> Version {
        self.version
    }
    fn headers(&self) -> &HeaderMap {
        &self.headers
    }
}

/// The inbound connection a SERVER span's request came on.
#[derive(Clone, Copy, Debug)]
pub struct Inbound<'a> {
    /// The client's address (`network.peer.address`), when the layer knows it.
    pub peer_addr: Option<SocketAddr>,
    /// The SPIFFE id the client proved over mesh TLS (`pillion.peer.identity`).
    pub peer_identity: Option<&'a str>,
    /// The port the request was sent to (`server.port` when the authority has none).
    pub server_port: u16,
}

/// A finished span, as queued for export: plain fields, no encoding yet.
#[derive(Clone, Debug)]
pub struct SpanRecord {
    /// The trace.
    pub trace_id: TraceId,
    /// This span.
    pub span_id: SpanId,
    /// The remote parent (the caller's span), if the trace was continued.
    pub parent_span_id: Option<SpanId>,
    /// SERVER or CLIENT.
    pub kind: SpanKind,
    /// Wall-clock start, Unix nanoseconds.
    pub start_unix_nanos: u64,
    /// Wall-clock end (start plus the monotonic duration), Unix nanoseconds.
    pub end_unix_nanos: u64,
    /// `http.request.method`.
    pub method: Method,
    /// `url.path` (the query is left out: it may carry secrets).
    pub path: Option<PathAndQuery>,
    /// `server.address` (and its port), from the URI or `Host`.
    pub authority: Option<Authority>,
    /// `server.port` when the authority has none.
    pub server_port: Option<u16>,
    /// `network.protocol.version`.
    pub version: Version,
    /// `network.peer.address` / `.port`: the client (SERVER) or chosen endpoint (CLIENT).
    pub peer_addr: Option<SocketAddr>,
    /// `pillion.peer.identity`: the peer's verified SPIFFE id.
    pub peer_identity: Option<Box<str>>,
    /// `http.route` and `pillion.route`: our route's name.
    pub route: Option<Box<str>>,
    /// `http.response.status_code`; `None` when no response came.
    pub status: Option<u16>,
    /// `error.type` when there was no response (e.g. `timeout`, `cancelled`).
    pub error: Option<&'static str>,
}

impl SpanRecord {
    /// Whether the span's status is Error: no response, any 5xx, and for CLIENT
    /// spans any 4xx too (the OpenTelemetry HTTP conventions: a 4xx is the
    /// client's failure, not the server's).
    pub fn is_error(&self) -> bool {
        match self.status {
            None => true,
            Some(s) if s >= 500 => true,
            Some(s) => s >= 400 && self.kind == SpanKind::Client,
        }
    }

    /// The span name: `{method} {route}`, or `{method}` without a route.
    pub fn name(&self) -> String {
        match &self.route {
            Some(route) => format!("{} {route}", self.method),
            None => self.method.to_string(),
        }
    }
}

/// Makes the sampling decision and starts spans; cheap to clone (one `Arc`), and a
/// disabled tracer (no collector, or ratio 0) answers `None` without any work.
#[derive(Clone, Debug, Default)]
pub struct Tracer {
    inner: Option<Arc<TracerInner>>,
}

#[derive(Debug)]
struct TracerInner {
    sampler: Sampler,
    sink: SpanSink,
}

impl Tracer {
    /// A tracer that never samples.
    pub fn disabled() -> Tracer {
        Tracer::default()
    }

    /// A tracer that samples with `sampler` and exports through `sink`.
    pub fn new(sampler: Sampler, sink: SpanSink) -> Tracer {
        if sampler.is_off() {
            return Tracer::disabled();
        }
        Tracer {
            inner: Some(Arc::new(TracerInner { sampler, sink })),
        }
    }

    /// Whether any request could ever be sampled.
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Starts the SERVER span of an inbound request, continuing its caller's trace;
    /// `None` when not sampled. Call [`ActiveSpan::inject`] on the headers sent to
    /// the application so its own spans join the trace.
    pub fn start_server(&self, req: &impl RequestHead, conn: Inbound<'_>) -> Option<ActiveSpan> {
        let mut span = self.start(SpanKind::Server, req)?;
        if let Some(rec) = span.record.as_mut() {
            rec.peer_addr = conn.peer_addr;
            rec.peer_identity = conn.peer_identity.map(Box::from);
            rec.server_port = Some(conn.server_port);
        }
        Some(span)
    }

    /// Starts the CLIENT span of an outbound request to `target` (its original
    /// destination); `None` when not sampled. Call [`ActiveSpan::inject`] on the
    /// headers sent upstream, and [`ActiveSpan::set_peer`] once an endpoint is picked.
    pub fn start_client(&self, req: &impl RequestHead, target: SocketAddr) -> Option<ActiveSpan> {
        let mut span = self.start(SpanKind::Client, req)?;
        if let Some(rec) = span.record.as_mut() {
            rec.server_port = Some(target.port());
            if rec.authority.is_none() {
                rec.authority = Authority::try_from(target.to_string().as_str()).ok();
            }
        }
        Some(span)
    }

    /// Starts the SERVER span of a request the outbound proxy answers itself from
    /// calls of its own (an aggregation to `target`); each call's CLIENT span is
    /// its child.
    pub fn start_composer(&self, req: &impl RequestHead, target: SocketAddr) -> Option<ActiveSpan> {
        let mut span = self.start(SpanKind::Server, req)?;
        if let Some(rec) = span.record.as_mut() {
            rec.server_port = Some(target.port());
        }
        Some(span)
    }

    fn start(&self, kind: SpanKind, req: &impl RequestHead) -> Option<ActiveSpan> {
        let inner = self.inner.as_ref()?;
        let incoming = context::extract(req.headers());
        let Decision::Record {
            trace_id,
            parent,
            format,
        } = inner.sampler.decide(&incoming)
        else {
            return None;
        };
        let span_id = SpanId::random();
        let start_unix_nanos = unix_nanos(SystemTime::now());
        let record = SpanRecord {
            trace_id,
            span_id,
            parent_span_id: parent,
            kind,
            start_unix_nanos,
            end_unix_nanos: start_unix_nanos,
            method: req.method().clone(),
            path: req.uri().path_and_query().cloned(),
            authority: authority_of(req),
            server_port: None,
            version: req.version(),
            peer_addr: None,
            peer_identity: None,
            route: None,
            status: None,
            error: None,
        };
        Some(ActiveSpan {
            kind,
            outgoing: Outgoing {
                trace_id,
                span_id,
                parent_span_id: parent,
                sampled: true,
                format,
            },
            started: Instant::now(),
            record: Some(record),
            tracer: Arc::clone(inner),
        })
    }
}

/// The request's authority: from the URI (HTTP/2, absolute form) or `Host`.
fn authority_of(req: &impl RequestHead) -> Option<Authority> {
    if let Some(a) = req.uri().authority() {
        return Some(a.clone());
    }
    let host = req.headers().get(http::header::HOST)?;
    Authority::try_from(host.as_bytes()).ok()
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A sampled request's span while the request runs. Ending it queues it for export;
/// dropping it unended records it as `cancelled`, so no sampled request vanishes.
#[derive(Debug)]
pub struct ActiveSpan {
    kind: SpanKind,
    outgoing: Outgoing,
    started: Instant,
    record: Option<SpanRecord>,
    tracer: Arc<TracerInner>,
}

impl ActiveSpan {
    /// The trace id (for the access log line).
    pub fn trace_id(&self) -> TraceId {
        self.outgoing.trace_id
    }

    /// This span's id (the parent of what the receiver of our headers does).
    pub fn span_id(&self) -> SpanId {
        self.outgoing.span_id
    }

    /// The remote parent span, if the trace was continued.
    pub fn parent_span_id(&self) -> Option<SpanId> {
        self.outgoing.parent_span_id
    }

    /// SERVER or CLIENT.
    pub fn kind(&self) -> SpanKind {
        self.kind
    }

    /// The header family the incoming context came in.
    pub fn format(&self) -> Format {
        self.outgoing.format
    }

    /// Writes this span's context into the headers sent on (to the app for SERVER
    /// spans, upstream for CLIENT spans); see [`context::inject`].
    pub fn inject(&self, headers: &mut HeaderMap) {
        context::inject(&self.outgoing, headers);
    }

    /// Records the endpoint actually used and the identity it proved.
    pub fn set_peer(&mut self, addr: SocketAddr, identity: Option<&str>) {
        if let Some(rec) = self.record.as_mut() {
            rec.peer_addr = Some(addr);
            rec.peer_identity = identity.map(Box::from);
        }
    }

    /// Records the route's name as soon as it is known.
    pub fn set_route(&mut self, route: &str) {
        if let Some(rec) = self.record.as_mut() {
            rec.route = Some(Box::from(route));
        }
    }

    /// Records why there is no response (`timeout`, `connect`, …; a fixed word).
    pub fn set_error(&mut self, error: &'static str) {
        if let Some(rec) = self.record.as_mut() {
            rec.error = Some(error);
        }
    }

    /// Ends the span with the response status (`None`: no response) and the route
    /// (if not set already), and queues it for export without waiting.
    pub fn end(mut self, status: Option<StatusCode>, route: Option<&str>) {
        if let Some(route) = route {
            self.set_route(route);
        }
        self.finish(status.map(|s| s.as_u16()));
    }

    fn finish(&mut self, status: Option<u16>) {
        let Some(mut rec) = self.record.take() else {
            return;
        };
        let elapsed = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        rec.end_unix_nanos = rec.start_unix_nanos.saturating_add(elapsed);
        rec.status = status;
        if status.is_none() && rec.error.is_none() {
            rec.error = Some("cancelled");
        }
        self.tracer.sink.submit(rec);
    }
}

impl Drop for ActiveSpan {
    fn drop(&mut self) {
        self.finish(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::context::TRACEPARENT;
    use crate::telemetry::export::{span_queue, SpanQueue};
    use crate::telemetry::fixtures::{self, TP};
    use crate::telemetry::metrics::{DropReason, TelemetryMetrics};

    fn tracer(ratio: f64, capacity: usize) -> (Tracer, SpanQueue, TelemetryMetrics) {
        let metrics = TelemetryMetrics::default();
        let (sink, queue) = span_queue(capacity, metrics.clone());
        (
            Tracer::new(Sampler::new(ratio).unwrap(), sink),
            queue,
            metrics,
        )
    }

    fn request(traceparent: Option<&str>) -> Request<()> {
        fixtures::request("POST", "/api/orders?id=7", "orders.shop:8080", traceparent)
    }

    fn inbound() -> Inbound<'static> {
        fixtures::caller()
    }

    #[test]
    fn server_span_continues_the_incoming_trace() {
        let (tracer, mut queue, _) = tracer(1.0, 8);
        let mut req = request(Some(TP));
        let span = tracer.start_server(&req, inbound()).unwrap();
        span.inject(req.headers_mut());
        let sent = req.headers()[TRACEPARENT].to_str().unwrap().to_owned();
        assert!(
            sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{sent}"
        );
        assert!(sent.ends_with(&format!("{}-01", span.span_id())), "{sent}");
        let (trace, id) = (span.trace_id(), span.span_id());
        span.end(Some(StatusCode::OK), Some("orders"));

        let rec = queue.try_recv().unwrap();
        assert_eq!(rec.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!((rec.trace_id, rec.span_id), (trace, id));
        assert_eq!(rec.parent_span_id.unwrap().to_string(), "00f067aa0ba902b7");
        assert_eq!(rec.kind, SpanKind::Server);
        assert_eq!(rec.method, Method::POST);
        assert_eq!(rec.path.as_ref().unwrap().path(), "/api/orders");
        assert_eq!(rec.authority.as_ref().unwrap().host(), "orders.shop");
        assert_eq!(rec.status, Some(200));
        assert_eq!(rec.route.as_deref(), Some("orders"));
        assert_eq!(
            rec.peer_identity.as_deref(),
            Some("spiffe://cluster.local/ns/demo/sa/client")
        );
        assert_eq!(rec.name(), "POST orders");
        assert!(rec.end_unix_nanos >= rec.start_unix_nanos);
        assert!(!rec.is_error());
    }

    #[test]
    fn client_span_starts_a_new_trace_and_records_the_endpoint() {
        let (tracer, mut queue, _) = tracer(1.0, 8);
        let mut req = Request::get("/x").body(()).unwrap();
        let mut span = tracer
            .start_client(&req, "198.18.0.3:7000".parse().unwrap())
            .unwrap();
        assert!(span.parent_span_id().is_none());
        span.inject(req.headers_mut());
        assert!(req.headers().contains_key(TRACEPARENT));
        span.set_peer(
            "198.18.0.3:7000".parse().unwrap(),
            Some("spiffe://cluster.local/ns/demo/sa/server"),
        );
        span.end(Some(StatusCode::NOT_FOUND), None);
        let rec = queue.try_recv().unwrap();
        assert_eq!(rec.kind, SpanKind::Client);
        assert_eq!(rec.authority.as_ref().unwrap().as_str(), "198.18.0.3:7000");
        assert!(rec.is_error(), "a 404 is a CLIENT span error");
        assert_eq!(rec.name(), "GET");
    }

    #[test]
    fn unsampled_requests_get_no_span_and_keep_their_headers() {
        let (tracer, mut queue, _) = tracer(1.0, 8);
        let unsampled = TP.replace("-01", "-00");
        let req = request(Some(&unsampled));
        assert!(tracer.start_server(&req, inbound()).is_none());
        let (off, mut off_queue, _) = self::tracer(0.0, 8);
        assert!(!off.is_enabled());
        assert!(off.start_server(&request(Some(TP)), inbound()).is_none());
        assert!(Tracer::disabled()
            .start_client(&request(None), "127.0.0.1:1".parse().unwrap())
            .is_none());
        assert!(queue.try_recv().is_err());
        assert!(off_queue.try_recv().is_err());
    }

    #[test]
    fn malformed_traceparent_starts_a_fresh_trace() {
        let (tracer, mut queue, _) = tracer(1.0, 8);
        let mut req = request(Some("00-zz-nonsense-01"));
        req.headers_mut()
            .insert("tracestate", "stale=1".parse().unwrap());
        let span = tracer.start_server(&req, inbound()).unwrap();
        assert!(span.parent_span_id().is_none());
        span.inject(req.headers_mut());
        assert!(req.headers().get("tracestate").is_none());
        drop(span);
        let rec = queue.try_recv().unwrap();
        assert_eq!((rec.status, rec.error), (None, Some("cancelled")));
        assert!(rec.is_error());
    }

    #[test]
    fn server_errors_are_5xx_only() {
        let (tracer, mut queue, _) = tracer(1.0, 8);
        for (code, error) in [(404, false), (503, true)] {
            let span = tracer.start_server(&request(None), inbound()).unwrap();
            span.end(Some(StatusCode::from_u16(code).unwrap()), None);
            assert_eq!(queue.try_recv().unwrap().is_error(), error, "{code}");
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        let (tracer, mut queue, metrics) = tracer(1.0, 2);
        for _ in 0..5 {
            let span = tracer.start_server(&request(None), inbound()).unwrap();
            span.end(Some(StatusCode::OK), None);
        }
        assert_eq!(metrics.dropped(DropReason::QueueFull).get(), 3);
        assert!(queue.try_recv().is_ok() && queue.try_recv().is_ok());
        queue.close();
        while queue.try_recv().is_ok() {}
        drop(queue);
        tracer
            .start_server(&request(None), inbound())
            .unwrap()
            .end(None, None);
        assert_eq!(metrics.dropped(DropReason::Shutdown).get(), 1);
    }
}

/// What tracing costs one request on the proxy's side: starting, injecting and ending
/// a sampled span (handed to the export queue) against an unsampled request, which
/// must cost next to nothing. Prints ns per request; run with `--release` for the
/// numbers that matter (`cargo test --release -p pillion-proxy --lib overhead --
/// --nocapture`).
#[cfg(test)]
mod overhead {
    use std::hint::black_box;
    use std::time::{Duration, Instant};

    use super::Tracer;
    use crate::telemetry::export::span_queue;
    use crate::telemetry::{Sampler, TelemetryMetrics};

    const N: u32 = 50_000;

    fn per_request(tracer: &Tracer, traceparent: Option<&str>) -> Duration {
        let mut req = http::Request::get("/api/orders/7?x=1")
            .header("host", "orders.shop:8080")
            .header("user-agent", "bench")
            .body(())
            .unwrap();
        if let Some(tp) = traceparent {
            req.headers_mut().insert("traceparent", tp.parse().unwrap());
        }
        let conn = crate::telemetry::fixtures::caller();
        let start = Instant::now();
        for _ in 0..N {
            let mut headers = req.headers().clone();
            if let Some(span) = tracer.start_server(&req, conn) {
                span.inject(&mut headers);
                span.end(Some(http::StatusCode::OK), Some("orders"));
            }
            black_box(headers);
        }
        start.elapsed() / N
    }

    #[test]
    fn unsampled_requests_cost_almost_nothing() {
        // A queue that is never drained: after it fills, every span is dropped and
        // counted, which is exactly the collector-down path.
        let metrics = TelemetryMetrics::default();
        let (sink, _queue) = span_queue(2048, metrics.clone());
        let on = Tracer::new(Sampler::new(1.0).unwrap(), sink.clone());
        let off = Tracer::new(Sampler::new(0.0).unwrap(), sink);
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";

        let baseline = per_request(&Tracer::disabled(), None);
        let off_ns = per_request(&off, Some(tp));
        let not_sampled = per_request(&on, Some(unsampled));
        let sampled = per_request(&on, Some(tp));
        let new_trace = per_request(&on, None);
        println!(
            "per request (incl. a header-map clone of {baseline:?}): tracing off {off_ns:?}, \
             unsampled parent {not_sampled:?}, sampled parent {sampled:?}, new trace {new_trace:?}"
        );
        assert!(
            metrics
                .dropped(crate::telemetry::metrics::DropReason::QueueFull)
                .get()
                > 0
        );
        // Loose bounds that hold in debug builds too: the point is the order of magnitude.
        assert!(
            off_ns < baseline + Duration::from_micros(5),
            "tracing off costs {off_ns:?}"
        );
        assert!(
            not_sampled < baseline + Duration::from_micros(20),
            "unsampled costs {not_sampled:?}"
        );
        assert!(
            sampled < Duration::from_micros(200),
            "a sampled span costs {sampled:?}"
        );
    }
}
