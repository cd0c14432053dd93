//! Metrics of the proxy's link to the agent: its certificate's expiry, renewals,
//! and whether the view stream is up.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of `pillion_identity_renewals_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabels {
    /// `ok` or `error`.
    pub result: &'static str,
}

/// The control-plane metric handles.
#[derive(Clone, Debug, Default)]
pub struct ControlMetrics {
    /// Unix time at which the installed certificate expires (0: none yet).
    pub cert_expiry: Gauge,
    /// Certificate requests that succeeded (the first one included).
    pub renewals_ok: Counter,
    /// Certificate requests that failed.
    pub renewals_error: Counter,
    /// 1 while the view stream from the agent is open, else 0.
    pub agent_connected: Gauge,
}

impl ControlMetrics {
    /// Creates the metrics and registers them under their contract names.
    pub fn register(registry: &mut Registry) -> ControlMetrics {
        let m = ControlMetrics::default();
        registry.register(
            "pillion_identity_cert_expiry_timestamp_seconds",
            "When the proxy's current certificate expires, in Unix seconds (0: none yet)",
            m.cert_expiry.clone(),
        );
        let renewals = Family::<ResultLabels, Counter>::default();
        registry.register(
            "pillion_identity_renewals",
            "Certificate requests to the agent (the first included), by result",
            renewals.clone(),
        );
        // One lookup per statement: a family's read guard must be gone before the
        // next `get_or_create` takes its write lock.
        let renewals_ok = renewals
            .get_or_create(&ResultLabels { result: "ok" })
            .clone();
        let renewals_error = renewals
            .get_or_create(&ResultLabels { result: "error" })
            .clone();
        let m = ControlMetrics {
            renewals_ok,
            renewals_error,
            ..m
        };
        registry.register(
            "pillion_agent_connected",
            "1 while the proxy's view stream from the agent is open, else 0",
            m.agent_connected.clone(),
        );
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposed_names_are_the_contract() {
        let mut registry = Registry::default();
        let m = ControlMetrics::register(&mut registry);
        m.cert_expiry.set(1_700_000_000);
        m.renewals_ok.inc();
        m.agent_connected.set(1);
        let text = crate::telemetry::metrics::encode(&registry).unwrap();
        for line in [
            "pillion_identity_cert_expiry_timestamp_seconds 1700000000",
            "pillion_identity_renewals_total{result=\"ok\"} 1",
            "pillion_identity_renewals_total{result=\"error\"} 0",
            "pillion_agent_connected 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
