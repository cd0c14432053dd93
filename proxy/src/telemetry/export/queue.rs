//! The hand-off between requests and the exporter: a bounded queue whose `submit`
//! never waits. When it is full the span is dropped and counted, so a slow or absent
//! collector costs a request one failed `try_send`, nothing more.

use tokio::sync::mpsc::{self, error::TrySendError};

use crate::telemetry::metrics::{DropReason, TelemetryMetrics};
use crate::telemetry::span::SpanRecord;

/// The sending side, shared by every request through the tracer.
#[derive(Clone, Debug)]
pub struct SpanSink {
    tx: mpsc::Sender<SpanRecord>,
    metrics: TelemetryMetrics,
}

/// The receiving side, owned by the exporter task.
pub type SpanQueue = mpsc::Receiver<SpanRecord>;

/// A queue holding at most `capacity` finished spans.
pub fn span_queue(capacity: usize, metrics: TelemetryMetrics) -> (SpanSink, SpanQueue) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (SpanSink { tx, metrics }, rx)
}

impl SpanSink {
    /// Queues a finished span, or drops and counts it if the queue is full or closed.
    pub fn submit(&self, span: SpanRecord) {
        match self.tx.try_send(span) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.metrics.dropped(DropReason::QueueFull).inc();
            }
            Err(TrySendError::Closed(_)) => {
                self.metrics.dropped(DropReason::Shutdown).inc();
            }
        }
    }

    /// The metrics this sink counts into.
    pub fn metrics(&self) -> &TelemetryMetrics {
        &self.metrics
    }
}
