//! Metrics of the proxy's link to the agent: its certificate's expiry, renewals,
//! whether the view stream is up, and what on-demand discovery holds and asked.

use std::time::UNIX_EPOCH;

use pillion_identity::{BundleOutcome, BundleSource, CertStore, StoreError};
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

/// Labels of `pillion_identity_trust_bundle_updates_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct BundleLabels {
    /// `file` or `agent`.
    pub source: &'static str,
    /// `installed`, `unchanged`, `held_agent`, `held_own_leaf` or `refused`.
    pub result: &'static str,
}

/// Labels of `pillion_discovery_resolutions_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct AnswerLabels {
    /// `service`, `outside`, or `failed` (no answer: the connection was refused).
    pub answer: &'static str,
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
    /// Trust bundles offered, by source and what became of them.
    bundle_updates: Family<BundleLabels, Counter>,
    /// Roots in the installed trust bundle.
    bundle_roots: Gauge,
    /// Unix time at which the installed bundle's first root expires (0: none yet).
    bundle_expiry: Gauge,
    /// Destinations on-demand discovery holds (each one answer stream).
    pub(crate) destinations: Gauge,
    /// First answers for a destination, by what they said.
    resolutions: Family<AnswerLabels, Counter>,
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
        registry.register(
            "pillion_discovery_destinations",
            "Destinations on-demand discovery holds, each followed by one stream from the agent",
            m.destinations.clone(),
        );
        registry.register(
            "pillion_discovery_resolutions",
            "First answers for a destination: service, outside (the mesh), or failed (refused)",
            m.resolutions.clone(),
        );
        registry.register(
            "pillion_identity_trust_bundle_updates",
            "Trust bundles offered to the proxy, by source (file, agent) and result",
            m.bundle_updates.clone(),
        );
        registry.register(
            "pillion_identity_trust_bundle_roots",
            "Roots in the proxy's installed trust bundle",
            m.bundle_roots.clone(),
        );
        registry.register(
            "pillion_identity_trust_bundle_expiry_timestamp_seconds",
            "When the first root of the installed trust bundle expires, in Unix seconds",
            m.bundle_expiry.clone(),
        );
        m
    }

    /// Counts the first answer for a destination.
    pub(crate) fn resolved(&self, answer: &'static str) {
        self.resolutions
            .get_or_create(&AnswerLabels { answer })
            .inc();
    }

    /// Counts one offered bundle by what became of it (`refused` when it could not
    /// be used) and refreshes the gauges from what `store` holds.
    pub(crate) fn bundle_offered(
        &self,
        source: BundleSource,
        offered: &Result<BundleOutcome, StoreError>,
        store: &CertStore,
    ) {
        let result = offered.as_ref().map_or("refused", |o| o.as_str());
        self.bundle_updates
            .get_or_create(&BundleLabels {
                source: source.as_str(),
                result,
            })
            .inc();
        if let Some(bundle) = store.trust_bundle() {
            self.bundle_roots
                .set(i64::try_from(bundle.len()).unwrap_or(i64::MAX));
            let unix = bundle
                .earliest_expiry()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            self.bundle_expiry
                .set(i64::try_from(unix).unwrap_or(i64::MAX));
        }
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
        m.destinations.set(3);
        m.resolved("outside");
        let ca = pillion_identity::Ca::generate("cluster.local").unwrap();
        let id = pillion_identity::SpiffeId::new("cluster.local", "ns", "sa").unwrap();
        let store = CertStore::new(id);
        let refused = store.offer_trust_bundle("garbage", BundleSource::File, None);
        m.bundle_offered(BundleSource::File, &refused, &store);
        let installed = store.offer_trust_bundle(&ca.trust_bundle_pem(), BundleSource::Agent, None);
        m.bundle_offered(BundleSource::Agent, &installed, &store);
        let expiry = store
            .trust_bundle()
            .unwrap()
            .earliest_expiry()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let expiry_line =
            format!("pillion_identity_trust_bundle_expiry_timestamp_seconds {expiry}");
        let text = crate::telemetry::metrics::encode(&registry).unwrap();
        for line in [
            "pillion_identity_cert_expiry_timestamp_seconds 1700000000",
            "pillion_identity_renewals_total{result=\"ok\"} 1",
            "pillion_identity_renewals_total{result=\"error\"} 0",
            "pillion_agent_connected 1",
            "pillion_discovery_destinations 3",
            "pillion_discovery_resolutions_total{answer=\"outside\"} 1",
            "pillion_identity_trust_bundle_updates_total{source=\"file\",result=\"refused\"} 1",
            "pillion_identity_trust_bundle_updates_total{source=\"agent\",result=\"installed\"} 1",
            "pillion_identity_trust_bundle_roots 1",
            &expiry_line,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
