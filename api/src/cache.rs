//! Response caching on a client-side route: the calling pod's proxy keeps the
//! answers the upstream says may be reused (RFC 9111) and serves repeats itself.
//!
//! ```yaml
//! cache:
//!   shared: false            # default: callers' credentials never share an entry
//!   key_headers: [x-api-key] # more request headers that tell callers apart
//!   default_ttl: 10s         # freshness of answers that state none (default: not stored)
//!   max_ttl: 1h              # no entry is fresh for longer (default 1h)
//!   max_body_bytes: 1048576  # larger answers pass through unstored (default 1 MiB)
//! ```
//!
//! Only `GET`s are served from the cache; the proxy's whole memory for answers is
//! bounded by its own flag, whatever the routes ask.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::policy::{PolicyError, PolicyProblem};

/// Default upper bound on an entry's freshness.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(3600);
/// Longest freshness a route may allow.
pub const MAX_TTL: Duration = Duration::from_secs(86_400);
/// Default size of the largest answer stored.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1 << 20;
/// Largest `max_body_bytes` a route may ask for.
pub const MAX_BODY_BYTES: u64 = 16 << 20;
/// Most `key_headers` a route may name.
pub const MAX_KEY_HEADERS: usize = 16;

/// How a route caches the answers to its `GET`s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseCache {
    /// Whether callers with different credentials (`authorization`, `cookie`, the
    /// `key_headers`) share entries; then a request with `authorization` is only
    /// answered from an entry its upstream marked `public`, `s-maxage` or
    /// `must-revalidate`, as RFC 9111 §3.5 asks of shared caches.
    #[serde(default)]
    pub shared: bool,
    /// Request headers, besides `authorization` and `cookie`, whose values keep
    /// callers' entries apart (unless `shared`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_headers: Vec<String>,
    /// Freshness of a reusable answer that states none (no `max-age`, `s-maxage` or
    /// `Expires`); absent means such answers are not stored.
    #[serde(
        default,
        with = "crate::duration::serde_humane_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub default_ttl: Option<Duration>,
    /// No entry is fresh for longer than this, whatever the upstream says.
    #[serde(default = "default_max_ttl", with = "crate::duration::serde_humane")]
    pub max_ttl: Duration,
    /// Answers with larger bodies pass through without being stored.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
}

fn default_max_ttl() -> Duration {
    DEFAULT_MAX_TTL
}

fn default_max_body_bytes() -> u64 {
    DEFAULT_MAX_BODY_BYTES
}

impl Default for ResponseCache {
    fn default() -> Self {
        ResponseCache {
            shared: false,
            key_headers: Vec::new(),
            default_ttl: None,
            max_ttl: DEFAULT_MAX_TTL,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

impl ResponseCache {
    /// Checks names, durations and sizes; paths are relative to the cache.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.key_headers.len() > MAX_KEY_HEADERS {
            return Err(PolicyError::new(
                "key_headers",
                PolicyProblem::TooManyKeyHeaders,
            ));
        }
        for (i, name) in self.key_headers.iter().enumerate() {
            crate::policy::validate_header_name(name)
                .map_err(|e| e.within(format!("key_headers[{i}]")))?;
        }
        if self.max_ttl.is_zero() || self.max_ttl > MAX_TTL {
            return Err(PolicyError::new("max_ttl", PolicyProblem::BadCacheTtl));
        }
        if let Some(ttl) = self.default_ttl {
            if ttl.is_zero() || ttl > self.max_ttl {
                return Err(PolicyError::new("default_ttl", PolicyProblem::BadCacheTtl));
            }
        }
        if self.max_body_bytes == 0 || self.max_body_bytes > MAX_BODY_BYTES {
            return Err(PolicyError::new(
                "max_body_bytes",
                PolicyProblem::BadCacheBodyBytes,
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> ResponseCache {
        serde_json::from_str(yaml).expect("parses")
    }

    #[test]
    fn an_empty_cache_takes_the_defaults() {
        let cache = parse("{}");
        assert_eq!(cache, ResponseCache::default());
        assert!(cache.validate().is_ok());
        let cache =
            parse(r#"{"shared": true, "key_headers": ["x-api-key"], "default_ttl": "10s"}"#);
        assert!(cache.shared);
        assert_eq!(cache.default_ttl, Some(Duration::from_secs(10)));
        assert!(cache.validate().is_ok());
    }

    #[test]
    fn bad_settings_say_which_field() {
        let err = |yaml: &str| parse(yaml).validate().unwrap_err().to_string();
        assert!(err(r#"{"key_headers": ["bad name"]}"#).starts_with("key_headers[0]"));
        assert!(err(r#"{"max_ttl": "2d"}"#).starts_with("max_ttl"));
        assert!(err(r#"{"default_ttl": "2h"}"#).starts_with("default_ttl"));
        assert!(err(r#"{"max_body_bytes": 0}"#).starts_with("max_body_bytes"));
        assert!(err(r#"{"max_body_bytes": 100000000}"#).starts_with("max_body_bytes"));
        assert!(serde_json::from_str::<ResponseCache>(r#"{"ttl": "1s"}"#).is_err());
    }
}
