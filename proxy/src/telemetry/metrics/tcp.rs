//! The proxy's TCP metrics. Their names are a contract the end-to-end tests and
//! dashboards rely on, so they are registered in this one place.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{Direction, DirectionLabels};

/// All TCP metric families, registered once per proxy.
#[derive(Clone, Debug, Default)]
pub(crate) struct TcpMetrics {
    opened: Family<DirectionLabels, Counter>,
    closed: Family<DirectionLabels, Counter>,
    open: Family<DirectionLabels, Gauge>,
    sent_bytes: Family<DirectionLabels, Counter>,
    received_bytes: Family<DirectionLabels, Counter>,
    connect_failures: Family<DirectionLabels, Counter>,
    loops_refused: Family<DirectionLabels, Counter>,
    silent_closed: Family<DirectionLabels, Counter>,
    over_budget: Family<DirectionLabels, Counter>,
    evicted: Family<DirectionLabels, Counter>,
}

/// The metric handles of one direction, resolved once so the hot path never
/// hashes labels or takes the family lock.
#[derive(Clone, Debug, Default)]
pub struct DirectionMetrics {
    /// Accepted connections (including ones refused as loops or failing to connect).
    pub opened: Counter,
    /// Connections finished, however they ended.
    pub closed: Counter,
    /// Connections currently open.
    pub open: Gauge,
    /// Bytes from the downstream client to the upstream.
    pub sent_bytes: Counter,
    /// Bytes from the upstream back to the downstream client.
    pub received_bytes: Counter,
    /// Upstream connects that failed or timed out.
    pub connect_failures: Counter,
    /// Connections refused because they would loop back into the proxy.
    pub loops_refused: Counter,
    /// Connections closed because nobody said a word by the detection deadline.
    pub silent_closed: Counter,
    /// Connections refused at accept because the connection budget was spent.
    pub over_budget: Counter,
    /// Silent crowded connections closed so a newcomer could have their permit.
    pub evicted: Counter,
}

/// Keeps `open` and `closed` honest: counts a connection open when created and
/// closed when dropped, whatever path (error, cancel, force-close) ends it.
#[derive(Debug)]
pub struct OpenConnection {
    metrics: DirectionMetrics,
}

impl TcpMetrics {
    /// Creates the families and registers them under their contract names.
    ///
    /// Both directions are created up front so `/metrics` shows zeros before traffic.
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        // prometheus-client appends `_total` to counters.
        registry.register(
            "pillion_tcp_connections_opened",
            "TCP connections accepted by the proxy",
            m.opened.clone(),
        );
        registry.register(
            "pillion_tcp_connections_closed",
            "TCP connections the proxy finished handling",
            m.closed.clone(),
        );
        registry.register(
            "pillion_tcp_connections_open",
            "TCP connections currently open through the proxy",
            m.open.clone(),
        );
        registry.register(
            "pillion_tcp_sent_bytes",
            "Bytes forwarded from the downstream client to the upstream",
            m.sent_bytes.clone(),
        );
        registry.register(
            "pillion_tcp_received_bytes",
            "Bytes forwarded from the upstream back to the downstream client",
            m.received_bytes.clone(),
        );
        registry.register(
            "pillion_tcp_connect_failures",
            "Upstream TCP connects that failed or timed out",
            m.connect_failures.clone(),
        );
        registry.register(
            "pillion_tcp_loops_refused",
            "Connections refused because they would loop back into the proxy",
            m.loops_refused.clone(),
        );
        registry.register(
            "pillion_tcp_silent_closed",
            "Connections closed because neither side sent a byte by the detection deadline",
            m.silent_closed.clone(),
        );
        registry.register(
            "pillion_tcp_over_budget",
            "Connections refused at accept because the proxy's connection budget was spent",
            m.over_budget.clone(),
        );
        registry.register(
            "pillion_tcp_evicted",
            "Silent connections accepted while the budget was crowded, closed to admit a \
             newcomer once it was spent",
            m.evicted.clone(),
        );
        for d in [Direction::Outbound, Direction::Inbound] {
            m.direction(d);
        }
        m
    }

    /// The handles for one direction (cheap clones sharing the registered values).
    pub(crate) fn direction(&self, direction: Direction) -> DirectionMetrics {
        let labels = DirectionLabels { direction };
        DirectionMetrics {
            opened: self.opened.get_or_create(&labels).clone(),
            closed: self.closed.get_or_create(&labels).clone(),
            open: self.open.get_or_create(&labels).clone(),
            sent_bytes: self.sent_bytes.get_or_create(&labels).clone(),
            received_bytes: self.received_bytes.get_or_create(&labels).clone(),
            connect_failures: self.connect_failures.get_or_create(&labels).clone(),
            loops_refused: self.loops_refused.get_or_create(&labels).clone(),
            silent_closed: self.silent_closed.get_or_create(&labels).clone(),
            over_budget: self.over_budget.get_or_create(&labels).clone(),
            evicted: self.evicted.get_or_create(&labels).clone(),
        }
    }
}

impl DirectionMetrics {
    /// Counts a newly accepted connection; the guard counts it closed on drop.
    pub fn open_connection(&self) -> OpenConnection {
        self.opened.inc();
        self.open.inc();
        OpenConnection {
            metrics: self.clone(),
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.metrics.open.dec();
        self.metrics.closed.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::metrics::encode;

    #[test]
    fn exposed_names_are_the_contract() {
        let mut registry = Registry::default();
        let m = TcpMetrics::register(&mut registry);
        let out = m.direction(Direction::Outbound);
        {
            let _conn = out.open_connection();
            out.sent_bytes.inc_by(5);
            out.received_bytes.inc_by(7);
        }
        m.direction(Direction::Inbound).loops_refused.inc();
        let text = encode(&registry).unwrap();
        for line in [
            "pillion_tcp_connections_opened_total{direction=\"outbound\"} 1",
            "pillion_tcp_connections_closed_total{direction=\"outbound\"} 1",
            "pillion_tcp_connections_open{direction=\"outbound\"} 0",
            "pillion_tcp_sent_bytes_total{direction=\"outbound\"} 5",
            "pillion_tcp_received_bytes_total{direction=\"outbound\"} 7",
            "pillion_tcp_connect_failures_total{direction=\"outbound\"} 0",
            "pillion_tcp_loops_refused_total{direction=\"inbound\"} 1",
            "pillion_tcp_silent_closed_total{direction=\"outbound\"} 0",
            "pillion_tcp_over_budget_total{direction=\"inbound\"} 0",
            "pillion_tcp_evicted_total{direction=\"inbound\"} 0",
            "pillion_tcp_connections_opened_total{direction=\"inbound\"} 0",
            "# TYPE pillion_tcp_connections_open gauge",
            "# TYPE pillion_tcp_sent_bytes counter",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"));
        assert!(!text.contains("_total_total"));
    }

    #[test]
    fn open_gauge_follows_the_guard() {
        let mut registry = Registry::default();
        let m = TcpMetrics::register(&mut registry).direction(Direction::Inbound);
        let a = m.open_connection();
        let b = m.open_connection();
        assert_eq!(m.open.get(), 2);
        drop(a);
        assert_eq!((m.open.get(), m.opened.get(), m.closed.get()), (1, 2, 1));
        drop(b);
        assert_eq!(m.open.get(), 0);
    }
}
