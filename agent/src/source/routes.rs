//! HTTP routes in the YAML source: client routes on a service port and server routes
//! on a workload's inbound port, as written by hand.
//!
//! The shapes are those of [`pillion_api::policy`] (the wire types), with two
//! differences: a route here refuses unknown keys, so a misspelt `timout:` is an
//! error at its line instead of a silently missing timeout; and one-of choices are
//! written as one-key maps (`path: {prefix: /api}`, `key: {header: x-api-key}`), as in
//! JSON, rather than as YAML tags. Values are checked
//! afterwards by the api's own validators ([`validate_routes`],
//! [`ServerPolicy::validate`]), whose field paths are appended to the entry's path so
//! the error still points at its line.
//!
//! ```yaml
//! services:
//!   - name: api
//!     namespace: shop
//!     ports:
//!       - port: 80
//!         routes:
//!           - name: v2-canary
//!             matches:
//!               - path: {prefix: /api}
//!                 headers: [{name: x-canary, value: {exact: "true"}}]
//!             backends:
//!               - {weight: 90, subset: {version: v1}}
//!               - {weight: 10, subset: {version: v2}}
//!             timeout: 2s
//!             per_try_timeout: 500ms
//!             retry: {attempts: 3, conditions: [gateway-error, connect-failure]}
//!             rate_limit: {requests_per_second: 100, burst: 20}
//!             request_headers: {set: {x-route: v2-canary}}
//!             rewrite: {prefix: /v2}
//!             fault: {delay: {fixed: 200ms, percent: 5}, abort: {http_status: 503, percent: 1}}
//!             mirror: {backend: {subset: {version: v3}}, percent: 10}
//!           - name: catalog
//!             matches: [{path: {prefix: /catalog}}]
//!             cache: {default_ttl: 10s}       # see `pillion_api::cache`
//! workloads:
//!   - name: api
//!     namespace: shop
//!     inbound:
//!       ports:
//!         8080:
//!           routes:
//!             - name: admin
//!               matches: [{path: {prefix: /admin}}]
//!               allow: ["spiffe://cluster.local/ns/ops/*"]
//!               rate_limit: {requests_per_second: 5, burst: 5, key: client_identity}
//!             - name: orders              # needs the port's `jwt:` (see `jwt`)
//!               matches: [{path: {prefix: /orders}}]
//!               claims: {scope: [orders.read]}
//! ```

use pillion_api::aggregate::Aggregate;
use pillion_api::cache::ResponseCache;
use pillion_api::duration::HumaneDuration;
use pillion_api::fault::FaultInjection;
use pillion_api::policy::{
    validate_routes, HeaderEdits, Mirror, PathRewrite, PolicyError, RateLimit, RetryPolicy, Route,
    RouteMatch, ServerPolicy, ServerRoute, WeightedBackend,
};
use pillion_api::transform::Transform;
use serde::Deserialize;
use std::collections::BTreeMap;

use super::model::Pattern;
use super::path::{EntryPath, Seg};

/// A client route of a service port, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Unique within the port.
    pub name: String,
    /// Any of these selects the route; none matches every request.
    #[serde(default, with = "serde_yaml_ng::with::singleton_map_recursive")]
    pub matches: Vec<RouteMatch>,
    /// Weighted backends; none means every endpoint of the port.
    #[serde(default)]
    pub backends: Vec<WeightedBackend>,
    /// Deadline for the whole request, retries included.
    #[serde(default)]
    pub timeout: Option<HumaneDuration>,
    /// Deadline for each try.
    #[serde(default)]
    pub per_try_timeout: Option<HumaneDuration>,
    /// When and how to retry.
    #[serde(default)]
    pub retry: Option<RetryPolicy>,
    /// Client-side rate limit.
    #[serde(default, with = "serde_yaml_ng::with::singleton_map_recursive")]
    pub rate_limit: Option<RateLimit>,
    /// Edits of forwarded requests.
    #[serde(default)]
    pub request_headers: HeaderEdits,
    /// Edits of returned responses.
    #[serde(default)]
    pub response_headers: HeaderEdits,
    /// Prefix rewrite.
    #[serde(default)]
    pub rewrite: Option<PathRewrite>,
    /// Injected delays and aborts.
    #[serde(default)]
    pub fault: Option<FaultInjection>,
    /// Copies of a share of requests to a shadow backend.
    #[serde(default)]
    pub mirror: Option<Mirror>,
    /// Answers to the route's `GET`s reused while fresh.
    #[serde(default)]
    pub cache: Option<ResponseCache>,
    /// Rewrites of the bodies going each way (`- set: {…}` edits are YAML maps).
    #[serde(default, with = "serde_yaml_ng::with::singleton_map_recursive")]
    pub transform: Option<Transform>,
    /// Answers composed from several services' JSON.
    #[serde(default)]
    pub aggregate: Option<Aggregate>,
}

/// A server route of an inbound port, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerRouteSpec {
    /// Unique within the port.
    pub name: String,
    /// Any of these selects the route; none matches every request.
    #[serde(default, with = "serde_yaml_ng::with::singleton_map_recursive")]
    pub matches: Vec<RouteMatch>,
    /// Who may call this route; empty defers to the port's `allow`.
    #[serde(default)]
    pub allow: Vec<Pattern>,
    /// Server-side rate limit.
    #[serde(default, with = "serde_yaml_ng::with::singleton_map_recursive")]
    pub rate_limit: Option<RateLimit>,
    /// Claims the end user's token must carry.
    #[serde(default)]
    pub claims: BTreeMap<String, Vec<String>>,
    /// Whether a token is needed here (the port's `jwt.required` otherwise).
    #[serde(default)]
    pub jwt_required: Option<bool>,
}

impl RouteSpec {
    /// Every backend it sends to, its mirror's and its aggregation's included.
    pub fn sent_to(&self) -> impl Iterator<Item = &WeightedBackend> {
        let parts = self.aggregate.iter().flat_map(|a| &a.parts);
        self.backends
            .iter()
            .chain(self.mirror.as_ref().map(|m| &m.backend))
            .chain(parts.map(|p| &p.backend))
    }

    /// The wire route.
    pub fn to_route(&self) -> Route {
        Route {
            name: self.name.clone(),
            matches: self.matches.clone(),
            backends: self.backends.clone(),
            timeout: self.timeout.map(HumaneDuration::get),
            per_try_timeout: self.per_try_timeout.map(HumaneDuration::get),
            retry: self.retry.clone(),
            rate_limit: self.rate_limit.clone(),
            request_headers: self.request_headers.clone(),
            response_headers: self.response_headers.clone(),
            rewrite: self.rewrite.clone(),
            fault: self.fault.clone(),
            mirror: self.mirror.clone(),
            cache: self.cache.clone(),
            transform: self.transform.clone(),
            aggregate: self.aggregate.clone(),
        }
    }
}

impl ServerRouteSpec {
    /// The wire route.
    pub fn to_route(&self) -> ServerRoute {
        ServerRoute {
            name: self.name.clone(),
            matches: self.matches.clone(),
            allow: self
                .allow
                .iter()
                .map(|p| p.0.as_str().to_string())
                .collect(),
            rate_limit: self.rate_limit.clone(),
            claims: self.claims.clone(),
            jwt_required: self.jwt_required,
        }
    }
}

/// Converts and validates a service port's routes; errors name `at.routes[i]…`.
pub fn client_routes(
    specs: &[RouteSpec],
    at: &EntryPath,
) -> Result<Vec<Route>, (EntryPath, String)> {
    let routes: Vec<Route> = specs.iter().map(RouteSpec::to_route).collect();
    validate_routes(&routes).map_err(|e| located(at, &e))?;
    Ok(routes)
}

/// Converts and validates an inbound port's routes; errors name `at.routes[i]…`.
pub fn server_policy(
    specs: &[ServerRouteSpec],
    at: &EntryPath,
) -> Result<ServerPolicy, (EntryPath, String)> {
    let policy = ServerPolicy {
        routes: specs.iter().map(ServerRouteSpec::to_route).collect(),
    };
    policy.validate().map_err(|e| located(at, &e))?;
    Ok(policy)
}

/// The entry path of a policy error (`routes[1].backends[0].weight`) below `at`.
fn located(at: &EntryPath, e: &PolicyError) -> (EntryPath, String) {
    (join(at, &e.path), e.problem.to_string())
}

/// Appends a dotted, indexed policy path (`a[1].b.c[2]`) to `at`.
pub fn join(at: &EntryPath, policy_path: &str) -> EntryPath {
    let mut segs = at.0.clone();
    for part in policy_path.split('.').filter(|p| !p.is_empty()) {
        let (key, mut rest) = match part.find('[') {
            Some(i) => part.split_at(i),
            None => (part, ""),
        };
        if !key.is_empty() {
            segs.push(Seg::Key(key.to_string()));
        }
        while let Some(inner) = rest.strip_prefix('[') {
            let Some((index, tail)) = inner.split_once(']') else {
                break;
            };
            match index.parse() {
                Ok(i) => segs.push(Seg::Index(i)),
                Err(_) => segs.push(Seg::Key(index.to_string())),
            }
            rest = tail;
        }
    }
    EntryPath(segs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_paths_join_as_segments() {
        let at = EntryPath::root("services").index(2).key("ports").index(0);
        let p = join(&at, "routes[1].backends[0].weight");
        assert_eq!(
            p.to_string(),
            "services[2].ports[0].routes[1].backends[0].weight"
        );
        assert_eq!(join(&at, "").to_string(), "services[2].ports[0]");
    }

    #[test]
    fn yaml_shapes_parse() {
        let yaml = r#"
name: r
matches:
  - path: {prefix: /api}
    method: GET
    headers: [{name: x-canary, value: {exact: "true"}}]
  - path: {regex: "/v[0-9]+"}
backends:
  - {weight: 90, subset: {version: v1}}
  - {weight: 10, subset: {version: v2}}
timeout: 2s
per_try_timeout: 500ms
retry: {attempts: 3, conditions: [gateway-error, 503, "5xx"], budget: {ratio: 0.1, window: 5s}}
rate_limit: {requests_per_second: 100, burst: 20, key: {header: x-api-key}}
request_headers: {set: {x-route: r}, remove: [x-debug]}
"#;
        let spec: RouteSpec = serde_yaml_ng::from_str(yaml).unwrap();
        let route = spec.to_route();
        route.validate().unwrap();
        assert_eq!(route.timeout, Some(std::time::Duration::from_secs(2)));
        assert_eq!(route.backends[1].weight, 10);
        let limit = route.rate_limit.unwrap();
        assert_eq!(limit.requests_per_second, 100.0);
        let err = serde_yaml_ng::from_str::<RouteSpec>("name: r\ntimout: 2s\n").unwrap_err();
        assert!(err.to_string().contains("timout"), "{err}");
        let err = serde_yaml_ng::from_str::<RouteSpec>("name: r\ntimeout: 2\n").unwrap_err();
        assert!(err.to_string().contains("no unit"), "{err}");
        let server: ServerRouteSpec = serde_yaml_ng::from_str(
            "name: admin\nallow: [\"spiffe://cluster.local/ns/ops/*\"]\nrate_limit: {requests_per_second: 5, burst: 5, key: client_identity}\n",
        )
        .unwrap();
        assert_eq!(server.to_route().allow, ["spiffe://cluster.local/ns/ops/*"]);
    }

    const FILE: &str = r#"
workloads:
  - name: api
    namespace: shop
    token: api-token-123
    addresses: [198.18.1.2]
    inbound:
      ports:
        8080:
          mode: strict
          routes:
            - name: admin
              matches: [{path: {prefix: /admin}}]
              allow: ["spiffe://cluster.local/ns/ops/*"]
services:
  - name: api
    namespace: shop
    addresses: [198.18.1.100]
    ports:
      - port: 80
        target_port: 8080
        routes:
          - name: canary
            matches: [{headers: [{name: x-canary, value: {exact: "yes"}}]}]
            backends: [{subset: {version: v2}}]
          - name: all
            backends:
              - {weight: 90, subset: {version: v1}}
              - {weight: 10, subset: {version: v2}}
            retry: {attempts: 2}
    endpoints:
      - workload: api
        labels: {version: v1}
  - name: fallback
    namespace: shop
    ports: [{port: 80}]
"#;

    fn refused(text: &str) -> crate::source::SourceError {
        match crate::source::parse_source("r.yaml", text, "cluster.local") {
            Ok(_) => panic!("accepted"),
            Err(e) => e,
        }
    }

    #[test]
    fn routes_reach_the_views() {
        let catalog = crate::source::parse_source("r.yaml", FILE, "cluster.local").unwrap();
        let port = &catalog.services().next().unwrap().ports[0];
        assert_eq!(port.routes.len(), 2);
        assert_eq!(port.routes[1].backends[1].weight, 10);
        let inbound = &catalog.workloads().next().unwrap().inbound;
        let policy = &inbound.ports[&8080];
        assert_eq!(policy.server.routes[0].name, "admin");
        assert_eq!(
            policy.server.routes[0].allow,
            ["spiffe://cluster.local/ns/ops/*"]
        );
    }

    #[test]
    fn route_errors_are_located() {
        let bad = FILE
            .replace("{weight: 90,", "{weight: 0,")
            .replace("{weight: 10,", "{weight: 0,");
        let e = refused(&bad);
        assert!(
            e.reason
                .starts_with("services[0].ports[0].routes[1].backends: every backend weight is 0"),
            "{e}"
        );
        assert_eq!(e.line(), Some(28), "{e}");

        let bad = FILE.replace("retry: {attempts: 2}", "retry: {attempts: 20}");
        let e = refused(&bad);
        assert!(
            e.reason
                .starts_with("services[0].ports[0].routes[1].retry.attempts:"),
            "{e}"
        );
        assert_eq!(e.line(), Some(30), "{e}");

        let cached = FILE.replace(
            "retry: {attempts: 2}",
            "retry: {attempts: 2}\n            cache: {default_ttl: 10s, key_headers: [x-api-key]}",
        );
        let catalog = crate::source::parse_source("r.yaml", &cached, "cluster.local").unwrap();
        let route = &catalog.services().next().unwrap().ports[0].routes[1];
        let cache = route.cache.as_ref().unwrap();
        assert_eq!(cache.default_ttl, Some(std::time::Duration::from_secs(10)));
        assert_eq!(cache.key_headers, ["x-api-key"]);
        let bad = cached.replace("default_ttl: 10s", "default_ttl: 2h");
        let e = refused(&bad);
        assert!(
            e.reason.starts_with(
                "services[0].ports[0].routes[1].cache.default_ttl: must be more than 0"
            ),
            "{e}"
        );
        assert_eq!(e.line(), Some(31), "{e}");

        let transformed = FILE.replace(
            "retry: {attempts: 2}",
            "retry: {attempts: 2}\n            transform:\n              response: {convert: xml_to_json, json: [{remove: {path: /a}}, {set: {path: /b, value: {c: [1]}}}]}",
        );
        let catalog = crate::source::parse_source("r.yaml", &transformed, "cluster.local").unwrap();
        let route = &catalog.services().next().unwrap().ports[0].routes[1];
        let response = route.transform.as_ref().unwrap().response.as_ref().unwrap();
        assert_eq!(
            response.json[1],
            pillion_api::transform::JsonEdit::Set {
                path: "/b".into(),
                value: serde_json::json!({"c": [1]})
            }
        );
        let e = refused(&transformed.replace("path: /a", "path: a"));
        assert!(
            e.reason.starts_with(
                "services[0].ports[0].routes[1].transform.response.json[0].path: \"a\" is not a JSON Pointer"
            ),
            "{e}"
        );
        assert_eq!(e.line(), Some(32), "{e}");

        let limited = FILE.replace(
            "        target_port: 8080\n",
            "        target_port: 8080\n        circuit_breaker: {max_requests: 200}\n",
        );
        let catalog = crate::source::parse_source("r.yaml", &limited, "cluster.local").unwrap();
        let port = &catalog.services().next().unwrap().ports[0];
        assert_eq!(port.circuit_breaker.unwrap().max_requests, 200);
        let e = refused(&limited.replace("max_requests: 200", "max_requests: 0"));
        assert!(
            e.reason
                .starts_with("services[0].ports[0].circuit_breaker.max_requests: must be 1 to"),
            "{e}"
        );
        assert_eq!(e.line(), Some(22), "{e}");

        let bad = FILE.replace("- name: all", "- name: canary");
        let e = refused(&bad);
        assert!(
            e.reason
                .contains("routes[1].name: route name \"canary\" is used twice"),
            "{e}"
        );
        assert_eq!(e.line(), Some(26), "{e}");

        let bad = FILE.replace("- name: admin", "- name: bad name");
        let e = refused(&bad);
        assert!(
            e.reason
                .starts_with("workloads[0].inbound.ports.8080.routes[0].name:"),
            "{e}"
        );
        assert_eq!(e.line(), Some(12), "{e}");

        let bad = FILE.replace("retry: {attempts: 2}", "retry: {atempts: 2}");
        let e = refused(&bad);
        assert!(e.reason.contains("atempts"), "{e}");
        assert_eq!(e.line(), Some(30), "{e}");
    }

    #[test]
    fn backend_services_must_exist_with_the_port() {
        let good = FILE.replace(
            "{weight: 10, subset: {version: v2}}",
            "{weight: 10, service: fallback}",
        );
        crate::source::parse_source("r.yaml", &good, "cluster.local").unwrap();
        let bad = FILE.replace(
            "{weight: 10, subset: {version: v2}}",
            "{weight: 10, service: nope}",
        );
        let e = refused(&bad);
        assert!(
            e.reason
                .contains("no service named `nope` in namespace `shop`"),
            "{e}"
        );
        assert_eq!(e.line(), Some(29), "{e}");
        let bad = good.replace("ports: [{port: 80}]", "ports: [{port: 81}]");
        let e = refused(&bad);
        assert!(e.reason.contains("has no port 80"), "{e}");

        // An aggregation's parts are backends too: each must exist, and each is in
        // the views of the route's callers.
        let page = "          - name: page\n            matches: [{path: {exact: /page}}]\n            aggregate:\n              parts:\n                - {name: own, backend: {}, path: /a}\n                - {name: other, backend: {service: fallback}, path: /b}\n";
        let aggregating = FILE.replace(
            "          - name: all\n",
            &format!("{page}          - name: all\n"),
        );
        let catalog = crate::source::parse_source("r.yaml", &aggregating, "cluster.local").unwrap();
        let api = catalog.services().next().unwrap();
        let names: Vec<_> = catalog
            .backends_of(api)
            .iter()
            .map(|s| s.name.clone())
            .collect();
        assert_eq!(names, ["fallback"]);
        let e = refused(&aggregating.replace("service: fallback}", "service: nope}"));
        assert!(
            e.reason.starts_with(
                "services[0].ports[0].routes[1].aggregate.parts[1].backend.service: no service named `nope`"
            ),
            "{e}"
        );
        assert_eq!(e.line(), Some(31), "{e}");
        let e = refused(&aggregating.replace(
            "path: {exact: /page}}]\n",
            "path: {exact: /page}}]\n            cache: {}\n",
        ));
        assert!(
            e.reason.starts_with(
                "services[0].ports[0].routes[1].cache: an aggregate route cannot have `cache`"
            ),
            "{e}"
        );
    }

    #[test]
    fn the_worked_example_of_docs_policy_md_is_valid() {
        let doc = include_str!("../../../docs/policy.md");
        let start = doc.find("```yaml\n").expect("a yaml block") + "```yaml\n".len();
        let len = doc[start..].find("```").expect("the end of the block");
        let catalog =
            crate::source::parse_source("policy.md", &doc[start..start + len], "cluster.local")
                .unwrap_or_else(|e| panic!("{e}"));
        let routes = &catalog.services().next().unwrap().ports[0].routes;
        assert_eq!(routes.len(), 5);
        assert_eq!(routes[1].backends[0].weight, 90);
        let catalog_cache = routes[3].cache.as_ref().expect("the catalog route caches");
        assert_eq!(
            catalog_cache.default_ttl,
            Some(std::time::Duration::from_secs(30))
        );
        let invoices = routes[4]
            .transform
            .as_ref()
            .expect("the invoices route transforms");
        assert!(invoices.response.is_some() && invoices.request.is_none());
        let api = catalog.workloads().find(|w| w.name == "api").unwrap();
        assert_eq!(api.inbound.ports[&8080].server.routes.len(), 2);
    }
}
