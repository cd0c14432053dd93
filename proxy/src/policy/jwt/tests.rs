use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use http::HeaderMap;
use jsonwebtoken::Algorithm::{self, EdDSA, ES256, ES384, RS256};
use pillion_api::jwt::{JwtPolicy, JwtProvider, TokenSource, DEFAULT_CLOCK_SKEW};
use pillion_testkit::jwt::{forged, now, tampered, Issuer};
use serde_json::{json, Value};

use super::*;

const ISS: &str = "https://issuer.test";
const AUD: &str = "orders";

/// One issuer for every test: RSA keys take a while to make.
fn issuer() -> &'static Issuer {
    static ISSUER: OnceLock<Issuer> = OnceLock::new();
    ISSUER.get_or_init(|| Issuer::new(ISS, "k", &[ES256, ES384, EdDSA, RS256]).unwrap())
}

/// A stranger whose keys carry the same kids as the issuer's.
fn stranger() -> &'static Issuer {
    static STRANGER: OnceLock<Issuer> = OnceLock::new();
    STRANGER.get_or_init(|| Issuer::new(ISS, "k", &[ES256]).unwrap())
}

fn provider() -> JwtProvider {
    JwtProvider {
        issuer: ISS.into(),
        audiences: vec![AUD.into()],
        jwks: issuer().jwks(),
        jwks_uri: None,
        from: vec![],
        clock_skew: DEFAULT_CLOCK_SKEW,
        claim_headers: BTreeMap::from([
            ("sub".into(), "x-user".into()),
            ("groups".into(), "x-groups".into()),
        ]),
        forward_token: true,
    }
}

fn authenticator(edit: impl FnOnce(&mut JwtProvider)) -> Authenticator {
    let mut p = provider();
    edit(&mut p);
    Authenticator::new(&JwtPolicy {
        providers: vec![p],
        introspection: None,
        required: true,
    })
    .unwrap()
}

fn sign(alg: Algorithm, extra: Value) -> String {
    issuer().sign(alg, &issuer().claims(AUD, extra)).unwrap()
}

fn bearer(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("authorization", format!("Bearer {token}").parse().unwrap());
    h
}

/// The verified subject, or the refusal.
type Outcome = Result<Option<String>, Refusal>;

/// What a request with `headers` gets.
fn outcome(auth: &Authenticator, headers: &HeaderMap) -> Outcome {
    match auth.find(headers)? {
        None if auth.required() => Err(Refusal::Missing),
        None => Ok(None),
        Some(token) => {
            let v = auth.verify(token.text(), now() as u64)?;
            Ok(v.claims
                .get("sub")
                .and_then(Value::as_str)
                .map(String::from))
        }
    }
}

#[test]
fn tokens_of_every_accepted_algorithm_verify() {
    let auth = authenticator(|_| {});
    for alg in [ES256, ES384, EdDSA, RS256] {
        let token = sign(alg, json!({}));
        assert_eq!(
            outcome(&auth, &bearer(&token)),
            Ok(Some("alice".into())),
            "{alg:?}"
        );
    }
}

/// The attacker's table: each token or request, and what it gets.
#[test]
fn bad_tokens_are_refused_with_their_reason() {
    let auth = authenticator(|_| {});
    let i = issuer();
    let t = now();
    let good = sign(ES256, json!({}));
    let invalid = |why| Err(Refusal::Invalid(why));
    let no_key = invalid("no trusted key verifies the token");
    let header_of = |alg: &str, kid: &str| json!({"alg": alg, "kid": kid, "typ": "JWT"});
    let claims = i.claims(AUD, json!({}));
    let ec_public = i.key(ES256).jwk.to_string();
    let cases: Vec<(&str, String, Outcome)> = vec![
        (
            "expired an hour ago",
            sign(ES256, json!({"exp": t - 3600})),
            invalid("the token has expired"),
        ),
        (
            "expired within the skew",
            sign(ES256, json!({"exp": t - 30})),
            Ok(Some("alice".into())),
        ),
        (
            "not valid for an hour",
            sign(ES256, json!({"nbf": t + 3600})),
            invalid("the token is not valid yet"),
        ),
        (
            "no exp",
            i.sign(ES256, &json!({"iss": ISS, "aud": AUD, "sub": "alice"}))
                .unwrap(),
            invalid("the token lacks exp, iss or aud"),
        ),
        (
            "no iss",
            i.sign(ES256, &json!({"aud": AUD, "exp": t + 60})).unwrap(),
            invalid("the token lacks exp, iss or aud"),
        ),
        (
            "no aud",
            i.sign(ES256, &json!({"iss": ISS, "exp": t + 60})).unwrap(),
            invalid("the token lacks exp, iss or aud"),
        ),
        (
            "another audience",
            sign(ES256, json!({"aud": "billing"})),
            invalid("the token's audience is not accepted here"),
        ),
        (
            "another issuer",
            sign(ES256, json!({"iss": "https://evil.test"})),
            invalid("the token's issuer is not trusted here"),
        ),
        (
            "payload tampered",
            tampered(&good, &i.claims(AUD, json!({"sub": "root"}))),
            no_key.clone(),
        ),
        (
            "signed by a stranger with our kid",
            stranger().sign(ES256, &claims).unwrap(),
            no_key.clone(),
        ),
        (
            "alg none",
            forged(&header_of("none", "k-ES256"), &claims, b""),
            invalid("the token is malformed"),
        ),
        (
            "HS256 keyed with the public JWK",
            forged(
                &header_of("HS256", "k-ES256"),
                &claims,
                ec_public.as_bytes(),
            ),
            no_key.clone(),
        ),
        (
            "ES384 header on the ES256 key",
            forged(&header_of("ES384", "k-ES256"), &claims, &[7; 96]),
            no_key.clone(),
        ),
        (
            "unknown kid",
            forged(&header_of("ES256", "other"), &claims, &[7; 64]),
            no_key.clone(),
        ),
        (
            "not a token",
            "abc".into(),
            invalid("the token is malformed"),
        ),
        (
            "two dots of nothing",
            "..".into(),
            invalid("the token is malformed"),
        ),
        (
            "too long",
            format!("{good}{}", "A".repeat(MAX_TOKEN_BYTES)),
            invalid("the token is too long"),
        ),
    ];
    for (what, token, want) in cases {
        assert_eq!(outcome(&auth, &bearer(&token)), want, "{what}");
    }
}

#[test]
fn where_the_token_travels_is_checked_too() {
    let auth = authenticator(|_| {});
    let good = sign(EdDSA, json!({}));
    let header = |v: &str| {
        let mut h = HeaderMap::new();
        h.insert("authorization", v.parse().unwrap());
        h
    };
    assert_eq!(outcome(&auth, &HeaderMap::new()), Err(Refusal::Missing));
    assert_eq!(
        outcome(&auth, &header("Basic YWxpY2U6cHc=")),
        Err(Refusal::Missing)
    );
    assert_eq!(
        outcome(&auth, &header("Bearer ")),
        Err(Refusal::Invalid("the token is empty"))
    );
    assert_eq!(
        outcome(&auth, &header(&format!("bearer {good}"))),
        Ok(Some("alice".into())),
        "the scheme is case-insensitive"
    );
    let mut twice = bearer(&good);
    twice.append("authorization", format!("Bearer {good}").parse().unwrap());
    assert_eq!(
        outcome(&auth, &twice),
        Err(Refusal::Malformed(
            "the token header is sent more than once"
        ))
    );

    // Cookies and named headers, when the provider says so.
    let auth = authenticator(|p| {
        p.from = vec![
            TokenSource::Header {
                name: "x-token".into(),
                prefix: None,
            },
            TokenSource::Cookie("session".into()),
        ]
    });
    let mut h = HeaderMap::new();
    h.insert(
        "cookie",
        format!("a=1; session={good}; b=2").parse().unwrap(),
    );
    assert_eq!(outcome(&auth, &h), Ok(Some("alice".into())));
    h.append("cookie", "session=again".parse().unwrap());
    assert_eq!(
        outcome(&auth, &h),
        Err(Refusal::Malformed(
            "the token cookie is sent more than once"
        ))
    );
    let mut h = HeaderMap::new();
    h.insert("x-token", good.parse().unwrap());
    assert_eq!(outcome(&auth, &h), Ok(Some("alice".into())));
    // Authorization is not a place of this provider.
    assert_eq!(outcome(&auth, &bearer(&good)), Err(Refusal::Missing));
}

#[test]
fn repeats_come_from_the_cache_and_still_expire() {
    let auth = authenticator(|p| p.clock_skew = Duration::from_secs(10));
    let token = sign(ES256, json!({"exp": now() + 100}));
    let first = auth.verify(&token, now() as u64).unwrap();
    let again = auth.verify(&token, now() as u64).unwrap();
    assert!(
        Arc::ptr_eq(&first, &again),
        "the repeat is the cached entry"
    );
    assert_eq!(auth.cache.len(), 1);
    assert_eq!(
        auth.verify(&token, now() as u64 + 105).map(|_| ()),
        Ok(()),
        "within the skew"
    );
    assert_eq!(
        auth.verify(&token, now() as u64 + 111).map(|_| ()),
        Err(Refusal::Invalid("the token has expired")),
        "a cached token expires on time"
    );
    // Refused tokens are not kept.
    let _ = auth.verify("abc", now() as u64);
    assert_eq!(auth.cache.len(), 1);
}

#[test]
fn claim_rules_read_scopes_lists_paths_and_values() {
    let auth = authenticator(|_| {});
    let token = sign(
        ES256,
        json!({"scope": "orders.read orders.write", "groups": ["ops", "dev"],
               "realm": {"roles": ["admin"]}, "level": 3, "staff": true}),
    );
    let verified = auth.verify(&token, now() as u64).unwrap();
    let rules = |pairs: &[(&str, &[&str])]| {
        ClaimRules::new(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
                .collect(),
        )
    };
    let held: &[&[(&str, &[&str])]] = &[
        &[("scope", &["orders.write"])],
        &[("groups", &["x", "ops"])],
        &[("realm.roles", &["admin"])],
        &[("sub", &["alice"]), ("level", &["3"]), ("staff", &["true"])],
        &[],
    ];
    for pairs in held {
        assert_eq!(rules(pairs).check(&verified), Ok(()), "{pairs:?}");
    }
    let not_held: &[&[(&str, &[&str])]] = &[
        &[("scope", &["orders"])],
        &[("sub", &["alice bob"])],
        &[("groups", &["admin"])],
        &[("realm", &["admin"])],
        &[("missing", &["x"])],
        &[("sub", &["alice"]), ("groups", &["nobody"])],
    ];
    for pairs in not_held {
        assert_eq!(
            rules(pairs).check(&verified),
            Err(Refusal::Insufficient),
            "{pairs:?}"
        );
    }
}

#[test]
fn claim_headers_are_the_proxys_and_the_token_may_stay_behind() {
    let auth = authenticator(|p| {
        p.forward_token = false;
        p.from = vec![TokenSource::Cookie("session".into())];
    });
    let token = sign(ES256, json!({"sub": "bob", "groups": ["a", "b"]}));
    let mut h = HeaderMap::new();
    h.insert("x-user", "root".parse().unwrap());
    h.append("x-user", "root2".parse().unwrap());
    h.insert("x-groups", "admins".parse().unwrap());
    h.insert(
        "cookie",
        format!("theme=dark; session={token}").parse().unwrap(),
    );
    auth.strip_claim_headers(&mut h);
    assert!(h.get("x-user").is_none() && h.get("x-groups").is_none());
    let found = auth.find(&h).unwrap().unwrap();
    let verified = auth.verify(found.text(), now() as u64).unwrap();
    let mut out = h.clone();
    auth.apply(&verified, found.at(), &mut out);
    assert_eq!(out.get("x-user").unwrap(), "bob");
    assert_eq!(out.get("x-groups").unwrap(), "a,b");
    assert_eq!(
        out.get("cookie").unwrap(),
        "theme=dark",
        "the token's cookie is taken out"
    );

    // A header token that is not forwarded goes away whole.
    let auth = authenticator(|p| p.forward_token = false);
    let h = bearer(&token);
    let found = auth.find(&h).unwrap().unwrap();
    let verified = auth.verify(found.text(), now() as u64).unwrap();
    let mut out = h.clone();
    auth.apply(&verified, found.at(), &mut out);
    assert!(out.get("authorization").is_none());
}

#[test]
fn refusals_answer_as_rfc_6750_says() {
    use http::StatusCode;
    let cases = [
        (Refusal::Missing, StatusCode::UNAUTHORIZED, None),
        (
            Refusal::Invalid("x"),
            StatusCode::UNAUTHORIZED,
            Some("invalid_token"),
        ),
        (
            Refusal::Malformed("x"),
            StatusCode::BAD_REQUEST,
            Some("invalid_request"),
        ),
        (
            Refusal::Insufficient,
            StatusCode::FORBIDDEN,
            Some("insufficient_scope"),
        ),
    ];
    for (refusal, status, code) in cases {
        assert_eq!((refusal.status(), refusal.error_code()), (status, code));
        assert!(!refusal.reason().contains(['"', '\\']));
    }
}

/// With an introspection endpoint beside a provider, only what the provider cannot
/// judge is asked about: a JWT its key verifies is judged by its claims alone, so an
/// expired or foreign-audience token never gets a second chance elsewhere.
#[test]
fn only_what_no_provider_can_judge_is_asked_about() {
    let policy: JwtPolicy = serde_json::from_value(json!({
        "providers": [serde_json::to_value(provider()).unwrap()],
        "introspection": {"service": "idp/oauth", "port": 9000}
    }))
    .unwrap();
    let auth = Authenticator::new(&policy).unwrap();
    let t = now();
    let ask = |token: &str| {
        let mut headers = bearer(token);
        let checked = auth.authenticate(true, &ClaimRules::default(), &mut headers, t as u64);
        match checked {
            Ok(Checked::Done) => Ok(false),
            Ok(Checked::Ask(ask)) => {
                assert_eq!(ask.token(), token);
                Ok(true)
            }
            Err(refusal) => Err(refusal),
        }
    };
    assert_eq!(ask(&sign(ES256, json!({}))), Ok(false));
    assert_eq!(
        ask(&sign(ES256, json!({"exp": t - 3600}))),
        Err(Refusal::Invalid("the token has expired"))
    );
    assert_eq!(
        ask(&sign(ES256, json!({"aud": "bank"}))),
        Err(Refusal::Invalid(
            "the token's audience is not accepted here"
        ))
    );
    // Claiming the provider's issuer with a key it does not hold: a forgery, refused
    // without a second opinion.
    let forged = stranger()
        .sign(ES256, &stranger().claims(AUD, json!({"exp": t - 3600})))
        .unwrap();
    assert_eq!(ask(&forged), Err(Refusal::Invalid(NO_KEY)));
    // Another issuer's JWT, or not a JWT at all: asked.
    let other = Issuer::new("https://other.test", "o", &[ES256]).unwrap();
    let foreign = other.sign(ES256, &other.claims(AUD, json!({}))).unwrap();
    assert_eq!(ask(&foreign), Ok(true));
    assert_eq!(ask("2YotnFZFEjr1zCsicMWpAA"), Ok(true));
    // A token too long to verify is too long to ask about.
    assert_eq!(
        ask(&"a".repeat(MAX_TOKEN_BYTES + 1)),
        Err(Refusal::Invalid("the token is too long"))
    );
}
