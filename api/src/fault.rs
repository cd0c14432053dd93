//! Faults a client-side route injects into its own requests, so a team can watch
//! how callers cope with a slow or failing service (timeouts, retries, fallbacks)
//! on the real path, before production does it for them.
//!
//! ```yaml
//! fault:
//!   delay: {fixed: 500ms, percent: 10}   # 10 % of requests wait 500 ms first
//!   abort: {http_status: 503, percent: 5} # 5 % are answered 503 by the proxy
//! ```
//!
//! A fault on only some callers' requests is a route of its own whose match
//! names a header (`headers: [{name: x-chaos, value: {exact: "on"}}]`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::policy::{PolicyError, PolicyProblem};

/// Longest delay a route may inject.
pub const MAX_FAULT_DELAY: Duration = Duration::from_secs(3600);

/// What a route injects; delay first, then abort.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultInjection {
    /// Requests held back before they are sent (the route's timeout counts it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    /// Requests answered by the proxy instead of sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

impl Eq for FaultInjection {}

/// A delay of some requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultDelay {
    /// How long.
    #[serde(with = "crate::duration::serde_humane")]
    pub fixed: Duration,
    /// Share of requests delayed, 0 to 100; default 100.
    #[serde(default = "all_percent")]
    pub percent: f64,
}

/// An answer in place of the upstream's, for some requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultAbort {
    /// The HTTP status to answer (200 to 599).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// The gRPC status to answer gRPC requests with (1 to 16); other requests get
    /// `http_status`, or 503 without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u32>,
    /// Share of requests aborted, 0 to 100; default 100.
    #[serde(default = "all_percent")]
    pub percent: f64,
}

/// The default share: every request.
pub(crate) fn all_percent() -> f64 {
    100.0
}

/// A share must be a number from 0 to 100.
pub(crate) fn validate_percent(percent: f64) -> Result<(), PolicyError> {
    if percent.is_finite() && (0.0..=100.0).contains(&percent) {
        Ok(())
    } else {
        Err(PolicyError::new("", PolicyProblem::BadPercent))
    }
}

impl FaultInjection {
    /// Checks statuses, shares and the delay; paths are relative to the fault.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let share =
            |field: &str, percent: f64| validate_percent(percent).map_err(|e| e.within(field));
        if self.delay.is_none() && self.abort.is_none() {
            return Err(PolicyError::new("", PolicyProblem::EmptyFault));
        }
        if let Some(delay) = &self.delay {
            share("delay.percent", delay.percent)?;
            if delay.fixed.is_zero() {
                return Err(PolicyError::new("delay.fixed", PolicyProblem::ZeroDuration));
            }
            if delay.fixed > MAX_FAULT_DELAY {
                return Err(PolicyError::new(
                    "delay.fixed",
                    PolicyProblem::FaultDelayTooLong,
                ));
            }
        }
        if let Some(abort) = &self.abort {
            share("abort.percent", abort.percent)?;
            match (abort.http_status, abort.grpc_status) {
                (None, None) => {
                    return Err(PolicyError::new("abort", PolicyProblem::AbortWithoutStatus))
                }
                (Some(s), _) if !(200..=599).contains(&s) => {
                    return Err(PolicyError::new(
                        "abort.http_status",
                        PolicyProblem::BadStatus(s),
                    ))
                }
                (_, Some(g)) if !(1..=16).contains(&g) => {
                    return Err(PolicyError::new(
                        "abort.grpc_status",
                        PolicyProblem::BadGrpcStatus(g),
                    ))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> FaultInjection {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn faults_parse_with_defaults() {
        let f =
            parse(r#"{"delay": {"fixed": "250ms"}, "abort": {"grpc_status": 14, "percent": 2.5}}"#);
        let delay = f.delay.as_ref().unwrap();
        assert_eq!(
            (delay.fixed, delay.percent),
            (Duration::from_millis(250), 100.0)
        );
        let abort = f.abort.as_ref().unwrap();
        assert_eq!(
            (abort.http_status, abort.grpc_status, abort.percent),
            (None, Some(14), 2.5)
        );
        f.validate().unwrap();
        assert!(serde_json::from_str::<FaultInjection>(r#"{"dealy": {}}"#).is_err());
    }

    #[test]
    fn bad_faults_name_their_field() {
        let cases = [
            (r#"{}"#, "", "delay, abort or both"),
            (
                r#"{"delay": {"fixed": "0s"}}"#,
                "delay.fixed",
                "longer than zero",
            ),
            (r#"{"delay": {"fixed": "2h"}}"#, "delay.fixed", "at most 1h"),
            (
                r#"{"delay": {"fixed": "1s", "percent": 101}}"#,
                "delay.percent",
                "between 0 and 100",
            ),
            (
                r#"{"abort": {"percent": 5}}"#,
                "abort",
                "http_status or grpc_status",
            ),
            (
                r#"{"abort": {"http_status": 99}}"#,
                "abort.http_status",
                "not an HTTP status",
            ),
            (
                r#"{"abort": {"http_status": 600}}"#,
                "abort.http_status",
                "not an HTTP status",
            ),
            (
                r#"{"abort": {"grpc_status": 0}}"#,
                "abort.grpc_status",
                "1 to 16",
            ),
            (
                r#"{"abort": {"http_status": 503, "percent": -1}}"#,
                "abort.percent",
                "between 0 and 100",
            ),
        ];
        for (json, path, why) in cases {
            let e = parse(json).validate().unwrap_err();
            assert_eq!(e.path, path, "{json}");
            assert!(e.problem.to_string().contains(why), "{json}: {e}");
        }
    }
}
