//! OAuth 2.0 token introspection (RFC 7662), the judging half: what an endpoint's
//! answer means for a request, and the answers kept for reuse. The call itself is
//! [`crate::outbound::introspect`].
//!
//! # Rules
//!
//! - the answer must be a JSON object with a boolean `active`; anything else is the
//!   endpoint's fault (502), never a pass;
//! - `active: false`: 401 `invalid_token`;
//! - an active token is still refused when its `exp` is past or its `nbf` ahead
//!   (within the clock skew; whole or fractional seconds), when the policy names an
//!   issuer and `iss` differs, by `aud` as a provider's token is (one of the
//!   audiences; none listed: no `aud`), and when `token_type` or `token_use` says it
//!   is a refresh token (a hint is only a hint: servers answer for any token);
//! - the answer's members are the token's claims for a route's claim rules and
//!   claim headers (`scope` a space-separated list, as in RFC 7662 §2.2).
//!
//! # The cache
//!
//! Keyed by the token's SHA-256, so the token itself is never kept. An active
//! answer is reused until `cache_ttl` passes or the token's `exp`, whichever is
//! first; a refusal (inactive, expired, another issuer or audience, a refresh
//! token) for `cache_ttl`, so a refused token retried in a loop costs the endpoint
//! one call per period. Bounded by bytes like the JWT cache; kept across views while
//! the port's policy is unchanged.

use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery};
use http::HeaderName;
use pillion_api::jwt::Introspection;
use serde_json::{Map, Value};

use super::{
    check_times, compile_claim_headers, compile_sources, By, ClaimPath, JwtError, Refusal, Source,
    Verified, Vouched, CACHE_BYTES, CACHE_TOKENS,
};

/// Where tokens are posted, compiled from the policy.
#[derive(Debug)]
pub(crate) struct Endpoint {
    /// The service (`namespace/name`) and its port: the key the state's
    /// introspection targets are found by.
    pub service_port: (Box<str>, u16),
    /// The authority (and `Host`) of the call: `name.namespace[:port]`.
    pub authority: Authority,
    /// The path posted to.
    pub path: PathAndQuery,
    /// Longest wait for the whole answer.
    pub timeout: Duration,
}

/// Why an answer let no request through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Judged {
    /// The token does not do (or lacks a claim the route needs).
    Refused(Refusal),
    /// The endpoint's answer is not an introspection answer.
    Unusable(&'static str),
}

/// One answer kept.
#[derive(Clone)]
enum Remembered {
    Active { until: u64, verified: Arc<Verified> },
    Refused { until: u64, refusal: Refusal },
}

#[derive(Clone)]
struct Weight;

impl quick_cache::Weighter<[u8; 32], Remembered> for Weight {
    fn weight(&self, _: &[u8; 32], val: &Remembered) -> u64 {
        match val {
            Remembered::Active { verified, .. } => verified.weight,
            Remembered::Refused { .. } => 32,
        }
    }
}

/// A port's introspection endpoint and what its answers must say.
pub(crate) struct Introspector {
    pub(super) endpoint: Endpoint,
    pub(super) sources: Box<[Source]>,
    issuer: Option<Box<str>>,
    audiences: Box<[Box<str>]>,
    pub(super) skew: u64,
    ttl: u64,
    claim_headers: Box<[(ClaimPath, HeaderName)]>,
    pub(super) forward_token: bool,
    cache: quick_cache::sync::Cache<[u8; 32], Remembered, Weight>,
}

const INACTIVE: Refusal = Refusal::Invalid("the token is not active");
const REFRESH: Refusal = Refusal::Invalid("the token is a refresh token, not an access token");
const WRONG_AUDIENCE: Refusal = Refusal::Invalid("the token's audience is not accepted here");

impl Introspector {
    /// Compiles the policy; the agent has checked it, so failures are a safety net.
    pub(super) fn new(x: &Introspection) -> Result<Introspector, JwtError> {
        let unusable = |what: &str| JwtError::Unusable(format!("introspection {what}"));
        let (namespace, name) = x.service_name().ok_or_else(|| unusable("service"))?;
        let authority = match x.port {
            80 => format!("{name}.{namespace}"),
            port => format!("{name}.{namespace}:{port}"),
        };
        Ok(Introspector {
            endpoint: Endpoint {
                service_port: (Box::from(x.service.as_str()), x.port),
                authority: Authority::try_from(authority).map_err(|_| unusable("service"))?,
                path: PathAndQuery::try_from(x.path.as_str()).map_err(|_| unusable("path"))?,
                timeout: x.timeout,
            },
            sources: compile_sources(&x.sources())?,
            issuer: x.issuer.as_deref().map(Box::from),
            audiences: x.audiences.iter().map(|a| Box::from(a.as_str())).collect(),
            skew: x.clock_skew.as_secs(),
            ttl: x.cache_ttl.as_secs(),
            claim_headers: compile_claim_headers(&x.claim_headers)?,
            forward_token: x.forward_token,
            cache: quick_cache::sync::Cache::with_weighter(CACHE_TOKENS, CACHE_BYTES, Weight),
        })
    }

    /// What an answer still fresh at `now` says of `token`, if one is kept.
    pub(super) fn cached(&self, token: &str, now: u64) -> Option<Result<Arc<Verified>, Refusal>> {
        if self.ttl == 0 {
            return None;
        }
        match self.cache.get(&digest(token))? {
            Remembered::Active { until, verified } if now < until => {
                Some(check_times(verified.exp, verified.nbf, self.skew, now).map(|()| verified))
            }
            Remembered::Refused { until, refusal } if now < until => Some(Err(refusal)),
            _ => None,
        }
    }

    /// Judges the endpoint's `answer` about `token` at unix time `now`, and keeps it.
    pub(super) fn judge(
        &self,
        token: &str,
        answer: &[u8],
        now: u64,
    ) -> Result<Arc<Verified>, Judged> {
        let key = digest(token);
        let Ok(Value::Object(claims)) = serde_json::from_slice::<Value>(answer) else {
            return Err(Judged::Unusable("the answer is not a JSON object"));
        };
        let until = now.saturating_add(self.ttl);
        let refused = |refusal: Refusal| {
            self.remember(key, Remembered::Refused { until, refusal });
            Judged::Refused(refusal)
        };
        match claims.get("active") {
            Some(Value::Bool(true)) => {}
            Some(Value::Bool(false)) => return Err(refused(INACTIVE)),
            _ => return Err(Judged::Unusable("the answer has no boolean `active`")),
        }
        let exp = seconds(&claims, "exp")?;
        let nbf = seconds(&claims, "nbf")?;
        let exp = exp.unwrap_or(u64::MAX);
        match check_times(exp, nbf, self.skew, now) {
            Ok(()) => {}
            // Not valid yet: it may be soon, so the refusal is not kept.
            Err(refusal) if nbf.is_some_and(|nbf| nbf > now) && exp >= now => {
                return Err(Judged::Refused(refusal))
            }
            Err(refusal) => return Err(refused(refusal)),
        }
        if let Some(issuer) = &self.issuer {
            if claims.get("iss").and_then(Value::as_str) != Some(&**issuer) {
                let refusal = Refusal::Invalid("the token's issuer is not trusted here");
                return Err(refused(refusal));
            }
        }
        let kind = |name| claims.get(name).and_then(Value::as_str);
        let refresh =
            |t: &str| t.eq_ignore_ascii_case("refresh_token") || t.eq_ignore_ascii_case("refresh");
        if kind("token_type").is_some_and(refresh) || kind("token_use").is_some_and(refresh) {
            return Err(refused(REFRESH));
        }
        match self.check_audience(&claims) {
            Ok(()) => {}
            Err(Judged::Refused(refusal)) => return Err(refused(refusal)),
            Err(unusable) => return Err(unusable),
        }
        let vouched = Vouched {
            by: By::Introspection,
            exp,
            nbf,
            claims,
        };
        let verified = Arc::new(vouched.read(&self.claim_headers, key.len()));
        let until = until.min(exp);
        self.remember(
            key,
            Remembered::Active {
                until,
                verified: Arc::clone(&verified),
            },
        );
        Ok(verified)
    }

    /// `aud` (a string or a list of strings) must name one of the audiences; with
    /// none listed, there must be no `aud`.
    fn check_audience(&self, claims: &Map<String, Value>) -> Result<(), Judged> {
        let named: Vec<&str> = match claims.get("aud") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(one)) => vec![one.as_str()],
            Some(Value::Array(many)) => many
                .iter()
                .map(Value::as_str)
                .collect::<Option<_>>()
                .ok_or(Judged::Unusable(
                    "the answer's `aud` is not a list of strings",
                ))?,
            Some(_) => return Err(Judged::Unusable("the answer's `aud` is not a string")),
        };
        let accepted = if self.audiences.is_empty() {
            named.is_empty()
        } else {
            named
                .iter()
                .any(|a| self.audiences.iter().any(|w| &**w == *a))
        };
        if accepted {
            Ok(())
        } else {
            Err(Judged::Refused(WRONG_AUDIENCE))
        }
    }

    fn remember(&self, key: [u8; 32], answer: Remembered) {
        if self.ttl > 0 {
            self.cache.insert(key, answer);
        }
    }
}

/// A time member of the answer: absent, or seconds since the epoch (RFC 7519's
/// NumericDate may have a fraction, which is dropped).
fn seconds(claims: &Map<String, Value>, name: &'static str) -> Result<Option<u64>, Judged> {
    let bad = Judged::Unusable("a time in the answer is not seconds since the epoch");
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => match (value.as_u64(), value.as_f64()) {
            (Some(whole), _) => Ok(Some(whole)),
            (None, Some(f)) if f.is_finite() && (0.0..1e15).contains(&f) => Ok(Some(f as u64)),
            _ => Err(bad),
        },
    }
}

/// The cache's key: the token's SHA-256.
fn digest(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut key = [0u8; 32];
    key.copy_from_slice(digest.as_ref());
    key
}

#[cfg(test)]
mod tests {
    use super::super::{Authenticator, Checked, ClaimRules};
    use super::*;
    use http::{HeaderMap, HeaderValue};
    use pillion_api::jwt::JwtPolicy;
    use std::collections::BTreeMap;

    const NOW: u64 = 1_800_000_000;

    fn policy(edit: impl FnOnce(&mut Introspection)) -> Authenticator {
        let mut policy: JwtPolicy = serde_json::from_value(serde_json::json!({
            "introspection": {"service": "idp/oauth", "port": 9000, "audiences": ["orders"],
                "issuer": "https://idp.test", "cache_ttl": "30s",
                "claim_headers": {"sub": "x-user"}, "forward_token": false}
        }))
        .unwrap();
        edit(policy.introspection.as_mut().unwrap());
        Authenticator::new(&policy).unwrap()
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let value = HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
        h.insert(http::header::AUTHORIZATION, value);
        h.insert("x-user", HeaderValue::from_static("mallory"));
        h
    }

    fn scope(rules: &[&str]) -> ClaimRules {
        let mut claims = BTreeMap::new();
        claims.insert(
            "scope".to_string(),
            rules.iter().map(|s| s.to_string()).collect(),
        );
        ClaimRules::new(&claims)
    }

    fn active(extra: serde_json::Value) -> Vec<u8> {
        let mut answer = serde_json::json!({"active": true, "sub": "alice",
            "scope": "orders.read profile", "iss": "https://idp.test", "aud": "orders",
            "exp": NOW + 600});
        for (k, v) in extra.as_object().unwrap() {
            answer[k] = v.clone();
        }
        serde_json::to_vec(&answer).unwrap()
    }

    /// The whole round: authenticate hands the token back, settle judges the answer.
    fn round(auth: &Authenticator, token: &str, answer: &[u8]) -> Result<HeaderMap, Judged> {
        let mut headers = bearer(token);
        let rules = scope(&["orders.read"]);
        match auth.authenticate(true, &rules, &mut headers, NOW) {
            Ok(Checked::Ask(ask)) => {
                assert_eq!(ask.token(), token);
                assert_eq!(ask.endpoint().authority.as_str(), "oauth.idp:9000");
                auth.settle(ask, answer, &rules, &mut headers, NOW)?;
                Ok(headers)
            }
            Ok(Checked::Done) => Ok(headers),
            Err(refusal) => Err(Judged::Refused(refusal)),
        }
    }

    #[test]
    fn an_active_token_passes_with_its_claims_and_is_then_known() {
        let auth = policy(|_| {});
        let headers = round(&auth, "opaque-1", &active(serde_json::json!({}))).unwrap();
        // The claim header is the answer's, never the caller's; the token stays here.
        assert_eq!(headers["x-user"], "alice");
        assert!(!headers.contains_key(http::header::AUTHORIZATION));
        // A repeat is answered from the cache: no Ask.
        let mut again = bearer("opaque-1");
        let rules = scope(&["orders.read"]);
        let checked = auth.authenticate(true, &rules, &mut again, NOW).unwrap();
        assert!(matches!(checked, Checked::Done));
        assert_eq!(again["x-user"], "alice");
        // ... but its claims still decide the route.
        let mut wants_admin = bearer("opaque-1");
        let refused = auth.authenticate(true, &scope(&["admin"]), &mut wants_admin, NOW);
        assert_eq!(refused.unwrap_err(), Refusal::Insufficient);
        // After the reuse period it is asked about again.
        let mut later = bearer("opaque-1");
        let checked = auth
            .authenticate(true, &rules, &mut later, NOW + 31)
            .unwrap();
        assert!(matches!(checked, Checked::Ask(_)));
    }

    #[test]
    fn answers_that_do_not_do_are_refused_or_blamed_on_the_endpoint() {
        let refused = |why: &'static str| Err(Judged::Refused(Refusal::Invalid(why)));
        let cases: Vec<(Vec<u8>, Result<(), Judged>)> = vec![
            (
                br#"{"active": false}"#.to_vec(),
                Err(Judged::Refused(INACTIVE)),
            ),
            (
                active(serde_json::json!({"exp": NOW - 61})),
                refused("the token has expired"),
            ),
            (
                active(serde_json::json!({"nbf": NOW + 61})),
                refused("the token is not valid yet"),
            ),
            (
                active(serde_json::json!({"iss": "https://evil.test"})),
                refused("the token's issuer is not trusted here"),
            ),
            (
                active(serde_json::json!({"aud": ["bank", "shop"]})),
                Err(Judged::Refused(WRONG_AUDIENCE)),
            ),
            (
                active(serde_json::json!({"scope": "profile"})),
                Err(Judged::Refused(Refusal::Insufficient)),
            ),
            (
                active(serde_json::json!({"aud": ["orders", 7]})),
                Err(Judged::Unusable(
                    "the answer's `aud` is not a list of strings",
                )),
            ),
            (
                active(serde_json::json!({"exp": "soon"})),
                Err(Judged::Unusable(
                    "a time in the answer is not seconds since the epoch",
                )),
            ),
            (
                active(serde_json::json!({"exp": -1})),
                Err(Judged::Unusable(
                    "a time in the answer is not seconds since the epoch",
                )),
            ),
            (
                active(serde_json::json!({"token_type": "refresh_token"})),
                Err(Judged::Refused(REFRESH)),
            ),
            (
                active(serde_json::json!({"token_use": "refresh"})),
                Err(Judged::Refused(REFRESH)),
            ),
            (
                br#"{"active": "true"}"#.to_vec(),
                Err(Judged::Unusable("the answer has no boolean `active`")),
            ),
            (
                br#"{"sub": "alice"}"#.to_vec(),
                Err(Judged::Unusable("the answer has no boolean `active`")),
            ),
            (
                b"[true]".to_vec(),
                Err(Judged::Unusable("the answer is not a JSON object")),
            ),
            (
                b"<html>".to_vec(),
                Err(Judged::Unusable("the answer is not a JSON object")),
            ),
        ];
        for (i, (answer, want)) in cases.into_iter().enumerate() {
            let auth = policy(|_| {});
            let got = round(&auth, &format!("token-{i}"), &answer).map(|_| ());
            assert_eq!(got, want, "{}", String::from_utf8_lossy(&answer));
        }
        // An audience in a list is enough; with none listed, an `aud` is refused.
        let auth = policy(|_| {});
        let aud = active(serde_json::json!({"aud": ["bank", "orders"]}));
        assert!(round(&auth, "listed", &aud).is_ok());
        let auth = policy(|x| x.audiences.clear());
        assert_eq!(
            round(&auth, "any", &active(serde_json::json!({}))).unwrap_err(),
            Judged::Refused(WRONG_AUDIENCE)
        );
        let no_aud = br#"{"active": true, "iss": "https://idp.test", "scope": "orders.read"}"#;
        assert!(round(&auth, "none", no_aud).is_ok());
        // Fractional seconds are seconds; an access token's type is no refusal.
        let auth = policy(|_| {});
        let fraction = active(serde_json::json!({"exp": (NOW + 60) as f64 + 0.5,
            "token_type": "Bearer"}));
        assert!(round(&auth, "fraction", &fraction).is_ok());
    }

    #[test]
    fn refusals_are_kept_and_no_cache_keeps_nothing() {
        let auth = policy(|_| {});
        assert!(round(&auth, "revoked", br#"{"active": false}"#).is_err());
        let mut again = bearer("revoked");
        let refused = auth.authenticate(true, &ClaimRules::default(), &mut again, NOW + 1);
        assert_eq!(refused.unwrap_err(), INACTIVE);
        // An active token refused for its audience is not asked about again either.
        let bank = active(serde_json::json!({"aud": "bank"}));
        assert!(round(&auth, "bank", &bank).is_err());
        let mut again = bearer("bank");
        let refused = auth.authenticate(true, &ClaimRules::default(), &mut again, NOW + 1);
        assert_eq!(refused.unwrap_err(), WRONG_AUDIENCE);
        // One not valid yet is asked about again: it may be valid soon.
        let early = active(serde_json::json!({"nbf": NOW + 120}));
        assert!(round(&auth, "early", &early).is_err());
        let mut again = bearer("early");
        let rules = scope(&["orders.read"]);
        let checked = auth
            .authenticate(true, &rules, &mut again, NOW + 1)
            .unwrap();
        assert!(matches!(checked, Checked::Ask(_)));
        // An active answer is kept no longer than the token lives.
        let short = active(serde_json::json!({"exp": NOW + 5}));
        assert!(round(&auth, "short", &short).is_ok());
        let mut later = bearer("short");
        let rules = scope(&["orders.read"]);
        let checked = auth
            .authenticate(true, &rules, &mut later, NOW + 6)
            .unwrap();
        assert!(matches!(checked, Checked::Ask(_)));
        // cache_ttl 0: every request asks.
        let auth = policy(|x| x.cache_ttl = Duration::ZERO);
        assert!(round(&auth, "t", &active(serde_json::json!({}))).is_ok());
        let mut again = bearer("t");
        let checked = auth.authenticate(true, &rules, &mut again, NOW).unwrap();
        assert!(matches!(checked, Checked::Ask(_)));
    }
}
