//! A service port's circuit breaker: bounds on what its callers' proxies send to
//! it, so a slow service makes its callers fail fast (`503` at once) instead of
//! queueing without bound and taking the caller down with it. Envoy's defaults of
//! 1,024 apply to every port that sets none.
//!
//! ```yaml
//! ports:
//!   - port: 80
//!     circuit_breaker:
//!       max_requests: 200          # in flight to each backend of the port
//!       max_connections: 64        # HTTP/1.1 connections held to each endpoint
//!       max_pending_requests: 32   # waiting for one of those, per endpoint
//! ```

use serde::{Deserialize, Serialize};

use crate::policy::{PolicyError, PolicyProblem};

/// Requests in flight to one backend when a port sets no bound (Envoy's default).
pub const DEFAULT_MAX_REQUESTS: u32 = 1024;
/// HTTP/1.1 connections held to one endpoint when a port sets no bound.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 1024;
/// Requests waiting for a connection to one endpoint when a port sets no bound.
pub const DEFAULT_MAX_PENDING_REQUESTS: u32 = 1024;
/// The largest bound a port may set.
pub const MAX_MAX_REQUESTS: u32 = 1 << 20;

/// The bounds of one service port's backends and endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreaker {
    /// Requests one caller's proxy keeps in flight to one backend of the port (from
    /// sending to the end of the answer's body); past it, requests are answered
    /// `503` at once.
    #[serde(default = "default_max_requests")]
    pub max_requests: u32,
    /// HTTP/1.1 connections one caller's proxy holds to one endpoint, idle or in
    /// use; at the bound a request waits for one to be free.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Requests that may wait for a connection to one endpoint; past it, requests
    /// are answered `503` at once.
    #[serde(default = "default_max_pending_requests")]
    pub max_pending_requests: u32,
}

fn default_max_requests() -> u32 {
    DEFAULT_MAX_REQUESTS
}

fn default_max_connections() -> u32 {
    DEFAULT_MAX_CONNECTIONS
}

fn default_max_pending_requests() -> u32 {
    DEFAULT_MAX_PENDING_REQUESTS
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        CircuitBreaker {
            max_requests: DEFAULT_MAX_REQUESTS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_pending_requests: DEFAULT_MAX_PENDING_REQUESTS,
        }
    }
}

impl CircuitBreaker {
    /// Checks the bounds; paths are relative to the breaker.
    pub fn validate(&self) -> Result<(), PolicyError> {
        for (field, bound) in [
            ("max_requests", self.max_requests),
            ("max_connections", self.max_connections),
            ("max_pending_requests", self.max_pending_requests),
        ] {
            if bound == 0 || bound > MAX_MAX_REQUESTS {
                return Err(PolicyError::new(
                    field,
                    PolicyProblem::BadBreakerBound(bound),
                ));
            }
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
        assert_eq!((b.max_connections, b.max_pending_requests), (1024, 1024));
        let zero = CircuitBreaker {
            max_requests: 0,
            ..CircuitBreaker::default()
        };
        assert!(zero
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("max_requests"));
        let huge = CircuitBreaker {
            max_connections: MAX_MAX_REQUESTS + 1,
            ..CircuitBreaker::default()
        };
        assert!(huge
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("max_connections"));
        let none_waiting = CircuitBreaker {
            max_pending_requests: 0,
            ..CircuitBreaker::default()
        };
        assert!(none_waiting
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("max_pending_requests"));
        assert!(serde_json::from_str::<CircuitBreaker>(r#"{"max_conns": 1}"#).is_err());
    }
}
