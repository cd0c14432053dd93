//! Metrics of the mesh layer: TLS between proxies, passthrough, and inbound
//! refusals. Like the TCP metrics, the names are a contract for tests and dashboards.
//!
//! Every label value comes from a bounded set: directions and reasons are enums,
//! and peer identities come only from certificates that our trust bundle verified.

use std::fmt::{self, Write as _};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::telemetry::metrics::{Direction, DirectionLabels};

/// Why a mesh TLS handshake failed; the `reason` label.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The peer's certificate was malformed, missing or carried no usable identity.
    BadCertificate,
    /// The peer proved another identity than expected (or a foreign trust domain).
    IdentityMismatch,
    /// The peer's certificate does not chain to our trust bundle.
    UnknownCa,
    /// The peer's certificate (or ours, as the peer said) has expired.
    Expired,
    /// The handshake did not finish in time.
    Timeout,
    /// Anything else: I/O errors, protocol errors, no certificate of our own yet.
    Other,
}

impl HandshakeFailure {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::BadCertificate => "bad_certificate",
            HandshakeFailure::IdentityMismatch => "identity_mismatch",
            HandshakeFailure::UnknownCa => "unknown_ca",
            HandshakeFailure::Expired => "expired",
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Other => "other",
        }
    }
}

impl EncodeLabelValue for HandshakeFailure {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// Why the inbound side refused a connection; the `reason` label.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Denied {
    /// An authenticated peer whose identity the port's allow list does not admit.
    Identity,
    /// Plaintext on a strict port.
    Plaintext,
    /// No HTTP request (silence, an endless request line) on an HTTP-only port.
    NotHttp,
    /// Aimed at an address this pod does not own (or at its loopback from off it).
    NotThisPod,
}

impl Denied {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Denied::Identity => "identity",
            Denied::Plaintext => "plaintext",
            Denied::NotHttp => "not_http",
            Denied::NotThisPod => "not_this_pod",
        }
    }
}

impl EncodeLabelValue for Denied {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// Labels of `pillion_tls_handshake_failures_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct FailureLabels {
    /// `outbound` or `inbound`.
    pub direction: Direction,
    /// Why it failed.
    pub reason: HandshakeFailure,
}

/// Labels of `pillion_tls_connections_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PeerLabels {
    /// `outbound` or `inbound`.
    pub direction: Direction,
    /// The SPIFFE id the peer proved.
    pub peer_identity: String,
}

/// Labels of `pillion_inbound_denied_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DeniedLabels {
    /// Why it was refused.
    pub reason: Denied,
}

/// The mesh metric families, registered once per proxy.
#[derive(Clone, Debug, Default)]
pub struct MeshMetrics {
    handshake_failures: Family<FailureLabels, Counter>,
    tls_connections: Family<PeerLabels, Counter>,
    passthrough: Family<DirectionLabels, Counter>,
    denied: Family<DeniedLabels, Counter>,
}

impl MeshMetrics {
    /// Creates the families and registers them under their contract names.
    pub fn register(registry: &mut Registry) -> MeshMetrics {
        let m = MeshMetrics::default();
        registry.register(
            "pillion_tls_handshake_failures",
            "Mesh TLS handshakes that failed, by direction and reason",
            m.handshake_failures.clone(),
        );
        registry.register(
            "pillion_tls_connections",
            "Connections carried over mesh TLS, by direction and the peer's SPIFFE id",
            m.tls_connections.clone(),
        );
        registry.register(
            "pillion_tcp_passthrough",
            "Connections forwarded as plain TCP without mesh TLS",
            m.passthrough.clone(),
        );
        registry.register(
            "pillion_inbound_denied",
            "Inbound connections refused by policy, by reason",
            m.denied.clone(),
        );
        for direction in [Direction::Outbound, Direction::Inbound] {
            let _ = m.passthrough.get_or_create(&DirectionLabels { direction });
        }
        for reason in [Denied::Identity, Denied::Plaintext] {
            let _ = m.denied.get_or_create(&DeniedLabels { reason });
        }
        m
    }

    /// Counts a failed handshake.
    pub fn handshake_failed(&self, direction: Direction, reason: HandshakeFailure) {
        self.handshake_failures
            .get_or_create(&FailureLabels { direction, reason })
            .inc();
    }

    /// Counts a connection carried over mesh TLS with a peer that proved `peer`.
    pub fn tls_connection(&self, direction: Direction, peer: &str) {
        self.tls_connections
            .get_or_create(&PeerLabels {
                direction,
                peer_identity: peer.to_owned(),
            })
            .inc();
    }

    /// Counts a connection forwarded as plain TCP.
    pub fn passthrough(&self, direction: Direction) {
        self.passthrough
            .get_or_create(&DirectionLabels { direction })
            .inc();
    }

    /// Counts an inbound refusal.
    pub fn denied(&self, reason: Denied) {
        self.denied.get_or_create(&DeniedLabels { reason }).inc();
    }

    /// Current value of one handshake failure series (for tests).
    pub fn handshake_failures(&self, direction: Direction, reason: HandshakeFailure) -> u64 {
        self.handshake_failures
            .get_or_create(&FailureLabels { direction, reason })
            .get()
    }

    /// Current value of one denial series (for tests).
    pub fn denials(&self, reason: Denied) -> u64 {
        self.denied.get_or_create(&DeniedLabels { reason }).get()
    }

    /// Current value of one passthrough series (for tests).
    pub fn passthroughs(&self, direction: Direction) -> u64 {
        self.passthrough
            .get_or_create(&DirectionLabels { direction })
            .get()
    }

    /// Current value of one TLS connection series (for tests).
    pub fn tls_connections(&self, direction: Direction, peer: &str) -> u64 {
        self.tls_connections
            .get_or_create(&PeerLabels {
                direction,
                peer_identity: peer.to_owned(),
            })
            .get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposed_names_are_the_contract() {
        let mut registry = Registry::default();
        let m = MeshMetrics::register(&mut registry);
        m.handshake_failed(Direction::Outbound, HandshakeFailure::IdentityMismatch);
        m.tls_connection(
            Direction::Inbound,
            "spiffe://cluster.local/ns/demo/sa/client",
        );
        m.passthrough(Direction::Outbound);
        m.denied(Denied::Plaintext);
        let text = crate::telemetry::metrics::encode(&registry).unwrap();
        for line in [
            "pillion_tls_handshake_failures_total{direction=\"outbound\",reason=\"identity_mismatch\"} 1",
            "pillion_tls_connections_total{direction=\"inbound\",peer_identity=\"spiffe://cluster.local/ns/demo/sa/client\"} 1",
            "pillion_tcp_passthrough_total{direction=\"outbound\"} 1",
            "pillion_tcp_passthrough_total{direction=\"inbound\"} 0",
            "pillion_inbound_denied_total{reason=\"plaintext\"} 1",
            "pillion_inbound_denied_total{reason=\"identity\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }
}
