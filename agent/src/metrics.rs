//! The agent's own metrics, served at `GET /metrics` on its API port (Prometheus
//! text): how many proxies watch it and resolve through it, how fast a change
//! reaches them, what it signed and refused, and what became of its source's updates.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Path of the metrics endpoint.
pub const METRICS_PATH: &str = "/metrics";

/// Labels of `pillion_agent_certificates_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertificateLabels {
    /// `issued` or `refused`.
    result: &'static str,
    /// Why it was refused: the error code the proxy got (`identity_mismatch`,
    /// `malformed_csr`, `weak_key`), or `unauthenticated`, `bad_request`,
    /// `too_large`, `internal`; empty if issued.
    reason: &'static str,
}

/// Labels of `pillion_agent_source_updates_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpdateLabels {
    /// `published` or `refused`.
    result: &'static str,
}

/// Labels of `pillion_agent_resolutions_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AnswerLabels {
    /// `service` (the address belongs to one) or `outside` (to none).
    answer: &'static str,
}

/// The agent's metric handles and the registry they are served from.
pub struct AgentMetrics {
    registry: Registry,
    watchers: Gauge,
    resolvers: Gauge,
    resolutions: Family<AnswerLabels, Counter>,
    certificates: Family<CertificateLabels, Counter>,
    source_updates: Family<UpdateLabels, Counter>,
    source_version: Gauge,
    push_seconds: Histogram,
    leader: Gauge,
    /// Key set fetches that brought nothing usable (the last good set stays).
    pub jwks_fetch_failures: Counter,
}

impl fmt::Debug for AgentMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentMetrics").finish_non_exhaustive()
    }
}

impl AgentMetrics {
    /// Creates and registers every metric under its contract name.
    pub fn new() -> Arc<AgentMetrics> {
        let mut registry = Registry::default();
        let watchers = Gauge::default();
        let resolvers = Gauge::default();
        let resolutions = Family::<AnswerLabels, Counter>::default();
        let certificates = Family::<CertificateLabels, Counter>::default();
        let source_updates = Family::<UpdateLabels, Counter>::default();
        let source_version = Gauge::default();
        let leader = Gauge::default();
        let jwks_fetch_failures = Counter::default();
        // 1 ms to about 16 s.
        let push_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        registry.register(
            "pillion_agent_watchers",
            "View streams open to proxies",
            watchers.clone(),
        );
        registry.register(
            "pillion_agent_resolvers",
            "Per-destination discovery streams open to proxies (on-demand discovery)",
            resolvers.clone(),
        );
        registry.register(
            "pillion_agent_resolutions",
            "Answers sent on discovery streams, by whether a service has the address",
            resolutions.clone(),
        );
        registry.register(
            "pillion_agent_certificates",
            "Certificate requests answered, by result and the reason of a refusal",
            certificates.clone(),
        );
        registry.register(
            "pillion_agent_source_updates",
            "Changes of the agent's source: published as a new version, or refused",
            source_updates.clone(),
        );
        registry.register(
            "pillion_agent_source_version",
            "The version of the source being served",
            source_version.clone(),
        );
        registry.register(
            "pillion_agent_leader",
            "1 while this replica holds the Lease and writes to the API server (Kubernetes mode), else 0",
            leader.clone(),
        );
        registry.register(
            "pillion_agent_jwks_fetch_failures",
            "Fetches of a token provider's jwks_uri that failed or brought an unusable key set; the last good set stays in force",
            jwks_fetch_failures.clone(),
        );
        registry.register(
            "pillion_agent_push_seconds",
            "From a source version's publication to its view line handed to a watcher's connection",
            push_seconds.clone(),
        );
        Arc::new(AgentMetrics {
            registry,
            watchers,
            resolvers,
            resolutions,
            certificates,
            source_updates,
            source_version,
            push_seconds,
            leader,
            jwks_fetch_failures,
        })
    }

    /// Counts one answered certificate request (`reason` empty when issued).
    pub fn certificate(&self, result: &'static str, reason: &'static str) {
        self.certificates
            .get_or_create(&CertificateLabels { result, reason })
            .inc();
    }

    /// Counts a change of the source and, when published, its version.
    pub fn source_update(&self, result: &'static str, version: u64) {
        self.source_updates
            .get_or_create(&UpdateLabels { result })
            .inc();
        if result == "published" {
            self.source_version
                .set(i64::try_from(version).unwrap_or(i64::MAX));
        }
    }

    /// Records how long a change took to reach one watcher's connection.
    pub fn pushed(&self, after: Duration) {
        self.push_seconds.observe(after.as_secs_f64());
    }

    /// Records whether this replica leads (writes to the API server).
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Counts a watcher for as long as the guard lives.
    pub fn watching(self: &Arc<Self>) -> Open {
        self.watchers.inc();
        Open(self.watchers.clone())
    }

    /// Counts a discovery stream for as long as the guard lives.
    pub fn resolving(self: &Arc<Self>) -> Open {
        self.resolvers.inc();
        Open(self.resolvers.clone())
    }

    /// Counts one answer sent on a discovery stream.
    pub fn resolved(&self, found: bool) {
        let answer = if found { "service" } else { "outside" };
        self.resolutions
            .get_or_create(&AnswerLabels { answer })
            .inc();
    }

    /// The Prometheus text of every metric.
    pub fn encode(&self) -> Result<String, fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// One open stream, counted in its gauge (`pillion_agent_watchers` or
/// `pillion_agent_resolvers`) until dropped.
#[derive(Debug)]
pub struct Open(Gauge);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposed_names_are_the_contract() {
        let m = AgentMetrics::new();
        let watching = m.watching();
        let resolving = m.resolving();
        m.resolved(true);
        m.resolved(false);
        m.resolved(false);
        m.certificate("issued", "");
        m.certificate("refused", "identity_mismatch");
        m.source_update("published", 7);
        m.source_update("refused", 0);
        m.pushed(Duration::from_millis(3));
        m.set_leader(true);
        let text = m.encode().unwrap();
        for line in [
            "pillion_agent_watchers 1",
            "pillion_agent_resolvers 1",
            "pillion_agent_resolutions_total{answer=\"service\"} 1",
            "pillion_agent_resolutions_total{answer=\"outside\"} 2",
            "pillion_agent_certificates_total{result=\"issued\",reason=\"\"} 1",
            "pillion_agent_certificates_total{result=\"refused\",reason=\"identity_mismatch\"} 1",
            "pillion_agent_source_updates_total{result=\"published\"} 1",
            "pillion_agent_source_updates_total{result=\"refused\"} 1",
            "pillion_agent_source_version 7",
            "pillion_agent_push_seconds_count 1",
            "pillion_agent_leader 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        drop(watching);
        drop(resolving);
        let text = m.encode().unwrap();
        for line in ["pillion_agent_watchers 0", "pillion_agent_resolvers 0"] {
            assert!(text.lines().any(|l| l == line), "missing {line:?}");
        }
    }
}
