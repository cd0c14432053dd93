//! End-user authentication of an inbound port in the YAML source, as written by
//! hand (see [`pillion_api::jwt`] for what each field does):
//!
//! ```yaml
//! jwt:
//!   required: true
//!   providers:
//!     - issuer: https://auth.example.com
//!       audiences: [orders]
//!       jwks_uri: https://auth.example.com/.well-known/jwks.json  # or `jwks:` inline
//!       from: [{header: {name: authorization, prefix: "Bearer "}}, {cookie: session}]
//!       clock_skew: 30s
//!       claim_headers: {sub: x-user}
//!       forward_token: true
//!   introspection:                 # opaque tokens, asked through the mesh (RFC 7662)
//!     service: oauth               # `name` in the workload's namespace, or `namespace/name`
//!     port: 8080
//!     path: /introspect
//!     audiences: [orders]
//!     timeout: 2s
//!     cache_ttl: 30s
//! ```
//!
//! An inline `jwks` may be written as YAML (the JWK Set's own shape) or as a string
//! of JSON, as an identity provider publishes it.

use std::collections::BTreeMap;

use pillion_api::duration::HumaneDuration;
use pillion_api::jwt::{
    Introspection, JwtPolicy, JwtProvider, TokenSource, DEFAULT_CLOCK_SKEW,
    DEFAULT_INTROSPECTION_CACHE_TTL, DEFAULT_INTROSPECTION_PATH, DEFAULT_INTROSPECTION_TIMEOUT,
};
use serde::Deserialize;

/// A port's `jwt:` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSpec {
    /// Whether requests without a token are refused.
    #[serde(default = "yes")]
    pub required: bool,
    /// The trusted issuers.
    #[serde(default)]
    pub providers: Vec<JwtProviderSpec>,
    /// Where opaque tokens are asked about.
    #[serde(default)]
    pub introspection: Option<IntrospectionSpec>,
}

/// An introspection endpoint as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionSpec {
    /// The endpoint's service: `name` (the workload's namespace) or `namespace/name`.
    pub service: String,
    /// Its port.
    pub port: u16,
    /// The path tokens are posted to.
    #[serde(default)]
    pub path: Option<String>,
    /// The `iss` an answer must carry.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Accepted audiences.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Where tokens travel.
    #[serde(default, with = "serde_yaml_ng::with::singleton_map_recursive")]
    pub from: Vec<TokenSource>,
    /// Longest wait for an answer.
    #[serde(default)]
    pub timeout: Option<HumaneDuration>,
    /// How long an answer is reused.
    #[serde(default)]
    pub cache_ttl: Option<HumaneDuration>,
    /// Tolerance for `exp` and `nbf`.
    #[serde(default)]
    pub clock_skew: Option<HumaneDuration>,
    /// Members of the answer copied to request headers.
    #[serde(default)]
    pub claim_headers: BTreeMap<String, String>,
    /// Whether the token goes on to the application.
    #[serde(default = "yes")]
    pub forward_token: bool,
}

/// One provider as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtProviderSpec {
    /// The `iss` of its tokens.
    pub issuer: String,
    /// Accepted audiences.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// The key set inline: YAML, or a JSON string.
    #[serde(default)]
    pub jwks: Option<serde_json::Value>,
    /// Where the agent fetches the key set.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// Where tokens travel.
    #[serde(default, with = "serde_yaml_ng::with::singleton_map_recursive")]
    pub from: Vec<TokenSource>,
    /// Tolerance for `exp` and `nbf`.
    #[serde(default)]
    pub clock_skew: Option<HumaneDuration>,
    /// Claims copied to request headers.
    #[serde(default)]
    pub claim_headers: BTreeMap<String, String>,
    /// Whether the token goes on to the application.
    #[serde(default = "yes")]
    pub forward_token: bool,
}

fn yes() -> bool {
    true
}

impl JwtSpec {
    /// The wire policy of a workload in `namespace` (checked afterwards by
    /// [`JwtPolicy::validate`]).
    pub fn to_policy(&self, namespace: &str) -> JwtPolicy {
        JwtPolicy {
            required: self.required,
            providers: self
                .providers
                .iter()
                .map(JwtProviderSpec::to_provider)
                .collect(),
            introspection: self.introspection.as_ref().map(|x| x.to_wire(namespace)),
        }
    }
}

impl IntrospectionSpec {
    /// The service as `namespace/name`, a bare name being in `namespace`.
    pub fn service_in(&self, namespace: &str) -> String {
        if self.service.contains('/') {
            self.service.clone()
        } else {
            format!("{namespace}/{}", self.service)
        }
    }

    /// The wire form, a bare service name being in `namespace` (defaults filled).
    pub(crate) fn to_wire(&self, namespace: &str) -> Introspection {
        let or = |d: Option<HumaneDuration>, default| d.map_or(default, HumaneDuration::get);
        Introspection {
            service: self.service_in(namespace),
            port: self.port,
            path: (self.path.clone()).unwrap_or_else(|| DEFAULT_INTROSPECTION_PATH.to_string()),
            issuer: self.issuer.clone(),
            audiences: self.audiences.clone(),
            from: self.from.clone(),
            timeout: or(self.timeout, DEFAULT_INTROSPECTION_TIMEOUT),
            cache_ttl: or(self.cache_ttl, DEFAULT_INTROSPECTION_CACHE_TTL),
            clock_skew: or(self.clock_skew, DEFAULT_CLOCK_SKEW),
            claim_headers: self.claim_headers.clone(),
            forward_token: self.forward_token,
        }
    }
}

impl JwtProviderSpec {
    /// The wire form (defaults filled).
    pub(crate) fn to_provider(&self) -> JwtProvider {
        let jwks = match &self.jwks {
            None => String::new(),
            Some(serde_json::Value::String(text)) => text.clone(),
            Some(value) => value.to_string(),
        };
        JwtProvider {
            issuer: self.issuer.clone(),
            audiences: self.audiences.clone(),
            jwks,
            jwks_uri: self.jwks_uri.clone(),
            from: self.from.clone(),
            clock_skew: self
                .clock_skew
                .map_or(DEFAULT_CLOCK_SKEW, HumaneDuration::get),
            claim_headers: self.claim_headers.clone(),
            forward_token: self.forward_token,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::source::{parse_source, SourceError};

    const FILE: &str = r#"
workloads:
  - name: api
    namespace: shop
    inbound:
      ports:
        8080:
          jwt:
            providers:
              - issuer: https://auth.test
                audiences: [orders]
                jwks:
                  keys:
                    - {kty: EC, crv: P-256, kid: "1", x: MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4, y: 4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM}
                from: [{header: {name: authorization, prefix: "Bearer "}}, {cookie: session}]
                claim_headers: {sub: x-user}
              - issuer: https://other.test
                jwks_uri: https://other.test/keys
                clock_skew: 10s
          routes:
            - name: orders
              matches: [{path: {prefix: /orders}}]
              claims: {scope: [orders.read]}
            - name: health
              matches: [{path: {exact: /healthz}}]
              jwt_required: false
"#;

    /// A port whose opaque tokens are asked about at a service of another namespace.
    const INTROSPECTED: &str = r#"
workloads:
  - name: api
    namespace: shop
    token: api-token
    addresses: [198.18.0.2]
    inbound:
      ports:
        8080:
          jwt:
            introspection:
              service: idp/oauth
              port: 9000
              audiences: [orders]
              cache_ttl: 10s
              claim_headers: {sub: x-user}
          routes:
            - name: orders
              matches: [{path: {prefix: /orders}}]
              claims: {scope: [orders.read]}
services:
  - name: oauth
    namespace: idp
    addresses: [198.18.0.200]
    ports: [{port: 9000}]
  - name: other
    namespace: idp
    ports: [{port: 80}]
"#;

    #[test]
    fn introspection_reaches_the_view_with_its_service() {
        let catalog = parse_source("s.yaml", INTROSPECTED, "cluster.local").unwrap();
        let api = catalog.workload_for_token("api-token").unwrap();
        let jwt = api.inbound.ports[&8080].jwt.as_ref().unwrap();
        assert!(jwt.providers.is_empty());
        let x = jwt.introspection.as_ref().unwrap();
        assert_eq!((x.service.as_str(), x.port), ("idp/oauth", 9000));
        assert_eq!(x.path, "/introspect");
        assert_eq!(x.cache_ttl.as_secs(), 10);
        // The proxy calls the endpoint itself: an on-demand view carries it (and
        // nothing else it does not serve).
        let view = crate::view::view_for(&catalog, api, 1, "", crate::view::Discovery::OnDemand);
        let names: Vec<&str> = view.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["oauth"]);
        // With the services the endpoint's routes split to.
        let split = INTROSPECTED.replace(
            "    ports: [{port: 9000}]\n",
            "    ports:\n      - port: 9000\n        routes:\n          - name: canary\n            backends: [{service: oauth}, {service: other, port: 80}]\n",
        );
        let catalog = parse_source("s.yaml", &split, "cluster.local").unwrap();
        let api = catalog.workload_for_token("api-token").unwrap();
        let view = crate::view::view_for(&catalog, api, 1, "", crate::view::Discovery::OnDemand);
        let names: Vec<&str> = view.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["oauth", "other"]);
        // A bare name is the workload's own namespace.
        let bare = INTROSPECTED
            .replace("service: idp/oauth", "service: oauth")
            .replace(
                "namespace: idp\n    addresses",
                "namespace: shop\n    addresses",
            );
        let catalog = parse_source("s.yaml", &bare, "cluster.local").unwrap();
        let api = catalog.workload_for_token("api-token").unwrap();
        let x = (api.inbound.ports[&8080].jwt.as_ref())
            .and_then(|j| j.introspection.as_ref())
            .unwrap();
        assert_eq!(x.service, "shop/oauth");
    }

    #[test]
    fn bad_introspection_is_refused_at_its_line() {
        let cases = [
            (
                INTROSPECTED.replace("service: idp/oauth", "service: idp/nothing"),
                "jwt.introspection.service: no service named `idp/nothing`",
                12,
            ),
            (
                INTROSPECTED.replace("port: 9000\n", "port: 9001\n"),
                "jwt.introspection.port: service `idp/oauth` has no port 9001 (it offers 9000)",
                13,
            ),
            (
                INTROSPECTED.replace("cache_ttl: 10s", "cache_ttl: 1h"),
                "jwt.introspection.cache_ttl: cache_ttl must be at most 600s",
                15,
            ),
            (
                INTROSPECTED.replace("cache_ttl: 10s", "timeout: 0s"),
                "jwt.introspection.timeout: timeout must be more than 0s",
                15,
            ),
            (
                INTROSPECTED.replace("service: idp/oauth", "service: Idp/oauth"),
                "jwt.introspection.service: \"Idp/oauth\" must be written namespace/name",
                12,
            ),
        ];
        for (text, want, line) in cases {
            let e = refused(&text);
            assert!(e.to_string().contains(want), "{e}");
            assert_eq!(e.line(), Some(line), "{e}");
        }
    }

    fn refused(text: &str) -> SourceError {
        parse_source("s.yaml", text, "cluster.local").unwrap_err()
    }

    #[test]
    fn providers_and_claims_reach_the_view() {
        let catalog = parse_source("s.yaml", FILE, "cluster.local").unwrap();
        let port = &catalog.workloads().next().unwrap().inbound.ports[&8080];
        let jwt = port.jwt.as_ref().unwrap();
        assert!(jwt.required);
        let inline = &jwt.providers[0];
        assert!(inline.jwks.starts_with(r#"{"keys":[{"#), "{}", inline.jwks);
        assert_eq!(inline.from.len(), 2);
        assert_eq!(inline.claim_headers["sub"], "x-user");
        let fetched = &jwt.providers[1];
        assert!(fetched.jwks.is_empty());
        assert_eq!(fetched.jwks_uri.as_deref(), Some("https://other.test/keys"));
        assert_eq!(fetched.clock_skew.as_secs(), 10);
        let routes = &port.server.routes;
        assert_eq!(routes[0].claims["scope"], ["orders.read"]);
        assert_eq!(routes[1].jwt_required, Some(false));
    }

    #[test]
    fn bad_providers_are_refused_at_their_line() {
        let cases = [
            (
                FILE.replace("kty: EC, crv: P-256", "kty: oct, k: c2VjcmV0, crv: P-256"),
                "jwt.providers[0].jwks: key 0 of the key set: a symmetric (oct) key",
                13,
            ),
            (
                FILE.replace("jwks_uri: https://other.test/keys", "jwks_uri: http://other.test/keys"),
                "jwt.providers[1].jwks_uri: jwks_uri \"http://other.test/keys\" must be an absolute https:// URI",
                18,
            ),
            (
                FILE.replace("clock_skew: 10s", "clock_skew: 10m"),
                "jwt.providers[1].clock_skew: clock_skew must be at most 300s",
                19,
            ),
            (
                FILE.replace("sub: x-user", "sub: pillion-peer-identity"),
                "claim_headers.sub: header \"pillion-peer-identity\" cannot be used here",
                16,
            ),
            (
                FILE.replace("issuer: https://other.test", "issuer: https://auth.test"),
                "jwt.providers[1].issuer: issuer \"https://auth.test\" is listed twice",
                17,
            ),
        ];
        for (text, want, line) in cases {
            let e = refused(&text);
            assert!(e.to_string().contains(want), "{e}");
            assert_eq!(e.line(), Some(line), "{e}");
        }
        // Claims where the port has no providers.
        let start = FILE.find("          jwt:").unwrap();
        let end = FILE.find("          routes:").unwrap();
        let no_jwt = format!("{}{}", &FILE[..start], &FILE[end..]);
        let e = refused(&no_jwt);
        assert!(
            e.to_string().contains(
                "ports.8080.routes[0]: claims and jwt_required need the port's jwt providers"
            ),
            "{e}"
        );
        let e = refused(
            &FILE
                .replace("forward_token", "x")
                .replace("claim_headers", "claim_header"),
        );
        assert!(e.to_string().contains("claim_header"), "{e}");
    }
}
