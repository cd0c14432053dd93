//! API keys and usage plans at a gateway host: each key (kept only as its SHA-256)
//! belongs to a plan with a rate, a burst and a quota per UTC day or month, as AWS
//! API Gateway's and Apigee's usage plans do. A request without a key, or with one
//! no entry hashes to, is refused 401; over its plan's rate or quota, 429 with
//! `RateLimit` headers.
//!
//! ```yaml
//! api_keys:
//!   header: x-api-key              # where keys travel (default)
//!   required: true                 # a request without a key is refused (default)
//!   id_header: x-api-key-id        # optional: the key's id, sent upstream
//!   plans:
//!     - name: free
//!       rate_limit: {requests_per_second: 1, burst: 5}
//!       quota: {requests: 1000, per: day}
//!     - name: gold
//!       rate_limit: {requests_per_second: 100, burst: 200}
//!   keys:
//!     - id: acme                   # a name for logs and metrics, never the key
//!       sha256: 2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae
//!       plan: free
//! ```
//!
//! The key itself is never forwarded: the application gets `id_header` if asked for.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::policy::{validate_edited_name, PolicyError, PolicyProblem, RateLimit, RateLimitKey};

/// The most keys one host may list.
pub const MAX_API_KEYS: usize = 100_000;
/// The largest quota a plan may set (its count shares a word with its period).
pub const MAX_QUOTA: u64 = u32::MAX as u64;

/// A host's API keys and the plans they belong to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeys {
    /// The request header keys travel in.
    #[serde(default = "default_header")]
    pub header: String,
    /// Whether a request without a key is refused.
    #[serde(default = "yes")]
    pub required: bool,
    /// Header the key's id is sent upstream in; none: the application is not told.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_header: Option<String>,
    /// The usage plans.
    pub plans: Vec<UsagePlan>,
    /// The keys, by hash.
    pub keys: Vec<ApiKey>,
}

fn default_header() -> String {
    "x-api-key".into()
}

fn yes() -> bool {
    true
}

/// What the keys of one plan may do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsagePlan {
    /// The plan's name (metrics, headers).
    pub name: String,
    /// Each key's own sustained rate and burst (`key` must be left out: it is the API key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Each key's own count of requests per calendar period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<Quota>,
}

/// Requests per calendar period, reset at the period's start (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Requests allowed in one period.
    pub requests: u64,
    /// The period.
    pub per: QuotaPeriod,
}

/// A calendar period of a quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuotaPeriod {
    /// A UTC day.
    Day,
    /// A UTC calendar month.
    Month,
}

/// One key, known only by its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// Its name in logs, metrics and `id_header`.
    pub id: String,
    /// SHA-256 of the key, 64 lowercase hex digits.
    pub sha256: String,
    /// The plan it belongs to.
    pub plan: String,
}

impl ApiKeys {
    /// Checks the header names, plans, hashes and references; unique ids and hashes.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let problem = |path: String, p: PolicyProblem| Err(PolicyError::new(path, p));
        validate_edited_name(&self.header).map_err(|e| PolicyError::new("header", e.problem))?;
        if let Some(id) = &self.id_header {
            validate_edited_name(id).map_err(|e| PolicyError::new("id_header", e.problem))?;
            if id.eq_ignore_ascii_case(&self.header) {
                return problem("id_header".into(), PolicyProblem::IdHeaderIsKeyHeader);
            }
        }
        let mut plans = BTreeSet::new();
        for (i, plan) in self.plans.iter().enumerate() {
            let at = format!("plans[{i}]");
            if !good_name(&plan.name) {
                return problem(
                    format!("{at}.name"),
                    PolicyProblem::BadName(plan.name.clone()),
                );
            }
            if !plans.insert(plan.name.as_str()) {
                return problem(
                    format!("{at}.name"),
                    PolicyProblem::DuplicateName(plan.name.clone()),
                );
            }
            if let Some(limit) = &plan.rate_limit {
                limit
                    .validate()
                    .map_err(|e| e.within(format!("{at}.rate_limit")))?;
                if limit.key != RateLimitKey::None {
                    return problem(format!("{at}.rate_limit.key"), PolicyProblem::PlanRateKeyed);
                }
            }
            if let Some(q) = plan.quota {
                if q.requests == 0 || q.requests > MAX_QUOTA {
                    return problem(format!("{at}.quota.requests"), PolicyProblem::BadQuota);
                }
            }
        }
        if self.keys.len() > MAX_API_KEYS {
            return problem("keys".into(), PolicyProblem::TooManyApiKeys);
        }
        let (mut ids, mut hashes) = (BTreeSet::new(), BTreeSet::new());
        for (i, key) in self.keys.iter().enumerate() {
            let at = format!("keys[{i}]");
            if !good_name(&key.id) {
                return problem(format!("{at}.id"), PolicyProblem::BadName(key.id.clone()));
            }
            if !ids.insert(key.id.as_str()) {
                return problem(
                    format!("{at}.id"),
                    PolicyProblem::DuplicateName(key.id.clone()),
                );
            }
            if sha256_bytes(&key.sha256).is_none() {
                return problem(format!("{at}.sha256"), PolicyProblem::BadKeyHash);
            }
            if !hashes.insert(key.sha256.as_str()) {
                return problem(format!("{at}.sha256"), PolicyProblem::DuplicateKeyHash);
            }
            if !plans.contains(key.plan.as_str()) {
                return problem(
                    format!("{at}.plan"),
                    PolicyProblem::UnknownPlan(key.plan.clone()),
                );
            }
        }
        Ok(())
    }
}

/// The 32 bytes of a SHA-256 written as 64 lowercase hex digits.
pub fn sha256_bytes(hex: &str) -> Option<[u8; 32]> {
    let digits = hex.as_bytes();
    if digits.len() != 64 {
        return None;
    }
    let value = |d: u8| match d {
        b'0'..=b'9' => Some(d - b'0'),
        b'a'..=b'f' => Some(d - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = value(pair[0])? << 4 | value(pair[1])?;
    }
    Some(out)
}

/// 1 to 128 letters, digits, `.`, `_` or `-` (as route names).
fn good_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";

    fn keys(json: serde_json::Value) -> ApiKeys {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn plans_and_keys_are_checked_where_they_are_written() {
        let good = serde_json::json!({
            "plans": [{"name": "free", "rate_limit": {"requests_per_second": 1, "burst": 5},
                       "quota": {"requests": 1000, "per": "day"}}],
            "keys": [{"id": "acme", "sha256": HASH, "plan": "free"}]});
        let parsed = keys(good.clone());
        parsed.validate().unwrap();
        assert_eq!(parsed.header, "x-api-key");
        assert!(parsed.required);
        let cases: [(&str, serde_json::Value, &str); 8] = [
            (
                "/keys/0/sha256",
                HASH.to_uppercase().into(),
                "keys[0].sha256",
            ),
            ("/keys/0/sha256", "abc".into(), "keys[0].sha256"),
            ("/keys/0/plan", "gold".into(), "keys[0].plan"),
            ("/keys/0/id", "a b".into(), "keys[0].id"),
            (
                "/plans/0/quota/requests",
                0.into(),
                "plans[0].quota.requests",
            ),
            (
                "/plans/0/rate_limit",
                serde_json::json!({"requests_per_second": 1, "burst": 5, "key": {"header": "x"}}),
                "plans[0].rate_limit.key",
            ),
            (
                "/plans/0/rate_limit/burst",
                0.into(),
                "plans[0].rate_limit.burst",
            ),
            ("/plans/0/name", "".into(), "plans[0].name"),
        ];
        for (pointer, value, path) in cases {
            let mut bad = good.clone();
            *bad.pointer_mut(pointer).unwrap() = value;
            let e = keys(bad).validate().unwrap_err();
            assert_eq!(e.path, path, "{pointer}: {e}");
        }
        let mut twice = good.clone();
        let key = twice["keys"][0].clone();
        let mut other = key.clone();
        other["id"] = "other".into();
        twice["keys"] = serde_json::json!([key, other]);
        assert_eq!(keys(twice).validate().unwrap_err().path, "keys[1].sha256");
        let mut header = good.clone();
        header["header"] = "bad header".into();
        assert_eq!(keys(header).validate().unwrap_err().path, "header");
        let mut same = good;
        same["id_header"] = "X-Api-Key".into();
        assert_eq!(keys(same).validate().unwrap_err().path, "id_header");
    }

    #[test]
    fn hashes_read_as_bytes() {
        let bytes = sha256_bytes(HASH).unwrap();
        assert_eq!(bytes[0], 0x2c);
        assert_eq!(bytes[31], 0xae);
        assert!(sha256_bytes(&HASH[1..]).is_none());
        assert!(sha256_bytes(&HASH.replace('2', "g")).is_none());
    }
}
