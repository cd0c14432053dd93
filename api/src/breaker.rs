//! A service port's circuit breaker: a bound on the requests its callers' proxies
//! keep in flight to one backend, so a slow service makes its callers fail fast
//! (`503` at once) instead of queueing without bound and taking the caller down
//! with it. Envoy's default of 1,024 applies to every port that sets none.
//!
//! ```yaml
//! ports:
//!   - port: 80
//!     circuit_breaker: {max_requests: 200}
//! ```

use serde::{Deserialize, Serialize};

use crate::policy::{PolicyError, PolicyProblem};

/// Requests in flight to one backend when a port sets no bound (Envoy's default).
pub const DEFAULT_MAX_REQUESTS: u32 = 1024;
/// The largest bound a port may set.
pub const MAX_MAX_REQUESTS: u32 = 1 << 20;

/// The bounds of one service port's backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreaker {
    /// Requests one caller's proxy keeps in flight to one backend of the port (from
    /// sending to the end of the answer's body); past it, requests are answered
    /// `503` at once.
    #[serde(default = "default_max_requests")]
    pub max_requests: u32,
}

fn default_max_requests() -> u32 {
    DEFAULT_MAX_REQUESTS
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        CircuitBreaker {
            max_requests: DEFAULT_MAX_REQUESTS,
        }
    }
}

impl CircuitBreaker {
    /// Checks the bounds; paths are relative to the breaker.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.max_requests == 0 || self.max_requests > MAX_MAX_REQUESTS {
            return Err(PolicyError::new(
                "max_requests",
                PolicyProblem::BadBreakerBound(self.max_requests),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_default_to_envoys_and_must_be_positive() {
        let b: CircuitBreaker = serde_json::from_str("{}").unwrap();
        assert_eq!(b.max_requests, 1024);
        assert!(b.validate().is_ok());
        let zero = CircuitBreaker { max_requests: 0 };
        assert!(zero
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("max_requests"));
        let huge = CircuitBreaker {
            max_requests: MAX_MAX_REQUESTS + 1,
        };
        assert!(huge.validate().is_err());
        assert!(serde_json::from_str::<CircuitBreaker>(r#"{"max_conns": 1}"#).is_err());
    }
}
