//! The cost of an end user's token on the inbound path, in process (`--jwt`): the
//! proxy's own check (strip the claim headers, find the token, verify it or find it
//! in the cache, check a route's claims, set the claim headers) on one thread, per
//! request, for a token seen before (the cache) and for tokens seen the first time
//! (a signature each) of every algorithm. Keys and tokens come from the test issuer
//! ([`pillion_testkit::jwt`]). The target is a repeat at most 2 µs. Opaque tokens
//! judged by an introspection endpoint are measured the same way, the endpoint
//! answering at once (its round trip through the mesh is the network's).

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{anyhow, Result};
use http::HeaderMap;
use jsonwebtoken::Algorithm;
use pillion_api::jwt::{JwtPolicy, JwtProvider, DEFAULT_CLOCK_SKEW};
use pillion_proxy::measure::TokenCheck;
use pillion_testkit::jwt::Issuer;
use serde::Serialize;
use serde_json::json;

/// The target for a token seen before, in nanoseconds.
pub const REPEAT_TARGET_NS: f64 = 2_000.0;

/// One case's figure.
#[derive(Debug, Clone, Serialize)]
pub struct JwtRow {
    /// What was checked.
    pub case: String,
    /// Requests checked per batch.
    pub requests: usize,
    /// Median of the batches, nanoseconds per request.
    pub ns_per_request: f64,
    /// Fastest and slowest batch.
    pub range_ns: (f64, f64),
}

/// Measures every case; `smoke` runs fewer and smaller batches.
pub fn run(smoke: bool) -> Result<Vec<JwtRow>> {
    let algs = [
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
        Algorithm::RS256,
    ];
    let issuer = Issuer::new("https://issuer.bench", "b", &algs)?;
    let policy = JwtPolicy {
        required: true,
        introspection: None,
        providers: vec![JwtProvider {
            issuer: issuer.name.clone(),
            audiences: vec!["orders".into()],
            jwks: issuer.jwks(),
            jwks_uri: None,
            from: vec![],
            clock_skew: DEFAULT_CLOCK_SKEW,
            claim_headers: BTreeMap::from([("sub".into(), "x-user".into())]),
            forward_token: true,
        }],
    };
    let claims = BTreeMap::from([("scope".to_string(), vec!["orders.read".to_string()])]);
    let (batches, repeats, fresh) = if smoke {
        (3, 2_000, 20)
    } else {
        (7, 200_000, 1_000)
    };
    let token = |alg, n: usize| {
        issuer.sign(
            alg,
            &issuer.claims("orders", json!({"scope": "orders.read", "jti": n})),
        )
    };
    let mut rows = Vec::new();
    for alg in [Algorithm::ES256, Algorithm::RS256] {
        let check = TokenCheck::new(&policy, &claims).map_err(|e| anyhow!(e))?;
        let one = vec![token(alg, 0)?];
        rows.push(measure(
            &format!("a token seen before ({alg:?}, from the cache)"),
            &check,
            &one,
            repeats,
            batches,
        )?);
    }
    // Opaque tokens: the answer judged once, then served from the cache.
    let introspected: JwtPolicy = serde_json::from_value(json!({
        "introspection": {"service": "idp/oauth", "port": 9000, "audiences": ["orders"],
            "claim_headers": {"sub": "x-user"}}
    }))?;
    let answer = json!({"active": true, "sub": "alice", "scope": "orders.read profile",
        "aud": "orders", "exp": pillion_testkit::jwt::now() + 3600});
    let opaque = || {
        TokenCheck::new(&introspected, &claims)
            .map(|c| c.answering(answer.to_string().into_bytes()))
            .map_err(|e| anyhow!(e))
    };
    rows.push(measure(
        "an opaque token seen before (introspection, from the cache)",
        &opaque()?,
        &["2YotnFZFEjr1zCsicMWpAA".to_string()],
        repeats,
        batches,
    )?);
    let tokens: Vec<String> = (0..fresh * batches)
        .map(|n| format!("opaque-{n}"))
        .collect();
    rows.push(first_sight(
        "an opaque token the first time (its answer judged; no network)",
        &opaque()?,
        &tokens,
        batches,
    )?);
    for alg in algs {
        let tokens = (0..fresh * batches)
            .map(|n| token(alg, n + 1))
            .collect::<Result<Vec<_>>>()?;
        let check = TokenCheck::new(&policy, &claims).map_err(|e| anyhow!(e))?;
        rows.push(first_sight(
            &format!("a token seen the first time ({alg:?})"),
            &check,
            &tokens,
            batches,
        )?);
    }
    Ok(rows)
}

/// Checks `tokens` round-robin, `per_batch` requests a batch; the first pass warms
/// the cache.
fn measure(
    case: &str,
    check: &TokenCheck,
    tokens: &[String],
    per_batch: usize,
    batches: usize,
) -> Result<JwtRow> {
    let requests: Vec<HeaderMap> = tokens.iter().map(|t| request(t)).collect::<Result<_>>()?;
    let mut requests = requests;
    for r in &mut requests {
        check
            .check(r)
            .map_err(|why| anyhow!("{case}: refused: {why}"))?;
    }
    let mut figures = Vec::new();
    for _ in 0..batches {
        let start = Instant::now();
        for i in 0..per_batch {
            let n = i % requests.len();
            check
                .check(&mut requests[n])
                .map_err(|why| anyhow!("{case}: refused: {why}"))?;
        }
        figures.push(start.elapsed().as_nanos() as f64 / per_batch as f64);
    }
    Ok(row(case, per_batch, figures))
}

/// Each token once: `tokens` split into `batches`.
fn first_sight(
    case: &str,
    check: &TokenCheck,
    tokens: &[String],
    batches: usize,
) -> Result<JwtRow> {
    let per_batch = tokens.len() / batches;
    let mut requests: Vec<HeaderMap> = tokens.iter().map(|t| request(t)).collect::<Result<_>>()?;
    let mut figures = Vec::new();
    for batch in requests.chunks_mut(per_batch).take(batches) {
        let start = Instant::now();
        for r in batch.iter_mut() {
            check
                .check(r)
                .map_err(|why| anyhow!("{case}: refused: {why}"))?;
        }
        figures.push(start.elapsed().as_nanos() as f64 / per_batch as f64);
    }
    Ok(row(case, per_batch, figures))
}

fn request(token: &str) -> Result<HeaderMap> {
    let mut headers = HeaderMap::new();
    headers.insert("authorization", format!("Bearer {token}").parse()?);
    headers.insert("host", "orders.shop".parse()?);
    headers.insert("user-agent", "bench".parse()?);
    Ok(headers)
}

fn row(case: &str, requests: usize, mut figures: Vec<f64>) -> JwtRow {
    figures.sort_by(f64::total_cmp);
    JwtRow {
        case: case.to_string(),
        requests,
        ns_per_request: figures[figures.len() / 2],
        range_ns: (figures[0], figures[figures.len() - 1]),
    }
}

/// The Markdown table of `rows`, with the target's verdict on the repeats.
pub fn table(rows: &[JwtRow]) -> String {
    let mut out = String::from(
        "| case | per request, µs (median of batches) | fastest–slowest batch, µs | target |\n|---|---:|---:|---|\n",
    );
    for r in rows {
        let target = if r.case.contains("seen before") {
            if r.ns_per_request <= REPEAT_TARGET_NS {
                "≤ 2 µs: met"
            } else {
                "≤ 2 µs: NOT MET"
            }
        } else {
            ""
        };
        out.push_str(&format!(
            "| {} | {:.3} | {:.3}–{:.3} | {target} |\n",
            r.case,
            r.ns_per_request / 1000.0,
            r.range_ns.0 / 1000.0,
            r.range_ns.1 / 1000.0
        ));
    }
    out
}
