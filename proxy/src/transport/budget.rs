//! The connection budget: how many accepted connections the proxy handles at once,
//! across both directions, kept below what its open-files limit can carry. A flood
//! then meets a refusal at accept (the new connection is closed at once, counted in
//! `pillion_tcp_over_budget_total` and logged at most once a second) instead of
//! descriptor exhaustion, which would fail connections that are already open: their
//! upstream connects, pooled connections, the agent's stream and the admin port.
//!
//! Before it refuses anyone, a spent budget takes back the permit of the oldest
//! connection that came while it was crowded and has not said a word yet
//! ([`Silence`]): a flood of silent connections then cannot lock out a peer proxy
//! or a client that speaks at once; it only pushes out its own oldest.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Descriptors kept out of the budget: listeners, the agent's stream, the admin
/// server and its callers, pooled connections, the runtime's own.
const RESERVED_FDS: u64 = 512;

/// Time between two log lines about refused connections.
const WARN_EVERY: Duration = Duration::from_secs(1);

/// Longest a connection accepted while the budget is crowded may take to show its
/// first bytes (a mesh client sends its ClientHello at once, an HTTP client its
/// request): silent newcomers then give their permits back within a second instead
/// of holding the budget full for the whole detection deadline, while the
/// legitimate connections a flood would crowd out keep getting in.
pub(crate) const CROWDED_FIRST_BYTES: Duration = Duration::from_secs(1);

/// A bounded count of things held at once: the connections of every listener of
/// one proxy, or its server-first probes ([`crate::detect::first_word::MAX_PROBES`]).
#[derive(Debug)]
pub(crate) struct Budget {
    limit: usize,
    open: AtomicUsize,
    /// Milliseconds from `started` when the last refusal was logged (0: never).
    warned_at: AtomicU64,
    started: Instant,
    /// Connections accepted while crowded, oldest first: the ones a spent budget
    /// may push out, once they wait silent for their first bytes.
    silent: Mutex<VecDeque<Weak<Silence>>>,
}

/// Not yet waiting for its first bytes (or never will: no detection on its port).
const SETTLING: u8 = 0;
/// Waiting for its first bytes, none read yet: may be pushed out.
const SILENT: u8 = 1;
/// It spoke, or detection is over: never pushed out.
const SPOKE: u8 = 2;
/// Pushed out to admit a newcomer.
const EVICTED: u8 = 3;

/// A crowded newcomer's standing: whether it has spoken, and the signal that
/// closes it when the budget needs its permit.
#[derive(Debug, Default)]
pub(crate) struct Silence {
    state: AtomicU8,
    evict: Notify,
}

tokio::task_local! {
    /// The [`Silence`] of the connection the current task serves, if it came while
    /// the budget was crowded; detection reports the first bytes to it.
    static SILENCE: Arc<Silence>;
}

impl Silence {
    /// Polls `serve`, this connection's work, until it ends, or until the budget
    /// pushes the connection out while it is silent (then `serve` is dropped with the
    /// task, closing the connection). `serve` is borrowed pinned, so the task stores
    /// it once whether or not the connection came crowded.
    pub(crate) async fn guard<F: Future<Output = ()>>(self: &Arc<Self>, mut serve: Pin<&mut F>) {
        let mut evicted = std::pin::pin!(self.evict.notified());
        std::future::poll_fn(|cx| {
            if self.state.load(Ordering::Acquire) == SPOKE {
                // Past detection: it can no longer be pushed out, nor report.
                return serve.as_mut().poll(cx);
            }
            if evicted.as_mut().poll(cx).is_ready() {
                tracing::debug!("silent while the budget was spent; closed for a newcomer");
                return Poll::Ready(());
            }
            SILENCE.sync_scope(Arc::clone(self), || serve.as_mut().poll(cx))
        })
        .await;
    }

    /// The current task's connection waits for its first bytes: it may be pushed out
    /// until [`Silence::spoke`]. A no-op outside a crowded connection's task.
    pub(crate) fn waiting() {
        let _ = SILENCE.try_with(|s| {
            let _ = s
                .state
                .compare_exchange(SETTLING, SILENT, Ordering::AcqRel, Ordering::Acquire);
        });
    }

    /// The current task's connection said its first bytes: it keeps its permit.
    pub(crate) fn spoke() {
        let _ = SILENCE.try_with(|s| {
            let _ = s
                .state
                .compare_exchange(SILENT, SPOKE, Ordering::AcqRel, Ordering::Acquire);
        });
    }

    /// The current task's connection is past detection, spoken or not (a silent one
    /// relayed to an opaque port, say): it is served now, and keeps its permit.
    pub(crate) fn settled() {
        let _ = SILENCE.try_with(|s| {
            let _ = s
                .state
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |state| {
                    (state < SPOKE).then_some(SPOKE)
                });
        });
    }

    /// Claims this connection for eviction, if it is silent; wakes its task.
    fn evict(&self) -> bool {
        let claimed = self
            .state
            .compare_exchange(SILENT, EVICTED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if claimed {
            self.evict.notify_one();
        }
        claimed
    }
}

/// One accepted connection's share of the budget, returned when dropped.
#[derive(Debug)]
pub(crate) struct Permit(Arc<Budget>);

impl Budget {
    /// A budget of `limit` connections (at least one).
    pub(crate) fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget {
            limit: limit.max(1),
            open: AtomicUsize::new(0),
            warned_at: AtomicU64::new(0),
            started: Instant::now(),
            silent: Mutex::new(VecDeque::new()),
        })
    }

    /// The budget an open-files limit of `nofile` carries: every proxied
    /// connection may hold two descriptors (its own and its upstream's), after a
    /// reserve for everything else.
    pub(crate) fn for_open_files(nofile: u64) -> usize {
        let connections = nofile.saturating_sub(RESERVED_FDS) / 2;
        usize::try_from(connections).unwrap_or(usize::MAX).max(1)
    }

    /// Most connections handled at once.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// More than half the budget in use (a flood, most likely): silent clients no
    /// longer get an early upstream connection each (server-first detection), so
    /// every further connection costs one descriptor, not two.
    pub(crate) fn crowded(&self) -> bool {
        self.open.load(Ordering::Relaxed) > self.limit / 2
    }

    /// A permit for one more connection, or `None` when the budget is spent.
    pub(crate) fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.limit).then_some(open + 1)
            })
            .ok()
            .map(|_| Permit(Arc::clone(self)))
    }

    /// Registers a connection accepted while crowded as one a spent budget may push
    /// out once it waits silent (see [`Silence::guard`]).
    pub(crate) fn silence(&self) -> Arc<Silence> {
        let silence = Arc::new(Silence::default());
        let mut queue = self.silent.lock().unwrap_or_else(PoisonError::into_inner);
        // Entries of connections that closed or spoke are dropped in bulk, rarely:
        // the live ones are at most the budget, so this runs at most once per
        // `limit` registrations.
        if queue.len() >= 2 * self.limit {
            queue.retain(|w| {
                w.upgrade()
                    .is_some_and(|s| s.state.load(Ordering::Acquire) < SPOKE)
            });
        }
        queue.push_back(Arc::downgrade(&silence));
        silence
    }

    /// A permit for a newcomer when the budget is spent: pushes out the oldest
    /// silent crowded connection, whose permit comes back as soon as its task sees
    /// the signal (until then the budget runs one over, within its reserve).
    /// `None` when no connection is silent: the newcomer must be refused.
    pub(crate) fn take_from_silent(self: &Arc<Self>) -> Option<Permit> {
        let mut queue = self.silent.lock().unwrap_or_else(PoisonError::into_inner);
        // Connections still settling go to the back; one pass at most.
        for _ in 0..queue.len() {
            let Some(weak) = queue.pop_front() else {
                break;
            };
            let Some(silence) = weak.upgrade() else {
                continue;
            };
            if silence.evict() {
                drop(queue);
                self.open.fetch_add(1, Ordering::AcqRel);
                return Some(Permit(Arc::clone(self)));
            }
            if silence.state.load(Ordering::Acquire) == SETTLING {
                queue.push_back(weak);
            }
        }
        None
    }

    /// Whether a refusal now should be logged (at most one line per second).
    pub(crate) fn should_warn(&self) -> bool {
        let now = u64::try_from(self.started.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let last = self.warned_at.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= WARN_EVERY.as_millis() as u64;
        due && self
            .warned_at
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_past_the_limit_and_takes_back_what_closes() {
        let budget = Budget::new(2);
        let a = budget.try_acquire().unwrap();
        let _b = budget.try_acquire().unwrap();
        assert!(budget.try_acquire().is_none());
        drop(a);
        assert!(budget.try_acquire().is_some());
    }

    #[test]
    fn crowded_past_half() {
        let budget = Budget::new(4);
        let held: Vec<_> = (0..2).filter_map(|_| budget.try_acquire()).collect();
        assert!(!budget.crowded());
        let third = budget.try_acquire();
        assert!(budget.crowded());
        drop((held, third));
        assert!(!budget.crowded());
    }

    #[tokio::test]
    async fn a_spent_budget_pushes_out_the_oldest_silent_newcomer_only() {
        let budget = Budget::new(4);
        let _settled = budget.try_acquire().unwrap();
        // Three crowded newcomers: one spoke, one still settling, two silent.
        let tasks: Vec<_> = ["spoke", "settling", "silent 1"]
            .into_iter()
            .map(|what| {
                let permit = budget.try_acquire();
                let silence = budget.silence();
                let (tx, rx) = tokio::sync::oneshot::channel::<&str>();
                let task = tokio::spawn(async move {
                    let serve = std::pin::pin!(async move {
                        let _permit = permit;
                        match what {
                            "spoke" => {
                                Silence::waiting();
                                Silence::spoke();
                            }
                            "settling" => {}
                            _ => Silence::waiting(),
                        }
                        let _ = tx.send(what);
                        std::future::pending::<()>().await;
                    });
                    silence.guard(serve).await;
                });
                (task, rx)
            })
            .collect();
        let mut tasks = tasks;
        for (_, rx) in &mut tasks {
            rx.await.unwrap();
        }
        assert!(budget.try_acquire().is_none(), "all four permits are out");
        // The silent one goes (its task ends, its permit comes back); then nobody
        // is left to push out.
        let newcomer = budget
            .take_from_silent()
            .expect("the silent one makes room");
        let (silent_task, _) = tasks.pop().unwrap();
        tokio::time::timeout(Duration::from_secs(5), silent_task)
            .await
            .unwrap()
            .unwrap();
        assert!(budget.take_from_silent().is_none());
        assert_eq!(
            budget.open.load(Ordering::Acquire),
            4,
            "one over, then back"
        );
        drop(newcomer);
        assert!(
            tasks.iter().all(|(t, _)| !t.is_finished()),
            "the others keep running"
        );
    }

    #[test]
    fn the_silent_queue_forgets_closed_connections() {
        let budget = Budget::new(2);
        for _ in 0..100 {
            drop(budget.silence());
        }
        assert!(budget.silent.lock().unwrap().len() <= 4);
        assert!(budget.take_from_silent().is_none());
    }

    #[test]
    fn the_open_files_limit_carries_two_descriptors_a_connection() {
        assert_eq!(Budget::for_open_files(20_000), 9_744);
        assert_eq!(Budget::for_open_files(1_024), 256);
        assert_eq!(Budget::for_open_files(100), 1);
    }

    #[test]
    fn refusals_are_logged_at_most_once_a_second() {
        let budget = Budget::new(1);
        assert!(budget.should_warn());
        assert!(!budget.should_warn());
    }
}
