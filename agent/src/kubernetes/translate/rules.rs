//! One `pillion.io` spec → one `api::policy` value: Route rules, retry settings and
//! rate limits, checked field by field.

use crate::kubernetes::crd::{self, RateLimitPolicySpec, RetryPolicySpec};
use pillion_api::policy::{
    self, HeaderEdits, HeaderMatch, PathMatch, RateLimit, RateLimitKey, RetryBudget, RetryOn,
    RetryPolicy, Route, RouteMatch, StringMatch, WeightedBackend,
};

/// One Route rule → one `api::policy::Route` (not yet validated).
pub(super) fn translate_rule(rule: &crd::RouteRule, name: &str) -> Result<Route, String> {
    let mut route = Route {
        name: name.to_string(),
        ..Route::default()
    };
    for m in &rule.matches {
        let path = match &m.path {
            None => None,
            Some(p) => Some(match p.kind.as_str() {
                "Exact" => PathMatch::Exact(p.value.clone()),
                "PathPrefix" => PathMatch::Prefix(p.value.clone()),
                "RegularExpression" => PathMatch::Regex(p.value.clone()),
                other => return Err(format!("unknown path match type {other:?}")),
            }),
        };
        let mut headers = Vec::new();
        for h in &m.headers {
            let value = match h.kind.as_str() {
                "Exact" => StringMatch::Exact(h.value.clone()),
                "RegularExpression" => StringMatch::Regex(h.value.clone()),
                other => return Err(format!("unknown header match type {other:?}")),
            };
            headers.push(HeaderMatch {
                name: h.name.to_ascii_lowercase(),
                value,
            });
        }
        route.matches.push(RouteMatch {
            path,
            method: m.method.clone(),
            headers,
        });
    }
    for b in &rule.backend_refs {
        // The parent Service itself becomes `service: None` when the rule is attached.
        route.backends.push(WeightedBackend {
            weight: b.weight,
            subset: b.subset.clone(),
            // Another namespace only at a gateway (see `routes`): `namespace/name`.
            service: Some(match &b.namespace {
                Some(ns) => format!("{ns}/{}", b.name),
                None => b.name.clone(),
            }),
            port: b.port,
        });
    }
    for f in &rule.filters {
        match (f.kind.as_str(), f) {
            (
                "RequestHeaderModifier",
                crd::Filter {
                    request_header_modifier: Some(m),
                    ..
                },
            ) => {
                route.request_headers = header_edits(m);
            }
            (
                "ResponseHeaderModifier",
                crd::Filter {
                    response_header_modifier: Some(m),
                    ..
                },
            ) => {
                route.response_headers = header_edits(m);
            }
            (
                "URLRewrite",
                crd::Filter {
                    url_rewrite: Some(r),
                    ..
                },
            ) => {
                let prefix = match r.path.kind.as_str() {
                    "ReplacePrefixMatch" => r.path.replace_prefix_match.clone(),
                    // A full-path replacement is a prefix rewrite of an exact match.
                    "ReplaceFullPath"
                        if route
                            .matches
                            .iter()
                            .all(|m| matches!(m.path, Some(PathMatch::Exact(_)))) =>
                    {
                        r.path.replace_full_path.clone()
                    }
                    "ReplaceFullPath" => {
                        return Err(
                            "ReplaceFullPath needs every match to have an Exact path".to_string()
                        )
                    }
                    other => return Err(format!("unknown rewrite type {other:?}")),
                };
                let prefix = prefix.ok_or("the URLRewrite has no replacement path")?;
                route.rewrite = Some(policy::PathRewrite { prefix });
            }
            (kind, _) => return Err(format!("filter {kind:?} is unknown or has no settings")),
        }
    }
    if let Some(t) = &rule.timeouts {
        route.timeout = t.request.as_deref().map(duration).transpose()?;
        route.per_try_timeout = t.backend_request.as_deref().map(duration).transpose()?;
    }
    Ok(route)
}

/// A rule as attached to one parent: backends naming the parent mean its own
/// endpoints.
pub(super) fn for_parent(route: &Route, parent: &str) -> Route {
    let mut route = route.clone();
    for b in &mut route.backends {
        if b.service.as_deref() == Some(parent) {
            b.service = None;
        }
    }
    route
}

fn header_edits(m: &crd::HeaderModifier) -> HeaderEdits {
    let pairs = |list: &[crd::NameValue]| {
        list.iter()
            .map(|nv| (nv.name.to_ascii_lowercase(), nv.value.clone()))
            .collect()
    };
    HeaderEdits {
        set: pairs(&m.set),
        add: pairs(&m.add),
        remove: m.remove.iter().map(|h| h.to_ascii_lowercase()).collect(),
    }
}

fn duration(text: &str) -> Result<std::time::Duration, String> {
    pillion_api::duration::parse(text).map_err(|e| e.to_string())
}

/// A RetryPolicy's retry settings and per-try timeout, checked.
pub(super) fn retry_policy(
    spec: &RetryPolicySpec,
) -> Result<(RetryPolicy, Option<std::time::Duration>), String> {
    let mut retry = RetryPolicy {
        retry_non_idempotent: spec.retry_non_idempotent,
        ..RetryPolicy::default()
    };
    if let Some(a) = spec.attempts {
        retry.attempts = a;
    }
    if let Some(conditions) = &spec.conditions {
        retry.conditions = conditions
            .iter()
            .map(|c| {
                serde_json::from_value::<RetryOn>(serde_json::Value::String(c.clone()))
                    .map_err(|e| format!("bad condition {c:?}: {e}"))
            })
            .collect::<Result<_, _>>()?;
    }
    if let Some(b) = &spec.backoff {
        if let Some(base) = &b.base {
            retry.backoff_base = duration(base)?;
        }
        if let Some(max) = &b.max {
            retry.backoff_max = duration(max)?;
        }
    }
    if let Some(b) = &spec.budget {
        let mut budget = RetryBudget::default();
        if let Some(r) = b.ratio {
            budget.ratio = r;
        }
        if let Some(m) = b.min_per_second {
            budget.min_per_second = m;
        }
        if let Some(w) = &b.window {
            budget.window = duration(w)?;
        }
        retry.budget = Some(budget);
    }
    retry.validate().map_err(|e| e.to_string())?;
    let per_try = spec.per_try_timeout.as_deref().map(duration).transpose()?;
    Ok((retry, per_try))
}

/// A RateLimitPolicy's limit, checked.
pub(super) fn rate_limit(spec: &RateLimitPolicySpec) -> Result<RateLimit, String> {
    let key = match spec.key.as_ref().and_then(|k| k.kind.as_deref()) {
        None | Some("None") => RateLimitKey::None,
        Some("ClientIdentity") => RateLimitKey::ClientIdentity,
        Some("Header") => RateLimitKey::Header(
            spec.key
                .as_ref()
                .and_then(|k| k.header.clone())
                .ok_or("key type Header needs header")?
                .to_ascii_lowercase(),
        ),
        Some(other) => return Err(format!("unknown key type {other:?}")),
    };
    let limit = RateLimit {
        requests_per_second: spec.requests_per_second,
        // The CRD's burst counts requests on top of the rate; at least one always passes.
        burst: spec.burst.max(1),
        key,
    };
    limit.validate().map_err(|e| e.to_string())?;
    Ok(limit)
}
