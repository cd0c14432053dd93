//! One request's telemetry as the HTTP layer sees it: [`Recorders`] (the tracer and
//! the access log, cheap to clone into every connection) start a
//! [`RequestObserver`], which carries the span and the access log line while the
//! request runs and finishes both when the response body ends ([`ObservedBody`]),
//! so durations and byte counts cover the whole exchange. With tracing and logging
//! off, the observer is inert and the response is not wrapped at all.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use http::{HeaderMap, StatusCode};
use http_body::{Body, Frame, SizeHint};

use super::access_log::{AccessLog, AccessRecord};
use super::span::{ActiveSpan, Inbound, RequestHead, Tracer};
use crate::telemetry::metrics::Direction;

/// The tracer and the access log, handed to the HTTP stacks.
#[derive(Clone, Debug, Default)]
pub struct Recorders {
    /// Starts spans.
    pub tracer: Tracer,
    /// Writes access log lines.
    pub access_log: AccessLog,
}

impl Recorders {
    /// Observes an inbound request (SERVER span, `inbound` log line).
    pub fn server(&self, req: &impl RequestHead, conn: Inbound<'_>) -> RequestObserver {
        let span = self.tracer.start_server(req, conn);
        let mut observer = self.observer(Direction::Inbound, req, span);
        if let Some((_, log)) = observer.log.as_mut() {
            log.peer_identity = conn.peer_identity.map(Box::from);
        }
        observer
    }

    /// Observes an outbound request to `target` (CLIENT span, `outbound` log line).
    pub fn client(&self, req: &impl RequestHead, target: SocketAddr) -> RequestObserver {
        let span = self.tracer.start_client(req, target);
        self.observer(Direction::Outbound, req, span)
    }

    /// Observes a request this proxy answers itself from calls it makes (an
    /// aggregation): a SERVER span, whose calls are CLIENT children, and an
    /// `outbound` log line.
    pub fn composer(&self, req: &impl RequestHead, target: SocketAddr) -> RequestObserver {
        let span = self.tracer.start_composer(req, target);
        self.observer(Direction::Outbound, req, span)
    }

    fn observer(
        &self,
        direction: Direction,
        req: &impl RequestHead,
        span: Option<ActiveSpan>,
    ) -> RequestObserver {
        let log = self.access_log.is_enabled().then(|| AccessRecord {
            time: SystemTime::now(),
            direction,
            method: req.method().clone(),
            path: req.uri().path_and_query().cloned(),
            status: None,
            duration: Default::default(),
            request_bytes: 0,
            response_bytes: 0,
            peer_identity: None,
            upstream: None,
            route: None,
            trace_id: span.as_ref().map(ActiveSpan::trace_id),
        });
        RequestObserver {
            started: Instant::now(),
            span,
            log: log.map(|record| (self.access_log.clone(), record)),
        }
    }
}

/// One request's span and log line while it runs.
#[derive(Debug)]
pub struct RequestObserver {
    started: Instant,
    span: Option<ActiveSpan>,
    /// The log and the line in the making; `None` when logging is off.
    log: Option<(AccessLog, AccessRecord)>,
}

impl RequestObserver {
    /// Whether there is anything to record (else every call is a no-op).
    pub fn is_active(&self) -> bool {
        self.span.is_some() || self.log.is_some()
    }

    /// Writes the span's trace context into the headers sent on.
    pub fn inject(&self, headers: &mut HeaderMap) {
        if let Some(span) = &self.span {
            span.inject(headers);
        }
    }

    /// Records the route's name.
    pub fn set_route(&mut self, route: &str) {
        if let Some(span) = self.span.as_mut() {
            span.set_route(route);
        }
        if let Some((_, log)) = self.log.as_mut() {
            log.route = Some(Box::from(route));
        }
    }

    /// Records the endpoint used and the identity it proved (outbound), or the
    /// application address (inbound).
    pub fn set_upstream(&mut self, addr: SocketAddr, identity: Option<&str>) {
        if let Some(span) = self.span.as_mut() {
            if span_is_client(span) {
                span.set_peer(addr, identity);
            }
        }
        if let Some((_, log)) = self.log.as_mut() {
            log.upstream = Some(addr);
            if log.direction == Direction::Outbound {
                log.peer_identity = identity.map(Box::from);
            }
        }
    }

    /// Records the request body's size.
    pub fn set_request_bytes(&mut self, bytes: u64) {
        if let Some((_, log)) = self.log.as_mut() {
            log.request_bytes = bytes;
        }
    }

    /// Records why there was no response from upstream (`timeout`, `connect`, …).
    pub fn set_error(&mut self, error: &'static str) {
        if let Some(span) = self.span.as_mut() {
            span.set_error(error);
        }
    }

    /// Finishes both records now (for responses without a body to wait for).
    pub fn finish(mut self, status: Option<StatusCode>, response_bytes: u64) {
        self.finish_mut(status, response_bytes);
    }

    fn finish_mut(&mut self, status: Option<StatusCode>, response_bytes: u64) {
        if let Some(span) = self.span.take() {
            span.end(status, None);
        }
        if let Some((access_log, mut log)) = self.log.take() {
            log.status = status.map(|s| s.as_u16());
            log.duration = self.started.elapsed();
            log.response_bytes = response_bytes;
            access_log.log(log);
        }
    }

    /// Wraps a response body so both records finish when it ends (or is dropped).
    pub fn observe<B>(self, status: StatusCode, body: B) -> ObservedBody<B> {
        ObservedBody {
            inner: body,
            bytes: 0,
            status,
            observer: Some(self),
        }
    }
}

fn span_is_client(span: &ActiveSpan) -> bool {
    span.kind() == super::span::SpanKind::Client
}

/// A response body that counts its bytes and finishes the request's telemetry at
/// its end; if it is dropped early (the client went away) it finishes then.
#[derive(Debug)]
pub struct ObservedBody<B> {
    inner: B,
    bytes: u64,
    status: StatusCode,
    observer: Option<RequestObserver>,
}

impl<B> ObservedBody<B> {
    /// The body observed, to be replaced (an answer emptied on its way out).
    pub(crate) fn inner_mut(&mut self) -> &mut B {
        &mut self.inner
    }

    fn finish(&mut self) {
        if let Some(mut observer) = self.observer.take() {
            observer.finish_mut(Some(self.status), self.bytes);
        }
    }
}

impl<B: Body + Unpin> Body for ObservedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += bytes::Buf::remaining(data) as u64;
                }
                if this.inner.is_end_stream() {
                    this.finish();
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for ObservedBody<B> {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::export::span_queue;
    use crate::telemetry::metrics::TelemetryMetrics;
    use crate::telemetry::sampler::Sampler;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};

    #[tokio::test]
    async fn body_end_finishes_span_with_route_and_bytes() {
        let (sink, mut queue) = span_queue(8, TelemetryMetrics::default());
        let recorders = Recorders {
            tracer: Tracer::new(Sampler::new(1.0).unwrap(), sink),
            access_log: AccessLog::disabled(),
        };
        let req = http::Request::get("/x").body(()).unwrap();
        let mut obs = recorders.client(&req, "198.18.0.100:8080".parse().unwrap());
        assert!(obs.is_active());
        let mut headers = HeaderMap::new();
        obs.inject(&mut headers);
        assert!(headers.contains_key("traceparent"));
        obs.set_route("r");
        obs.set_upstream(
            "198.18.0.3:8080".parse().unwrap(),
            Some("spiffe://td/ns/a/sa/b"),
        );
        let body = obs.observe(StatusCode::OK, Full::new(Bytes::from_static(b"hello")));
        assert!(queue.try_recv().is_err(), "not before the body ends");
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"hello");
        let rec = queue.try_recv().unwrap();
        assert_eq!(rec.status, Some(200));
        assert_eq!(rec.route.as_deref(), Some("r"));
        assert_eq!(rec.peer_identity.as_deref(), Some("spiffe://td/ns/a/sa/b"));
    }

    #[test]
    fn inert_when_everything_is_off() {
        let req = http::Request::get("/x").body(()).unwrap();
        let obs = Recorders::default().client(&req, "127.0.0.1:1".parse().unwrap());
        assert!(!obs.is_active());
        obs.finish(Some(StatusCode::OK), 0);
    }
}
