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
//! ```
//!
//! An inline `jwks` may be written as YAML (the JWK Set's own shape) or as a string
//! of JSON, as an identity provider publishes it.

use std::collections::BTreeMap;

use pillion_api::duration::HumaneDuration;
use pillion_api::jwt::{JwtPolicy, JwtProvider, TokenSource, DEFAULT_CLOCK_SKEW};
use serde::Deserialize;

/// A port's `jwt:` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSpec {
    /// Whether requests without a token are refused.
    #[serde(default = "yes")]
    pub required: bool,
    /// The trusted issuers.
    pub providers: Vec<JwtProviderSpec>,
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
    /// The wire policy (checked afterwards by [`JwtPolicy::validate`]).
    pub fn to_policy(&self) -> JwtPolicy {
        JwtPolicy {
            required: self.required,
            providers: self
                .providers
                .iter()
                .map(JwtProviderSpec::to_provider)
                .collect(),
        }
    }
}

impl JwtProviderSpec {
    fn to_provider(&self) -> JwtProvider {
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
