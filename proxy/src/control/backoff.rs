//! Exponential backoff with jitter, so proxies that lost the agent together do not
//! all come back in the same instant.

use std::time::Duration;

use rand::Rng;

/// Share of a delay added or removed at random.
const JITTER: f64 = 0.2;

/// Delays that double from `base` up to `cap`, each jittered by ±20 %.
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    next: Duration,
}

impl Backoff {
    /// A backoff starting at `base` and never above `cap`.
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            next: base,
        }
    }

    /// The delay before the next attempt; the one after will be twice as long.
    pub fn next_delay(&mut self) -> Duration {
        let current = self.next;
        self.next = (current * 2).min(self.cap);
        let factor = rand::thread_rng().gen_range(1.0 - JITTER..=1.0 + JITTER);
        current.mul_f64(factor).min(self.cap)
    }

    /// Starts over from `base` (after a success).
    pub fn reset(&mut self) {
        self.next = self.base;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_jitter() {
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
    }
}
