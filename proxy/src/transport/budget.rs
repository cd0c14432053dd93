//! The connection budget: how many accepted connections the proxy handles at once,
//! across both directions, kept below what its open-files limit can carry. A flood
//! then meets a refusal at accept (the new connection is closed at once, counted in
//! `pillion_tcp_over_budget_total` and logged at most once a second) instead of
//! descriptor exhaustion, which would fail connections that are already open: their
//! upstream connects, pooled connections, the agent's stream and the admin port.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Descriptors kept out of the budget: listeners, the agent's stream, the admin
/// server and its callers, pooled connections, the runtime's own.
const RESERVED_FDS: u64 = 512;

/// Time between two log lines about refused connections.
const WARN_EVERY: Duration = Duration::from_secs(1);

/// Longest a connection accepted while the budget is crowded may take to show its
/// first bytes (a mesh client sends its ClientHello at once, an HTTP client its
/// request): silent newcomers then give their permits back within a second instead
/// of holding the budget full for the whole detection deadline, while the
/// legitimate connections a flood would crowd out keep getting in.
pub(crate) const CROWDED_FIRST_BYTES: Duration = Duration::from_secs(1);

/// A bounded count of things held at once: the connections of every listener of
/// one proxy, or its server-first probes ([`crate::detect::first_word::MAX_PROBES`]).
#[derive(Debug)]
pub(crate) struct Budget {
    limit: usize,
    open: AtomicUsize,
    /// Milliseconds from `started` when the last refusal was logged (0: never).
    warned_at: AtomicU64,
    started: Instant,
}

/// One accepted connection's share of the budget, returned when dropped.
#[derive(Debug)]
pub(crate) struct Permit(Arc<Budget>);

impl Budget {
    /// A budget of `limit` connections (at least one).
    pub(crate) fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget {
            limit: limit.max(1),
            open: AtomicUsize::new(0),
            warned_at: AtomicU64::new(0),
            started: Instant::now(),
        })
    }

    /// The budget an open-files limit of `nofile` carries: every proxied
    /// connection may hold two descriptors (its own and its upstream's), after a
    /// reserve for everything else.
    pub(crate) fn for_open_files(nofile: u64) -> usize {
        let connections = nofile.saturating_sub(RESERVED_FDS) / 2;
        usize::try_from(connections).unwrap_or(usize::MAX).max(1)
    }

    /// Most connections handled at once.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// More than half the budget in use (a flood, most likely): silent clients no
    /// longer get an early upstream connection each (server-first detection), so
    /// every further connection costs one descriptor, not two.
    pub(crate) fn crowded(&self) -> bool {
        self.open.load(Ordering::Relaxed) > self.limit / 2
    }

    /// A permit for one more connection, or `None` when the budget is spent.
    pub(crate) fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.limit).then_some(open + 1)
            })
            .ok()
            .map(|_| Permit(Arc::clone(self)))
    }

    /// Whether a refusal now should be logged (at most one line per second).
    pub(crate) fn should_warn(&self) -> bool {
        let now = u64::try_from(self.started.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let last = self.warned_at.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= WARN_EVERY.as_millis() as u64;
        due && self
            .warned_at
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_past_the_limit_and_takes_back_what_closes() {
        let budget = Budget::new(2);
        let a = budget.try_acquire().unwrap();
        let _b = budget.try_acquire().unwrap();
        assert!(budget.try_acquire().is_none());
        drop(a);
        assert!(budget.try_acquire().is_some());
    }

    #[test]
    fn crowded_past_half() {
        let budget = Budget::new(4);
        let held: Vec<_> = (0..2).filter_map(|_| budget.try_acquire()).collect();
        assert!(!budget.crowded());
        let third = budget.try_acquire();
        assert!(budget.crowded());
        drop((held, third));
        assert!(!budget.crowded());
    }

    #[test]
    fn the_open_files_limit_carries_two_descriptors_a_connection() {
        assert_eq!(Budget::for_open_files(20_000), 9_744);
        assert_eq!(Budget::for_open_files(1_024), 256);
        assert_eq!(Budget::for_open_files(100), 1);
    }

    #[test]
    fn refusals_are_logged_at_most_once_a_second() {
        let budget = Budget::new(1);
        assert!(budget.should_warn());
        assert!(!budget.should_warn());
    }
}
