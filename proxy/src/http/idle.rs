//! When an HTTP/2 connection has gone idle. HTTP/1 has hyper's header-read timeout
//! between requests; HTTP/2 has nothing like it, so a client could open a
//! connection, send the preface (or a header block it never finishes) and hold it
//! for ever. The server closes (GOAWAY, letting anything in flight finish) one that
//! sent no request within [`super::server::HEADER_READ_TIMEOUT`] of opening, or has
//! had none in flight for [`IDLE_TIMEOUT`] since.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// Time an HTTP/2 connection may go without a request in flight once it has served
/// one (long enough for pooled gRPC clients, short of holding a flood for ever).
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// The requests of one connection: how many are in flight, and when the last one
/// started or ended.
#[derive(Debug, Clone)]
pub(crate) struct Activity(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    opened: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds from `opened` of the last start or end (`u64::MAX`: no request yet).
    last: AtomicU64,
}

/// One request in flight; its end is recorded when dropped.
#[derive(Debug)]
pub(crate) struct InFlight(Activity);

impl Activity {
    /// A connection that has just opened.
    pub(crate) fn new() -> Activity {
        Activity(Arc::new(Inner {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last: AtomicU64::new(u64::MAX),
        }))
    }

    /// Records a request's start; its end when the guard drops.
    pub(crate) fn start(&self) -> InFlight {
        self.0.in_flight.fetch_add(1, Ordering::AcqRel);
        self.touch();
        InFlight(self.clone())
    }

    fn touch(&self) {
        let now = u64::try_from(self.0.opened.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.0.last.store(now, Ordering::Release);
    }

    /// When the connection counts as idle, given what it has done so far: `None`
    /// while a request is in flight.
    fn idle_at(&self, first_request: Duration, idle: Duration) -> Option<Instant> {
        if self.0.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(match self.0.last.load(Ordering::Acquire) {
            u64::MAX => self.0.opened + first_request,
            ms => self.0.opened + Duration::from_millis(ms) + idle,
        })
    }

    /// Resolves once the connection has had nothing in flight for long enough:
    /// `first_request` before its first request, `idle` after.
    pub(crate) async fn idle(&self, first_request: Duration, idle: Duration) {
        loop {
            match self.idle_at(first_request, idle) {
                Some(at) if at <= Instant::now() => return,
                Some(at) => tokio::time::sleep_until(at).await,
                // Checked again when it could first have ended.
                None => tokio::time::sleep(idle.min(first_request)).await,
            }
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0 .0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST: Duration = Duration::from_secs(30);

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_never_asks_is_idle_after_the_first_request_timeout() {
        let a = Activity::new();
        let started = Instant::now();
        a.idle(FIRST, IDLE_TIMEOUT).await;
        assert_eq!(started.elapsed(), FIRST);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_keeps_it_and_its_end_restarts_the_clock() {
        let a = Activity::new();
        let request = a.start();
        let watcher = tokio::spawn({
            let a = a.clone();
            async move {
                let started = Instant::now();
                a.idle(FIRST, IDLE_TIMEOUT).await;
                started.elapsed()
            }
        });
        tokio::time::sleep(Duration::from_secs(1000)).await;
        assert!(!watcher.is_finished());
        drop(request);
        let waited = watcher.await.unwrap();
        assert!(
            waited >= Duration::from_secs(1000) + IDLE_TIMEOUT,
            "{waited:?}"
        );
        assert!(
            waited <= Duration::from_secs(1000) + IDLE_TIMEOUT + FIRST,
            "{waited:?}"
        );
    }
}
