//! Retries: whether a failed try may be tried again ([`should_retry`]), how long to
//! wait first ([`backoff`]), and the [`RetryBudget`] that keeps retries from
//! multiplying load when a backend is failing.
//!
//! Per request the HTTP layer calls [`RetryBudget::deposit`] once; after a failed try
//! it asks [`should_retry`] (the route's policy) and then
//! [`RetryBudget::try_withdraw`] (the route's budget), in that order, so a request
//! that would not be retried anyway spends nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use http::{Method, StatusCode};
use pillion_api::policy::{RetryOn, RetryPolicy};

/// How one try ended, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A response arrived with this status.
    Status(StatusCode),
    /// No connection could be made; nothing reached the server.
    ConnectFailure,
    /// The stream or connection broke before a response arrived.
    Reset,
    /// The per-try timeout passed without a response.
    Timeout,
}

/// True for methods RFC 9110 defines as idempotent: repeating them has the same
/// effect as sending them once, so a retry cannot do harm.
pub(crate) fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Whether the try number `attempt` (1 for the first) that ended with `outcome` may
/// be followed by another, by the route's policy alone (the budget is separate).
///
/// Non-idempotent methods are retried only when the policy allows it, except after a
/// connect failure: then nothing was sent and a retry is always safe.
pub(crate) fn should_retry(
    policy: &RetryPolicy,
    method: &Method,
    outcome: Outcome,
    attempt: u32,
) -> bool {
    if attempt >= policy.attempts {
        return false;
    }
    let safe =
        outcome == Outcome::ConnectFailure || policy.retry_non_idempotent || is_idempotent(method);
    safe && policy.conditions.iter().any(|c| covers(*c, outcome))
}

/// Whether a retry condition covers an outcome.
fn covers(condition: RetryOn, outcome: Outcome) -> bool {
    match (condition, outcome) {
        (RetryOn::ServerError, Outcome::Status(s)) => s.is_server_error(),
        (RetryOn::GatewayError, Outcome::Status(s)) => matches!(s.as_u16(), 502..=504),
        (RetryOn::ServerError | RetryOn::GatewayError, Outcome::Timeout) => true,
        (RetryOn::ConnectFailure, Outcome::ConnectFailure) => true,
        (RetryOn::Reset, Outcome::Reset) => true,
        (RetryOn::Status(code), Outcome::Status(s)) => s.as_u16() == code,
        _ => false,
    }
}

/// Number of buckets the budget window is divided into.
const BUCKETS: u64 = 10;

/// Caps a route's retries over a sliding window: at most `ratio` × requests +
/// `min_per_second` × window seconds retries in any window (DESIGN: 20 % + 10/s over
/// 10 s).
///
/// The window is ten buckets of a tenth each, counted with atomics and no lock; under
/// heavy concurrency a bucket turnover may lose a few counts, and concurrent
/// withdrawals may overshoot the cap by at most the number of racing threads.
#[derive(Debug)]
pub(crate) struct RetryBudget {
    epoch: Instant,
    bucket_ns: u64,
    ratio: f64,
    reserve: f64,
    buckets: [Bucket; BUCKETS as usize],
}

#[derive(Debug, Default)]
struct Bucket {
    /// Which tick (time / bucket length) the counts belong to.
    tick: AtomicU64,
    deposits: AtomicU64,
    withdrawals: AtomicU64,
}

impl RetryBudget {
    /// A budget from a route's policy, with its window starting at `now`.
    pub(crate) fn new(config: &pillion_api::policy::RetryBudget, now: Instant) -> RetryBudget {
        let window_ns = u64::try_from(config.window.as_nanos()).unwrap_or(u64::MAX);
        RetryBudget {
            epoch: now,
            bucket_ns: (window_ns / BUCKETS).max(1),
            ratio: config.ratio,
            reserve: f64::from(config.min_per_second) * config.window.as_secs_f64(),
            buckets: Default::default(),
        }
    }

    fn tick(&self, now: Instant) -> u64 {
        let ns =
            u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
        ns / self.bucket_ns
    }

    /// The bucket for `tick`, emptied first if it still holds an old tick's counts.
    fn bucket(&self, tick: u64) -> &Bucket {
        let bucket = &self.buckets[(tick % BUCKETS) as usize];
        let seen = bucket.tick.load(Ordering::Acquire);
        if seen < tick
            && bucket
                .tick
                .compare_exchange(seen, tick, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            bucket.deposits.store(0, Ordering::Relaxed);
            bucket.withdrawals.store(0, Ordering::Relaxed);
        }
        bucket
    }

    /// Requests and retries counted in the window that ends at `tick`.
    fn totals(&self, tick: u64) -> (u64, u64) {
        self.buckets
            .iter()
            .filter(|b| b.tick.load(Ordering::Acquire) + BUCKETS > tick)
            .fold((0, 0), |(d, w), b| {
                (
                    d + b.deposits.load(Ordering::Relaxed),
                    w + b.withdrawals.load(Ordering::Relaxed),
                )
            })
    }

    /// Counts one request (call once per request, not per try).
    pub(crate) fn deposit(&self, now: Instant) {
        self.bucket(self.tick(now))
            .deposits
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget; false means the retry must not happen.
    pub(crate) fn try_withdraw(&self, now: Instant) -> bool {
        let tick = self.tick(now);
        let bucket = self.bucket(tick);
        let (deposits, withdrawals) = self.totals(tick);
        let allowed = self.reserve + self.ratio * deposits as f64;
        if (withdrawals + 1) as f64 > allowed {
            return false;
        }
        bucket.withdrawals.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Requests and retries in the window ending at `now`, for metrics.
    #[cfg(test)]
    pub(crate) fn window_totals(&self, now: Instant) -> (u64, u64) {
        self.totals(self.tick(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pillion_api::policy::RetryBudget as BudgetConfig;
    use std::time::Duration;

    const MS: Duration = Duration::from_millis(1);

    fn policy(attempts: u32, conditions: Vec<RetryOn>) -> RetryPolicy {
        RetryPolicy {
            attempts,
            conditions,
            ..RetryPolicy::default()
        }
    }

    fn status(code: u16) -> Outcome {
        Outcome::Status(StatusCode::from_u16(code).unwrap())
    }

    #[test]
    fn failing_backend_retries_stay_within_the_budget() {
        let t0 = Instant::now();
        let config = BudgetConfig::default();
        let budget = RetryBudget::new(&config, t0);
        let policy = policy(3, vec![RetryOn::ServerError]);
        let mut retries = 0u64;
        // 1,000 requests over 10 s against a backend that always answers 503.
        for i in 0..1_000u32 {
            let now = t0 + 10 * MS * i;
            budget.deposit(now);
            let mut attempt = 1;
            while should_retry(&policy, &Method::GET, status(503), attempt)
                && budget.try_withdraw(now)
            {
                retries += 1;
                attempt += 1;
            }
        }
        let bound = 0.2 * 1_000.0 + 10.0 * config.window.as_secs_f64();
        assert!(retries as f64 <= bound, "{retries} retries > {bound}");
        assert!(
            retries as f64 >= bound - 2.0,
            "budget left unused: {retries}"
        );
    }

    #[test]
    fn budget_counts_a_sliding_window() {
        let t0 = Instant::now();
        let config = BudgetConfig {
            ratio: 0.0,
            min_per_second: 1,
            window: Duration::from_secs(10),
        };
        let budget = RetryBudget::new(&config, t0);
        let spent = (0..50).filter(|_| budget.try_withdraw(t0)).count();
        assert_eq!(spent, 10, "1/s over 10 s");
        assert!(!budget.try_withdraw(t0 + 9_999 * MS));
        // Once the bucket holding those retries leaves the window they are free again.
        let later = t0 + Duration::from_secs(10);
        let spent = (0..50).filter(|_| budget.try_withdraw(later)).count();
        assert_eq!(spent, 10);
        assert_eq!(budget.window_totals(later), (0, 10));
    }

    #[test]
    fn deposits_earn_retries_by_ratio() {
        let t0 = Instant::now();
        let config = BudgetConfig {
            ratio: 0.5,
            min_per_second: 0,
            window: Duration::from_secs(1),
        };
        let budget = RetryBudget::new(&config, t0);
        assert!(!budget.try_withdraw(t0), "no requests, no reserve");
        for _ in 0..10 {
            budget.deposit(t0);
        }
        let spent = (0..50).filter(|_| budget.try_withdraw(t0)).count();
        assert_eq!(spent, 5);
        assert_eq!(budget.window_totals(t0), (10, 5));
    }

    #[test]
    fn a_stale_clock_reading_does_not_reset_newer_counts() {
        let t0 = Instant::now();
        let budget = RetryBudget::new(&BudgetConfig::default(), t0);
        let now = t0 + Duration::from_secs(15);
        budget.deposit(now);
        budget.deposit(t0 + Duration::from_secs(5)); // an older reading from another thread
        assert_eq!(budget.window_totals(now).0, 2);
    }

    #[test]
    fn only_idempotent_methods_are_retried_unless_allowed() {
        let p = policy(3, vec![RetryOn::ServerError]);
        assert!(should_retry(&p, &Method::GET, status(500), 1));
        assert!(should_retry(&p, &Method::PUT, status(500), 1));
        assert!(!should_retry(&p, &Method::POST, status(500), 1));
        assert!(!should_retry(&p, &Method::PATCH, status(500), 1));
        let p = RetryPolicy {
            retry_non_idempotent: true,
            ..p
        };
        assert!(should_retry(&p, &Method::POST, status(500), 1));
    }

    #[test]
    fn connect_failures_are_retried_for_any_method() {
        let p = policy(2, vec![RetryOn::ConnectFailure]);
        assert!(should_retry(&p, &Method::POST, Outcome::ConnectFailure, 1));
        assert!(!should_retry(&p, &Method::POST, Outcome::Reset, 1));
    }

    #[test]
    fn attempts_count_every_try() {
        let p = policy(3, vec![RetryOn::Reset]);
        assert!(should_retry(&p, &Method::GET, Outcome::Reset, 1));
        assert!(should_retry(&p, &Method::GET, Outcome::Reset, 2));
        assert!(!should_retry(&p, &Method::GET, Outcome::Reset, 3));
        let once = policy(1, vec![RetryOn::Reset]);
        assert!(!should_retry(&once, &Method::GET, Outcome::Reset, 1));
    }

    #[test]
    fn conditions_cover_their_outcomes() {
        let check = |c: RetryOn, o: Outcome| should_retry(&policy(2, vec![c]), &Method::GET, o, 1);
        assert!(check(RetryOn::ServerError, status(500)));
        assert!(check(RetryOn::ServerError, status(599)));
        assert!(check(RetryOn::ServerError, Outcome::Timeout));
        assert!(!check(RetryOn::ServerError, status(429)));
        assert!(!check(RetryOn::ServerError, Outcome::Reset));
        assert!(check(RetryOn::GatewayError, status(502)));
        assert!(check(RetryOn::GatewayError, status(504)));
        assert!(check(RetryOn::GatewayError, Outcome::Timeout));
        assert!(!check(RetryOn::GatewayError, status(500)));
        assert!(check(RetryOn::Status(429), status(429)));
        assert!(!check(RetryOn::Status(429), status(503)));
        assert!(check(RetryOn::Reset, Outcome::Reset));
        assert!(!check(RetryOn::ConnectFailure, Outcome::Timeout));
        assert!(!check(RetryOn::ServerError, status(200)));
    }
}
