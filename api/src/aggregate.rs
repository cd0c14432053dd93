//! Aggregation on a client-side route: the calling pod's proxy answers a `GET` by
//! calling several services at once, each through the mesh (mesh TLS, balancing,
//! the part's retries and timeout, the backend's circuit breaker), and merging
//! their JSON answers into one object, a member per part.
//!
//! ```yaml
//! - name: product-page
//!   matches: [{path: {exact: /page}}]
//!   timeout: 2s                     # the whole answer
//!   aggregate:
//!     on_partial: fail              # or `partial`: what arrived, the rest null
//!     parts:
//!       - name: product
//!         backend: {service: product, port: 80}
//!         path: /products/current
//!         timeout: 500ms
//!         retry: {attempts: 2, conditions: [gateway-error]}
//!       - name: stock
//!         backend: {service: inventory}
//!         path: /stock
//! ```
//!
//! The caller's query string goes to every part; a part that does not answer `2xx`
//! with JSON within its time fails. With `on_partial: fail` (the default) the
//! first failure answers `502` (`504` if it was a timeout); with `partial`, the
//! answer carries `null` for each failed part and says why under `_errors`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::policy::{PolicyError, PolicyProblem, RetryPolicy, WeightedBackend};

/// Most parts one route may call.
pub const MAX_PARTS: usize = 16;
/// Default largest answer read from one part.
pub const DEFAULT_PART_BYTES: u64 = 1 << 20;
/// Largest `max_part_bytes` a route may ask for.
pub const MAX_PART_BYTES: u64 = 16 << 20;
/// The member of a partial answer that says why parts are missing.
pub const ERRORS_MEMBER: &str = "_errors";

/// How a route composes its answer from several services.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Aggregate {
    /// The calls, all made at once.
    pub parts: Vec<AggregatePart>,
    /// What a failed part does to the answer.
    #[serde(default)]
    pub on_partial: OnPartial,
    /// Largest answer read from each part; a larger one fails the part.
    #[serde(default = "default_part_bytes")]
    pub max_part_bytes: u64,
}

fn default_part_bytes() -> u64 {
    DEFAULT_PART_BYTES
}

/// One call of an aggregation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregatePart {
    /// The member of the answer this part's JSON becomes.
    pub name: String,
    /// The service (and subset, and port) called; without `service`, the route's
    /// own service.
    pub backend: WeightedBackend,
    /// The path (and query) asked for; the caller's query is added to it.
    pub path: String,
    /// Deadline of this part, its retries included; the route's `timeout` bounds
    /// every part.
    #[serde(
        default,
        with = "crate::duration::serde_humane_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// When to call this part again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
}

/// What a failed part does to the answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnPartial {
    /// The whole answer fails (`502`, or `504` for a timeout).
    #[default]
    Fail,
    /// The answer carries what arrived; failed parts are `null`, with the reason
    /// under `_errors`.
    Partial,
}

impl Aggregate {
    /// Checks the parts: their number, names, backends, paths and policies; paths
    /// are relative to the aggregation.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.parts.is_empty() || self.parts.len() > MAX_PARTS {
            return Err(PolicyError::new("parts", PolicyProblem::BadPartCount));
        }
        if self.max_part_bytes == 0 || self.max_part_bytes > MAX_PART_BYTES {
            return Err(PolicyError::new(
                "max_part_bytes",
                PolicyProblem::BadTransformBodyBytes,
            ));
        }
        for (i, part) in self.parts.iter().enumerate() {
            part.validate()
                .map_err(|e| e.within(format!("parts[{i}]")))?;
            if self.parts[..i].iter().any(|p| p.name == part.name) {
                return Err(PolicyError::new(
                    format!("parts[{i}].name"),
                    PolicyProblem::DuplicateName(part.name.clone()),
                ));
            }
        }
        Ok(())
    }
}

impl AggregatePart {
    fn validate(&self) -> Result<(), PolicyError> {
        crate::policy::validate_name(&self.name)?;
        if self.name == ERRORS_MEMBER {
            return Err(PolicyError::new(
                "name",
                PolicyProblem::ReservedPartName(self.name.clone()),
            ));
        }
        crate::policy::validate_backend(&self.backend).map_err(|e| e.within("backend"))?;
        let target_ok = self.path.starts_with('/')
            && !self.path.contains('#')
            && http::uri::PathAndQuery::try_from(self.path.as_str()).is_ok();
        if !target_ok {
            return Err(PolicyError::new(
                "path",
                PolicyProblem::BadPartPath(self.path.clone()),
            ));
        }
        crate::policy::validate_timeout(self.timeout).map_err(|e| e.within("timeout"))?;
        if self.backend.port.is_some() && self.backend.service.is_none() {
            return Err(PolicyError::new(
                "backend.port",
                PolicyProblem::PortWithoutService,
            ));
        }
        if let Some(retry) = &self.retry {
            retry.validate().map_err(|e| e.within("retry"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Aggregate {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn aggregations_parse_with_their_defaults() {
        let a = parse(
            r#"{"parts": [{"name": "product", "backend": {"service": "product", "port": 80},
                           "path": "/products/current?full=1", "timeout": "500ms",
                           "retry": {"attempts": 2}},
                          {"name": "stock", "backend": {"service": "inventory"}, "path": "/stock"}]}"#,
        );
        a.validate().unwrap();
        assert_eq!(a.on_partial, OnPartial::Fail);
        assert_eq!(a.max_part_bytes, DEFAULT_PART_BYTES);
        assert_eq!(a.parts[0].timeout, Some(Duration::from_millis(500)));
        let partial: Aggregate = serde_json::from_str(
            r#"{"parts": [{"name": "a", "backend": {}, "path": "/"}], "on_partial": "partial"}"#,
        )
        .unwrap();
        assert_eq!(partial.on_partial, OnPartial::Partial);
        assert!(
            serde_json::from_str::<Aggregate>(r#"{"parts": [], "on_partal": "fail"}"#).is_err()
        );
    }

    #[test]
    fn bad_aggregations_name_their_field() {
        let part = |extra: &str| {
            format!(r#"{{"parts": [{{"name": "a", "backend": {{}}, "path": "/a"{extra}}}]}}"#)
        };
        let cases = [
            (r#"{"parts": []}"#.to_string(), "parts", "1 to 16"),
            (
                part(r#", "timeout": "0s""#),
                "parts[0].timeout",
                "longer than zero",
            ),
            (
                part(r#", "retry": {"attempts": 0}"#),
                "parts[0].retry.attempts",
                "between 1",
            ),
            (
                part(r#", "timeout": "400d""#),
                "parts[0].timeout",
                "at most 366d",
            ),
            (
                r#"{"parts": [{"name": "a", "backend": {"port": 8080}, "path": "/"}]}"#.to_string(),
                "parts[0].backend.port",
                "another service",
            ),
            (
                r#"{"parts": [{"name": "a b", "backend": {}, "path": "/"}]}"#.to_string(),
                "parts[0].name",
                "letters",
            ),
            (
                r#"{"parts": [{"name": "_errors", "backend": {}, "path": "/"}]}"#.to_string(),
                "parts[0].name",
                "reserved",
            ),
            (
                r#"{"parts": [{"name": "a", "backend": {}, "path": "a"}]}"#.to_string(),
                "parts[0].path",
                "start with '/'",
            ),
            (
                r#"{"parts": [{"name": "a", "backend": {}, "path": "/a b"}]}"#.to_string(),
                "parts[0].path",
                "start with '/'",
            ),
            (
                r#"{"parts": [{"name": "a", "backend": {}, "path": "/"},
                              {"name": "a", "backend": {}, "path": "/"}]}"#
                    .to_string(),
                "parts[1].name",
                "used twice",
            ),
            (
                r#"{"parts": [{"name": "a", "backend": {"service": ""}, "path": "/"}]}"#
                    .to_string(),
                "parts[0].backend.service",
                "empty",
            ),
            (
                r#"{"parts": [{"name": "a", "backend": {}, "path": "/"}], "max_part_bytes": 0}"#
                    .to_string(),
                "max_part_bytes",
                "bytes",
            ),
        ];
        for (json, path, why) in cases {
            let e = parse(&json).validate().unwrap_err();
            assert_eq!(e.path, path, "{json}");
            assert!(e.problem.to_string().contains(why), "{json}: {e}");
        }
        let many = Aggregate {
            parts: (0..=MAX_PARTS)
                .map(|i| AggregatePart {
                    name: format!("p{i}"),
                    backend: WeightedBackend::default(),
                    path: "/".into(),
                    timeout: None,
                    retry: None,
                })
                .collect(),
            on_partial: OnPartial::Fail,
            max_part_bytes: 1,
        };
        assert_eq!(many.validate().unwrap_err().path, "parts");
    }
}
