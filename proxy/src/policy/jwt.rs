//! End-user authentication: finds a request's JSON Web Token, verifies it against
//! the port's providers, and decides a route's claim rules.
//!
//! # Rules
//!
//! - a token is looked for in each provider's places (header with an optional
//!   scheme prefix, or cookie), the first found wins; the same header twice is a
//!   bad request (400), never "take one";
//! - no token: refused (401, no error code, RFC 6750 §3.1) where a token is
//!   required, admitted anonymous otherwise;
//! - a token that is sent must verify wherever the port has providers, required or
//!   not (401 `invalid_token` with the reason): signature by a key of a provider
//!   whose `kid` and algorithm fit, that provider's `iss`, one of its audiences (no
//!   `aud` when it lists none), `exp` present and not past, `nbf` not ahead, each
//!   within the provider's clock skew;
//! - a route's claim rules need every named claim to hold one listed value (403
//!   `insufficient_scope` otherwise).
//!
//! # Opaque tokens
//!
//! With an introspection endpoint (RFC 7662, [`introspect`]), a token that is not a
//! JWT, or a JWT no provider's key verifies, is asked about instead of refused:
//! [`Authenticator::authenticate`] hands back an [`Ask`], the caller posts it
//! through the mesh, and [`Authenticator::settle`] judges the answer like claims.
//! A JWT a provider's key verifies is never asked about, so a token the main path
//! refuses for its claims (expired, wrong audience) cannot pass by another path.
//!
//! # The cache
//!
//! A verified token is kept (bounded by bytes, shared by the port's connections)
//! with what was read from it, so a repeat costs a hash, a shard read lock and the
//! time checks, not a signature. The cache belongs to one compiled key set: a view
//! with new keys starts empty, so a key taken out of the set stops working at once.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{HeaderMap, HeaderName, HeaderValue, COOKIE};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{decode, decode_header, Validation};
use pillion_api::jwt::{
    parse_jwks, JwtPolicy, JwtProvider, TokenSource, VerifyKey, MAX_TOKEN_BYTES,
};
use serde_json::{Map, Value};

pub(crate) mod introspect;

pub(crate) use introspect::{Endpoint, Judged};

/// Bytes of tokens and claims the cache of one port keeps.
const CACHE_BYTES: u64 = 4 << 20;
/// Tokens the cache of one port is sized for.
const CACHE_TOKENS: usize = 4096;

/// Why a request's end user is not let through; [`Refusal::status`] and
/// [`Refusal::error_code`] give the RFC 6750 answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No token where one is required.
    Missing,
    /// The token cannot be used, and why.
    Invalid(&'static str),
    /// The request carries its token ambiguously.
    Malformed(&'static str),
    /// The token is good but lacks a claim the route asks for.
    Insufficient,
}

impl Refusal {
    /// 401, 400 or 403.
    pub(crate) fn status(self) -> http::StatusCode {
        match self {
            Refusal::Missing | Refusal::Invalid(_) => http::StatusCode::UNAUTHORIZED,
            Refusal::Malformed(_) => http::StatusCode::BAD_REQUEST,
            Refusal::Insufficient => http::StatusCode::FORBIDDEN,
        }
    }

    /// The `error` of `WWW-Authenticate: Bearer` (none for a missing token).
    pub(crate) fn error_code(self) -> Option<&'static str> {
        match self {
            Refusal::Missing => None,
            Refusal::Invalid(_) => Some("invalid_token"),
            Refusal::Malformed(_) => Some("invalid_request"),
            Refusal::Insufficient => Some("insufficient_scope"),
        }
    }

    /// A reason a person can read (no quotes or backslashes: it goes in a header).
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Refusal::Missing => "this route needs a bearer token",
            Refusal::Invalid(why) | Refusal::Malformed(why) => why,
            Refusal::Insufficient => "the token lacks a claim this route needs",
        }
    }
}

/// The reason given for a token that is neither a JWT nor asked about.
const MALFORMED: &str = "the token is malformed";
/// The reason given for a JWT no provider's key verifies.
const NO_KEY: &str = "no trusted key verifies the token";

/// Who vouched for a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum By {
    /// The provider of this index, whose key verified its signature.
    Provider(usize),
    /// The introspection endpoint, which said it is active.
    Introspection,
}

/// What a verified token says, read once per token.
#[derive(Debug)]
pub(crate) struct Verified {
    /// Who vouched for it.
    by: By,
    exp: u64,
    nbf: Option<u64>,
    claims: Map<String, Value>,
    /// The provider's claim headers with this token's values.
    headers: Box<[(HeaderName, HeaderValue)]>,
    /// Cache weight: the token's and claims' size.
    weight: u64,
}

/// Where a token was found, so it can be taken out when it must not go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Found<'a> {
    Header(&'a HeaderName),
    Cookie(&'a str),
}

/// A token found in a request (`'h`: the request's headers; `'a`: the
/// authenticator, which names where it was found).
#[derive(Debug)]
pub(crate) struct Token<'a, 'h> {
    text: &'h str,
    at: Found<'a>,
}

/// The end-user authentication of one port, compiled from its [`JwtPolicy`].
pub(crate) struct Authenticator {
    providers: Box<[Provider]>,
    /// Where tokens no provider verifies are asked about.
    introspection: Option<introspect::Introspector>,
    required: bool,
    /// Every provider's claim headers: removed from each request first.
    strip: Box<[HeaderName]>,
    cache: quick_cache::sync::Cache<Box<str>, Arc<Verified>, Weight>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("providers", &self.providers.len())
            .field("introspection", &self.introspection.is_some())
            .field("required", &self.required)
            .finish_non_exhaustive()
    }
}

struct Provider {
    /// The `iss` its tokens carry.
    issuer: Box<str>,
    keys: Box<[(VerifyKey, Box<[Validation]>)]>,
    sources: Box<[Source]>,
    skew: u64,
    claim_headers: Box<[(ClaimPath, HeaderName)]>,
    forward_token: bool,
}

enum Source {
    Header {
        name: HeaderName,
        prefix: Option<Box<str>>,
    },
    Cookie(Box<str>),
}

#[derive(Clone)]
struct Weight;

impl quick_cache::Weighter<Box<str>, Arc<Verified>> for Weight {
    fn weight(&self, key: &Box<str>, val: &Arc<Verified>) -> u64 {
        key.len() as u64 + val.weight
    }
}

/// Why a policy cannot be compiled (the agent validates, so this is a safety net).
#[derive(Debug, thiserror::Error)]
pub(crate) enum JwtError {
    /// A key set or header the policy names cannot be used.
    #[error("{0}")]
    Unusable(String),
}

impl Authenticator {
    /// Compiles a port's policy; fails when any provider's keys or headers are
    /// unusable (the caller then refuses every token: fail closed).
    pub(crate) fn new(policy: &JwtPolicy) -> Result<Authenticator, JwtError> {
        let unusable = |e: &dyn std::fmt::Display| JwtError::Unusable(e.to_string());
        let mut providers = Vec::with_capacity(policy.providers.len());
        for p in &policy.providers {
            let keys = parse_jwks(&p.jwks).map_err(|e| unusable(&e))?;
            let keys = keys
                .into_iter()
                .map(|k| {
                    let checks = k.algorithms.iter().map(|alg| validation(p, *alg)).collect();
                    (k, checks)
                })
                .collect();
            let sources = compile_sources(&p.sources())?;
            let claim_headers = compile_claim_headers(&p.claim_headers)?;
            providers.push(Provider {
                issuer: Box::from(p.issuer.as_str()),
                keys,
                sources,
                skew: p.clock_skew.as_secs(),
                claim_headers,
                forward_token: p.forward_token,
            });
        }
        let strip = policy
            .claim_header_names()
            .map(header_name)
            .collect::<Result<_, _>>()?;
        let introspection = match &policy.introspection {
            Some(x) => Some(introspect::Introspector::new(x)?),
            None => None,
        };
        Ok(Authenticator {
            providers: providers.into_boxed_slice(),
            introspection,
            required: policy.required,
            strip,
            cache: quick_cache::sync::Cache::with_weighter(CACHE_TOKENS, CACHE_BYTES, Weight),
        })
    }

    /// Whether a request without a token is refused unless its route says otherwise.
    pub(crate) fn required(&self) -> bool {
        self.required
    }

    /// Removes every claim header a caller sent: only this proxy sets them.
    fn strip_claim_headers(&self, headers: &mut HeaderMap) {
        for name in &*self.strip {
            headers.remove(name);
        }
    }

    /// The request's token, if any: the first place of the first provider that has
    /// one. A header sent twice is refused rather than picked from.
    fn find<'a, 'h>(&'a self, headers: &'h HeaderMap) -> Result<Option<Token<'a, 'h>>, Refusal> {
        let introspected = self.introspection.iter().map(|x| &x.sources);
        let places = (self.providers.iter().map(|p| &p.sources)).chain(introspected);
        for sources in places {
            for source in &**sources {
                if let Some(token) = source.find(headers)? {
                    return Ok(Some(token));
                }
            }
        }
        Ok(None)
    }

    /// The clock skew allowed to whoever vouched for a token.
    fn skew(&self, by: By) -> u64 {
        match by {
            By::Provider(i) => self.providers.get(i).map_or(0, |p| p.skew),
            By::Introspection => self.introspection.as_ref().map_or(0, |x| x.skew),
        }
    }

    /// Verifies `token` (from the cache when it was verified before) at unix time
    /// `now`: the JWT path alone, as the tests drive it.
    #[cfg(test)]
    fn verify(&self, token: &str, now: u64) -> Result<Arc<Verified>, Refusal> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Refusal::Invalid("the token is too long"));
        }
        match self.cache.get(token) {
            Some(hit) => check_times(hit.exp, hit.nbf, self.skew(hit.by), now).map(|()| hit),
            None => self.verify_fresh(token, now),
        }
    }

    /// What a cache says of `token` at `now`: the verified tokens' first (a hash of
    /// the text), then the introspection answers' (a SHA-256), so a token the
    /// endpoint judged is not tried against every provider's keys again.
    fn known(&self, token: &str, now: u64) -> Option<Result<Arc<Verified>, Refusal>> {
        if let Some(hit) = self.cache.get(token) {
            return Some(check_times(hit.exp, hit.nbf, self.skew(hit.by), now).map(|()| hit));
        }
        self.introspection.as_ref()?.cached(token, now)
    }

    /// A token no cache knows: its signature and claims, then kept.
    fn verify_fresh(&self, token: &str, now: u64) -> Result<Arc<Verified>, Refusal> {
        let verified = Arc::new(self.verify_signature(token)?);
        check_times(verified.exp, verified.nbf, self.skew(verified.by), now)?;
        self.cache.insert(Box::from(token), Arc::clone(&verified));
        Ok(verified)
    }

    /// The signature and claims check, done once per token.
    fn verify_signature(&self, token: &str) -> Result<Verified, Refusal> {
        let header = decode_header(token).map_err(|_| Refusal::Invalid(MALFORMED))?;
        let mut refusal = Refusal::Invalid(NO_KEY);
        for (index, provider) in self.providers.iter().enumerate() {
            for (key, checks) in &*provider.keys {
                if header.kid.is_some() && key.kid.is_some() && header.kid != key.kid {
                    continue;
                }
                let Some(check) = key
                    .algorithms
                    .iter()
                    .position(|a| *a == header.alg)
                    .and_then(|i| checks.get(i))
                else {
                    continue;
                };
                match decode::<Map<String, Value>>(token, &key.key, check) {
                    Ok(data) => return Ok(provider.read(index, data.claims, token.len())),
                    Err(e) => {
                        if let Some(why) = claim_failure(e.kind()) {
                            // The signature held; the claims did not.
                            refusal = Refusal::Invalid(why);
                        }
                    }
                }
            }
        }
        Err(refusal)
    }

    /// A request's whole check at unix time `now`: the caller's claim headers go,
    /// the token is found and verified (a token that is sent must verify, `required`
    /// or not), `claims` are checked, and the claim headers are set. A token only
    /// the introspection endpoint can judge, and that the cache does not know, is
    /// handed back to be asked about ([`Checked::Ask`]).
    pub(crate) fn authenticate(
        &self,
        required: bool,
        claims: &ClaimRules,
        headers: &mut HeaderMap,
        now: u64,
    ) -> Result<Checked<'_>, Refusal> {
        self.strip_claim_headers(headers);
        let token = match self.find(headers)? {
            None if required => return Err(Refusal::Missing),
            None => return Ok(Checked::Done),
            Some(token) => token,
        };
        let (at, text) = (token.at(), token.text());
        if text.len() > MAX_TOKEN_BYTES {
            return Err(Refusal::Invalid("the token is too long"));
        }
        let verified = match self.known(text, now) {
            Some(known) => known?,
            None => match (self.verify_fresh(text, now), &self.introspection) {
                (Ok(verified), _) => verified,
                // Not a JWT, or one no provider's key signed: the endpoint's to judge,
                // unless it claims a provider's issuer (then only that provider's
                // keys may vouch for it: no second opinion on a forged signature).
                (Err(refusal @ Refusal::Invalid(MALFORMED | NO_KEY)), Some(x)) => {
                    if self.claims_a_provider(text) {
                        return Err(refusal);
                    }
                    return Ok(Checked::Ask(Ask {
                        token: Box::from(text),
                        at,
                        introspector: x,
                    }));
                }
                (Err(refusal), _) => return Err(refusal),
            },
        };
        claims.check(&verified)?;
        self.apply(&verified, at, headers);
        Ok(Checked::Done)
    }

    /// Whether `token` is a JWT whose (unverified) `iss` is one of the providers'.
    fn claims_a_provider(&self, token: &str) -> bool {
        use base64::Engine as _;
        let mut parts = token.split('.');
        let (Some(_), Some(payload), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        let engine = &base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let Ok(json) = engine.decode(payload.trim_end_matches('=')) else {
            return false;
        };
        let Ok(claims) = serde_json::from_slice::<Value>(&json) else {
            return false;
        };
        let Some(iss) = claims.get("iss").and_then(Value::as_str) else {
            return false;
        };
        self.providers.iter().any(|p| &*p.issuer == iss)
    }

    /// Finishes a check [`Authenticator::authenticate`] handed back, with the
    /// endpoint's `answer` (the body of its `200`).
    pub(crate) fn settle(
        &self,
        ask: Ask<'_>,
        answer: &[u8],
        claims: &ClaimRules,
        headers: &mut HeaderMap,
        now: u64,
    ) -> Result<(), Judged> {
        let verified = ask.introspector.judge(&ask.token, answer, now)?;
        claims.check(&verified).map_err(Judged::Refused)?;
        self.apply(&verified, ask.at, headers);
        Ok(())
    }

    /// After a request was admitted: sets the token's claim headers and takes the
    /// token out when its provider does not forward it.
    fn apply(&self, verified: &Verified, at: Found<'_>, headers: &mut HeaderMap) {
        for (name, value) in &*verified.headers {
            headers.insert(name.clone(), value.clone());
        }
        let forward = match verified.by {
            By::Provider(i) => self.providers.get(i).is_none_or(|p| p.forward_token),
            By::Introspection => (self.introspection.as_ref()).is_none_or(|x| x.forward_token),
        };
        if !forward {
            remove_token(at, headers);
        }
    }
}

/// The checks of one provider and algorithm: `iss` exactly, `exp` required, the
/// audiences (a token with an `aud` is refused when none are listed), leeway.
fn validation(p: &JwtProvider, alg: jsonwebtoken::Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = p.clock_skew.as_secs();
    v.set_issuer(&[p.issuer.as_str()]);
    let mut required = vec!["exp", "iss"];
    if p.audiences.is_empty() {
        v.aud = None;
    } else {
        v.set_audience(&p.audiences);
        required.push("aud");
    }
    v.set_required_spec_claims(&required);
    v.validate_nbf = true;
    v
}

/// A claim check that failed after the signature held, as a reason; `None` for a
/// failure that says the key was the wrong one.
fn claim_failure(kind: &ErrorKind) -> Option<&'static str> {
    Some(match kind {
        ErrorKind::ExpiredSignature => "the token has expired",
        ErrorKind::ImmatureSignature => "the token is not valid yet",
        ErrorKind::InvalidIssuer => "the token's issuer is not trusted here",
        ErrorKind::InvalidAudience => "the token's audience is not accepted here",
        ErrorKind::MissingRequiredClaim(_) => "the token lacks exp, iss or aud",
        ErrorKind::Json(_) | ErrorKind::Utf8(_) | ErrorKind::Base64(_) => MALFORMED,
        _ => return None,
    })
}

/// `exp` and `nbf` against `now`, with `skew` either way.
fn check_times(exp: u64, nbf: Option<u64>, skew: u64, now: u64) -> Result<(), Refusal> {
    if exp.saturating_add(skew) < now {
        return Err(Refusal::Invalid("the token has expired"));
    }
    if nbf.is_some_and(|nbf| nbf > now.saturating_add(skew)) {
        return Err(Refusal::Invalid("the token is not valid yet"));
    }
    Ok(())
}

/// Seconds since the epoch, for [`Authenticator::verify`].
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Provider {
    /// What the proxy keeps of a token whose signature and claims held.
    fn read(&self, index: usize, claims: Map<String, Value>, token_len: usize) -> Verified {
        let seconds = |name: &str| claims.get(name).and_then(Value::as_u64);
        let (exp, nbf) = (seconds("exp").unwrap_or(0), seconds("nbf"));
        let vouched = Vouched {
            by: By::Provider(index),
            exp,
            nbf,
            claims,
        };
        vouched.read(&self.claim_headers, token_len)
    }
}

/// A token someone vouched for, before its claim headers are made.
struct Vouched {
    by: By,
    exp: u64,
    nbf: Option<u64>,
    claims: Map<String, Value>,
}

impl Vouched {
    /// What the proxy keeps: the claims and their `claim_headers`, weighed with a
    /// key of `key_len` bytes.
    fn read(self, claim_headers: &[(ClaimPath, HeaderName)], key_len: usize) -> Verified {
        let claims = self.claims;
        let headers: Box<[_]> = claim_headers
            .iter()
            .filter_map(|(path, name)| {
                let text = header_text(path.get(&claims)?)?;
                Some((name.clone(), HeaderValue::from_str(&text).ok()?))
            })
            .collect();
        let weight = key_len as u64
            + serde_json::to_string(&claims).map_or(0, |s| s.len() as u64)
            + headers.iter().map(|(_, v)| v.len() as u64).sum::<u64>();
        Verified {
            by: self.by,
            exp: self.exp,
            nbf: self.nbf,
            claims,
            headers,
            weight,
        }
    }
}

/// The places tokens are read from, compiled.
fn compile_sources(sources: &[TokenSource]) -> Result<Box<[Source]>, JwtError> {
    sources
        .iter()
        .map(|s| match s {
            TokenSource::Header { name, prefix } => Ok(Source::Header {
                name: header_name(name)?,
                prefix: prefix.as_deref().map(Box::from),
            }),
            TokenSource::Cookie(name) => Ok(Source::Cookie(name.as_str().into())),
        })
        .collect()
}

/// The claims copied to headers, compiled.
fn compile_claim_headers(
    claim_headers: &std::collections::BTreeMap<String, String>,
) -> Result<Box<[(ClaimPath, HeaderName)]>, JwtError> {
    claim_headers
        .iter()
        .map(|(claim, name)| Ok((ClaimPath::new(claim), header_name(name)?)))
        .collect()
}

fn header_name(name: &str) -> Result<HeaderName, JwtError> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|e| JwtError::Unusable(e.to_string()))
}

/// What [`Authenticator::authenticate`] leaves to do.
#[must_use]
#[derive(Debug)]
pub(crate) enum Checked<'a> {
    /// The request may go on.
    Done,
    /// The token must be asked about first, then [`Authenticator::settle`]d.
    Ask(Ask<'a>),
}

/// A token to ask the introspection endpoint about.
pub(crate) struct Ask<'a> {
    token: Box<str>,
    at: Found<'a>,
    introspector: &'a introspect::Introspector,
}

impl std::fmt::Debug for Ask<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself.
        f.debug_struct("Ask")
            .field("at", &self.at)
            .finish_non_exhaustive()
    }
}

impl<'a> Ask<'a> {
    /// The token to post.
    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    /// Where to post it.
    pub(crate) fn endpoint(&self) -> &'a Endpoint {
        &self.introspector.endpoint
    }
}

/// A claim as header text: strings as they are, lists of strings joined with `,`,
/// numbers and booleans written out; objects are not copied.
fn header_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Array(items) => {
            let words: Option<Vec<String>> = items
                .iter()
                .map(|v| match v {
                    Value::Array(_) | Value::Object(_) | Value::Null => None,
                    other => header_text(other),
                })
                .collect();
            Some(words?.join(","))
        }
        Value::Object(_) | Value::Null => None,
    }
}

impl Source {
    fn find<'a, 'h>(&'a self, headers: &'h HeaderMap) -> Result<Option<Token<'a, 'h>>, Refusal> {
        match self {
            Source::Header { name, prefix } => {
                let mut values = headers.get_all(name).iter();
                let Some(value) = values.next() else {
                    return Ok(None);
                };
                if values.next().is_some() {
                    return Err(Refusal::Malformed(
                        "the token header is sent more than once",
                    ));
                }
                let text = value
                    .to_str()
                    .map_err(|_| Refusal::Invalid("the token is malformed"))?;
                let text = match prefix {
                    None => text,
                    Some(prefix) => match text.get(..prefix.len()) {
                        Some(head) if head.eq_ignore_ascii_case(prefix) => &text[prefix.len()..],
                        // Another scheme (Basic): not a token of this place.
                        _ => return Ok(None),
                    },
                };
                let text = text.trim_matches(' ');
                if text.is_empty() {
                    return Err(Refusal::Invalid("the token is empty"));
                }
                Ok(Some(Token {
                    text,
                    at: Found::Header(name),
                }))
            }
            Source::Cookie(wanted) => {
                let mut found = None;
                for value in headers.get_all(COOKIE) {
                    let Ok(value) = value.to_str() else { continue };
                    for (name, text) in cookies(value) {
                        if name == &**wanted {
                            if found.is_some() {
                                return Err(Refusal::Malformed(
                                    "the token cookie is sent more than once",
                                ));
                            }
                            found = Some(text);
                        }
                    }
                }
                Ok(found.map(|text| Token {
                    text,
                    at: Found::Cookie(wanted),
                }))
            }
        }
    }
}

/// The `name=value` pairs of a `Cookie` header.
fn cookies(header: &str) -> impl Iterator<Item = (&str, &str)> {
    header.split(';').filter_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        Some((name.trim(), value.trim().trim_matches('"')))
    })
}

/// Takes a token out of the request: its header, or its cookie from `Cookie`.
fn remove_token(at: Found<'_>, headers: &mut HeaderMap) {
    match at {
        Found::Header(name) => {
            headers.remove(name);
        }
        Found::Cookie(wanted) => {
            let kept: Vec<String> = headers
                .get_all(COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter(|pair| pair.split_once('=').is_none_or(|(n, _)| n.trim() != wanted))
                .map(|pair| pair.trim().to_string())
                .filter(|pair| !pair.is_empty())
                .collect();
            headers.remove(COOKIE);
            if let Ok(value) = HeaderValue::from_str(&kept.join("; ")) {
                if !kept.is_empty() {
                    headers.insert(COOKIE, value);
                }
            }
        }
    }
}

impl<'a, 'h> Token<'a, 'h> {
    /// The token's text.
    pub(crate) fn text(&self) -> &'h str {
        self.text
    }

    /// Where it was found.
    pub(crate) fn at(&self) -> Found<'a> {
        self.at
    }
}

/// A dotted path into a token's claims (`realm_access.roles`).
#[derive(Debug, Clone)]
struct ClaimPath(Box<[Box<str>]>);

impl ClaimPath {
    fn new(path: &str) -> ClaimPath {
        ClaimPath(path.split('.').map(Box::from).collect())
    }

    fn get<'a>(&self, claims: &'a Map<String, Value>) -> Option<&'a Value> {
        let (first, rest) = self.0.split_first()?;
        let mut value = claims.get(&**first)?;
        for seg in rest {
            value = value.as_object()?.get(&**seg)?;
        }
        Some(value)
    }

    /// Whether a string claim at this path is a space-separated list (RFC 8693
    /// §4.2 `scope`, and `scp`).
    fn is_scope(&self) -> bool {
        self.0
            .last()
            .is_some_and(|s| &**s == "scope" || &**s == "scp")
    }
}

/// A route's claim rules, compiled.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClaimRules(Box<[ClaimRule]>);

/// One claim and the values that satisfy it.
type ClaimRule = (ClaimPath, Box<[Box<str>]>);

impl ClaimRules {
    /// Rules from a route's `claims`.
    pub(crate) fn new(claims: &std::collections::BTreeMap<String, Vec<String>>) -> ClaimRules {
        ClaimRules(
            claims
                .iter()
                .map(|(path, values)| {
                    (
                        ClaimPath::new(path),
                        values.iter().map(|v| Box::from(v.as_str())).collect(),
                    )
                })
                .collect(),
        )
    }

    /// Whether the route has rules (then it needs a token).
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether a verified token meets every rule.
    pub(crate) fn check(&self, verified: &Verified) -> Result<(), Refusal> {
        for (path, wanted) in &*self.0 {
            let held = path
                .get(&verified.claims)
                .is_some_and(|value| holds(value, wanted, path.is_scope()));
            if !held {
                return Err(Refusal::Insufficient);
            }
        }
        Ok(())
    }
}

fn holds(value: &Value, wanted: &[Box<str>], scope: bool) -> bool {
    let is = |s: &str| wanted.iter().any(|w| &**w == s);
    match value {
        Value::String(s) if scope => s.split(' ').any(is),
        Value::String(s) => is(s),
        Value::Bool(b) => is(if *b { "true" } else { "false" }),
        Value::Number(n) => is(&n.to_string()),
        Value::Array(items) => items.iter().any(|item| match item {
            Value::String(s) => is(s),
            _ => false,
        }),
        Value::Object(_) | Value::Null => false,
    }
}

#[cfg(test)]
mod tests;
