//! A backend's circuit breaker: a count of the requests in flight to it, taken
//! before a try is sent and given back when the answer's body ends (or the try
//! fails), and a bound past which a request is refused at once. One atomic per
//! request each way, no lock, no queue: a slow backend makes its callers fail
//! fast instead of holding more and more of them.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// The in-flight count of one backend and its bound.
#[derive(Debug)]
pub(crate) struct Breaker {
    in_flight: AtomicU32,
    max: AtomicU32,
}

/// One request's place under the bound; dropping it gives the place back.
#[derive(Debug)]
pub(crate) struct Admitted(Arc<Breaker>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Breaker {
    /// A breaker letting `max` requests be in flight at once.
    pub(crate) fn new(max: u32) -> Breaker {
        Breaker {
            in_flight: AtomicU32::new(0),
            max: AtomicU32::new(max.max(1)),
        }
    }

    /// Takes a place for one request, or `None` when `max` are in flight.
    pub(crate) fn admit(self: &Arc<Self>) -> Option<Admitted> {
        let max = self.max.load(Ordering::Relaxed);
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Admitted(Arc::clone(self)))
    }

    /// The bound.
    pub(crate) fn max(&self) -> u32 {
        self.max.load(Ordering::Relaxed)
    }

    /// A new bound; requests in flight keep their places (a lower bound refuses
    /// new ones until enough have ended).
    pub(crate) fn set_max(&self, max: u32) {
        self.max.store(max.max(1), Ordering::Relaxed);
    }

    /// Requests in flight now.
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_bounded_and_given_back() {
        let breaker = Arc::new(Breaker::new(2));
        let a = breaker.admit().expect("first");
        let b = breaker.admit().expect("second");
        assert!(breaker.admit().is_none(), "a third is refused");
        drop(a);
        let c = breaker.admit().expect("a place came back");
        assert_eq!(breaker.in_flight(), 2);
        drop((b, c));
        assert_eq!(breaker.in_flight(), 0);
    }

    #[test]
    fn a_lower_bound_lets_the_requests_in_flight_finish() {
        let breaker = Arc::new(Breaker::new(3));
        let held: Vec<_> = (0..3).filter_map(|_| breaker.admit()).collect();
        breaker.set_max(1);
        assert!(breaker.admit().is_none());
        drop(held);
        assert!(breaker.admit().is_some());
        breaker.set_max(0);
        assert_eq!(
            breaker.max(),
            1,
            "never zero: a port always carries one request"
        );
    }

    #[test]
    fn many_threads_never_pass_the_bound() {
        let breaker = Arc::new(Breaker::new(8));
        let peak = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (breaker, peak) = (Arc::clone(&breaker), Arc::clone(&peak));
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        if let Some(place) = breaker.admit() {
                            peak.fetch_max(breaker.in_flight(), Ordering::Relaxed);
                            drop(place);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(peak.load(Ordering::Relaxed) <= 8);
        assert_eq!(breaker.in_flight(), 0);
    }
}
