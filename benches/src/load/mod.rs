//! The load generator: in-process hyper clients run on a pinned pod thread. Each
//! submodule measures one figure; all are bounded in time (or size) and stop by
//! themselves. [`flood`] is the flood client, run as a process of its own.

pub mod bulk;
pub mod closed;
pub mod conns;
pub mod flood;
pub mod h2;
pub(crate) mod http1;
pub mod open;
pub mod tls;

use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use http1::{connect_h1, connect_many, get, Reconnecting, Sent};

/// Bound of a single request or connection attempt; a stuck proxy shows up as errors,
/// never as a hung benchmark.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What a closed-loop run achieved.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Throughput {
    /// Requests (or connections) that completed correctly.
    pub ok: u64,
    /// Requests (or connections) that failed or timed out.
    pub errors: u64,
    /// Wall time of the measured phase, seconds.
    pub seconds: f64,
}

impl Throughput {
    /// Completed operations per second.
    pub fn per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.ok as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// Adds up the `(ok, errors)` of every closed-loop worker and times the run from
/// `start`, so each benchmark totals its workers the same way.
pub(crate) async fn sum_workers(
    workers: Vec<JoinHandle<(u64, u64)>>,
    start: Instant,
    what: &'static str,
) -> Result<Throughput> {
    let mut total = Throughput {
        ok: 0,
        errors: 0,
        seconds: 0.0,
    };
    for w in workers {
        let (ok, errors) = w.await.context(what)?;
        total.ok += ok;
        total.errors += errors;
    }
    total.seconds = start.elapsed().as_secs_f64();
    Ok(total)
}
