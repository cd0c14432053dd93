//! Opaque tokens judged by an OAuth 2.0 introspection endpoint (RFC 7662) through
//! the mesh: a real HTTP server in pod `x` plays the authorization server behind
//! its own sidecar, which admits only the servers' mesh identity; the servers'
//! proxies post each unknown token to it over mesh TLS and judge the answer. A
//! meshed client then tries what an attacker would: revoked, foreign-audience,
//! expired and scope-less tokens, a forged claim header, the endpoint failing,
//! lying or hanging, and asking the endpoint itself.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use pillion_testkit::http::{handler, serve, text, AppBody, Counters};
use pillion_testkit::jwt::now;
use pillion_tests::http_mesh::{h1_client, source_yaml, HttpWorld, VIP};
use serde_json::json;

use crate::common::{sidecar_opts, testbin};

/// The endpoint's port, in pod `x`.
const IDP_PORT: u16 = 9000;
/// The endpoint's service address.
const IDP_VIP: &str = "198.18.1.120";
const ISS: &str = "https://idp.test";
const SERVER_ID: &str = "spiffe://cluster.local/ns/demo/sa/server";
/// The client credential the endpoint's route adds to every call (some servers
/// want one besides the mesh identity).
const CLIENT_CREDENTIAL: &str = "Basic c2hvcDpzZWNyZXQ=";
/// A token with characters the form encoding must carry.
const GOOD: &str = "2YotnFZ+FEjr1/zCsicMWpAA==";

/// The servers' port: every token is judged at `other/oauth`.
const INBOUND: &str = r#"mode: permissive
jwt:
  introspection:
    service: other/oauth
    port: 9000
    issuer: https://idp.test
    audiences: [orders]
    timeout: 1s
    cache_ttl: 30s
    claim_headers: {sub: x-user}
    forward_token: false
routes:
  - name: orders
    matches: [{path: {prefix: /whoami/orders}}]
    claims: {scope: [orders.read]}
"#;

/// The client's route to the servers retries server errors: an introspection
/// failure must not be one of them.
const CLIENT_ROUTES: &str = r#"- name: all
  matches: [{path: {prefix: /}}]
  retry: {attempts: 3, conditions: [5xx]}
"#;

/// Each call the endpoint got: the token it read and who the mesh said called.
type Calls = Arc<Mutex<Vec<(String, String)>>>;

/// `application/x-www-form-urlencoded` decoding of one value.
fn form_value(body: &str, name: &str) -> Option<String> {
    let raw = body
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))?;
    let mut out = Vec::new();
    let mut bytes = raw.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex: String = [bytes.next()?, bytes.next()?]
                    .iter()
                    .map(|&c| char::from(c))
                    .collect();
                out.push(u8::from_str_radix(&hex, 16).ok()?);
            }
            other => out.push(other),
        }
    }
    String::from_utf8(out).ok()
}

/// The authorization server's answer about `token`.
async fn judge(token: &str) -> hyper::Response<AppBody> {
    let t = now();
    let active = |extra: serde_json::Value| {
        let mut answer = json!({"active": true, "sub": "alice", "scope": "orders.read profile",
            "iss": ISS, "aud": "orders", "exp": t + 600, "client_id": "shop"});
        for (k, v) in extra.as_object().unwrap() {
            answer[k] = v.clone();
        }
        answer.to_string()
    };
    let body = match token {
        GOOD => active(json!({})),
        "reader" => active(json!({"sub": "bob", "scope": "profile"})),
        "bank" => active(json!({"aud": ["bank"]})),
        "expired" => active(json!({"exp": t - 3600})),
        "other-issuer" => active(json!({"iss": "https://evil.test"})),
        "broken" => "<html>sign in</html>".to_string(),
        "fails" => return text(500, "down"),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            active(json!({}))
        }
        _ => json!({"active": false}).to_string(),
    };
    let mut answer = text(200, body);
    answer.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    answer
}

/// Starts the endpoint in `pod` on [`IDP_PORT`]: it reads the form, records the
/// call, and answers only the servers' identity (its sidecar says who called).
fn start_endpoint(pod: &pillion::local::Pod, calls: Calls) -> pillion::local::Task<()> {
    let app = handler(move |req| {
        let calls = Arc::clone(&calls);
        async move {
            let caller = req
                .headers()
                .get("pillion-peer-identity")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let path = req.uri().path().to_string();
            let credential = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let form_ok = req.method() == http::Method::POST
                && req
                    .headers()
                    .get(http::header::CONTENT_TYPE)
                    .is_some_and(|v| v == "application/x-www-form-urlencoded");
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let body = String::from_utf8_lossy(&body).to_string();
            let token = form_value(&body, "token").unwrap_or_default();
            calls.lock().unwrap().push((token.clone(), caller.clone()));
            // The endpoint's route gave the call its path and a client credential.
            let routed = path == "/oauth2/introspect" && credential == CLIENT_CREDENTIAL;
            if !routed
                || !form_ok
                || form_value(&body, "token_type_hint").as_deref() != Some("access_token")
            {
                return text(400, "not an introspection request");
            }
            if caller != SERVER_ID {
                return text(401, "who are you");
            }
            judge(&token).await
        }
    });
    let counters = Arc::new(Counters::default());
    pod.background(move || async move {
        let listener = tokio::net::TcpListener::bind(("0.0.0.0", IDP_PORT))
            .await
            .unwrap();
        serve(listener, app, counters).await;
    })
    .unwrap()
}

/// One answer as the client sees it.
#[derive(Debug)]
struct Seen {
    status: u16,
    challenge: String,
    error: String,
    body: String,
    took: Duration,
}

fn ask(pod: &pillion::local::Pod, to: &str, path: &str, headers: &[(&str, &str)]) -> Seen {
    let addr: SocketAddr = to.parse().unwrap();
    let uri = format!("http://{addr}{path}");
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    pod.run(move || async move {
        let mut req = http::Request::new(Full::new(Bytes::new()));
        *req.uri_mut() = uri.parse().unwrap();
        for (name, value) in &headers {
            req.headers_mut().append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        let start = Instant::now();
        let resp = tokio::time::timeout(Duration::from_secs(20), h1_client().request(req))
            .await
            .expect("an answer within 20 s")
            .expect("a response");
        let header = |name| {
            (resp.headers().get(name))
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let (status, challenge, error) = (
            resp.status().as_u16(),
            header("www-authenticate"),
            header("pillion-error"),
        );
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Seen {
            status,
            challenge,
            error,
            body: String::from_utf8_lossy(&body).to_string(),
            took: start.elapsed(),
        }
    })
    .unwrap()
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[test]
fn opaque_tokens_are_judged_by_the_introspection_endpoint_through_the_mesh() {
    let source = |pods: &pillion_tests::http_mesh::HttpPods| {
        let x = pods.x.ipv4();
        let intruder = format!(
            "  - name: intruder\n    namespace: other\n    token: intruder-token-http\n    addresses: [{x}]\n"
        );
        // The endpoint's pod admits only the servers, over mesh TLS.
        let endpoint = format!(
            "{intruder}    inbound:\n      ports:\n        {IDP_PORT}:\n          mode: strict\n          allow: [\"{SERVER_ID}\"]\n"
        );
        let text = source_yaml(pods, CLIENT_ROUTES, INBOUND);
        assert!(text.contains(&intruder), "{text}");
        format!(
            "{}  - name: oauth\n    namespace: other\n    addresses: [{IDP_VIP}]\n    ports:\n      - port: {IDP_PORT}\n        routes:\n          - name: introspect\n            matches: [{{path: {{prefix: /introspect}}}}]\n            rewrite: {{prefix: /oauth2/introspect}}\n            request_headers: {{set: {{authorization: \"{CLIENT_CREDENTIAL}\"}}}}\n    endpoints:\n      - workload: intruder\n        addresses: [{x}]\n",
            text.replacen(&intruder, &endpoint, 1)
        )
    };
    let w = HttpWorld::start_with_source("introspect", &testbin(), &sidecar_opts(), source, &[])
        .expect("world");
    let calls: Calls = Arc::default();
    let _endpoint = start_endpoint(&w.pods.x, Arc::clone(&calls));
    let a = &w.pods.a;
    let good = bearer(GOOD);

    // The first request may meet a view still on its way: wait for a 200.
    let deadline = Instant::now() + Duration::from_secs(15);
    let first = loop {
        let seen = ask(a, VIP, "/whoami", &[("authorization", &good)]);
        if seen.status == 200 || Instant::now() > deadline {
            break seen;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(first.status, 200, "{first:?}\n{}", w.dump());
    // The claim header is the endpoint's `sub`; the token stays at the proxy.
    assert!(
        first
            .body
            .starts_with("user=alice groups= authorization=false"),
        "{first:?}"
    );

    // Repeats (and a forged claim header) are answered from each server proxy's
    // cache: two proxies, at most two calls for however many requests.
    let calls_for = |token: &str| {
        let calls = calls.lock().unwrap();
        calls.iter().filter(|(t, _)| t == token).count()
    };
    for _ in 0..6 {
        let seen = ask(
            a,
            VIP,
            "/whoami",
            &[("authorization", &good), ("x-user", "mallory")],
        );
        assert_eq!(seen.status, 200, "{seen:?}");
        assert!(seen.body.starts_with("user=alice "), "{seen:?}");
    }
    let orders = ask(a, VIP, "/whoami/orders", &[("authorization", &good)]);
    assert_eq!(orders.status, 200, "{orders:?}");
    assert!(
        calls_for(GOOD) <= 2,
        "the cache was not used: {}",
        calls_for(GOOD)
    );

    // The attacker's table.
    let invalid = r#"error="invalid_token""#;
    let cases: Vec<(&str, &str, Option<&str>, u16, &str)> = vec![
        (
            "no token",
            "/whoami",
            None,
            401,
            r#"Bearer realm="pillion""#,
        ),
        (
            "revoked",
            "/whoami",
            Some("revoked"),
            401,
            "the token is not active",
        ),
        (
            "unknown",
            "/whoami",
            Some("made-up"),
            401,
            "the token is not active",
        ),
        (
            "foreign audience",
            "/whoami",
            Some("bank"),
            401,
            "audience is not accepted",
        ),
        (
            "expired though active",
            "/whoami",
            Some("expired"),
            401,
            "the token has expired",
        ),
        (
            "other issuer",
            "/whoami",
            Some("other-issuer"),
            401,
            "issuer is not trusted",
        ),
        (
            "no scope",
            "/whoami/orders",
            Some("reader"),
            403,
            "insufficient_scope",
        ),
        (
            "a JWT-looking forgery",
            "/whoami",
            Some("e30.e30.c2ln"),
            401,
            "the token is not active",
        ),
    ];
    for (what, path, token, status, want) in &cases {
        let auth = token.map(bearer);
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|t| ("authorization", t.as_str())).collect();
        let seen = ask(a, VIP, path, &headers);
        assert_eq!(seen.status, *status, "{what}: {seen:?}");
        assert!(seen.challenge.contains(want), "{what}: {seen:?}");
        if *status == 401 && token.is_some() {
            assert!(seen.challenge.contains(invalid), "{what}: {seen:?}");
        }
        if token.is_none() {
            assert_eq!(
                seen.challenge, r#"Bearer realm="pillion""#,
                "{what}: {seen:?}"
            );
        }
    }
    // A revoked token asked again costs the endpoint nothing more.
    for _ in 0..4 {
        let seen = ask(a, VIP, "/whoami", &[("authorization", &bearer("revoked"))]);
        assert_eq!(seen.status, 401, "{seen:?}");
    }
    assert!(calls_for("revoked") <= 2, "{}", calls_for("revoked"));
    // So is an active token refused for its audience.
    for _ in 0..4 {
        let seen = ask(a, VIP, "/whoami", &[("authorization", &bearer("bank"))]);
        assert_eq!(seen.status, 401, "{seen:?}");
    }
    assert!(calls_for("bank") <= 2, "{}", calls_for("bank"));

    // The endpoint failing, lying or hanging: never a pass.
    for (token, status, max) in [
        ("fails", 502, Duration::from_secs(5)),
        ("broken", 502, Duration::from_secs(5)),
        ("slow", 504, Duration::from_millis(2500)),
    ] {
        let seen = ask(a, VIP, "/whoami", &[("authorization", &bearer(token))]);
        assert_eq!(seen.status, status, "{token}: {seen:?}");
        assert_eq!(seen.error, "introspection-failed", "{token}: {seen:?}");
        assert!(seen.took < max, "{token} took {:?}", seen.took);
        // The client's proxy did not retry it on another server (nor count it against
        // the server): the endpoint was asked once.
        assert_eq!(calls_for(token), 1, "{token} was retried");
    }

    // Every call came over the mesh as the servers' identity, the token intact.
    let seen_calls = calls.lock().unwrap().clone();
    assert!(seen_calls.iter().any(|(t, _)| t == GOOD), "{seen_calls:?}");
    let callers: HashMap<&str, usize> =
        seen_calls.iter().fold(HashMap::new(), |mut m, (_, who)| {
            *m.entry(who.as_str()).or_default() += 1;
            m
        });
    assert_eq!(
        callers.keys().copied().collect::<Vec<_>>(),
        [SERVER_ID],
        "{seen_calls:?}"
    );

    // The client itself cannot ask the endpoint: its sidecar admits the servers only.
    let form = format!("token={GOOD}&token_type_hint=access_token");
    let direct = ask(
        a,
        &format!("{IDP_VIP}:{IDP_PORT}"),
        &format!("/introspect?{form}"),
        &[],
    );
    assert_eq!(direct.status, 403, "{direct:?}");
    assert_eq!(calls.lock().unwrap().len(), seen_calls.len());
}
