//! Telemetry's own health: spans exported and dropped (by reason), export requests,
//! access log lines written and dropped. Label values come from fixed enums only.

use std::fmt::{self, Write as _};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Why a span never reached the collector; the `reason` label.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum DropReason {
    /// The export queue was full (collector slow or down): dropped at once, so the
    /// request never waits.
    QueueFull,
    /// Its batch failed every export attempt, or the collector rejected it.
    ExportFailed,
    /// The exporter had stopped (proxy shutting down).
    Shutdown,
}

impl DropReason {
    /// Every reason, for pre-creating series.
    pub const ALL: [DropReason; 3] = [
        DropReason::QueueFull,
        DropReason::ExportFailed,
        DropReason::Shutdown,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::ExportFailed => "export_failed",
            DropReason::Shutdown => "shutdown",
        }
    }
}

impl EncodeLabelValue for DropReason {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// Labels of `pillion_trace_spans_dropped_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: DropReason,
}

/// Labels of `pillion_trace_export_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// The telemetry metric handles, resolved once so the hot path never hashes labels.
#[derive(Clone, Debug, Default)]
pub struct TelemetryMetrics {
    /// Spans the collector accepted.
    pub spans_exported: Counter,
    dropped_queue_full: Counter,
    dropped_export_failed: Counter,
    dropped_shutdown: Counter,
    /// Export requests the collector answered with success.
    pub export_ok: Counter,
    /// Export requests that failed (connect, timeout, error status).
    pub export_error: Counter,
    /// Access log lines written.
    pub access_log_lines: Counter,
    /// Access log lines dropped because the writer fell behind (or failed).
    pub access_log_dropped: Counter,
}

impl TelemetryMetrics {
    /// Creates the metrics and registers them under their contract names; every
    /// series exists (at 0) from the start.
    pub fn register(registry: &mut Registry) -> TelemetryMetrics {
        let exported = Counter::default();
        registry.register(
            "pillion_trace_spans_exported",
            "Spans the OTLP collector accepted",
            exported.clone(),
        );
        let dropped = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "pillion_trace_spans_dropped",
            "Spans dropped before reaching the collector, by reason",
            dropped.clone(),
        );
        let requests = Family::<ResultLabels, Counter>::default();
        registry.register(
            "pillion_trace_export_requests",
            "OTLP export requests, by result (ok or error)",
            requests.clone(),
        );
        let lines = Counter::default();
        registry.register(
            "pillion_access_log_lines",
            "Access log lines written",
            lines.clone(),
        );
        let lines_dropped = Counter::default();
        registry.register(
            "pillion_access_log_dropped",
            "Access log lines dropped because the writer fell behind or failed",
            lines_dropped.clone(),
        );
        let reason = |reason| dropped.get_or_create(&ReasonLabels { reason }).clone();
        let result = |result| requests.get_or_create(&ResultLabels { result }).clone();
        TelemetryMetrics {
            spans_exported: exported,
            dropped_queue_full: reason(DropReason::QueueFull),
            dropped_export_failed: reason(DropReason::ExportFailed),
            dropped_shutdown: reason(DropReason::Shutdown),
            export_ok: result("ok"),
            export_error: result("error"),
            access_log_lines: lines,
            access_log_dropped: lines_dropped,
        }
    }

    /// The counter of spans dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> &Counter {
        match reason {
            DropReason::QueueFull => &self.dropped_queue_full,
            DropReason::ExportFailed => &self.dropped_export_failed,
            DropReason::Shutdown => &self.dropped_shutdown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposed_names_are_the_contract() {
        let mut registry = Registry::default();
        let m = TelemetryMetrics::register(&mut registry);
        m.spans_exported.inc_by(3);
        m.dropped(DropReason::QueueFull).inc();
        m.export_error.inc();
        m.access_log_lines.inc();
        let text = crate::telemetry::metrics::encode(&registry).unwrap();
        for line in [
            "pillion_trace_spans_exported_total 3",
            "pillion_trace_spans_dropped_total{reason=\"queue_full\"} 1",
            "pillion_trace_spans_dropped_total{reason=\"export_failed\"} 0",
            "pillion_trace_spans_dropped_total{reason=\"shutdown\"} 0",
            "pillion_trace_export_requests_total{result=\"ok\"} 0",
            "pillion_trace_export_requests_total{result=\"error\"} 1",
            "pillion_access_log_lines_total 1",
            "pillion_access_log_dropped_total 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
