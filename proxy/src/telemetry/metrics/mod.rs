//! Every metric the proxy exports, registered in one place each, with bounded label
//! values: the TCP connection metrics ([`tcp`]), mesh TLS and inbound refusals
//! ([`mesh`]), the per-route HTTP metrics ([`http`]) and telemetry's own health
//! ([`export`]). Their names are a contract for tests and dashboards.

use std::fmt::{self, Write as _};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::registry::Registry;

pub(crate) mod cache;
pub(crate) mod export;
pub(crate) mod http;
pub(crate) mod mesh;
pub(crate) mod tcp;

pub(crate) use export::DropReason;
pub use export::TelemetryMetrics;

/// Which listener a connection came through; the `direction` label of every metric.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Direction {
    /// From the local application to somewhere else (listener 15001).
    Outbound,
    /// From somewhere else to the local application (listener 15006).
    Inbound,
    /// From outside the mesh into it, in the gateway role (`--gateway-https`).
    Gateway,
}

impl Direction {
    /// The label value and log field: `outbound` or `inbound`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
            Direction::Gateway => "gateway",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// The label set of the TCP metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DirectionLabels {
    /// `outbound` or `inbound`.
    pub direction: Direction,
}

/// Renders a registry as OpenMetrics text, the body of `/metrics`.
pub fn encode(registry: &Registry) -> Result<String, fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

/// Content type of [`encode`]'s output.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
