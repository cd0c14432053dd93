//! The gateway role's table: which hostnames it serves at the edge and, for each,
//! the mesh's own route model (matches, weighted backends, retries, limits, edits)
//! plus end-user authentication and authorization by claims.
//!
//! A gateway is a workload like any other (its own SPIFFE id, its own view); its
//! view carries a [`GatewayPolicy`] and the services its routes name. Backends name
//! their service as `namespace/name` and, where the service has several, a port.
//! The callers of a gateway are end users, so authorization is by token claims
//! (`server.routes[].claims`), never by mesh identity allow lists.
//!
//! ```yaml
//! gateway:
//!   hosts:
//!     - hostnames: [shop.example.com, "*.shop.example.com"]
//!       jwt: {providers: [...]}        # see `jwt`
//!       server: {routes: [{name: orders, matches: [{path: {prefix: /orders}}], claims: {scope: [orders.read]}}]}
//!       routes:
//!         - name: web
//!           backends: [{service: shop/web, port: 80}]
//! ```

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::jwt::JwtPolicy;
use crate::policy::{validate_port_auth, validate_routes, PolicyError, PolicyProblem};
use crate::policy::{Route, ServerPolicy};

/// Longest hostname accepted (a DNS name).
pub const MAX_HOSTNAME_LEN: usize = 253;

/// What a gateway serves.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayPolicy {
    /// Virtual hosts, each with its hostnames, routes and end-user policy.
    pub hosts: Vec<GatewayHost>,
}

/// One virtual host of a gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayHost {
    /// Exact names (`shop.example.com`) or one-label wildcards (`*.example.com`).
    pub hostnames: Vec<String>,
    /// Where requests go, most specific match first, as on a service port.
    pub routes: Vec<Route>,
    /// End-user token providers; none: tokens are neither read nor required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtPolicy>,
    /// Authorization by claims and server-side rate limits, per route.
    #[serde(default)]
    pub server: ServerPolicy,
    /// API keys and their usage plans; none: keys are neither read nor required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_keys: Option<crate::api_keys::ApiKeys>,
}

impl GatewayPolicy {
    /// Checks every host; hostnames are unique across hosts. Errors start with `hosts[i]`.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let mut seen = BTreeSet::new();
        for (i, host) in self.hosts.iter().enumerate() {
            host.validate()
                .map_err(|e| e.within(format!("hosts[{i}]")))?;
            for (k, name) in host.hostnames.iter().enumerate() {
                if !seen.insert(name.as_str()) {
                    return Err(PolicyError::new(
                        format!("hosts[{i}].hostnames[{k}]"),
                        PolicyProblem::DuplicateHostname(name.clone()),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl GatewayHost {
    /// Checks names, routes (every backend names a service), and the end-user policy.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.hostnames.is_empty() || self.routes.is_empty() {
            return Err(PolicyError::new("", PolicyProblem::EmptyGatewayHost));
        }
        for (k, name) in self.hostnames.iter().enumerate() {
            validate_hostname(name).map_err(|e| e.within(format!("hostnames[{k}]")))?;
        }
        validate_routes(&self.routes)?;
        for (r, route) in self.routes.iter().enumerate() {
            let sent = (route.backends.iter().enumerate())
                .map(|(b, backend)| (format!("routes[{r}].backends[{b}]"), backend))
                .chain(
                    (route.mirror.iter())
                        .map(|m| (format!("routes[{r}].mirror.backend"), &m.backend)),
                );
            for (at, backend) in sent {
                let named = backend.service.as_deref().is_some_and(|s| s.contains('/'));
                if !named || backend.port.is_none() {
                    return Err(PolicyError::new(
                        format!("{at}.service"),
                        PolicyProblem::GatewayBackendWithoutService,
                    ));
                }
            }
            // The gateway removes the API key, and a token it does not forward,
            // before the cache keys the request: a private entry would be shared.
            let credentials = self.api_keys.is_some() || self.jwt.is_some();
            if credentials && route.cache.as_ref().is_some_and(|c| !c.shared) {
                return Err(PolicyError::new(
                    format!("routes[{r}].cache.shared"),
                    PolicyProblem::PrivateCacheAtGateway,
                ));
            }
            if route.backends.is_empty() {
                return Err(PolicyError::new(
                    format!("routes[{r}].backends"),
                    PolicyProblem::GatewayBackendWithoutService,
                ));
            }
        }
        self.server.validate().map_err(|e| e.within("server"))?;
        if let Some(keys) = &self.api_keys {
            keys.validate().map_err(|e| e.within("api_keys"))?;
        }
        if let Some(r) = self.server.routes.iter().position(|r| !r.allow.is_empty()) {
            return Err(PolicyError::new(
                format!("server.routes[{r}].allow"),
                PolicyProblem::AllowAtGateway,
            ));
        }
        validate_port_auth(self.jwt.as_ref(), &self.server).map_err(|e| {
            if e.path.starts_with("jwt") {
                e
            } else {
                e.within("server")
            }
        })
    }
}

/// A hostname a gateway may serve: a lowercase DNS name of letters, digits and `-`
/// labels, or `*.` followed by one (the wildcard stands for exactly one label).
pub fn validate_hostname(name: &str) -> Result<(), PolicyError> {
    let bad = || PolicyError::new("", PolicyProblem::BadHostname(name.to_string()));
    let rest = name.strip_prefix("*.").unwrap_or(name);
    if name.len() > MAX_HOSTNAME_LEN || rest.is_empty() {
        return Err(bad());
    }
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if rest.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(bad())
    }
}

/// Whether `pattern` (a validated hostname) covers `host` (lowercase, no port, no
/// trailing dot): equal, or a `*.` wildcard whose one label is any non-empty label.
pub fn hostname_covers(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        None => pattern == host,
        Some(suffix) => host
            .strip_suffix(suffix)
            .and_then(|head| head.strip_suffix('.'))
            .is_some_and(|label| !label.is_empty() && !label.contains('.')),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml_json: &str) -> GatewayPolicy {
        serde_json::from_str(yaml_json).unwrap()
    }

    #[test]
    fn hostnames_are_dns_names_or_one_label_wildcards() {
        for good in ["shop.example.com", "*.example.com", "a", "x-1.y"] {
            assert!(validate_hostname(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "*.",
            "*",
            "Shop.example.com",
            "a..b",
            "-a.b",
            "a-.b",
            "*.*.b",
            "a.*.b",
            "a_b.c",
            "a.b.",
            "ex ample",
        ] {
            assert!(validate_hostname(bad).is_err(), "{bad:?}");
        }
        assert!(validate_hostname(&"a.".repeat(127)).is_err());
    }

    #[test]
    fn a_wildcard_covers_exactly_one_label() {
        assert!(hostname_covers("shop.test", "shop.test"));
        assert!(!hostname_covers("shop.test", "api.shop.test"));
        assert!(hostname_covers("*.shop.test", "api.shop.test"));
        assert!(!hostname_covers("*.shop.test", "shop.test"));
        assert!(!hostname_covers("*.shop.test", ".shop.test"));
        assert!(!hostname_covers("*.shop.test", "a.b.shop.test"));
        assert!(!hostname_covers("*.shop.test", "evilshop.test"));
    }

    #[test]
    fn hosts_are_checked_where_they_are_written() {
        let route = r#"{"name": "web", "backends": [{"service": "shop/web", "port": 80}]}"#;
        let ok = policy(&format!(
            r#"{{"hosts": [{{"hostnames": ["shop.test"], "routes": [{route}]}}]}}"#
        ));
        ok.validate().unwrap();
        let cases = [
            (
                format!(r#"{{"hosts": [{{"hostnames": ["Shop"], "routes": [{route}]}}]}}"#),
                "hosts[0].hostnames[0]",
            ),
            (
                format!(
                    r#"{{"hosts": [{{"hostnames": ["a.test"], "routes": [{route}]}},
                                   {{"hostnames": ["b.test", "a.test"], "routes": [{route}]}}]}}"#
                ),
                "hosts[1].hostnames[1]",
            ),
            (
                r#"{"hosts": [{"hostnames": ["a.test"], "routes": [{"name": "r", "backends": [{"service": "web"}]}]}]}"#.into(),
                "hosts[0].routes[0].backends[0].service",
            ),
            (
                r#"{"hosts": [{"hostnames": ["a.test"], "routes": [{"name": "r"}]}]}"#.into(),
                "hosts[0].routes[0].backends",
            ),
            (r#"{"hosts": [{"hostnames": ["a.test"], "routes": []}]}"#.into(), "hosts[0]"),
            (
                format!(
                    r#"{{"hosts": [{{"hostnames": ["a.test"], "routes": [{route}],
                       "server": {{"routes": [{{"name": "x", "allow": ["spiffe://cluster.local/ns/a/*"]}}]}}}}]}}"#
                ),
                "hosts[0].server.routes[0].allow",
            ),
            (
                format!(
                    r#"{{"hosts": [{{"hostnames": ["a.test"], "routes": [{route}],
                       "server": {{"routes": [{{"name": "x", "claims": {{"scope": ["a"]}}}}]}}}}]}}"#
                ),
                "hosts[0].server.routes[0]",
            ),
            (
                r#"{"hosts": [{"hostnames": ["a.test"],
                   "routes": [{"name": "c", "backends": [{"service": "shop/web", "port": 80}], "cache": {}}],
                   "api_keys": {"plans": [], "keys": []}}]}"#
                    .into(),
                "hosts[0].routes[0].cache.shared",
            ),
        ];
        for (text, path) in cases {
            let e = policy(&text).validate().unwrap_err();
            assert!(e.path.starts_with(path), "{text}: {e}");
        }
    }
}
