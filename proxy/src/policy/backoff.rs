//! Exponential backoff, the one helper behind request retries, reconnects to the
//! agent, certificate retries and span export: delays double from a base up to a
//! cap, and are jittered so peers that failed together do not come back together.

use std::time::Duration;

/// Share of a reconnect delay added or removed at random.
const RECONNECT_JITTER: f64 = 0.2;

/// The longest wait before try `attempt` (1 for the first retry; 0 counts as 1):
/// `base × 2^(attempt-1)`, never above `cap`.
pub(crate) fn ceiling(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let base_ns = u64::try_from(base.as_nanos()).unwrap_or(u64::MAX);
    let cap_ns = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
    let doublings = attempt.saturating_sub(1).min(63);
    Duration::from_nanos(base_ns.saturating_mul(1u64 << doublings).min(cap_ns))
}

/// Full jitter, for retries and export: uniform in `0..=ceiling(attempt)` given a
/// uniformly random `rng`.
pub(crate) fn full_jitter(attempt: u32, base: Duration, cap: Duration, rng: u64) -> Duration {
    let ceiling = u64::try_from(ceiling(attempt, base, cap).as_nanos()).unwrap_or(u64::MAX);
    // rng × (ceiling + 1) / 2^64: uniform in 0..=ceiling without a division.
    let wait = (u128::from(rng) * (u128::from(ceiling) + 1)) >> 64;
    Duration::from_nanos(u64::try_from(wait).unwrap_or(u64::MAX))
}

/// The delays of a loop that keeps reconnecting: each twice the last up to the cap,
/// jittered by ±20 %, back to the base after a success.
#[derive(Clone, Debug)]
pub(crate) struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff starting at `base` and never above `cap`.
    pub(crate) fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The delay before the next attempt, given a uniformly random `rng`.
    pub(crate) fn next_delay_with(&mut self, rng: u64) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        let ceiling = ceiling(self.attempt, self.base, self.cap);
        // rng mapped onto 1 - jitter ..= 1 + jitter.
        let unit = (rng >> 11) as f64 / (1u64 << 53) as f64;
        let factor = 1.0 - RECONNECT_JITTER + 2.0 * RECONNECT_JITTER * unit;
        ceiling.mul_f64(factor).min(self.cap)
    }

    /// The delay before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        self.next_delay_with(rand::random())
    }

    /// Starts over from the base (after a success).
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn full_jitter_is_exponential_and_capped() {
        let base = 25 * MS;
        let max = 250 * MS;
        assert_eq!(full_jitter(1, base, max, 0), Duration::ZERO);
        assert_eq!(full_jitter(1, base, max, u64::MAX), base);
        assert_eq!(full_jitter(2, base, max, u64::MAX), 50 * MS);
        assert_eq!(full_jitter(3, base, max, u64::MAX), 100 * MS);
        assert_eq!(full_jitter(5, base, max, u64::MAX), max, "capped");
        assert_eq!(full_jitter(1_000, base, max, u64::MAX), max, "no overflow");
        let half = full_jitter(3, base, max, u64::MAX / 2);
        assert!((half.as_secs_f64() - 0.050).abs() < 1e-6, "{half:?}");
        assert_eq!(
            full_jitter(0, base, max, u64::MAX),
            base,
            "retry 0 treated as 1"
        );
        let spread: std::collections::HashSet<_> = (0..50)
            .map(|_| full_jitter(3, base, max, rand::random()))
            .collect();
        assert!(spread.len() > 1);
    }

    #[test]
    fn reconnects_double_up_to_the_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        let mut want = 1.0f64;
        for _ in 0..10 {
            let got = b.next_delay().as_secs_f64();
            assert!(
                got >= want * 0.8 - 1e-9 && got <= (want * 1.2).min(30.0) + 1e-9,
                "{got} vs {want}"
            );
            want = (want * 2.0).min(30.0);
        }
        assert!(b.next_delay() <= Duration::from_secs(30));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(1200));
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        assert_eq!(b.next_delay_with(0), Duration::from_millis(800));
        let top = b.next_delay_with(u64::MAX).as_secs_f64();
        assert!((top - 2.4).abs() < 1e-6, "{top}");
    }
}
