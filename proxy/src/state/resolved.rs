//! What on-demand discovery has learned, as the compiler takes it: the services the
//! agent named for destinations this workload used, and the destinations it said
//! are outside the mesh, each with the [`Usage`] mark the data path keeps fresh so
//! the resolver can forget what the workload stopped using.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use pillion_api::view::Service;

/// Learned services and outside destinations, compiled next to the view's services.
#[derive(Debug, Default)]
pub(crate) struct Resolved {
    /// Services, each with the mark of its uses.
    pub services: Vec<(Arc<Service>, Arc<Usage>)>,
    /// Destinations no service has: plain TCP, without asking again while used.
    pub outside: Vec<(SocketAddr, Arc<Usage>)>,
}

/// When a learned destination was last used, in whole seconds of a process clock:
/// one relaxed load per use, and a store only when the second changed, so the
/// cache line stays shared between cores.
#[derive(Debug)]
pub(crate) struct Usage {
    last: AtomicU64,
}

/// The process clock usage is kept in: seconds since the first use, counted from
/// an offset so that "a while ago" is always representable.
fn clock() -> u64 {
    const OFFSET: u64 = 1 << 20;
    static START: OnceLock<Instant> = OnceLock::new();
    OFFSET + START.get_or_init(Instant::now).elapsed().as_secs()
}

impl Usage {
    /// A mark used now.
    pub(crate) fn new() -> Usage {
        Usage {
            last: AtomicU64::new(clock()),
        }
    }

    /// Marks a use.
    pub(crate) fn touch(&self) {
        let now = clock();
        if self.last.load(Ordering::Relaxed) != now {
            self.last.store(now, Ordering::Relaxed);
        }
    }

    /// Makes the last use `secs` ago (tests of forgetting).
    #[cfg(test)]
    pub(crate) fn set_idle_for_tests(&self, secs: u64) {
        self.last
            .store(clock().saturating_sub(secs), Ordering::Relaxed);
    }

    /// Time since the last use, to the second.
    pub(crate) fn idle_for(&self) -> Duration {
        Duration::from_secs(clock().saturating_sub(self.last.load(Ordering::Relaxed)))
    }
}

impl Default for Usage {
    fn default() -> Self {
        Usage::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_use_resets_the_idle_time() {
        let usage = Usage::new();
        assert!(usage.idle_for() < Duration::from_secs(1));
        usage.set_idle_for_tests(90);
        assert!(usage.idle_for() >= Duration::from_secs(90));
        usage.touch();
        assert_eq!(usage.idle_for(), Duration::ZERO);
    }
}
