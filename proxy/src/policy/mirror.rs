//! Which of a route's requests are copied to its mirror: a share of them, and
//! never more than [`MAX_IN_FLIGHT`] copies at once, so a slow shadow backend costs
//! a bounded number of tasks and connections, never the primary's time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::share::Share;

/// Copies of one route in flight at most; past it a request is not copied.
pub(crate) const MAX_IN_FLIGHT: usize = 64;

/// A route's mirror share and its copies in flight.
#[derive(Debug)]
pub(crate) struct MirrorShare {
    share: Share,
    in_flight: Arc<AtomicUsize>,
}

/// Whether one request is copied.
#[derive(Debug)]
pub(crate) enum Admit {
    /// Not in the share.
    No,
    /// In the share, but the route's copies in flight are at their bound.
    Full,
    /// Copied; the permit holds its place until the copy is done.
    Copy(MirrorPermit),
}

/// One copy in flight; dropping it frees its place.
#[derive(Debug)]
pub(crate) struct MirrorPermit(Arc<AtomicUsize>);

impl Drop for MirrorPermit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl MirrorShare {
    /// A share of `percent` (0 to 100).
    pub(crate) fn new(percent: f64) -> MirrorShare {
        MirrorShare {
            share: Share::percent(percent),
            in_flight: Arc::default(),
        }
    }

    /// Whether this request (`roll`: a random number) is copied.
    pub(crate) fn admit(&self, roll: u32) -> Admit {
        if !self.share.hits(roll) {
            return Admit::No;
        }
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        let permit = MirrorPermit(Arc::clone(&self.in_flight));
        if before < MAX_IN_FLIGHT {
            Admit::Copy(permit)
        } else {
            Admit::Full
        }
    }

    /// Copies in flight now.
    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::super::share::MILLION;
    use super::*;

    #[test]
    fn a_share_of_requests_and_a_bounded_number_at_once() {
        let copied = |a: Admit| matches!(a, Admit::Copy(_));
        let tenth = MirrorShare::new(10.0);
        let admitted = (0..MILLION)
            .step_by(100)
            .filter(|r| copied(tenth.admit(*r)))
            .count();
        assert_eq!(admitted, 1000);
        assert_eq!(tenth.in_flight(), 0, "dropped permits free their place");

        let all = MirrorShare::new(100.0);
        let held: Vec<_> = (0..MAX_IN_FLIGHT).map(|_| all.admit(0)).collect();
        assert!(held.iter().all(|a| matches!(a, Admit::Copy(_))));
        assert!(matches!(all.admit(0), Admit::Full), "full: not copied");
        assert_eq!(all.in_flight(), MAX_IN_FLIGHT);
        drop(held);
        assert!(copied(all.admit(0)));
        assert!(matches!(MirrorShare::new(0.0).admit(0), Admit::No));
    }
}
