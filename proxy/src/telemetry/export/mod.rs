//! OTLP span export, built on `opentelemetry-proto`'s generated message types and the
//! proxy's own hyper client rather than on the OpenTelemetry SDK + `opentelemetry-otlp`.
//!
//! Why our own: the SDK's span model (`SpanData` with dynamic `KeyValue` attributes,
//! a `Context` per span, a processor thread) would cost allocations on the request
//! path for attributes we know statically, and its batch processor reports drops
//! only as log lines. Here a request hands a plain [`SpanRecord`] to a bounded queue
//! ([`SpanSink::submit`] never waits; full → dropped and counted by reason), and one
//! task does the rest off the request path: batches (size or delay), encodes the OTLP
//! protobuf, exports over gRPC or HTTP/protobuf with a timeout, retries retryable
//! failures with capped, jittered exponential backoff and then drops (counted) —
//! at most one batch in flight plus the queue, so memory is bounded while the
//! collector is down, and export resumes on its own when it returns.
//!
//! [`SpanRecord`]: crate::telemetry::span::SpanRecord

pub(crate) mod config;
pub mod encode;
mod queue;
pub(crate) mod transport;

use std::time::Duration;

use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use crate::policy::backoff::full_jitter;

pub(crate) use config::EndpointError;
pub use config::{Endpoint, OtlpConfig, OtlpProtocol};
pub(crate) use queue::SpanSink;
pub use queue::{span_queue, SpanQueue};
pub use transport::Transport;

use super::metrics::{DropReason, TelemetryMetrics};
use super::resource::Resource;

/// The running exporter; [`Exporter::shutdown`] flushes what is queued.
#[derive(Debug)]
pub(crate) struct Exporter {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Exporter {
    /// Starts the export task for `config` on the current tokio runtime and returns
    /// it with the sink requests submit to.
    pub(crate) fn spawn(
        config: OtlpConfig,
        resource: &Resource,
        metrics: TelemetryMetrics,
    ) -> (Exporter, SpanSink) {
        let (sink, queue) = span_queue(config.queue, metrics.clone());
        let stop = CancellationToken::new();
        let worker = Worker {
            transport: Transport::new(&config),
            resource: encode::resource(resource),
            config,
            metrics,
            stop: stop.clone(),
            healthy: true,
        };
        let task = tokio::spawn(worker.run(queue));
        (Exporter { stop, task }, sink)
    }

    /// Stops batching, sends what is queued (one attempt per batch) and waits up to
    /// `grace` for that; spans still unsent then are lost.
    pub(crate) async fn shutdown(self, grace: Duration) {
        self.stop.cancel();
        let mut task = self.task;
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            task.abort();
            tracing::warn!(?grace, "span export did not finish flushing in time");
        }
    }
}

struct Worker {
    transport: Transport,
    resource: ProtoResource,
    config: OtlpConfig,
    metrics: TelemetryMetrics,
    stop: CancellationToken,
    /// Whether the last export worked, to log state changes rather than every failure.
    healthy: bool,
}

impl Worker {
    async fn run(mut self, mut queue: SpanQueue) {
        loop {
            let first = tokio::select! {
                biased;
                () = self.stop.cancelled() => break,
                span = queue.recv() => match span {
                    Some(span) => span,
                    None => break,
                },
            };
            let mut batch = Vec::with_capacity(self.config.batch);
            batch.push(encode::span(&first));
            let deadline = Instant::now() + self.config.batch_delay;
            while batch.len() < self.config.batch {
                tokio::select! {
                    biased;
                    span = queue.recv() => match span {
                        Some(span) => batch.push(encode::span(&span)),
                        None => break,
                    },
                    () = sleep_until(deadline) => break,
                    () = self.stop.cancelled() => break,
                }
            }
            self.send(batch, self.config.attempts).await;
        }
        // Flush: what is queued now goes out, one attempt per batch.
        queue.close();
        loop {
            let mut batch = Vec::new();
            while batch.len() < self.config.batch {
                match queue.try_recv() {
                    Ok(span) => batch.push(encode::span(&span)),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                break;
            }
            self.send(batch, 1).await;
        }
    }

    /// Exports one batch, retrying retryable failures up to `attempts` times.
    async fn send(&mut self, spans: Vec<Span>, attempts: u32) {
        let count = u64::try_from(spans.len()).unwrap_or(u64::MAX);
        let request = encode::request(&self.resource, spans);
        for attempt in 1..=attempts.max(1) {
            match self.transport.export(&request).await {
                Ok(rejected) => {
                    let rejected = u64::try_from(rejected).unwrap_or(0).min(count);
                    self.metrics.export_ok.inc();
                    self.metrics.spans_exported.inc_by(count - rejected);
                    self.metrics
                        .dropped(DropReason::ExportFailed)
                        .inc_by(rejected);
                    if !self.healthy {
                        tracing::info!(endpoint = %self.config.endpoint, "span export works again");
                        self.healthy = true;
                    }
                    return;
                }
                Err(err) => {
                    self.metrics.export_error.inc();
                    if self.healthy {
                        tracing::warn!(endpoint = %self.config.endpoint, error = %err, "span export failed; retrying with backoff, dropping spans while the queue is full");
                        self.healthy = false;
                    }
                    if !err.is_retryable() || attempt == attempts {
                        break;
                    }
                    let wait = full_jitter(
                        attempt,
                        self.config.backoff_min,
                        self.config.backoff_max,
                        rand::random(),
                    );
                    tokio::select! {
                        () = sleep(wait) => {}
                        () = self.stop.cancelled() => break,
                    }
                }
            }
        }
        self.metrics.dropped(DropReason::ExportFailed).inc_by(count);
    }
}

#[cfg(test)]
mod tests;
