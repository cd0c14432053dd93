//! Fault injection: which of a route's requests are held back, and which are
//! answered by the proxy instead of sent ([`pillion_api::fault`]).
//!
//! The decision takes its randomness as plain integers ([`Share`]), so it is a pure
//! function of its inputs.

use std::time::Duration;

use http::StatusCode;
use pillion_api::fault::FaultInjection;

use super::share::Share;

/// A route's compiled faults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Faults {
    delay: Option<(Duration, Share)>,
    abort: Option<(Abort, Share)>,
}

/// How an aborted request is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Abort {
    /// The HTTP status (for gRPC requests without `grpc`, and every other request).
    pub http: StatusCode,
    /// The gRPC status for gRPC requests, if one is set.
    pub grpc: Option<u32>,
}

/// What happens to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Decision {
    /// Wait this long before sending (or aborting).
    pub delay: Option<Duration>,
    /// Answer with this instead of sending.
    pub abort: Option<Abort>,
}

impl Faults {
    /// Compiles a route's faults (validated by the agent; a status that does not
    /// parse becomes 503).
    pub(crate) fn new(spec: &FaultInjection) -> Faults {
        Faults {
            delay: spec
                .delay
                .as_ref()
                .map(|d| (d.fixed, Share::percent(d.percent))),
            abort: spec.abort.as_ref().map(|a| {
                let http = a
                    .http_status
                    .and_then(|s| StatusCode::from_u16(s).ok())
                    .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                (
                    Abort {
                        http,
                        grpc: a.grpc_status,
                    },
                    Share::percent(a.percent),
                )
            }),
        }
    }

    /// The decision for one request, from two independent random numbers.
    pub(crate) fn decide(&self, delay_roll: u32, abort_roll: u32) -> Decision {
        Decision {
            delay: self
                .delay
                .filter(|(_, share)| share.hits(delay_roll))
                .map(|(d, _)| d),
            abort: self
                .abort
                .filter(|(_, share)| share.hits(abort_roll))
                .map(|(a, _)| a),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::share::MILLION;
    use super::*;

    fn faults(json: &str) -> Faults {
        Faults::new(&serde_json::from_str(json).unwrap())
    }

    #[test]
    fn shares_decide_by_the_roll() {
        let f = faults(
            r#"{"delay": {"fixed": "1s", "percent": 25}, "abort": {"http_status": 418, "percent": 50}}"#,
        );
        let delayed = (0..MILLION)
            .step_by(1000)
            .filter(|r| f.decide(*r, 0).delay.is_some())
            .count();
        let aborted = (0..MILLION)
            .step_by(1000)
            .filter(|r| f.decide(0, *r).abort.is_some())
            .count();
        assert_eq!((delayed, aborted), (250, 500));
        let d = f.decide(0, 0);
        assert_eq!(d.delay, Some(Duration::from_secs(1)));
        assert_eq!(d.abort.map(|a| a.http), Some(StatusCode::IM_A_TEAPOT));
        assert_eq!(f.decide(MILLION - 1, MILLION - 1), Decision::default());
    }

    #[test]
    fn all_none_and_grpc() {
        let always = faults(r#"{"abort": {"grpc_status": 14}}"#);
        let never = faults(
            r#"{"abort": {"http_status": 500, "percent": 0}, "delay": {"fixed": "1ms", "percent": 0}}"#,
        );
        for roll in [0, 1, 999_999, u32::MAX] {
            let a = always.decide(roll, roll).abort.unwrap();
            assert_eq!(
                (a.http, a.grpc),
                (StatusCode::SERVICE_UNAVAILABLE, Some(14))
            );
            assert_eq!(never.decide(roll, roll), Decision::default());
        }
        let tiny = faults(r#"{"abort": {"http_status": 500, "percent": 0.0001}}"#);
        assert!(tiny.decide(0, 0).abort.is_some() && tiny.decide(0, 1).abort.is_none());
    }
}
