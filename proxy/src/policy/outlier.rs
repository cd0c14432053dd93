//! Outlier detection: endpoints that fail several times in a row are ejected from
//! load balancing for a growing time, but never more than a set share of a backend's
//! endpoints at once, so a backend-wide outage cannot eject everything.
//!
//! - `consecutive_failures` failures in a row (default 5) eject an endpoint.
//! - The n-th ejection lasts `base_ejection × 2^(n-1)` (default 10 s, 20 s, 40 s, …),
//!   capped at `max_ejection` (default 5 min). An endpoint that stayed in service for
//!   `max_ejection` since its last ejection ended starts again from `base_ejection`.
//! - At most `⌊max_ejected_share × endpoints⌋` (default 50 %) are ejected at once; a
//!   refused ejection resets the failure count, so checking the share (a scan of the
//!   set) happens at most once per `consecutive_failures` failures.
//! - An ejected endpoint comes back by itself when its time is up, or sooner when a
//!   retry, sent to it as a last resort, gets a good answer.
//!
//! The per-request path is atomics only; the short lock serializes ejections, which
//! are rare. What counts as a failure (5xx, connect failure, reset, timeout) is the
//! caller's choice.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Tuning of outlier detection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutlierConfig {
    /// Failures in a row that eject an endpoint.
    pub consecutive_failures: u32,
    /// Length of a first ejection.
    pub base_ejection: Duration,
    /// Longest ejection.
    pub max_ejection: Duration,
    /// Largest share of the endpoints that may be ejected at once (0.0..=1.0).
    pub max_ejected_share: f64,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
            max_ejected_share: 0.5,
        }
    }
}

/// An ejection that just happened, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ejection {
    /// Index of the ejected endpoint.
    pub endpoint: usize,
    /// How long it stays out.
    pub duration: Duration,
    /// How many times in a row it has been ejected, this one included.
    pub times: u32,
}

/// The health of one backend's endpoints (indices as in the caller's endpoint list).
#[derive(Debug)]
pub(crate) struct OutlierDetector {
    config: OutlierConfig,
    epoch: Instant,
    endpoints: Box<[Health]>,
    ejecting: Mutex<()>,
}

#[derive(Debug, Default)]
struct Health {
    failures: AtomicU32,
    /// End of the last ejection in nanoseconds since `epoch`; 0 = never ejected.
    ejected_until: AtomicU64,
    /// Ejections in a row (see the module docs for when it starts over).
    times: AtomicU32,
}

impl OutlierDetector {
    /// A detector for `endpoints` endpoints, all in service; `now` starts its clock.
    pub(crate) fn new(endpoints: usize, config: OutlierConfig, now: Instant) -> OutlierDetector {
        OutlierDetector {
            config,
            epoch: now,
            endpoints: (0..endpoints).map(|_| Health::default()).collect(),
            ejecting: Mutex::new(()),
        }
    }

    fn nanos(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// True when endpoint `i` is ejected at `now` (unknown indices are not).
    pub(crate) fn is_ejected(&self, i: usize, now: Instant) -> bool {
        self.endpoints
            .get(i)
            .is_some_and(|h| self.nanos(now) < h.ejected_until.load(Ordering::Acquire))
    }

    /// Number of endpoints ejected at `now`.
    pub(crate) fn ejected_count(&self, now: Instant) -> usize {
        let now_ns = self.nanos(now);
        self.endpoints
            .iter()
            .filter(|h| now_ns < h.ejected_until.load(Ordering::Acquire))
            .count()
    }

    /// Endpoint `i` answered well: its run of failures is over.
    pub(crate) fn record_success(&self, i: usize) {
        if let Some(h) = self.endpoints.get(i) {
            // Read first: most successes find nothing to reset, and a load keeps the
            // cache line shared between cores.
            if h.failures.load(Ordering::Relaxed) != 0 {
                h.failures.store(0, Ordering::Relaxed);
            }
        }
    }

    /// Endpoint `i` failed at `now`; returns the ejection if this failure caused one.
    pub(crate) fn record_failure(&self, i: usize, now: Instant) -> Option<Ejection> {
        let health = self.endpoints.get(i)?;
        let now_ns = self.nanos(now);
        if now_ns < health.ejected_until.load(Ordering::Acquire) {
            return None; // late answers of requests sent before the ejection
        }
        let failures = health.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < self.config.consecutive_failures.max(1) {
            return None;
        }
        let _guard = self.ejecting.lock().unwrap_or_else(PoisonError::into_inner);
        health.failures.store(0, Ordering::Relaxed);
        let last_until = health.ejected_until.load(Ordering::Acquire);
        if now_ns < last_until {
            return None; // another thread ejected it meanwhile
        }
        let allowed = (self.config.max_ejected_share.clamp(0.0, 1.0) * self.endpoints.len() as f64)
            .floor() as usize;
        if self.ejected_count(now) >= allowed {
            return None;
        }
        let max_ns = u64::try_from(self.config.max_ejection.as_nanos()).unwrap_or(u64::MAX);
        let rested = last_until != 0 && now_ns.saturating_sub(last_until) >= max_ns;
        let times = if rested {
            1
        } else {
            health.times.load(Ordering::Relaxed).saturating_add(1)
        };
        health.times.store(times, Ordering::Relaxed);
        let duration = ejection_time(times, self.config.base_ejection, self.config.max_ejection);
        let until = now_ns
            .saturating_add(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX))
            .max(1);
        health.ejected_until.store(until, Ordering::Release);
        Some(Ejection {
            endpoint: i,
            duration,
            times,
        })
    }

    /// Ends endpoint `i`'s ejection at `now` (it answered well while ejected); true
    /// if it was ejected. Its ejection count stays, as for an ejection that ran out.
    pub(crate) fn readmit(&self, i: usize, now: Instant) -> bool {
        let Some(health) = self.endpoints.get(i) else {
            return false;
        };
        let _guard = self.ejecting.lock().unwrap_or_else(PoisonError::into_inner);
        let now_ns = self.nanos(now).max(1);
        if now_ns >= health.ejected_until.load(Ordering::Acquire) {
            return false;
        }
        health.failures.store(0, Ordering::Relaxed);
        health.ejected_until.store(now_ns, Ordering::Release);
        true
    }

    /// A detector for a changed endpoint list that keeps what this one knows about
    /// the endpoints both lists share: `old_index(i)` is the index in this detector of
    /// the new list's endpoint `i` (`None` for a new endpoint, which starts healthy).
    /// Ejections in progress, failure runs and ejection counts carry over, so a view
    /// update never returns a failing endpoint to service early.
    pub(crate) fn carried(
        &self,
        endpoints: usize,
        old_index: impl Fn(usize) -> Option<usize>,
    ) -> OutlierDetector {
        let health = (0..endpoints)
            .map(|i| {
                let fresh = Health::default();
                if let Some(old) = old_index(i).and_then(|j| self.endpoints.get(j)) {
                    fresh
                        .failures
                        .store(old.failures.load(Ordering::Relaxed), Ordering::Relaxed);
                    fresh
                        .ejected_until
                        .store(old.ejected_until.load(Ordering::Acquire), Ordering::Release);
                    fresh
                        .times
                        .store(old.times.load(Ordering::Relaxed), Ordering::Relaxed);
                }
                fresh
            })
            .collect();
        OutlierDetector {
            config: self.config,
            epoch: self.epoch,
            endpoints: health,
            ejecting: Mutex::new(()),
        }
    }

    /// Number of endpoints watched.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// True when there are no endpoints to watch.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }
}

/// `base × 2^(times-1)`, at most `max`.
fn ejection_time(times: u32, base: Duration, max: Duration) -> Duration {
    let doublings = times.saturating_sub(1).min(31);
    base.checked_mul(1u32 << doublings).unwrap_or(max).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn fail(d: &OutlierDetector, i: usize, times: u32, now: Instant) -> Option<Ejection> {
        (0..times).filter_map(|_| d.record_failure(i, now)).last()
    }

    #[test]
    fn five_failures_in_a_row_eject_for_the_base_time() {
        let t0 = Instant::now();
        let d = OutlierDetector::new(4, OutlierConfig::default(), t0);
        assert_eq!(fail(&d, 1, 4, t0), None);
        assert!(!d.is_ejected(1, t0));
        let e = d.record_failure(1, t0).unwrap();
        assert_eq!(
            e,
            Ejection {
                endpoint: 1,
                duration: 10 * S,
                times: 1
            }
        );
        assert!(d.is_ejected(1, t0 + 9 * S));
        assert!(!d.is_ejected(1, t0 + 10 * S), "recovers by itself");
        assert!(!d.is_ejected(0, t0));
        assert_eq!(d.ejected_count(t0), 1);
    }

    #[test]
    fn a_success_breaks_the_run() {
        let t0 = Instant::now();
        let d = OutlierDetector::new(2, OutlierConfig::default(), t0);
        assert_eq!(fail(&d, 0, 4, t0), None);
        d.record_success(0);
        assert_eq!(fail(&d, 0, 4, t0), None);
        assert!(!d.is_ejected(0, t0));
        assert!(fail(&d, 0, 1, t0).is_some());
    }

    #[test]
    fn a_readmitted_endpoint_is_in_service_and_its_next_ejection_is_longer() {
        let t0 = Instant::now();
        let d = OutlierDetector::new(2, OutlierConfig::default(), t0);
        assert!(!d.readmit(0, t0), "not ejected, nothing to end");
        assert!(fail(&d, 0, 5, t0).is_some());
        assert!(d.readmit(0, t0 + S));
        assert!(!d.is_ejected(0, t0 + S));
        assert_eq!(d.ejected_count(t0 + S), 0, "room for the other one again");
        assert!(!d.readmit(0, t0 + S));
        let again = fail(&d, 0, 5, t0 + 2 * S).unwrap();
        assert_eq!(again.duration, 20 * S, "the count stays");
    }

    #[test]
    fn repeated_ejections_grow_and_are_capped() {
        let t0 = Instant::now();
        let config = OutlierConfig {
            max_ejection: 60 * S,
            ..OutlierConfig::default()
        };
        let d = OutlierDetector::new(2, config, t0);
        let mut now = t0;
        let mut durations = Vec::new();
        for _ in 0..5 {
            let e = fail(&d, 0, 5, now).unwrap();
            durations.push(e.duration.as_secs());
            now += e.duration; // back in service, and failing again at once
        }
        assert_eq!(durations, [10, 20, 40, 60, 60]);
    }

    #[test]
    fn a_long_healthy_spell_starts_over_from_the_base_time() {
        let t0 = Instant::now();
        let d = OutlierDetector::new(2, OutlierConfig::default(), t0);
        let first = fail(&d, 0, 5, t0).unwrap();
        let back = t0 + first.duration;
        assert_eq!(fail(&d, 0, 5, back).unwrap().times, 2);
        let much_later = back + 20 * S + 300 * S;
        let again = fail(&d, 0, 5, much_later).unwrap();
        assert_eq!((again.times, again.duration), (1, 10 * S));
    }

    #[test]
    fn never_more_than_half_are_ejected() {
        let t0 = Instant::now();
        let d = OutlierDetector::new(5, OutlierConfig::default(), t0);
        let ejected = (0..5).filter(|&i| fail(&d, i, 5, t0).is_some()).count();
        assert_eq!(ejected, 2, "⌊50 % of 5⌋");
        assert_eq!(d.ejected_count(t0), 2);
        // Endpoints kept in service keep failing; still no more than two out.
        for i in 2..5 {
            assert_eq!(fail(&d, i, 50, t0 + S), None);
        }
        assert_eq!(d.ejected_count(t0 + S), 2);
        // When the first two return, others may take their turn.
        let later = t0 + 10 * S;
        assert_eq!(d.ejected_count(later), 0);
        assert!(fail(&d, 3, 5, later).is_some());
    }

    #[test]
    fn a_lone_endpoint_is_never_ejected() {
        let t0 = Instant::now();
        let d = OutlierDetector::new(1, OutlierConfig::default(), t0);
        assert_eq!(fail(&d, 0, 100, t0), None);
        assert!(!d.is_ejected(0, t0));
    }

    #[test]
    fn failures_while_ejected_are_ignored() {
        let t0 = Instant::now();
        let d = OutlierDetector::new(2, OutlierConfig::default(), t0);
        fail(&d, 0, 5, t0).unwrap();
        assert_eq!(fail(&d, 0, 20, t0 + S), None);
        // Back in service, it needs a fresh run of five.
        let back = t0 + 10 * S;
        assert_eq!(fail(&d, 0, 4, back), None);
        assert!(fail(&d, 0, 1, back).is_some());
    }

    #[test]
    fn unknown_indices_are_harmless() {
        let t0 = Instant::now();
        let d = OutlierDetector::new(2, OutlierConfig::default(), t0);
        assert_eq!(fail(&d, 7, 10, t0), None);
        d.record_success(7);
        assert!(!d.is_ejected(7, t0));
        assert_eq!(d.len(), 2);
        assert!(!d.is_empty());
    }

    #[test]
    fn ejection_time_saturates() {
        assert_eq!(ejection_time(1, S, 300 * S), S);
        assert_eq!(ejection_time(40, S, 300 * S), 300 * S);
        assert_eq!(
            ejection_time(u32::MAX, Duration::MAX, Duration::MAX),
            Duration::MAX
        );
    }

    #[test]
    fn carried_detectors_keep_shared_endpoints_state() {
        let t0 = Instant::now();
        let config = OutlierConfig {
            consecutive_failures: 2,
            ..OutlierConfig::default()
        };
        let old = OutlierDetector::new(4, config, t0);
        old.record_failure(1, t0);
        assert!(old.record_failure(1, t0).is_some());
        old.record_failure(3, t0);
        // New list: old 3, a new endpoint, old 1.
        let map = [Some(3), None, Some(1)];
        let new = old.carried(3, |i| map[i]);
        assert_eq!(new.len(), 3);
        assert!(new.is_ejected(2, t0 + S));
        assert!(!new.is_ejected(0, t0 + S) && !new.is_ejected(1, t0 + S));
        // Old 3 had one failure in its run: one more would eject it, but the cap
        // (one of three) is taken by the carried ejection.
        assert!(new.record_failure(0, t0 + S).is_none());
        assert_eq!(new.ejected_count(t0 + S), 1);
        assert!(!new.is_ejected(2, t0 + 11 * S));
    }
}
