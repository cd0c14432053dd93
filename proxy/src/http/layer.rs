//! What the connection stacks hold to hand a connection to the HTTP layer: the
//! compiled tables, the inbound pools and the drain (HTTP connections close
//! gracefully when draining starts).

use std::future::Future;
use std::sync::Arc;

use super::inbound::InboundHttp;
use super::tables::HttpTables;
use crate::drain::Drain;

/// The HTTP layer as the stacks see it.
#[derive(Clone, Debug)]
pub struct HttpLayer {
    /// The compiled views.
    pub tables: Arc<HttpTables>,
    /// The inbound side with its application pools.
    pub inbound: Arc<InboundHttp>,
    /// The proxy's drain.
    pub drain: Drain,
}

impl HttpLayer {
    /// The layer over `tables`, closing connections gracefully on `drain`.
    pub fn new(tables: Arc<HttpTables>, drain: Drain) -> HttpLayer {
        HttpLayer {
            inbound: InboundHttp::new(Arc::clone(&tables)),
            tables,
            drain,
        }
    }

    /// Resolves when draining starts: the shutdown signal of every HTTP connection.
    pub fn shutdown(&self) -> impl Future<Output = ()> + Send + 'static {
        let drain = self.drain.clone();
        async move { drain.started().await }
    }
}
