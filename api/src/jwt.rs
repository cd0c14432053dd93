//! End-user authentication with JSON Web Tokens (RFC 7519): which issuers an inbound
//! port trusts, where their tokens travel in a request, and the key sets (RFC 7517)
//! they sign with.
//!
//! The agent checks a policy with [`JwtPolicy::validate`] and the proxy builds its
//! verifier from [`parse_jwks`], so a key set the agent accepts is exactly one the
//! proxy can use. Only asymmetric signatures are accepted (RS*, PS*, ES256, ES384,
//! EdDSA): a symmetric (`oct`) key in a published key set would let anyone who reads
//! it sign, so such a key set is refused, and `none` is not an algorithm here at all.
//!
//! ```yaml
//! jwt:
//!   required: true                     # a request without a token gets 401
//!   providers:
//!     - issuer: https://auth.example.com
//!       audiences: [orders]
//!       jwks_uri: https://auth.example.com/.well-known/jwks.json   # agent source only
//!       from: [{header: {name: authorization, prefix: "Bearer "}}, {cookie: session}]
//!       clock_skew: 30s
//!       claim_headers: {sub: x-user, scope: x-scopes}
//!       forward_token: false
//!   introspection:                     # opaque tokens (RFC 7662), asked through the mesh
//!     service: idp/oauth
//!     port: 8080
//!     path: /oauth2/introspect
//!     audiences: [orders]
//!     cache_ttl: 30s
//! ```
//!
//! A token that is not a JWT, or a JWT no provider's key verifies, goes to the
//! introspection endpoint when one is set; a JWT a provider's key does verify is
//! judged by its claims alone and never asked about.

use std::collections::BTreeMap;
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::{Deserialize, Serialize};

use crate::policy::{validate_edited_name, PolicyError, PolicyProblem};

/// Default tolerance for clocks that disagree, applied to `exp` and `nbf`.
pub const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(60);
/// Largest tolerance accepted: more would keep expired tokens alive.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);
/// Largest key set accepted, in bytes of JSON.
pub const MAX_JWKS_BYTES: usize = 64 * 1024;
/// Most keys one key set may hold.
pub const MAX_JWKS_KEYS: usize = 32;
/// Longest token the proxy verifies; a longer one is refused without parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// How often the agent fetches each `jwks_uri` again, so a rotated key reaches the
/// proxies within a minute.
pub const JWKS_REFRESH: Duration = Duration::from_secs(30);
/// The header and scheme a token is read from when a provider names none.
pub const DEFAULT_TOKEN_HEADER: &str = "authorization";
/// The scheme in front of a token in [`DEFAULT_TOKEN_HEADER`].
pub const BEARER_PREFIX: &str = "Bearer ";

/// Longest wait for an introspection answer accepted in a policy.
pub const MAX_INTROSPECTION_TIMEOUT: Duration = Duration::from_secs(60);
/// Default wait for an introspection answer.
pub const DEFAULT_INTROSPECTION_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest time an introspection answer may be reused: a revoked token keeps
/// working at most this long.
pub const MAX_INTROSPECTION_CACHE_TTL: Duration = Duration::from_secs(600);
/// Default reuse of an introspection answer.
pub const DEFAULT_INTROSPECTION_CACHE_TTL: Duration = Duration::from_secs(30);
/// Default path of the introspection endpoint.
pub const DEFAULT_INTROSPECTION_PATH: &str = "/introspect";

/// The end-user authentication of one inbound port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtPolicy {
    /// Issuers whose tokens are accepted; a token must verify against one of them
    /// (or, with [`JwtPolicy::introspection`], be active there).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<JwtProvider>,
    /// Where opaque tokens are asked about (RFC 7662).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub introspection: Option<Introspection>,
    /// Whether a request without any token is refused (401). A token that is present
    /// must verify either way. Routes may override it with `jwt_required`.
    #[serde(default = "yes")]
    pub required: bool,
}

/// One token issuer and how its tokens are checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtProvider {
    /// The `iss` every token must carry, exactly.
    pub issuer: String,
    /// Accepted `aud` values: a token must name at least one. Empty: a token must
    /// carry no `aud` at all (one meant for some other service is refused).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// The issuer's JWK Set as JSON text. Written in the policy, or, when the policy
    /// names a `jwks_uri`, fetched by the agent and filled in before the view goes
    /// out (empty until the first fetch: then the port refuses every request).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub jwks: String,
    /// Where the agent fetches the JWK Set (`https://` only), again every
    /// [`JWKS_REFRESH`]; a failed fetch keeps the last good set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// Where the token is read from, first found wins; empty means
    /// `Authorization: Bearer`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<TokenSource>,
    /// Tolerance for `exp` and `nbf`, at most [`MAX_CLOCK_SKEW`].
    #[serde(default = "default_clock_skew", with = "crate::duration::serde_humane")]
    pub clock_skew: Duration,
    /// Claims copied to request headers for the application (`sub: x-user`); a
    /// caller's own values of these headers are always removed first.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub claim_headers: BTreeMap<String, String>,
    /// Whether the token itself goes on to the application.
    #[serde(default = "yes")]
    pub forward_token: bool,
}

/// OAuth 2.0 token introspection (RFC 7662): the authorization server says whether
/// a token is active and what it grants. The endpoint is a mesh service reached
/// through this proxy's own outbound path (mesh TLS as this workload's identity,
/// balancing, breakers), so the server can authorize callers by mesh identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Introspection {
    /// The endpoint's service, `namespace/name`.
    pub service: String,
    /// Its port.
    pub port: u16,
    /// The path tokens are posted to.
    #[serde(default = "default_introspection_path")]
    pub path: String,
    /// The `iss` an answer must carry, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Accepted `aud` values, as for a provider: empty means an answer naming any
    /// audience is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// Where the token is read from, after the providers' places; empty means
    /// `Authorization: Bearer`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<TokenSource>,
    /// Longest wait for an answer (at most [`MAX_INTROSPECTION_TIMEOUT`]).
    #[serde(
        default = "default_introspection_timeout",
        with = "crate::duration::serde_humane"
    )]
    pub timeout: Duration,
    /// How long an answer is reused, never past the token's `exp` (at most
    /// [`MAX_INTROSPECTION_CACHE_TTL`]; zero asks every time).
    #[serde(
        default = "default_introspection_cache_ttl",
        with = "crate::duration::serde_humane"
    )]
    pub cache_ttl: Duration,
    /// Tolerance for an answer's `exp` and `nbf`, at most [`MAX_CLOCK_SKEW`].
    #[serde(default = "default_clock_skew", with = "crate::duration::serde_humane")]
    pub clock_skew: Duration,
    /// Members of the answer copied to request headers, as a provider's claims.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub claim_headers: BTreeMap<String, String>,
    /// Whether the token itself goes on to the application.
    #[serde(default = "yes")]
    pub forward_token: bool,
}

fn default_introspection_path() -> String {
    DEFAULT_INTROSPECTION_PATH.to_string()
}

fn default_introspection_timeout() -> Duration {
    DEFAULT_INTROSPECTION_TIMEOUT
}

fn default_introspection_cache_ttl() -> Duration {
    DEFAULT_INTROSPECTION_CACHE_TTL
}

impl Introspection {
    /// The places a token is looked for, the default one when none is written.
    pub fn sources(&self) -> Vec<TokenSource> {
        sources_or_default(&self.from)
    }

    /// The service's namespace and name.
    pub fn service_name(&self) -> Option<(&str, &str)> {
        self.service.split_once('/')
    }
}

/// Where in a request a token travels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TokenSource {
    /// A request header, optionally after a scheme prefix (`"Bearer "`, matched
    /// without regard to case).
    Header {
        /// The header's name.
        name: String,
        /// Text in front of the token.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prefix: Option<String>,
    },
    /// A cookie of this name.
    Cookie(String),
}

fn yes() -> bool {
    true
}

fn default_clock_skew() -> Duration {
    DEFAULT_CLOCK_SKEW
}

impl JwtProvider {
    /// The places a token is looked for, the default one when none is written.
    pub fn sources(&self) -> Vec<TokenSource> {
        sources_or_default(&self.from)
    }
}

fn sources_or_default(from: &[TokenSource]) -> Vec<TokenSource> {
    if from.is_empty() {
        vec![TokenSource::Header {
            name: DEFAULT_TOKEN_HEADER.to_string(),
            prefix: Some(BEARER_PREFIX.to_string()),
        }]
    } else {
        from.to_vec()
    }
}

/// One key of a key set, ready to verify signatures.
#[derive(Clone)]
pub struct VerifyKey {
    /// The key's `kid`, matched against a token header's `kid`.
    pub kid: Option<String>,
    /// The algorithms this key may verify (one family only).
    pub algorithms: Vec<Algorithm>,
    /// The public key.
    pub key: DecodingKey,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

/// Why a key set or a provider cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtProblem {
    /// Not a JSON object with a `keys` array, or too large.
    #[error("the key set is not a JWK Set: {0}")]
    NotAKeySet(String),
    /// A key of the set cannot be read.
    #[error("key {index} of the key set: {reason}")]
    BadKey {
        /// Its place in `keys`.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// No key of the set can verify signatures.
    #[error("the key set has no signing key this proxy can use (RSA, EC P-256/P-384, Ed25519)")]
    NoKeys,
    /// A port with JWT authentication but no provider.
    #[error("at least one provider (or an introspection endpoint) is needed")]
    NoProviders,
    /// An introspection service not written `namespace/name`.
    #[error("{0:?} must be written namespace/name")]
    BadService(String),
    /// An introspection path that is not an origin-form target.
    #[error("{0:?} must be a path starting with /")]
    BadPath(String),
    /// A port, wait or reuse time out of its bounds, and what they are.
    #[error("{0}")]
    OutOfRange(&'static str),
    /// Two providers with one issuer.
    #[error("issuer {0:?} is listed twice")]
    DuplicateIssuer(String),
    /// An empty issuer, audience, claim or cookie name.
    #[error("must not be empty")]
    Empty,
    /// A clock skew beyond [`MAX_CLOCK_SKEW`].
    #[error("clock_skew must be at most {}s", MAX_CLOCK_SKEW.as_secs())]
    SkewTooLarge,
    /// A header the proxy cannot use for a token or a claim.
    #[error("header {0:?} cannot be used here")]
    BadHeader(String),
    /// A cookie name that is not an HTTP token.
    #[error("{0:?} is not a valid cookie name")]
    BadCookie(String),
    /// Neither or both of `jwks` and `jwks_uri`.
    #[error("exactly one of jwks (the key set) and jwks_uri (where to fetch it) is needed")]
    JwksOrUri,
    /// A `jwks_uri` that is not an absolute `https://` URI.
    #[error("jwks_uri {0:?} must be an absolute https:// URI")]
    BadJwksUri(String),
}

/// Reads a JWK Set into the keys that can verify signatures. Keys marked for
/// encryption (`use: enc`) and key types this proxy does not know are skipped (RFC
/// 7517 §5); a symmetric key, or an asymmetric one whose `alg` contradicts it, makes
/// the whole set unusable.
pub fn parse_jwks(text: &str) -> Result<Vec<VerifyKey>, JwtProblem> {
    if text.len() > MAX_JWKS_BYTES {
        return Err(JwtProblem::NotAKeySet(format!(
            "{} bytes, more than {MAX_JWKS_BYTES}",
            text.len()
        )));
    }
    #[derive(Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_str(text).map_err(|e| JwtProblem::NotAKeySet(e.to_string()))?;
    if set.keys.len() > MAX_JWKS_KEYS {
        return Err(JwtProblem::NotAKeySet(format!(
            "{} keys, more than {MAX_JWKS_KEYS}",
            set.keys.len()
        )));
    }
    let mut keys = Vec::new();
    for (index, raw) in set.keys.into_iter().enumerate() {
        let bad = |reason: String| JwtProblem::BadKey { index, reason };
        let kty = raw.get("kty").and_then(|k| k.as_str()).unwrap_or_default();
        if kty == "oct" {
            return Err(bad(
                "a symmetric (oct) key: HMAC is not accepted, since anyone who can read the key set could sign".into(),
            ));
        }
        if !matches!(kty, "RSA" | "EC" | "OKP") {
            continue;
        }
        let jwk: Jwk = serde_json::from_value(raw).map_err(|e| bad(e.to_string()))?;
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let algorithms = algorithms_of(&jwk).map_err(bad)?;
        let key = DecodingKey::from_jwk(&jwk).map_err(|e| bad(e.to_string()))?;
        keys.push(VerifyKey {
            kid: jwk.common.key_id.clone(),
            algorithms,
            key,
        });
    }
    if keys.is_empty() {
        return Err(JwtProblem::NoKeys);
    }
    Ok(keys)
}

/// The algorithms a key may verify: its `alg` when written (which must fit its
/// type), otherwise every signature algorithm of its type and curve.
fn algorithms_of(jwk: &Jwk) -> Result<Vec<Algorithm>, String> {
    use Algorithm::{EdDSA, ES256, ES384, PS256, PS384, PS512, RS256, RS384, RS512};
    let by_type: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![RS256, RS384, RS512, PS256, PS384, PS512],
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => vec![ES256],
            EllipticCurve::P384 => vec![ES384],
            ref other => return Err(format!("curve {other:?} is not supported for EC keys")),
        },
        AlgorithmParameters::OctetKeyPair(okp) => match okp.curve {
            EllipticCurve::Ed25519 => vec![EdDSA],
            ref other => return Err(format!("curve {other:?} cannot sign")),
        },
        AlgorithmParameters::OctetKey(_) => return Err("a symmetric key".into()),
    };
    let Some(written) = &jwk.common.key_algorithm else {
        return Ok(by_type);
    };
    let alg = match written {
        KeyAlgorithm::RS256 => RS256,
        KeyAlgorithm::RS384 => RS384,
        KeyAlgorithm::RS512 => RS512,
        KeyAlgorithm::PS256 => PS256,
        KeyAlgorithm::PS384 => PS384,
        KeyAlgorithm::PS512 => PS512,
        KeyAlgorithm::ES256 => ES256,
        KeyAlgorithm::ES384 => ES384,
        KeyAlgorithm::EdDSA => EdDSA,
        other => {
            return Err(format!(
                "alg {other:?} is not a signature algorithm accepted here"
            ))
        }
    };
    if by_type.contains(&alg) {
        Ok(vec![alg])
    } else {
        Err(format!("alg {alg:?} does not fit the key's type or curve"))
    }
}

impl JwtPolicy {
    /// Checks every provider: issuers unique and present, key sets usable, token
    /// places and claim headers the proxy can honour. Errors start with
    /// `providers[i]`.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let at = |path: String, problem: JwtProblem| PolicyError {
            path,
            problem: PolicyProblem::Jwt(problem),
        };
        if self.providers.is_empty() && self.introspection.is_none() {
            return Err(at("providers".into(), JwtProblem::NoProviders));
        }
        for (i, p) in self.providers.iter().enumerate() {
            let here = |field: &str| format!("providers[{i}].{field}");
            if p.issuer.is_empty() {
                return Err(at(here("issuer"), JwtProblem::Empty));
            }
            if self.providers[..i].iter().any(|q| q.issuer == p.issuer) {
                return Err(at(
                    here("issuer"),
                    JwtProblem::DuplicateIssuer(p.issuer.clone()),
                ));
            }
            match (&p.jwks_uri, p.jwks.is_empty()) {
                (None, false) => {
                    parse_jwks(&p.jwks).map_err(|e| at(here("jwks"), e))?;
                }
                (Some(uri), true) => {
                    if !is_https_uri(uri) {
                        return Err(at(here("jwks_uri"), JwtProblem::BadJwksUri(uri.clone())));
                    }
                }
                _ => return Err(at(here("jwks"), JwtProblem::JwksOrUri)),
            }
            let shared = Shared {
                audiences: &p.audiences,
                clock_skew: p.clock_skew,
                from: &p.from,
                claim_headers: &p.claim_headers,
            };
            shared
                .validate()
                .map_err(|(field, e)| at(here(&field), e))?;
        }
        if let Some(x) = &self.introspection {
            let here = |field: &str| format!("introspection.{field}");
            x.validate_own().map_err(|(field, e)| at(here(&field), e))?;
            let shared = Shared {
                audiences: &x.audiences,
                clock_skew: x.clock_skew,
                from: &x.from,
                claim_headers: &x.claim_headers,
            };
            shared
                .validate()
                .map_err(|(field, e)| at(here(&field), e))?;
        }
        Ok(())
    }

    /// Every header a claim is copied to, on any provider: removed from each request
    /// before any is set.
    pub fn claim_header_names(&self) -> impl Iterator<Item = &str> {
        let introspected = self.introspection.iter().map(|x| &x.claim_headers);
        (self.providers.iter().map(|p| &p.claim_headers))
            .chain(introspected)
            .flat_map(|headers| headers.values().map(String::as_str))
    }
}

/// What providers and introspection check alike.
struct Shared<'a> {
    audiences: &'a [String],
    clock_skew: Duration,
    from: &'a [TokenSource],
    claim_headers: &'a BTreeMap<String, String>,
}

impl Shared<'_> {
    /// The field that is wrong (below the provider) and why.
    fn validate(&self) -> Result<(), (String, JwtProblem)> {
        if let Some(k) = self.audiences.iter().position(String::is_empty) {
            return Err((format!("audiences[{k}]"), JwtProblem::Empty));
        }
        if self.clock_skew > MAX_CLOCK_SKEW {
            return Err(("clock_skew".into(), JwtProblem::SkewTooLarge));
        }
        for (k, source) in self.from.iter().enumerate() {
            let where_ = format!("from[{k}]");
            match source {
                TokenSource::Header { name, .. } => {
                    if !usable_header(name) {
                        return Err((where_, JwtProblem::BadHeader(name.clone())));
                    }
                }
                TokenSource::Cookie(name) => {
                    if name.is_empty() || http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                        return Err((where_, JwtProblem::BadCookie(name.clone())));
                    }
                }
            }
        }
        for (claim, header) in self.claim_headers {
            let where_ = format!("claim_headers.{claim}");
            if claim.is_empty() {
                return Err((where_, JwtProblem::Empty));
            }
            if !usable_header(header) || header.eq_ignore_ascii_case("cookie") {
                return Err((where_, JwtProblem::BadHeader(header.clone())));
            }
        }
        Ok(())
    }
}

impl Introspection {
    /// The endpoint's own fields: service, port, path, times, issuer.
    fn validate_own(&self) -> Result<(), (String, JwtProblem)> {
        let label = |s: &str| {
            !s.is_empty()
                && s.len() <= 63
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        match self.service_name() {
            Some((ns, name)) if label(ns) && label(name) => {}
            _ => {
                return Err((
                    "service".into(),
                    JwtProblem::BadService(self.service.clone()),
                ))
            }
        }
        if self.port == 0 {
            return Err(("port".into(), JwtProblem::OutOfRange("port must not be 0")));
        }
        let origin_form = self.path.starts_with('/')
            && http::uri::PathAndQuery::try_from(self.path.as_str()).is_ok();
        if !origin_form {
            return Err(("path".into(), JwtProblem::BadPath(self.path.clone())));
        }
        if self.timeout.is_zero() || self.timeout > MAX_INTROSPECTION_TIMEOUT {
            let bound = "timeout must be more than 0s and at most 60s";
            return Err(("timeout".into(), JwtProblem::OutOfRange(bound)));
        }
        if self.cache_ttl > MAX_INTROSPECTION_CACHE_TTL {
            let bound = "cache_ttl must be at most 600s";
            return Err(("cache_ttl".into(), JwtProblem::OutOfRange(bound)));
        }
        if self.issuer.as_deref().is_some_and(str::is_empty) {
            return Err(("issuer".into(), JwtProblem::Empty));
        }
        Ok(())
    }
}

/// Whether `uri` is an absolute `https://` URI with a host.
pub fn is_https_uri(uri: &str) -> bool {
    uri.parse::<http::Uri>()
        .is_ok_and(|u| u.scheme_str() == Some("https") && u.host().is_some_and(|h| !h.is_empty()))
}

/// Whether a token may be read from, or a claim written to, header `name`: one a
/// route's header edit could write ([`validate_edited_name`]), and not `host`.
fn usable_header(name: &str) -> bool {
    validate_edited_name(name).is_ok() && !name.eq_ignore_ascii_case("host")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ed25519 public key (RFC 8037 §A.2).
    const OKP: &str = r#"{"kty":"OKP","crv":"Ed25519","kid":"ed","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;
    /// A P-256 public key (RFC 7517 §A.1).
    const EC: &str = r#"{"kty":"EC","crv":"P-256","kid":"1","x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4","y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM","use":"sig"}"#;

    fn set(keys: &[&str]) -> String {
        format!(r#"{{"keys":[{}]}}"#, keys.join(","))
    }

    fn provider(jwks: String) -> JwtProvider {
        JwtProvider {
            issuer: "https://issuer.test".into(),
            audiences: vec!["orders".into()],
            jwks,
            jwks_uri: None,
            from: vec![],
            clock_skew: DEFAULT_CLOCK_SKEW,
            claim_headers: BTreeMap::new(),
            forward_token: true,
        }
    }

    #[test]
    fn key_sets_give_their_signing_keys_and_algorithms() {
        let keys = parse_jwks(&set(&[OKP, EC])).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].kid.as_deref(), Some("ed"));
        assert_eq!(keys[0].algorithms, [Algorithm::EdDSA]);
        assert_eq!(keys[1].algorithms, [Algorithm::ES256]);
        // Unknown key types and encryption keys are skipped, not fatal.
        let enc = EC.replace(r#""use":"sig""#, r#""use":"enc""#);
        let odd = r#"{"kty":"XYZ","k":"1"}"#;
        let keys = parse_jwks(&set(&[odd, &enc, OKP])).unwrap();
        assert_eq!(keys.len(), 1);
    }

    #[test]
    fn unusable_key_sets_are_refused_with_a_reason() {
        let hmac = r#"{"kty":"oct","k":"c2VjcmV0"}"#;
        let cases: Vec<(String, &str)> = vec![
            ("[]".into(), "not a JWK Set"),
            ("{}".into(), "not a JWK Set"),
            (set(&[]), "no signing key"),
            (set(&[hmac, EC]), "HMAC is not accepted"),
            (set(&[&EC.replace("P-256", "P-521")]), "not supported"),
            (
                set(&[&EC.replace(r#""kid":"1""#, r#""kid":"1","alg":"ES384""#)]),
                "does not fit",
            ),
            (
                set(&[&EC.replace(r#""kid":"1""#, r#""kid":"1","alg":"HS256""#)]),
                "not a signature algorithm",
            ),
            (set(&[&OKP.replace("Ed25519", "X25519")]), "key 0"),
            (set(&[r#"{"kty":"RSA","n":"!!!","e":"AQAB"}"#]), "key 0"),
            (set(&vec![OKP; MAX_JWKS_KEYS + 1]), "more than"),
            ("x".repeat(MAX_JWKS_BYTES + 1), "more than"),
        ];
        for (text, want) in cases {
            let got = parse_jwks(&text).map(|k| k.len()).unwrap_err().to_string();
            assert!(got.contains(want), "{text:.80}: {got}");
        }
    }

    #[test]
    fn policies_are_checked_field_by_field() {
        let good = JwtPolicy {
            providers: vec![provider(set(&[EC]))],
            introspection: None,
            required: true,
        };
        good.validate().unwrap();
        let mut fetched = good.clone();
        fetched.providers[0].jwks.clear();
        fetched.providers[0].jwks_uri = Some("https://issuer.test:8443/keys".into());
        fetched.validate().unwrap();
        let mut cases: Vec<(JwtPolicy, &str)> = Vec::new();
        let mut with = |edit: &dyn Fn(&mut JwtPolicy), path: &'static str| {
            let mut p = good.clone();
            edit(&mut p);
            cases.push((p, path));
        };
        with(&|p| p.providers.clear(), "providers");
        with(&|p| p.providers[0].issuer.clear(), "providers[0].issuer");
        with(
            &|p| p.providers.push(p.providers[0].clone()),
            "providers[1].issuer",
        );
        with(
            &|p| p.providers[0].audiences.push(String::new()),
            "providers[0].audiences[1]",
        );
        with(&|p| p.providers[0].jwks = set(&[]), "providers[0].jwks");
        with(
            &|p| p.providers[0].jwks_uri = Some("https://issuer.test/jwks".into()),
            "providers[0].jwks",
        );
        with(
            &|p| {
                p.providers[0].jwks.clear();
                p.providers[0].jwks_uri = Some("http://issuer.test/jwks".into());
            },
            "providers[0].jwks_uri",
        );
        with(&|p| p.providers[0].jwks.clear(), "providers[0].jwks");
        with(
            &|p| p.providers[0].clock_skew = Duration::from_secs(301),
            "providers[0].clock_skew",
        );
        with(
            &|p| {
                p.providers[0].from = vec![TokenSource::Header {
                    name: "pillion-peer-identity".into(),
                    prefix: None,
                }]
            },
            "providers[0].from[0]",
        );
        with(
            &|p| p.providers[0].from = vec![TokenSource::Cookie("a b".into())],
            "providers[0].from[0]",
        );
        with(
            &|p| {
                p.providers[0]
                    .claim_headers
                    .insert("sub".into(), "content-length".into());
            },
            "providers[0].claim_headers.sub",
        );
        with(
            &|p| {
                p.providers[0]
                    .claim_headers
                    .insert("sub".into(), "Host".into());
            },
            "providers[0].claim_headers.sub",
        );
        for (policy, path) in cases {
            assert_eq!(policy.validate().unwrap_err().path, path, "{policy:?}");
        }
    }

    #[test]
    fn introspection_stands_alone_and_is_checked_field_by_field() {
        let good: JwtPolicy = serde_json::from_str(
            r#"{"introspection":{"service":"idp/oauth","port":8080,
                "claim_headers":{"sub":"x-user"}}}"#,
        )
        .unwrap();
        good.validate().unwrap();
        let x = good.introspection.as_ref().unwrap();
        assert_eq!(x.path, DEFAULT_INTROSPECTION_PATH);
        assert_eq!(x.timeout, DEFAULT_INTROSPECTION_TIMEOUT);
        assert_eq!(x.cache_ttl, DEFAULT_INTROSPECTION_CACHE_TTL);
        assert_eq!(x.service_name(), Some(("idp", "oauth")));
        assert_eq!(good.claim_header_names().collect::<Vec<_>>(), ["x-user"]);
        // The bounds the messages name are the constants.
        assert_eq!(MAX_INTROSPECTION_TIMEOUT, Duration::from_secs(60));
        assert_eq!(MAX_INTROSPECTION_CACHE_TTL, Duration::from_secs(600));
        let mut cases: Vec<(JwtPolicy, &str)> = Vec::new();
        let mut with = |edit: &dyn Fn(&mut Introspection), path: &'static str| {
            let mut p = good.clone();
            edit(p.introspection.as_mut().unwrap());
            cases.push((p, path));
        };
        with(&|x| x.service = "oauth".into(), "introspection.service");
        with(&|x| x.service = "idp/OAuth".into(), "introspection.service");
        with(&|x| x.service = "/oauth".into(), "introspection.service");
        with(&|x| x.port = 0, "introspection.port");
        with(&|x| x.path = "introspect".into(), "introspection.path");
        with(&|x| x.path = "/a b".into(), "introspection.path");
        with(&|x| x.timeout = Duration::ZERO, "introspection.timeout");
        with(
            &|x| x.timeout = Duration::from_secs(61),
            "introspection.timeout",
        );
        with(
            &|x| x.cache_ttl = Duration::from_secs(601),
            "introspection.cache_ttl",
        );
        with(&|x| x.issuer = Some(String::new()), "introspection.issuer");
        with(
            &|x| x.audiences = vec![String::new()],
            "introspection.audiences[0]",
        );
        with(
            &|x| x.clock_skew = Duration::from_secs(301),
            "introspection.clock_skew",
        );
        with(
            &|x| x.from = vec![TokenSource::Cookie("a;b".into())],
            "introspection.from[0]",
        );
        with(
            &|x| {
                x.claim_headers.insert("sub".into(), "cookie".into());
            },
            "introspection.claim_headers.sub",
        );
        for (policy, path) in cases {
            assert_eq!(policy.validate().unwrap_err().path, path, "{policy:?}");
        }
        // Neither providers nor introspection: nothing could verify a token.
        let none: JwtPolicy = serde_json::from_str(r#"{"required":false}"#).unwrap();
        assert_eq!(none.validate().unwrap_err().path, "providers");
    }

    #[test]
    fn the_wire_form_takes_defaults_and_round_trips() {
        let text = format!(
            r#"{{"providers":[{{"issuer":"https://issuer.test","jwks":{:?},
                "from":[{{"header":{{"name":"x-token"}}}},{{"cookie":"session"}}],
                "claim_headers":{{"sub":"x-user"}}}}]}}"#,
            set(&[EC])
        );
        let policy: JwtPolicy = serde_json::from_str(&text).unwrap();
        assert!(policy.required);
        let p = &policy.providers[0];
        assert_eq!(p.clock_skew, DEFAULT_CLOCK_SKEW);
        assert!(p.forward_token && p.audiences.is_empty());
        assert_eq!(p.from[1], TokenSource::Cookie("session".into()));
        assert_eq!(policy.claim_header_names().collect::<Vec<_>>(), ["x-user"]);
        let back: JwtPolicy =
            serde_json::from_str(&serde_json::to_string(&policy).unwrap()).unwrap();
        assert_eq!(back, policy);
        // No place written: Authorization: Bearer.
        let plain = provider(set(&[EC]));
        assert_eq!(
            plain.sources(),
            [TokenSource::Header {
                name: "authorization".into(),
                prefix: Some("Bearer ".into())
            }]
        );
        assert!(serde_json::from_str::<JwtPolicy>(r#"{"providers":[],"x":1}"#).is_err());
    }
}
