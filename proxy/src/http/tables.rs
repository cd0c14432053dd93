//! The compiled views the HTTP layer reads, swapped whole when the agent sends a
//! new view: requests load the newest tables without a lock; compiling happens on
//! the watcher's side, one view at a time.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use arc_swap::ArcSwap;
use pillion_api::view::View;

use super::inbound_table::InboundTable;
use super::metrics::HttpMetrics;
use super::outbound_table::OutboundTable;
use super::settings::HttpSettings;

/// The HTTP layer's shared state: settings, metrics and the current tables.
#[derive(Debug)]
pub struct HttpTables {
    settings: HttpSettings,
    metrics: HttpMetrics,
    outbound: ArcSwap<OutboundTable>,
    inbound: ArcSwap<InboundTable>,
    installing: Mutex<()>,
}

impl HttpTables {
    /// Empty tables (no view yet: every destination passes through).
    pub fn new(settings: HttpSettings, metrics: HttpMetrics) -> Arc<HttpTables> {
        Arc::new(HttpTables {
            settings,
            metrics,
            outbound: ArcSwap::from_pointee(OutboundTable::default()),
            inbound: ArcSwap::from_pointee(InboundTable::default()),
            installing: Mutex::new(()),
        })
    }

    /// Compiles `view` and makes it current for the next request; state the new view
    /// shares with the old (endpoints, balancers, limiters) is carried over. Views
    /// older than the current one are ignored.
    pub fn install(&self, view: &View) {
        let _one_at_a_time = self
            .installing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let previous = self.outbound.load_full();
        if previous.version().is_some_and(|v| v > view.version) {
            tracing::debug!(
                version = view.version,
                "ignoring a view older than the current one"
            );
            return;
        }
        let now = Instant::now();
        let outbound = OutboundTable::compile(view, &previous, &self.settings, &self.metrics, now);
        let inbound = InboundTable::compile(view, &self.inbound.load(), &self.metrics, now);
        self.outbound.store(Arc::new(outbound));
        self.inbound.store(Arc::new(inbound));
        tracing::debug!(version = view.version, "HTTP routes installed");
    }

    /// The current outbound table.
    pub fn outbound(&self) -> arc_swap::Guard<Arc<OutboundTable>> {
        self.outbound.load()
    }

    /// The current inbound table.
    pub fn inbound(&self) -> arc_swap::Guard<Arc<InboundTable>> {
        self.inbound.load()
    }

    /// The settings every connection uses.
    pub fn settings(&self) -> &HttpSettings {
        &self.settings
    }

    /// The metric families.
    pub fn metrics(&self) -> &HttpMetrics {
        &self.metrics
    }
}
