//! Rate limiting with GCRA (the generic cell rate algorithm: a token bucket kept as
//! one timestamp per key), keyed by nothing, the client identity or a header value,
//! plus the IETF `RateLimit-Policy` / `RateLimit` / `Retry-After` response headers.
//!
//! # Algorithm
//!
//! Each key keeps a theoretical arrival time `tat`. With emission interval
//! `T = 1 / rate` and tolerance `τ = T × burst`, a request at `now` is allowed when
//! `max(tat, now) + T ≤ now + τ`, and then `tat` moves to `max(tat, now) + T`. So a
//! key idle long enough can send `burst` requests at once, and `rate` per second on
//! average after that. A key whose `tat` is in the past is the same as a key never
//! seen, which is what lets key state be dropped freely.
//!
//! # Bounded key state
//!
//! An unkeyed limiter is one atomic, updated without a lock. A keyed limiter hashes
//! each key with a per-process random SipHash key (so nobody can aim collisions) to 64
//! bits and keeps `hash → tat` in 16 shards, each a short lock around two
//! generations of a map: new keys go into the current generation; when it is full, the
//! previous generation is dropped and the current becomes the previous; a key found in
//! the previous generation moves back to the current one. Memory is therefore bounded
//! by `max_keys` entries whatever the traffic, keys in active use survive a flood of
//! new ones, and the maps are reused, so after warming up no request allocates. An
//! evicted key simply starts again with a full burst.
//!
//! # Headers (draft-ietf-httpapi-ratelimit-headers, structured-field form)
//!
//! - `RateLimit-Policy: "<name>";q=<quota>;w=<window>;pillion-burst=<burst>`: the
//!   sustained rate as a quota per whole-second window, rounded down so a client
//!   following it is never limited (rate ≥ 1/s: `w=1`, `q=⌊rate⌋`; below: `q=1`,
//!   `w=⌈1/rate⌉`); `pillion-burst` is a vendor parameter with the burst.
//! - `RateLimit: "<name>";r=<remaining>;t=<seconds>`: requests the key may still send
//!   at once, and seconds (rounded up) until one more becomes available.
//! - `Retry-After: <seconds>` on refusals, rounded up, at least 1.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, HeaderValue};
use pillion_api::policy::{RateLimit, RateLimitKey};

/// Name of the header that announces the limit's policy.
pub(crate) const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// Name of the header that tells a caller how much of its limit is left.
pub(crate) const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// Default bound on the keys one limiter tracks.
pub(crate) const DEFAULT_MAX_KEYS: usize = 16_384;
/// Shards of a keyed limiter, so concurrent callers rarely share a lock.
const SHARDS: usize = 16;

/// A rate limit that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RateLimitError {
    /// Rate not a positive finite number.
    #[error("requests_per_second must be a positive number")]
    BadRate,
    /// A burst of zero would refuse everything.
    #[error("burst must be at least 1")]
    ZeroBurst,
    /// The header key is not a valid header name.
    #[error("rate limit key header {0:?} is not a valid header name")]
    BadHeader(String),
}

/// A request the limit let through, and what is left of the caller's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Allowed {
    /// Requests the key may still send at once.
    pub remaining: u64,
    /// Time until one more request becomes available.
    pub reset: Duration,
}

/// A refused request: the caller must wait this long before the next one passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RetryAfter(pub Duration);

impl RetryAfter {
    /// Whole seconds for the `Retry-After` header, rounded up, at least 1.
    pub(crate) fn seconds(&self) -> u64 {
        ceil_secs(self.0).max(1)
    }

    /// The `Retry-After` header value.
    pub(crate) fn header_value(&self) -> HeaderValue {
        HeaderValue::from(self.seconds())
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Where a keyed limiter takes its key from.
#[derive(Debug, Clone)]
enum KeySource {
    None,
    Identity,
    Header(HeaderName),
}

/// One route's (or port's) rate limit with its per-key state.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    epoch: Instant,
    /// Emission interval `T` in nanoseconds.
    interval_ns: u64,
    /// Tolerance `τ = T × burst` in nanoseconds.
    tolerance_ns: u64,
    source: KeySource,
    /// `tat` of the unkeyed limiter, nanoseconds since `epoch`.
    single: AtomicU64,
    keyed: Option<Keyed>,
    /// `"<name>"` as a structured-field string, for the `RateLimit` header.
    quoted_name: String,
    policy_header: HeaderValue,
}

#[derive(Debug)]
struct Keyed {
    hasher: RandomState,
    shards: Box<[Mutex<Generations>]>,
}

/// Passes an already-random 64-bit key hash through unchanged.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type TatMap = HashMap<u64, u64, BuildHasherDefault<PassThrough>>;

/// Two generations of key state; see the module docs.
#[derive(Debug, Default)]
struct Generations {
    current: TatMap,
    previous: TatMap,
    per_generation: usize,
}

impl Generations {
    fn get(&self, key: u64) -> Option<u64> {
        self.current
            .get(&key)
            .or_else(|| self.previous.get(&key))
            .copied()
    }

    fn put(&mut self, key: u64, tat: u64) {
        if let Some(slot) = self.current.get_mut(&key) {
            *slot = tat;
            return;
        }
        self.previous.remove(&key);
        if self.current.len() >= self.per_generation {
            // Forget the oldest generation; reuse its map to avoid allocating.
            self.previous.clear();
            std::mem::swap(&mut self.current, &mut self.previous);
        }
        self.current.insert(key, tat);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }
}

impl RateLimiter {
    /// A limiter for `limit`, named `name` in its headers (the route name), tracking
    /// at most [`DEFAULT_MAX_KEYS`] keys; `now` starts its clock.
    pub(crate) fn new(name: &str, limit: &RateLimit, now: Instant) -> Result<Self, RateLimitError> {
        RateLimiter::with_max_keys(name, limit, DEFAULT_MAX_KEYS, now)
    }

    /// Like [`RateLimiter::new`] with an explicit bound on tracked keys (at least one
    /// per shard and generation is kept).
    pub(crate) fn with_max_keys(
        name: &str,
        limit: &RateLimit,
        max_keys: usize,
        now: Instant,
    ) -> Result<Self, RateLimitError> {
        let rate = limit.requests_per_second;
        if !(rate.is_finite() && rate > 0.0) {
            return Err(RateLimitError::BadRate);
        }
        if limit.burst == 0 {
            return Err(RateLimitError::ZeroBurst);
        }
        let interval_ns = (1e9 / rate).round().clamp(1.0, u64::MAX as f64) as u64;
        let source = match &limit.key {
            RateLimitKey::None => KeySource::None,
            RateLimitKey::ClientIdentity => KeySource::Identity,
            RateLimitKey::Header(h) => KeySource::Header(
                HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| RateLimitError::BadHeader(h.clone()))?,
            ),
        };
        let keyed = match source {
            KeySource::None => None,
            _ => {
                let per_generation = (max_keys / (SHARDS * 2)).max(1);
                let shards = (0..SHARDS)
                    .map(|_| {
                        Mutex::new(Generations {
                            per_generation,
                            ..Generations::default()
                        })
                    })
                    .collect();
                Some(Keyed {
                    hasher: RandomState::new(),
                    shards,
                })
            }
        };
        let quoted_name = quote_sf_string(name);
        Ok(RateLimiter {
            epoch: now,
            interval_ns,
            tolerance_ns: interval_ns.saturating_mul(u64::from(limit.burst)),
            source,
            single: AtomicU64::new(0),
            keyed,
            policy_header: policy_header(&quoted_name, rate, limit.burst),
            quoted_name,
        })
    }

    /// The key bytes of a request, by the limit's key kind: nothing, the verified
    /// client identity, or the header's first value (absent: one shared empty key).
    pub(crate) fn key<'a>(&self, identity: Option<&'a str>, headers: &'a HeaderMap) -> &'a [u8] {
        match &self.source {
            KeySource::None => b"",
            KeySource::Identity => identity.unwrap_or_default().as_bytes(),
            KeySource::Header(name) => headers.get(name).map_or(&b""[..], HeaderValue::as_bytes),
        }
    }

    /// Counts one request for `key` at `now`: allowed, or refused with the wait.
    /// Unkeyed limiters ignore `key`.
    pub(crate) fn check(&self, key: &[u8], now: Instant) -> Result<Allowed, RetryAfter> {
        let now_ns =
            u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
        match &self.keyed {
            None => self.check_single(now_ns),
            Some(keyed) => {
                let hash = keyed.hasher.hash_one(key);
                let shard = &keyed.shards[(hash >> 60) as usize % SHARDS];
                let mut generations = shard.lock().unwrap_or_else(PoisonError::into_inner);
                let tat = generations.get(hash).unwrap_or(0);
                let (result, new_tat) = self.decide(tat, now_ns);
                // Also re-put on refusal, so a limited key stays in the newer
                // generation and cannot be flooded out of its limit.
                generations.put(hash, new_tat.unwrap_or(tat));
                result
            }
        }
    }

    fn check_single(&self, now_ns: u64) -> Result<Allowed, RetryAfter> {
        let mut tat = self.single.load(Ordering::Acquire);
        loop {
            let (result, new_tat) = self.decide(tat, now_ns);
            let Some(new_tat) = new_tat else {
                return result;
            };
            match self.single.compare_exchange_weak(
                tat,
                new_tat,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return result,
                Err(actual) => tat = actual,
            }
        }
    }

    /// GCRA step: the decision and, when allowed, the new `tat`.
    fn decide(&self, tat: u64, now_ns: u64) -> (Result<Allowed, RetryAfter>, Option<u64>) {
        let new_tat = tat.max(now_ns).saturating_add(self.interval_ns);
        let horizon = now_ns.saturating_add(self.tolerance_ns);
        if new_tat > horizon {
            let wait = Duration::from_nanos(new_tat - horizon);
            return (Err(RetryAfter(wait)), None);
        }
        let slack = horizon - new_tat;
        // After this request at most `burst - 1` remain, so another unit is always on
        // its way: it arrives when the slack reaches the next whole interval.
        let remaining = slack / self.interval_ns;
        let reset = Duration::from_nanos(self.interval_ns - slack % self.interval_ns);
        (Ok(Allowed { remaining, reset }), Some(new_tat))
    }

    /// The constant `RateLimit-Policy` header value (built once, cloned cheaply).
    pub(crate) fn policy_header(&self) -> &HeaderValue {
        &self.policy_header
    }

    /// The `RateLimit` header value for an allowed request (built per call: send it
    /// only where wanted, e.g. when little is left).
    #[cfg(test)]
    pub(crate) fn ratelimit_header(&self, allowed: &Allowed) -> HeaderValue {
        self.ratelimit_value(allowed.remaining, ceil_secs(allowed.reset))
    }

    /// The `RateLimit` header value for a refused request (`r=0`).
    pub(crate) fn refused_header(&self, retry_after: &RetryAfter) -> HeaderValue {
        self.ratelimit_value(0, retry_after.seconds())
    }

    fn ratelimit_value(&self, remaining: u64, reset_secs: u64) -> HeaderValue {
        let text = format!("{};r={remaining};t={reset_secs}", self.quoted_name);
        // The name is quoted and escaped to visible ASCII, the rest digits.
        HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("\"\";r=0"))
    }

    /// Keys currently tracked, for metrics and tests of the memory bound.
    #[cfg(test)]
    pub(crate) fn tracked_keys(&self) -> usize {
        self.keyed.as_ref().map_or(0, |k| {
            k.shards
                .iter()
                .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
                .sum()
        })
    }
}

/// A structured-field string: quoted, `"` and `\` escaped, anything outside visible
/// ASCII replaced by `_`.
fn quote_sf_string(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('_'),
        }
    }
    out.push('"');
    out
}

fn policy_header(quoted_name: &str, rate: f64, burst: u32) -> HeaderValue {
    let (quota, window) = if rate >= 1.0 {
        (rate.floor() as u64, 1u64)
    } else {
        (1, (1.0 / rate).ceil().min(u64::MAX as f64) as u64)
    };
    let text = format!("{quoted_name};q={quota};w={window};pillion-burst={burst}");
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("\"\";q=0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn limit(rate: f64, burst: u32, key: RateLimitKey) -> RateLimit {
        RateLimit {
            requests_per_second: rate,
            burst,
            key,
        }
    }

    #[test]
    fn sustained_rate_over_ten_seconds_is_within_ten_percent() {
        let t0 = Instant::now();
        for (rate, burst) in [(100.0, 10), (7.0, 1), (1000.0, 50)] {
            let limiter =
                RateLimiter::new("r", &limit(rate, burst, RateLimitKey::None), t0).unwrap();
            // Offered load: one request per millisecond for 10 s, far above the rate.
            let allowed = (0..10_000u32)
                .filter(|i| limiter.check(b"", t0 + MS * *i).is_ok())
                .count() as f64;
            let expected = rate * 10.0;
            assert!(
                (allowed - expected).abs() <= expected * 0.1,
                "rate {rate}: {allowed} allowed, expected about {expected}"
            );
        }
        // Below one per second: the burst, then one every two seconds.
        let slow = RateLimiter::new("r", &limit(0.5, 2, RateLimitKey::None), t0).unwrap();
        let allowed = (0..10_000u32)
            .filter(|i| slow.check(b"", t0 + MS * *i).is_ok())
            .count();
        assert_eq!(allowed, 2 + 4, "at 0 s (twice), 2 s, 4 s, 6 s and 8 s");
    }

    #[test]
    fn burst_passes_at_once_then_the_rate_applies() {
        let t0 = Instant::now();
        let limiter = RateLimiter::new("r", &limit(10.0, 5, RateLimitKey::None), t0).unwrap();
        for left in (0..5).rev() {
            let ok = limiter.check(b"", t0).unwrap();
            assert_eq!(ok.remaining, left);
        }
        let refused = limiter.check(b"", t0).unwrap_err();
        assert_eq!(refused.0, 100 * MS);
        assert_eq!(refused.seconds(), 1);
        assert!(limiter.check(b"", t0 + 99 * MS).is_err());
        assert!(limiter.check(b"", t0 + 100 * MS).is_ok());
    }

    #[test]
    fn one_key_is_limited_while_another_is_not() {
        let t0 = Instant::now();
        let limiter =
            RateLimiter::new("r", &limit(1.0, 2, RateLimitKey::ClientIdentity), t0).unwrap();
        assert!(limiter.check(b"spiffe://td/ns/a/sa/greedy", t0).is_ok());
        assert!(limiter.check(b"spiffe://td/ns/a/sa/greedy", t0).is_ok());
        assert!(limiter.check(b"spiffe://td/ns/a/sa/greedy", t0).is_err());
        assert!(limiter.check(b"spiffe://td/ns/a/sa/polite", t0).is_ok());
        assert!(limiter
            .check(b"spiffe://td/ns/a/sa/greedy", t0 + 1_000 * MS)
            .is_ok());
    }

    #[test]
    fn keys_come_from_identity_or_header() {
        let t0 = Instant::now();
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", HeaderValue::from_static("k1"));
        let by_header = RateLimiter::new(
            "r",
            &limit(1.0, 1, RateLimitKey::Header("X-Api-Key".into())),
            t0,
        )
        .unwrap();
        assert_eq!(by_header.key(Some("id"), &headers), b"k1");
        assert_eq!(by_header.key(None, &HeaderMap::new()), b"");
        let by_identity =
            RateLimiter::new("r", &limit(1.0, 1, RateLimitKey::ClientIdentity), t0).unwrap();
        assert_eq!(by_identity.key(Some("spiffe://x"), &headers), b"spiffe://x");
        assert_eq!(by_identity.key(None, &headers), b"");
        let unkeyed = RateLimiter::new("r", &limit(1.0, 1, RateLimitKey::None), t0).unwrap();
        assert_eq!(unkeyed.key(Some("id"), &headers), b"");
        assert_eq!(unkeyed.tracked_keys(), 0);
    }

    #[test]
    fn a_million_distinct_keys_stay_within_the_bound() {
        let t0 = Instant::now();
        let max_keys = 4_096;
        let limiter = RateLimiter::with_max_keys(
            "r",
            &limit(1.0, 1, RateLimitKey::Header("x-api-key".into())),
            max_keys,
            t0,
        )
        .unwrap();
        let hot = b"hot-key";
        assert!(limiter.check(hot, t0).is_ok());
        for i in 0..1_000_000u32 {
            let now = t0 + Duration::from_nanos(u64::from(i));
            assert!(
                limiter.check(&i.to_le_bytes(), now).is_ok(),
                "fresh key {i}"
            );
            if i % 4_096 == 0 {
                assert!(limiter.tracked_keys() <= max_keys, "at {i}");
            }
            if i % 1_000 == 0 {
                // The limited key keeps hitting; it must stay limited despite the flood.
                assert!(limiter.check(hot, now).is_err(), "hot key reset at {i}");
            }
        }
        assert!(
            limiter.tracked_keys() <= max_keys,
            "{}",
            limiter.tracked_keys()
        );
    }

    #[test]
    fn headers_follow_the_ietf_draft() {
        let t0 = Instant::now();
        let limiter =
            RateLimiter::new("api-v2", &limit(100.0, 20, RateLimitKey::None), t0).unwrap();
        assert_eq!(
            limiter.policy_header(),
            "\"api-v2\";q=100;w=1;pillion-burst=20"
        );
        let ok = limiter.check(b"", t0).unwrap();
        assert_eq!(ok.remaining, 19);
        assert_eq!(ok.reset, 10 * MS);
        assert_eq!(limiter.ratelimit_header(&ok), "\"api-v2\";r=19;t=1");
        let refused = RetryAfter(Duration::from_millis(2_500));
        assert_eq!(limiter.refused_header(&refused), "\"api-v2\";r=0;t=3");
        assert_eq!(refused.header_value(), "3");

        let slow = RateLimiter::new("slow", &limit(0.3, 1, RateLimitKey::None), t0).unwrap();
        assert_eq!(slow.policy_header(), "\"slow\";q=1;w=4;pillion-burst=1");
        let odd =
            RateLimiter::new("a\"b\\c\u{e9}", &limit(2.5, 1, RateLimitKey::None), t0).unwrap();
        assert_eq!(
            odd.policy_header(),
            "\"a\\\"b\\\\c_\";q=2;w=1;pillion-burst=1"
        );
    }

    #[test]
    fn remaining_and_reset_track_the_refill() {
        let t0 = Instant::now();
        let limiter = RateLimiter::new("r", &limit(1.0, 3, RateLimitKey::None), t0).unwrap();
        limiter.check(b"", t0).unwrap();
        limiter.check(b"", t0).unwrap();
        let third = limiter.check(b"", t0).unwrap();
        assert_eq!(third.remaining, 0);
        assert_eq!(third.reset, Duration::from_secs(1));
        // 1.5 s later one unit came back and half of the next.
        let later = limiter.check(b"", t0 + 1_500 * MS).unwrap();
        assert_eq!(later.remaining, 0);
        assert_eq!(later.reset, 500 * MS);
        // Idle for long: the whole burst is back.
        let rested = limiter.check(b"", t0 + Duration::from_secs(60)).unwrap();
        assert_eq!(rested.remaining, 2);
    }

    #[test]
    fn retry_after_rounds_up_and_is_at_least_one_second() {
        assert_eq!(RetryAfter(Duration::from_millis(1)).seconds(), 1);
        assert_eq!(RetryAfter(Duration::ZERO).seconds(), 1);
        assert_eq!(RetryAfter(Duration::from_millis(1_001)).seconds(), 2);
        assert_eq!(RetryAfter(Duration::from_secs(5)).seconds(), 5);
    }

    #[test]
    fn invalid_limits_are_refused() {
        let t0 = Instant::now();
        let bad = |l: RateLimit| RateLimiter::new("r", &l, t0).unwrap_err();
        assert_eq!(
            bad(limit(0.0, 1, RateLimitKey::None)),
            RateLimitError::BadRate
        );
        assert_eq!(
            bad(limit(f64::NAN, 1, RateLimitKey::None)),
            RateLimitError::BadRate
        );
        assert_eq!(
            bad(limit(1.0, 0, RateLimitKey::None)),
            RateLimitError::ZeroBurst
        );
        assert!(matches!(
            bad(limit(1.0, 1, RateLimitKey::Header("a b".into()))),
            RateLimitError::BadHeader(_)
        ));
    }

    #[test]
    fn concurrent_unkeyed_checks_never_exceed_the_burst() {
        let t0 = Instant::now();
        let limiter = RateLimiter::new("r", &limit(0.001, 100, RateLimitKey::None), t0).unwrap();
        let allowed: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        (0..1_000)
                            .filter(|_| limiter.check(b"", t0).is_ok())
                            .count()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(allowed, 100);
    }
}
