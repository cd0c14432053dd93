//! A share of requests ("10 %" of a fault or a mirror), decided from a random
//! number passed in, so every decision that uses it stays a pure function. Kept in
//! millionths, so 0.0001 % is still a share.

/// Millionths in one.
pub(crate) const MILLION: u32 = 1_000_000;

/// A share of requests, from 0 to 100 %.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Share(u32);

impl Share {
    /// `percent` of requests (clamped to 0..=100; the agent validates the range).
    pub(crate) fn percent(percent: f64) -> Share {
        Share((percent.clamp(0.0, 100.0) * 10_000.0).round() as u32)
    }

    /// Whether the request that drew `roll` is in the share.
    pub(crate) fn hits(self, roll: u32) -> bool {
        roll % MILLION < self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_count_in_millionths() {
        let hits = |s: Share| (0..MILLION).step_by(100).filter(|r| s.hits(*r)).count();
        assert_eq!(hits(Share::percent(10.0)), 1000);
        assert_eq!(hits(Share::percent(100.0)), 10_000);
        assert_eq!(hits(Share::percent(0.0)), 0);
        assert_eq!(hits(Share::percent(250.0)), 10_000, "clamped");
        let tiny = Share::percent(0.0001);
        assert!(tiny.hits(0) && !tiny.hits(1) && tiny.hits(MILLION));
    }
}
