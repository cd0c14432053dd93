//! Peak-EWMA latency estimate of one endpoint: the load signal that the
//! power-of-two-choices balancer compares.
//!
//! - A slower response than the estimate replaces it at once (peak sensitivity), so
//!   an endpoint that slows down loses traffic immediately.
//! - A faster one is blended in with weight `1 - e^(-Δt/decay)`, where `Δt` is the
//!   time since the previous response: the estimate follows faster responses within
//!   about one decay period (10 s by default).
//! - Between responses the estimate, as seen by [`PeakEwma::cost`], decays towards
//!   zero with the same time constant, so an endpoint that got no traffic for a while
//!   looks cheap again and is probed. Reading never changes the state, so how often
//!   an endpoint is looked at does not bend its estimate.
//! - Cost = estimate × (requests in flight + 1), which also steers away from an
//!   endpoint that is queueing work even before its slow answers arrive.
//!
//! A new endpoint starts at the default RTT (30 ms). State is one short per-endpoint
//! lock (a few float operations) plus an atomic in-flight counter.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Estimate of a new endpoint before its first response (DESIGN: 30 ms).
pub(crate) const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// Time constant of the moving average (DESIGN: 10 s).
pub(crate) const DEFAULT_DECAY: Duration = Duration::from_secs(10);

/// One endpoint's latency estimate and in-flight count, shared by every request to
/// that endpoint.
#[derive(Debug)]
pub(crate) struct PeakEwma {
    decay_ns: f64,
    estimate: Mutex<Estimate>,
    pending: AtomicU32,
}

#[derive(Debug, Clone, Copy)]
struct Estimate {
    /// Estimate in nanoseconds as of `stamp`.
    rtt_ns: f64,
    /// When the last response was observed (or the endpoint was created).
    stamp: Instant,
}

impl Estimate {
    /// Weight the old estimate keeps after `now - stamp`.
    fn keep(&self, now: Instant, decay_ns: f64) -> f64 {
        let elapsed = now.saturating_duration_since(self.stamp).as_nanos() as f64;
        (-elapsed / decay_ns).exp()
    }
}

impl PeakEwma {
    /// An estimate with the mesh defaults (30 ms start, 10 s decay).
    pub(crate) fn new(now: Instant) -> PeakEwma {
        PeakEwma::with_params(DEFAULT_RTT, DEFAULT_DECAY, now)
    }

    /// An estimate starting at `default_rtt` that decays with time constant `decay`
    /// (a zero decay is taken as 1 ns).
    pub(crate) fn with_params(default_rtt: Duration, decay: Duration, now: Instant) -> PeakEwma {
        PeakEwma {
            decay_ns: (decay.as_nanos() as f64).max(1.0),
            estimate: Mutex::new(Estimate {
                rtt_ns: default_rtt.as_nanos() as f64,
                stamp: now,
            }),
            pending: AtomicU32::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Estimate> {
        // The state is two plain numbers, valid even if a holder panicked.
        self.estimate.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records one response time, observed at `now`.
    pub(crate) fn observe(&self, rtt: Duration, now: Instant) {
        let rtt_ns = rtt.as_nanos() as f64;
        let mut e = self.lock();
        if rtt_ns > e.rtt_ns {
            e.rtt_ns = rtt_ns;
        } else {
            let keep = e.keep(now, self.decay_ns);
            e.rtt_ns = e.rtt_ns * keep + rtt_ns * (1.0 - keep);
        }
        e.stamp = e.stamp.max(now);
    }

    /// The estimate as of `now`, decayed since the last response.
    #[cfg(test)]
    pub(crate) fn rtt_estimate(&self, now: Instant) -> Duration {
        Duration::from_nanos(self.decayed_ns(now) as u64)
    }

    fn decayed_ns(&self, now: Instant) -> f64 {
        let e = *self.lock();
        e.rtt_ns * e.keep(now, self.decay_ns)
    }

    /// The load to compare: estimated nanoseconds × (requests in flight + 1).
    pub(crate) fn cost(&self, now: Instant) -> f64 {
        self.decayed_ns(now) * f64::from(self.pending() + 1)
    }

    /// Requests sent to this endpoint that have not finished.
    pub(crate) fn pending(&self) -> u32 {
        self.pending.load(Ordering::Relaxed)
    }

    /// Counts a request as in flight until the returned guard is finished or dropped.
    pub(crate) fn start(self: &Arc<Self>, now: Instant) -> InFlight {
        self.pending.fetch_add(1, Ordering::Relaxed);
        InFlight {
            ewma: Arc::clone(self),
            started: now,
        }
    }
}

/// A request in flight to one endpoint; finishing it records its latency, dropping it
/// (a cancelled request) only ends the in-flight count.
#[derive(Debug)]
pub(crate) struct InFlight {
    ewma: Arc<PeakEwma>,
    started: Instant,
}

impl InFlight {
    /// The request's response arrived (or it failed or timed out) at `now`: record
    /// the elapsed time. Call it for timeouts too, so a black hole looks slow.
    pub(crate) fn finish(self, now: Instant) {
        self.ewma
            .observe(now.saturating_duration_since(self.started), now);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.ewma.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn approx(d: Duration, want_ms: f64, tolerance_ms: f64) -> bool {
        (d.as_secs_f64() * 1000.0 - want_ms).abs() <= tolerance_ms
    }

    #[test]
    fn starts_at_the_default_rtt() {
        let t0 = Instant::now();
        let e = PeakEwma::new(t0);
        assert_eq!(e.rtt_estimate(t0), DEFAULT_RTT);
        assert_eq!(e.cost(t0), DEFAULT_RTT.as_nanos() as f64);
    }

    #[test]
    fn a_slower_response_raises_the_estimate_at_once() {
        let t0 = Instant::now();
        let e = PeakEwma::new(t0);
        e.observe(500 * MS, t0 + MS);
        assert!(approx(e.rtt_estimate(t0 + MS), 500.0, 0.01));
    }

    #[test]
    fn faster_responses_pull_the_estimate_down_over_the_decay_period() {
        let t0 = Instant::now();
        let e = PeakEwma::new(t0);
        e.observe(200 * MS, t0);
        // One fast response 100 ms later barely moves it (weight 1 - e^-0.01 ≈ 1 %).
        e.observe(10 * MS, t0 + 100 * MS);
        let after_one = e.rtt_estimate(t0 + 100 * MS);
        assert!(approx(after_one, 198.1, 0.2), "{after_one:?}");
        // Fast responses every 100 ms for 60 s (six decay periods) bring it close.
        let mut t = t0 + 100 * MS;
        for _ in 0..600 {
            t += 100 * MS;
            e.observe(10 * MS, t);
        }
        let settled = e.rtt_estimate(t);
        assert!(approx(settled, 10.0, 1.0), "{settled:?}");
    }

    #[test]
    fn steady_responses_converge_to_their_latency_however_often_cost_is_read() {
        let t0 = Instant::now();
        let e = PeakEwma::new(t0);
        let mut t = t0;
        for _ in 0..4_000 {
            t += 10 * MS;
            for _ in 0..5 {
                let _ = e.cost(t);
            }
            e.observe(20 * MS, t);
        }
        assert!(
            approx(e.rtt_estimate(t), 20.0, 0.5),
            "{:?}",
            e.rtt_estimate(t)
        );
    }

    #[test]
    fn an_idle_estimate_decays_towards_zero() {
        let t0 = Instant::now();
        let e = PeakEwma::new(t0);
        e.observe(100 * MS, t0);
        let later = e.rtt_estimate(t0 + DEFAULT_DECAY);
        assert!(approx(later, 100.0 / std::f64::consts::E, 0.1), "{later:?}");
        assert!(e.rtt_estimate(t0 + 10 * DEFAULT_DECAY) < MS);
    }

    #[test]
    fn cost_scales_with_requests_in_flight() {
        let t0 = Instant::now();
        let e = Arc::new(PeakEwma::new(t0));
        let base = e.cost(t0);
        let a = e.start(t0);
        let b = e.start(t0);
        assert_eq!(e.pending(), 2);
        assert_eq!(e.cost(t0), base * 3.0);
        drop(a);
        assert_eq!(e.pending(), 1);
        b.finish(t0 + 80 * MS);
        assert_eq!(e.pending(), 0);
        assert!(approx(e.rtt_estimate(t0 + 80 * MS), 80.0, 0.01));
    }

    #[test]
    fn out_of_order_clocks_do_not_panic_or_rewind() {
        let t0 = Instant::now();
        let e = PeakEwma::new(t0 + 10 * MS);
        e.observe(5 * MS, t0);
        assert!(e.rtt_estimate(t0) <= DEFAULT_RTT);
        let zero_decay = PeakEwma::with_params(MS, Duration::ZERO, t0);
        zero_decay.observe(MS, t0 + MS);
        assert!(zero_decay.cost(t0 + 2 * MS).is_finite());
    }
}
