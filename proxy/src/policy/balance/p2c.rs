//! Endpoint picking: power of two choices (two distinct random candidates, the
//! cheaper wins) by default, round robin as an option.
//!
//! The balancer knows nothing about how cost is measured: the caller passes a
//! `cost(i)` closure, normally [`super::peak_ewma::PeakEwma::cost`], returning
//! `f64::INFINITY` for endpoints that must not be used (ejected by outlier
//! detection). Candidates are indices into the caller's slice (a backend's subset),
//! so nothing is collected or allocated per pick.

use std::sync::atomic::{AtomicUsize, Ordering};

/// How a [`Balancer`] chooses among endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Two distinct random candidates, the one with the lower cost wins (DESIGN default).
    #[default]
    PowerOfTwoChoices,
    /// Each endpoint in turn, skipping unavailable ones; ignores cost otherwise.
    RoundRobin,
}

/// Picks an endpoint per request for one backend; shared by all requests to it.
#[derive(Debug, Default)]
pub(crate) struct Balancer {
    strategy: Strategy,
    next: AtomicUsize,
}

impl Balancer {
    /// A balancer with the given strategy.
    pub(crate) fn new(strategy: Strategy) -> Balancer {
        Balancer {
            strategy,
            next: AtomicUsize::new(0),
        }
    }

    /// The strategy in use, for metrics and `/config`.
    #[cfg(test)]
    pub(crate) fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// Picks an index in `0..len`, or `None` when every endpoint costs infinity (or
    /// there is none). `rng` must be uniformly random (any 64-bit source).
    pub(crate) fn pick(
        &self,
        len: usize,
        rng: u64,
        cost: impl FnMut(usize) -> f64,
    ) -> Option<usize> {
        match self.strategy {
            Strategy::PowerOfTwoChoices => p2c(len, rng, cost),
            Strategy::RoundRobin => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                round_robin(len, start, cost)
            }
        }
    }
}

/// Maps 32 random bits onto `0..n` without division (Lemire's multiply-shift).
fn scale(bits: u64, n: usize) -> usize {
    (((bits & 0xffff_ffff) * n as u64) >> 32) as usize
}

/// Power of two choices over `0..len`: two distinct candidates drawn from the low
/// and high halves of `rng`, the cheaper one wins (ties go to the first). If both are
/// unavailable, the cheapest available endpoint is searched for.
pub(crate) fn p2c(len: usize, rng: u64, mut cost: impl FnMut(usize) -> f64) -> Option<usize> {
    match len {
        0 => return None,
        1 => return cost(0).is_finite().then_some(0),
        _ => {}
    }
    let a = scale(rng, len);
    let mut b = scale(rng >> 32, len - 1);
    if b >= a {
        b += 1;
    }
    let (cost_a, cost_b) = (cost(a), cost(b));
    if cost_a.is_finite() || cost_b.is_finite() {
        return Some(if cost_b < cost_a { b } else { a });
    }
    cheapest(len, cost)
}

/// Round robin starting at `start` (a shared counter), skipping unavailable ones.
fn round_robin(len: usize, start: usize, mut cost: impl FnMut(usize) -> f64) -> Option<usize> {
    (0..len)
        .map(|k| start.wrapping_add(k) % len)
        .find(|&i| cost(i).is_finite())
}

/// Rare path: both random candidates were unavailable.
fn cheapest(len: usize, mut cost: impl FnMut(usize) -> f64) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for i in 0..len {
        let c = cost(i);
        if c.is_finite() && best.is_none_or(|(_, b)| c < b) {
            best = Some((i, c));
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::balance::peak_ewma::PeakEwma;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// splitmix64: a deterministic stand-in for the proxy's random source.
    fn rng(seed: u64) -> impl FnMut() -> u64 {
        let mut x = seed;
        move || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
    }

    #[test]
    fn the_faster_of_two_endpoints_gets_at_least_80_percent() {
        let t0 = Instant::now();
        let endpoints = [Arc::new(PeakEwma::new(t0)), Arc::new(PeakEwma::new(t0))];
        let latency = [Duration::from_millis(10), Duration::from_millis(60)];
        let balancer = Balancer::new(Strategy::PowerOfTwoChoices);
        let mut next = rng(7);
        let mut now = t0;
        let mut picks = [0u32; 2];
        for _ in 0..1_000 {
            let i = balancer
                .pick(2, next(), |i| endpoints[i].cost(now))
                .unwrap();
            picks[i] += 1;
            let in_flight = endpoints[i].start(now);
            now += latency[i];
            in_flight.finish(now);
        }
        assert!(picks[0] >= 800, "fast endpoint got {picks:?}");
    }

    #[test]
    fn a_slow_endpoint_among_many_is_avoided_under_concurrency() {
        // Ten endpoints, one 50 ms slower; requests arrive every 2 ms and overlap.
        let t0 = Instant::now();
        let n = 10;
        let endpoints: Vec<_> = (0..n).map(|_| Arc::new(PeakEwma::new(t0))).collect();
        let latency = |i: usize| Duration::from_millis(if i == 0 { 60 } else { 10 });
        let balancer = Balancer::default();
        let mut next = rng(11);
        let mut in_flight: Vec<(Instant, crate::policy::balance::peak_ewma::InFlight)> = Vec::new();
        let mut picks = vec![0u32; n];
        for step in 0..5_000u32 {
            let now = t0 + Duration::from_millis(2) * step;
            let (finished, still): (Vec<_>, Vec<_>) = std::mem::take(&mut in_flight)
                .into_iter()
                .partition(|(done, _)| *done <= now);
            for (done, guard) in finished {
                guard.finish(done);
            }
            in_flight = still;
            let i = balancer
                .pick(n, next(), |i| endpoints[i].cost(now))
                .unwrap();
            picks[i] += 1;
            in_flight.push((now + latency(i), endpoints[i].start(now)));
        }
        let fair_share = 5_000 / n as u32;
        assert!(
            picks[0] < fair_share / 2,
            "slow endpoint got {} of 5000 (fair share {fair_share}): {picks:?}",
            picks[0]
        );
    }

    #[test]
    fn equal_endpoints_share_evenly() {
        let mut next = rng(3);
        let mut picks = [0u32; 4];
        for _ in 0..40_000 {
            picks[p2c(4, next(), |_| 1.0).unwrap()] += 1;
        }
        for p in picks {
            assert!((9_000..11_000).contains(&p), "{picks:?}");
        }
    }

    #[test]
    fn candidates_are_always_distinct() {
        let mut next = rng(5);
        for len in 2..8 {
            for _ in 0..2_000 {
                let mut seen = Vec::new();
                p2c(len, next(), |i| {
                    seen.push(i);
                    1.0
                });
                assert_eq!(seen.len(), 2);
                assert_ne!(seen[0], seen[1], "len {len}");
                assert!(seen.iter().all(|&i| i < len));
            }
        }
    }

    #[test]
    fn the_cheaper_candidate_wins() {
        let mut next = rng(9);
        for _ in 0..1_000 {
            let costs = [5.0, 1.0, 9.0];
            let mut seen = Vec::new();
            let pick = p2c(3, next(), |i| {
                seen.push(i);
                costs[i]
            })
            .unwrap();
            let best = seen
                .iter()
                .copied()
                .min_by(|&a, &b| costs[a].total_cmp(&costs[b]))
                .unwrap();
            assert_eq!(pick, best);
        }
    }

    #[test]
    fn unavailable_endpoints_are_skipped() {
        let mut next = rng(13);
        let costs = [f64::INFINITY, f64::INFINITY, 3.0, f64::INFINITY];
        for _ in 0..1_000 {
            assert_eq!(p2c(4, next(), |i| costs[i]), Some(2));
        }
        assert_eq!(p2c(3, next(), |_| f64::INFINITY), None);
        assert_eq!(p2c(0, next(), |_| 1.0), None);
        assert_eq!(p2c(1, next(), |_| 1.0), Some(0));
        assert_eq!(p2c(1, next(), |_| f64::INFINITY), None);
    }

    #[test]
    fn round_robin_cycles_and_skips_unavailable() {
        let balancer = Balancer::new(Strategy::RoundRobin);
        let order: Vec<_> = (0..6)
            .map(|_| balancer.pick(3, 0, |_| 1.0).unwrap())
            .collect();
        assert_eq!(order, [0, 1, 2, 0, 1, 2]);
        let costs = [1.0, f64::INFINITY, 1.0];
        let order: Vec<_> = (0..4)
            .map(|_| balancer.pick(3, 0, |i| costs[i]).unwrap())
            .collect();
        assert_eq!(order, [0, 2, 2, 0]);
        assert_eq!(balancer.pick(2, 0, |_| f64::INFINITY), None);
        assert_eq!(balancer.strategy(), Strategy::RoundRobin);
    }
}
