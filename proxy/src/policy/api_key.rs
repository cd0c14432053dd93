//! API keys and usage plans at a gateway host ([`pillion_api::api_keys`]): the key a
//! request carries is hashed (SHA-256) and looked up among the hashes the view
//! holds — the proxy never holds a key — then its plan's rate (a GCRA bucket per
//! key) and quota (a count per key and UTC day or month) decide. The key is removed
//! from the request whatever happens, and a client's own `id_header` with it, so the
//! application only ever sees the id the gateway vouches for.
//!
//! A quota is one atomic word per key: the period's index in the high half, the
//! count in the low half, advanced by compare-and-swap; a new period starts the
//! count again without a timer. Counts and rate buckets carry over view updates for
//! keys whose hash, plan and limits are unchanged. They are per gateway replica.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};
use pillion_api::api_keys::{sha256_bytes, ApiKeys, Quota, QuotaPeriod};
use pillion_api::policy::{RateLimit, RateLimitKey};
use prometheus_client::metrics::counter::Counter;

use super::rate_limit::{RateLimitError, RateLimiter, RetryAfter};

const SECONDS_PER_DAY: u64 = 86_400;

/// One plan, compiled.
#[derive(Debug)]
pub(crate) struct Plan {
    /// Its name.
    pub name: Arc<str>,
    /// Its rate (keyed by the API key's id).
    pub limiter: Option<Arc<RateLimiter>>,
    /// Its quota.
    quota: Option<Quota>,
    /// The limits as configured, to carry state over unchanged ones.
    spec: (Option<RateLimit>, Option<Quota>),
}

/// Counters of one key.
#[derive(Debug, Clone, Default)]
pub(crate) struct KeyMetrics {
    /// Requests let through.
    pub allowed: Counter,
    /// Refused by the plan's rate.
    pub rate_limited: Counter,
    /// Refused by the plan's quota.
    pub over_quota: Counter,
}

/// One key, compiled.
#[derive(Debug)]
pub(crate) struct KeyState {
    /// Its id (logs, metrics, `id_header`).
    pub id: Arc<str>,
    id_value: Option<HeaderValue>,
    plan: Arc<Plan>,
    /// Period index (high 32 bits) and count (low 32 bits); shared with the tables
    /// of earlier views while the key, its plan and the quota's period are unchanged,
    /// so requests counted during a view update are not lost.
    used: Arc<AtomicU64>,
    metrics: KeyMetrics,
}

/// A host's keys, by hash.
#[derive(Debug)]
pub(crate) struct KeyTable {
    header: HeaderName,
    required: bool,
    id_header: Option<HeaderName>,
    by_hash: HashMap<[u8; 32], KeyState>,
    /// Requests refused for want of a key, and for a key nobody has.
    missing: Counter,
    unknown: Counter,
}

/// Why a request's key does not let it through.
#[derive(Debug)]
pub(crate) enum KeyRefusal<'a> {
    /// No key where one is required.
    Missing,
    /// A key whose hash no entry has.
    Unknown,
    /// Over the plan's rate.
    RateLimited(&'a Plan, &'a RateLimiter, RetryAfter),
    /// Over the plan's quota until the period ends (seconds).
    OverQuota(&'a Plan, Quota, u64),
}

/// Why a host's keys cannot be compiled.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeyTableError {
    /// A header name the api validator would have refused.
    #[error("header {0:?} is not a valid header name")]
    Header(String),
    /// A plan's rate limit cannot be built.
    #[error("plan {plan}: {source}")]
    Rate {
        /// The plan.
        plan: String,
        /// Why.
        source: RateLimitError,
    },
    /// A hash that is not 64 lowercase hex digits.
    #[error("key {0}: its sha256 is not 64 lowercase hex digits")]
    Hash(String),
    /// A key of an unlisted plan.
    #[error("key {0}: no such plan")]
    Plan(String),
}

impl KeyTable {
    /// Compiles `policy`, carrying rate buckets and quota counts over from `previous`
    /// for unchanged plans and keys; `metrics` gives each key's counters and
    /// `refusals` the missing and unknown ones.
    pub(crate) fn new(
        policy: &ApiKeys,
        previous: Option<&KeyTable>,
        metrics: impl Fn(&str, &str) -> KeyMetrics,
        refusals: (Counter, Counter),
        now: Instant,
    ) -> Result<KeyTable, KeyTableError> {
        let header_name = |h: &str| {
            HeaderName::from_bytes(h.as_bytes()).map_err(|_| KeyTableError::Header(h.into()))
        };
        let old_plans: HashMap<&str, &Arc<Plan>> = (previous.into_iter())
            .flat_map(|t| t.by_hash.values())
            .map(|k| (&*k.plan.name, &k.plan))
            .collect();
        let mut plans: HashMap<&str, Arc<Plan>> = HashMap::new();
        for plan in &policy.plans {
            let spec = (plan.rate_limit.clone(), plan.quota);
            let reused = old_plans.get(plan.name.as_str()).filter(|p| p.spec == spec);
            let compiled = match reused {
                Some(old) => Arc::clone(old),
                None => {
                    let limiter = match &plan.rate_limit {
                        None => None,
                        Some(limit) => Some(Arc::new(per_key_limiter(
                            &plan.name,
                            limit,
                            policy.keys.len(),
                            now,
                        )?)),
                    };
                    Arc::new(Plan {
                        name: Arc::from(plan.name.as_str()),
                        limiter,
                        quota: plan.quota,
                        spec,
                    })
                }
            };
            plans.insert(plan.name.as_str(), compiled);
        }
        let mut by_hash = HashMap::with_capacity(policy.keys.len());
        for key in &policy.keys {
            let hash =
                sha256_bytes(&key.sha256).ok_or_else(|| KeyTableError::Hash(key.id.clone()))?;
            let plan = plans
                .get(key.plan.as_str())
                .ok_or_else(|| KeyTableError::Plan(key.id.clone()))?;
            // A quota raised or lowered keeps the period's count; a new period
            // length, plan or key starts it again.
            let period = |p: &Plan| p.quota.map(|q| q.per);
            let used = (previous.and_then(|t| t.by_hash.get(&hash)))
                .filter(|old| *old.id == key.id && old.plan.name == plan.name)
                .filter(|old| period(&old.plan) == period(plan))
                .map_or_else(|| Arc::new(AtomicU64::new(0)), |old| Arc::clone(&old.used));
            by_hash.insert(
                hash,
                KeyState {
                    id: Arc::from(key.id.as_str()),
                    id_value: HeaderValue::from_str(&key.id).ok(),
                    plan: Arc::clone(plan),
                    used,
                    metrics: metrics(&key.id, &key.plan),
                },
            );
        }
        Ok(KeyTable {
            header: header_name(&policy.header)?,
            required: policy.required,
            id_header: policy.id_header.as_deref().map(header_name).transpose()?,
            by_hash,
            missing: refusals.0,
            unknown: refusals.1,
        })
    }

    /// Decides for a request's `headers` (its key removed, and the key's id set in
    /// `id_header` when it passes): the key that let it through, `None` for a
    /// request without one where none is required, or why not.
    pub(crate) fn admit(
        &self,
        headers: &mut HeaderMap,
        now: Instant,
        wall: SystemTime,
    ) -> Result<Option<&KeyState>, KeyRefusal<'_>> {
        if let Some(id_header) = &self.id_header {
            headers.remove(id_header);
        }
        let mut presented = headers.get_all(&self.header).iter();
        let (first, second) = (presented.next(), presented.next());
        let digest = match (first, second) {
            (None, _) if !self.required => {
                return Ok(None);
            }
            (None, _) => {
                self.missing.inc();
                return Err(KeyRefusal::Missing);
            }
            // Two keys: which one counts would be the attacker's choice.
            (Some(_), Some(_)) => None,
            (Some(value), None) => Some(ring::digest::digest(
                &ring::digest::SHA256,
                value.as_bytes(),
            )),
        };
        headers.remove(&self.header);
        let found = digest.and_then(|d| {
            let hash: [u8; 32] = d.as_ref().try_into().ok()?;
            self.by_hash.get(&hash)
        });
        let Some(key) = found else {
            self.unknown.inc();
            return Err(KeyRefusal::Unknown);
        };
        let plan = &*key.plan;
        if let Some(limiter) = &plan.limiter {
            if let Err(wait) = limiter.check(key.id.as_bytes(), now) {
                key.metrics.rate_limited.inc();
                return Err(KeyRefusal::RateLimited(plan, limiter, wait));
            }
        }
        if let Some(quota) = plan.quota {
            let unix = wall.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            if let Err(left) = count(&key.used, quota, unix) {
                key.metrics.over_quota.inc();
                return Err(KeyRefusal::OverQuota(plan, quota, left));
            }
        }
        key.metrics.allowed.inc();
        if let (Some(name), Some(value)) = (&self.id_header, &key.id_value) {
            headers.insert(name.clone(), value.clone());
        }
        Ok(Some(key))
    }

    /// The header keys travel in (for the `WWW-Authenticate` challenge).
    pub(crate) fn header(&self) -> &HeaderName {
        &self.header
    }
}

/// A plan's limiter, one bucket per key id (as many tracked as there are keys).
fn per_key_limiter(
    plan: &str,
    limit: &RateLimit,
    keys: usize,
    now: Instant,
) -> Result<RateLimiter, KeyTableError> {
    // Keyed by whatever bytes `check` is given: the key's id.
    let keyed = RateLimit {
        key: RateLimitKey::ClientIdentity,
        ..limit.clone()
    };
    RateLimiter::with_max_keys(plan, &keyed, (keys * 2).max(64), now).map_err(|source| {
        KeyTableError::Rate {
            plan: plan.into(),
            source,
        }
    })
}

/// Counts one request against `quota` at `unix` seconds; `Err` with the seconds
/// until the period ends when it is spent.
fn count(used: &AtomicU64, quota: Quota, unix: u64) -> Result<(), u64> {
    let (period, left) = period_of(quota.per, unix);
    let mut current = used.load(Ordering::Relaxed);
    loop {
        let (seen_period, seen_count) = (current >> 32, current & 0xffff_ffff);
        let count = if seen_period == period { seen_count } else { 0 };
        if count >= quota.requests {
            return Err(left);
        }
        let next = period << 32 | (count + 1);
        match used.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return Ok(()),
            Err(actual) => current = actual,
        }
    }
}

/// The index of the UTC period `unix` falls in, and the seconds left in it.
fn period_of(per: QuotaPeriod, unix: u64) -> (u64, u64) {
    let day = unix / SECONDS_PER_DAY;
    let into_day = unix % SECONDS_PER_DAY;
    match per {
        QuotaPeriod::Day => (day, SECONDS_PER_DAY - into_day),
        QuotaPeriod::Month => {
            let (year, month, day_of_month) = civil(day);
            let days_in = days_in_month(year, month);
            let left_days = days_in - day_of_month; // whole days after today
            (
                year * 12 + (month - 1),
                left_days * SECONDS_PER_DAY + (SECONDS_PER_DAY - into_day),
            )
        }
    }
}

/// Year, month (1-12) and day of month (1-31) of a day count since 1970-01-01
/// (Howard Hinnant's civil-from-days, for days after the epoch).
fn civil(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// The window of a quota for `RateLimit-Policy`, in seconds (a month as 30 days).
pub(crate) fn window_seconds(per: QuotaPeriod) -> u64 {
    match per {
        QuotaPeriod::Day => SECONDS_PER_DAY,
        QuotaPeriod::Month => 30 * SECONDS_PER_DAY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sha(key: &str) -> String {
        ring::digest::digest(&ring::digest::SHA256, key.as_bytes())
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn policy(rate: Option<(f64, u32)>, quota: Option<u64>, required: bool) -> ApiKeys {
        serde_json::from_value(serde_json::json!({
            "required": required,
            "id_header": "x-api-key-id",
            "plans": [{"name": "free",
                "rate_limit": rate.map(|(r, b)| serde_json::json!({"requests_per_second": r, "burst": b})),
                "quota": quota.map(|q| serde_json::json!({"requests": q, "per": "day"}))}],
            "keys": [{"id": "acme", "sha256": sha("acme-secret"), "plan": "free"},
                     {"id": "beta", "sha256": sha("beta-secret"), "plan": "free"}]
        }))
        .unwrap()
    }

    fn table(p: &ApiKeys, previous: Option<&KeyTable>) -> KeyTable {
        KeyTable::new(
            p,
            previous,
            |_, _| KeyMetrics::default(),
            Default::default(),
            Instant::now(),
        )
        .unwrap()
    }

    fn with_key(key: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(k) = key {
            h.insert("x-api-key", k.parse().unwrap());
        }
        h.insert("x-api-key-id", "forged".parse().unwrap());
        h
    }

    const NOON: u64 = 1_796_126_400; // 2026-12-01T12:00:00Z

    fn at(unix: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(unix)
    }

    #[test]
    fn keys_are_known_by_hash_and_never_forwarded() {
        let t = table(&policy(None, None, true), None);
        let now = Instant::now();
        let mut h = with_key(Some("acme-secret"));
        let key = t.admit(&mut h, now, at(NOON)).unwrap().unwrap();
        assert_eq!(&*key.id, "acme");
        assert!(h.get("x-api-key").is_none(), "the key is not forwarded");
        assert_eq!(
            h["x-api-key-id"], "acme",
            "the vouched id replaces the client's"
        );
        for (presented, missing) in [
            (None, true),
            (Some("wrong"), false),
            (Some("ACME-SECRET"), false),
        ] {
            let mut h = with_key(presented);
            match t.admit(&mut h, now, at(NOON)) {
                Err(KeyRefusal::Missing) => assert!(missing),
                Err(KeyRefusal::Unknown) => assert!(!missing),
                other => panic!("{presented:?}: {other:?}"),
            }
            assert!(h.get("x-api-key-id").is_none(), "a forged id never passes");
        }
        // Two keys in one request: refused, whichever is valid.
        let mut h = with_key(Some("acme-secret"));
        h.append("x-api-key", "wrong".parse().unwrap());
        assert!(matches!(
            t.admit(&mut h, now, at(NOON)),
            Err(KeyRefusal::Unknown)
        ));
        // Optional keys: none passes, a wrong one still does not.
        let optional = table(&policy(None, None, false), None);
        assert!(optional
            .admit(&mut with_key(None), now, at(NOON))
            .unwrap()
            .is_none());
        assert!(optional
            .admit(&mut with_key(Some("wrong")), now, at(NOON))
            .is_err());
    }

    #[test]
    fn each_key_has_its_own_rate_and_quota_and_a_new_day_starts_over() {
        let t = table(&policy(Some((0.001, 2)), None, true), None);
        fn ask<'a>(t: &'a KeyTable, k: &str, wall: u64) -> Result<(), KeyRefusal<'a>> {
            t.admit(&mut with_key(Some(k)), Instant::now(), at(wall))
                .map(|_| ())
        }
        assert!(ask(&t, "acme-secret", NOON).is_ok());
        assert!(ask(&t, "acme-secret", NOON).is_ok());
        assert!(matches!(
            ask(&t, "acme-secret", NOON),
            Err(KeyRefusal::RateLimited(..))
        ));
        assert!(
            ask(&t, "beta-secret", NOON).is_ok(),
            "another key's bucket is its own"
        );

        let q = table(&policy(None, Some(3), true), None);
        for _ in 0..3 {
            assert!(ask(&q, "acme-secret", NOON).is_ok());
        }
        match ask(&q, "acme-secret", NOON) {
            Err(KeyRefusal::OverQuota(_, quota, left)) => {
                assert_eq!(quota.requests, 3);
                assert_eq!(left, 12 * 3600, "until midnight UTC");
            }
            other => panic!("{other:?}"),
        }
        assert!(ask(&q, "beta-secret", NOON).is_ok());
        assert!(
            ask(&q, "acme-secret", NOON + 12 * 3600).is_ok(),
            "a new day"
        );
        // A view update with the same plan keeps the count; a new limit resets it.
        let kept = table(&policy(None, Some(3), true), Some(&q));
        assert!(ask(&kept, "acme-secret", NOON + 12 * 3600).is_ok());
        assert!(ask(&kept, "acme-secret", NOON + 12 * 3600).is_ok());
        assert!(
            ask(&kept, "acme-secret", NOON + 12 * 3600).is_err(),
            "3 of the new day used"
        );
        // A raised quota keeps the period's count: 2 more, not 5.
        let raised = table(&policy(None, Some(5), true), Some(&kept));
        assert!(ask(&raised, "acme-secret", NOON + 12 * 3600).is_ok());
        assert!(ask(&raised, "acme-secret", NOON + 12 * 3600).is_ok());
        assert!(ask(&raised, "acme-secret", NOON + 12 * 3600).is_err());
        // One count behind every table of the key: the next sees all of it.
        let again = table(&policy(None, Some(6), true), Some(&raised));
        assert!(ask(&again, "acme-secret", NOON + 12 * 3600).is_ok());
        assert!(ask(&again, "acme-secret", NOON + 12 * 3600).is_err());
        assert!(ask(&raised, "acme-secret", NOON + 12 * 3600).is_err());
    }

    #[test]
    fn periods_follow_the_utc_calendar() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(NOON / SECONDS_PER_DAY), (2026, 12, 1));
        assert_eq!(civil(19_782), (2024, 2, 29));
        // 2026-12-01 12:00: 30 more days of December and 12 hours.
        let (december, left) = period_of(QuotaPeriod::Month, NOON);
        assert_eq!(left, 30 * SECONDS_PER_DAY + 12 * 3600);
        let (january, _) = period_of(QuotaPeriod::Month, NOON + 31 * SECONDS_PER_DAY);
        assert_eq!(january, december + 1);
        let (feb_last, left) = period_of(QuotaPeriod::Month, 19_782 * SECONDS_PER_DAY);
        assert_eq!(left, SECONDS_PER_DAY, "2024-02-29 is February's last day");
        assert_eq!(
            period_of(QuotaPeriod::Month, 19_783 * SECONDS_PER_DAY).0,
            feb_last + 1
        );
        assert_eq!(period_of(QuotaPeriod::Day, NOON).1, 12 * 3600);
    }
}
