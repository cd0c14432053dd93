//! Graceful shutdown: one signal that stops every listener, a tracker of open
//! connections, and a bounded wait that force-closes what outlives the timeout.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;

/// The drain state shared by listeners, connections and the admin server.
///
/// Cloning is cheap; every clone controls the same drain.
#[derive(Clone, Debug, Default)]
pub struct Drain {
    started: CancellationToken,
    force: CancellationToken,
    tracker: TaskTracker,
}

/// How a drain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainReport {
    /// Connections still open at the timeout and closed by force.
    pub forced: usize,
    /// Time from the start of the wait until every connection was gone.
    pub elapsed: Duration,
}

impl Drain {
    /// A drain that has not started.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts draining: listeners stop accepting. Idempotent.
    pub fn trigger(&self) {
        self.started.cancel();
    }

    /// Whether draining has started.
    pub fn is_draining(&self) -> bool {
        self.started.is_cancelled()
    }

    /// Resolves once draining has started.
    pub fn started(&self) -> WaitForCancellationFuture<'_> {
        self.started.cancelled()
    }

    /// Runs a connection's future as a tracked task that a forced close drops
    /// (which closes its sockets).
    pub fn spawn_connection<F>(&self, connection: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let force = self.force.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                () = connection => {}
                () = force.cancelled() => {}
            }
        });
    }

    /// Connections currently tracked.
    pub fn active(&self) -> usize {
        self.tracker.len()
    }

    /// Waits up to `timeout` for tracked connections to finish, then force-closes
    /// the rest. Call after the listeners have stopped.
    pub async fn finish(&self, timeout: Duration) -> DrainReport {
        let start = Instant::now();
        self.trigger();
        self.tracker.close();
        let forced = match tokio::time::timeout(timeout, self.tracker.wait()).await {
            Ok(()) => 0,
            Err(_) => {
                let remaining = self.tracker.len();
                self.force.cancel();
                self.tracker.wait().await;
                remaining
            }
        };
        DrainReport {
            forced,
            elapsed: start.elapsed(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn finishing_waits_for_connections_that_end_in_time() {
        let drain = Drain::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        drain.spawn_connection(async move {
            let _ = rx.await;
        });
        assert_eq!(drain.active(), 1);
        assert!(!drain.is_draining());
        let d = drain.clone();
        let finishing = tokio::spawn(async move { d.finish(Duration::from_secs(10)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(drain.is_draining());
        assert!(!finishing.is_finished());
        tx.send(()).unwrap();
        let report = finishing.await.unwrap();
        assert_eq!(report.forced, 0);
    }

    #[tokio::test]
    async fn finishing_force_closes_after_the_timeout() {
        let drain = Drain::new();
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        drain.spawn_connection(async move {
            let _keep = tx;
            std::future::pending::<()>().await;
        });
        let report = drain.finish(Duration::from_millis(50)).await;
        assert_eq!(report.forced, 1);
        assert_eq!(drain.active(), 0);
        // The connection's future was dropped, so its sender is gone.
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn started_resolves_on_trigger() {
        let drain = Drain::new();
        let d = drain.clone();
        let waiter = tokio::spawn(async move { d.started().await });
        drain.trigger();
        waiter.await.unwrap();
    }
}
