//! Telemetry beyond the HTTP route metrics: distributed tracing (W3C / B3 context,
//! parent-based ratio sampling, SERVER and CLIENT spans, OTLP export) and the access
//! log, plus their own health metrics.
//!
//! One rule above all: telemetry never slows or breaks traffic. Unsampled requests
//! cost one header lookup; sampled ones hand a plain record to a bounded queue that
//! never waits; export and log writing happen elsewhere, drop when behind, and count
//! what they drop.
//!
//! The HTTP layer's whole use of it:
//!
//! ```no_run
//! # use pillion_proxy::telemetry::{Telemetry, Inbound};
//! # fn demo(t: &Telemetry, mut req: http::Request<()>, peer: std::net::SocketAddr) {
//! let span = t.tracer().start_server(&req, Inbound { peer_addr: Some(peer), peer_identity: None, server_port: 8080 });
//! if let Some(span) = &span { span.inject(req.headers_mut()); }
//! // ... forward to the application, get the response ...
//! if let Some(span) = span { span.end(Some(http::StatusCode::OK), Some("route-name")); }
//! # }
//! ```
//!
//! Modules: `ids` (trace/span ids), `context` (headers in and out), `sampler`,
//! `span` (the tracer), `export` (the OTLP exporter), `access_log`,
//! `resource` (`service.name` and friends), `metrics`, `process` (`process_*`
//! and `pillion_build_info`).

pub(crate) mod access_log;
pub(crate) mod context;
pub(crate) mod export;
#[cfg(test)]
mod fixtures;
pub(crate) mod flags;
pub(crate) mod ids;
pub(crate) mod metrics;
pub(crate) mod observe;
pub(crate) mod process;
pub(crate) mod resource;
pub(crate) mod sampler;
pub(crate) mod span;

use std::time::Duration;

use pillion_api::defaults::telemetry as d;
use prometheus_client::registry::Registry;

pub use access_log::{AccessLog, AccessLogTarget, AccessRecord};
pub use export::{encode, span_queue, Endpoint, OtlpConfig, OtlpProtocol, SpanQueue, Transport};
pub use flags::TelemetryArgs;
pub use ids::{SpanId, TraceId};
pub use metrics::TelemetryMetrics;
pub use observe::{ObservedBody, Recorders, RequestObserver};
pub use resource::Resource;
pub use sampler::Sampler;
pub use span::{ActiveSpan, Inbound, SpanKind, SpanRecord, Tracer};

use access_log::AccessLogError;
use export::{EndpointError, Exporter};
use sampler::RatioError;

/// What telemetry the proxy produces.
#[derive(Clone, Debug, PartialEq)]
pub struct TelemetryConfig {
    /// The collector; `None` switches tracing off.
    pub otlp: Option<OtlpConfig>,
    /// Share of new traces sampled, `0.0..=1.0` (0: no spans at all).
    pub sampling: f64,
    /// Where access log lines go.
    pub access_log: AccessLogTarget,
    /// Lines the access log writer may fall behind by.
    pub access_log_queue: usize,
    /// Who the spans come from.
    pub resource: Resource,
}

impl Default for TelemetryConfig {
    /// No tracing, no access log.
    fn default() -> TelemetryConfig {
        TelemetryConfig {
            otlp: None,
            sampling: d::TRACE_SAMPLING,
            access_log: AccessLogTarget::Off,
            access_log_queue: d::ACCESS_LOG_QUEUE,
            resource: Resource::default(),
        }
    }
}

impl TelemetryConfig {
    /// Checks the ratio and the endpoint before anything starts.
    pub fn validate(&self) -> Result<(), TelemetryError> {
        Sampler::new(self.sampling)?;
        if let Some(otlp) = &self.otlp {
            otlp.validate()?;
        }
        Ok(())
    }
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The sampling ratio is out of range.
    #[error(transparent)]
    Ratio(#[from] RatioError),
    /// The collector endpoint is unusable.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// The access log cannot be opened.
    #[error(transparent)]
    AccessLog(#[from] AccessLogError),
}

/// The running telemetry: hand [`Telemetry::tracer`] and [`Telemetry::access_log`]
/// to the stacks; [`Telemetry::shutdown`] flushes the spans still queued.
#[derive(Debug, Default)]
pub struct Telemetry {
    tracer: Tracer,
    access_log: AccessLog,
    exporter: Option<Exporter>,
    metrics: TelemetryMetrics,
}

impl Telemetry {
    /// Registers the telemetry metrics and starts the exporter (on the current tokio
    /// runtime) and the access log writer as configured.
    pub fn start(
        config: &TelemetryConfig,
        registry: &mut Registry,
    ) -> Result<Telemetry, TelemetryError> {
        let sampler = Sampler::new(config.sampling)?;
        let metrics = TelemetryMetrics::register(registry);
        process::register(registry);
        let access_log =
            AccessLog::start(&config.access_log, config.access_log_queue, metrics.clone())?;
        let (tracer, exporter) = match &config.otlp {
            Some(otlp) if !sampler.is_off() => {
                otlp.validate()?;
                let (exporter, sink) =
                    Exporter::spawn(otlp.clone(), &config.resource, metrics.clone());
                tracing::info!(endpoint = %otlp.endpoint, protocol = %otlp.protocol, sampling = config.sampling, service = %config.resource.service_name, "exporting spans over OTLP");
                (Tracer::new(sampler, sink), Some(exporter))
            }
            _ => (Tracer::disabled(), None),
        };
        Ok(Telemetry {
            tracer,
            access_log,
            exporter,
            metrics,
        })
    }

    /// No tracing, no access log (for tests and embedding).
    pub fn disabled() -> Telemetry {
        Telemetry::default()
    }

    /// The tracer requests start spans with.
    pub fn tracer(&self) -> &Tracer {
        &self.tracer
    }

    /// The access log requests are logged to.
    pub fn access_log(&self) -> &AccessLog {
        &self.access_log
    }

    /// The tracer and access log together, for the HTTP stacks.
    pub fn recorders(&self) -> Recorders {
        Recorders {
            tracer: self.tracer.clone(),
            access_log: self.access_log.clone(),
        }
    }

    /// The telemetry health metrics (exported / dropped spans, log lines).
    pub fn metrics(&self) -> &TelemetryMetrics {
        &self.metrics
    }

    /// Flushes queued spans (waiting at most `grace`) and stops the exporter.
    pub async fn shutdown(self, grace: Duration) {
        drop(self.tracer);
        if let Some(exporter) = self.exporter {
            exporter.shutdown(grace).await;
        }
    }
}
