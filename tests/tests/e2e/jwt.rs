//! End-user tokens through the mesh: a token issuer made in the test (its own keys),
//! its JWK Set served over HTTPS in the agent's pod and fetched by the real agent,
//! the server pods' proxies verifying every request, from a meshed client (HTTP/1.1
//! and HTTP/2) and an unmeshed one; then the attacker's tokens, key rotation, and
//! an issuer that goes down.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use jsonwebtoken::Algorithm::{EdDSA, ES256, RS256};
use pillion_testkit::http::{h2_client, TestClient};
use pillion_testkit::jwt::{forged, now, tampered, Issuer, JwksControl, JwksServer, JwksTls};
use pillion_tests::http_mesh::{h1_client, policy_actions, HttpWorld, APP_PORT, VIP};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{sidecar_opts, testbin};

const ISS: &str = "https://issuer.test";
/// Where the JWK Set is served, inside the agent's pod.
const JWKS_PORT: u16 = 8443;

fn inbound(uri: &str) -> String {
    format!(
        r#"mode: permissive
jwt:
  providers:
    - issuer: {ISS}
      audiences: [orders]
      jwks_uri: {uri}
      from: [{{header: {{name: authorization, prefix: "Bearer "}}}}, {{cookie: session}}]
      claim_headers: {{sub: x-user, groups: x-groups}}
routes:
  - name: orders
    matches: [{{path: {{prefix: /whoami/orders}}}}]
    claims: {{scope: [orders.read]}}
  - name: open
    matches: [{{path: {{prefix: /whoami/open}}}}]
    jwt_required: false
"#
    )
}

/// A request of the attacker's table: what it is, its path and headers, the status
/// it must get and text its answer must carry.
type Case = (
    &'static str,
    &'static str,
    Vec<(&'static str, String)>,
    u16,
    &'static str,
);

/// One answer as the client sees it.
#[derive(Debug)]
struct Seen {
    status: u16,
    challenge: String,
    error: String,
    body: String,
}

async fn ask(
    client: &TestClient,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, String)],
) -> Seen {
    let mut req = http::Request::new(Full::new(Bytes::new()));
    *req.uri_mut() = format!("http://{addr}{path}").parse().unwrap();
    for (name, value) in headers {
        req.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    let resp = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .expect("an answer within 20 s")
        .expect("a response");
    let header = |name| {
        resp.headers()
            .get(name)
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
    }
}

fn bearer(token: &str) -> Vec<(&'static str, String)> {
    vec![("authorization", format!("Bearer {token}"))]
}

/// Asks from `pod` through the mesh until `done` holds, for at most `limit`.
fn until(
    pod: &pillion::local::Pod,
    limit: Duration,
    path: &'static str,
    token: &str,
    done: impl Fn(&Seen) -> bool,
) -> Seen {
    let deadline = Instant::now() + limit;
    loop {
        let headers = bearer(token);
        let seen =
            pod.run(move || async move {
                ask(&h1_client(), VIP.parse().unwrap(), path, &headers).await
            })
            .unwrap();
        if done(&seen) || Instant::now() > deadline {
            return seen;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn tokens_are_verified_at_the_server_proxy_with_keys_the_agent_fetches() {
    let issuer = Issuer::new(ISS, "one", &[ES256, EdDSA, RS256]).unwrap();
    let tls = JwksTls::new(&["127.0.0.1"]).unwrap();
    let ca_dir = std::env::temp_dir().join(format!("pillion-e2e-jwt-{}", std::process::id()));
    std::fs::create_dir_all(&ca_dir).unwrap();
    let ca_file = ca_dir.join("jwks-ca.pem");
    std::fs::write(&ca_file, &tls.ca_pem).unwrap();
    let uri = format!("https://127.0.0.1:{JWKS_PORT}/.well-known/jwks.json");
    let w = HttpWorld::start_with_agent(
        "jwt_e2e",
        &testbin(),
        &sidecar_opts(),
        "[]",
        &inbound(&uri),
        &[
            "--jwks-ca-file",
            ca_file.to_str().unwrap(),
            "--jwks-refresh",
            "1s",
        ],
    )
    .unwrap();
    std::fs::remove_dir_all(&ca_dir).unwrap();
    let a = w.pods.a.clone();
    let claims = |extra| issuer.claims("orders", extra);
    let good = issuer
        .sign(ES256, &claims(json!({"groups": ["ops", "dev"]})))
        .unwrap();

    // No key set yet (its server is not up): even a good token is refused.
    let seen = until(&a, Duration::from_secs(10), "/whoami", &good, |s| {
        s.status != 0
    });
    assert_eq!(seen.status, 401, "{seen:?}\n{}", w.dump());
    assert!(
        seen.challenge.contains(r#"error="invalid_token""#),
        "{seen:?}"
    );

    // The issuer comes up in the agent's pod; the agent fetches and pushes its keys.
    let (tx, rx) = std::sync::mpsc::channel::<JwksControl>();
    let jwks_body = issuer.jwks();
    let _jwks = w
        .agent
        .pod()
        .background(move || async move {
            let server = JwksServer::start(
                SocketAddr::from(([127, 0, 0, 1], JWKS_PORT)),
                &tls,
                jwks_body,
            )
            .await
            .unwrap();
            let _ = tx.send(server.control.clone());
            std::future::pending::<()>().await;
        })
        .unwrap();
    let jwks = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let started = Instant::now();
    let seen = until(&a, Duration::from_secs(15), "/whoami", &good, |s| {
        s.status == 200
    });
    println!(
        "keys reached the proxies {:?} after the issuer came up",
        started.elapsed()
    );
    assert_eq!(seen.status, 200, "{seen:?}\n{}", w.dump());
    assert!(
        seen.body
            .starts_with("user=alice groups=ops,dev authorization=true"),
        "{seen:?}"
    );

    // The attacker's table, from the meshed client over HTTP/1.1.
    let t = now();
    let ec = issuer.key(ES256).jwk.to_string();
    let head = |alg: &str| json!({"alg": alg, "kid": "one-ES256", "typ": "JWT"});
    let stranger = Issuer::new(ISS, "one", &[ES256]).unwrap();
    let invalid = r#"error="invalid_token""#;
    let cases: Vec<Case> = vec![
        (
            "every algorithm: ES256",
            "/whoami",
            bearer(&good),
            200,
            "user=alice",
        ),
        (
            "every algorithm: EdDSA",
            "/whoami",
            bearer(&issuer.sign(EdDSA, &claims(json!({}))).unwrap()),
            200,
            "user=alice",
        ),
        (
            "every algorithm: RS256",
            "/whoami",
            bearer(&issuer.sign(RS256, &claims(json!({}))).unwrap()),
            200,
            "user=alice",
        ),
        (
            "no token",
            "/whoami",
            vec![],
            401,
            r#"Bearer realm="pillion""#,
        ),
        (
            "Basic credentials",
            "/whoami",
            vec![("authorization", "Basic YTpi".into())],
            401,
            r#"Bearer realm="pillion""#,
        ),
        (
            "expired",
            "/whoami",
            bearer(
                &issuer
                    .sign(ES256, &claims(json!({"exp": t - 600})))
                    .unwrap(),
            ),
            401,
            "the token has expired",
        ),
        (
            "not yet valid",
            "/whoami",
            bearer(
                &issuer
                    .sign(ES256, &claims(json!({"nbf": t + 600})))
                    .unwrap(),
            ),
            401,
            "the token is not valid yet",
        ),
        (
            "wrong audience",
            "/whoami",
            bearer(
                &issuer
                    .sign(ES256, &claims(json!({"aud": "billing"})))
                    .unwrap(),
            ),
            401,
            "audience",
        ),
        (
            "wrong issuer",
            "/whoami",
            bearer(
                &issuer
                    .sign(ES256, &claims(json!({"iss": "https://evil.test"})))
                    .unwrap(),
            ),
            401,
            "issuer",
        ),
        (
            "tampered",
            "/whoami",
            bearer(&tampered(&good, &claims(json!({"sub": "root"})))),
            401,
            invalid,
        ),
        (
            "a stranger's key with our kid",
            "/whoami",
            bearer(&stranger.sign(ES256, &claims(json!({}))).unwrap()),
            401,
            invalid,
        ),
        (
            "alg none",
            "/whoami",
            bearer(&forged(&head("none"), &claims(json!({})), b"")),
            401,
            invalid,
        ),
        (
            "HS256 keyed with the public key",
            "/whoami",
            bearer(&forged(&head("HS256"), &claims(json!({})), ec.as_bytes())),
            401,
            invalid,
        ),
        ("garbage", "/whoami", bearer("not.a.token"), 401, invalid),
        (
            "two tokens",
            "/whoami",
            vec![
                ("authorization", format!("Bearer {good}")),
                ("authorization", "Bearer x".into()),
            ],
            400,
            r#"error="invalid_request""#,
        ),
        (
            "claims missing",
            "/whoami/orders",
            bearer(&good),
            403,
            r#"error="insufficient_scope""#,
        ),
        (
            "claims held",
            "/whoami/orders",
            bearer(
                &issuer
                    .sign(ES256, &claims(json!({"scope": "orders.read orders.write"})))
                    .unwrap(),
            ),
            200,
            "user=alice",
        ),
        (
            "open route, no token",
            "/whoami/open",
            vec![],
            200,
            "user= groups= authorization=false",
        ),
        (
            "open route, good token",
            "/whoami/open",
            bearer(&good),
            200,
            "user=alice groups=ops,dev",
        ),
        (
            "open route, bad token",
            "/whoami/open",
            bearer("not.a.token"),
            401,
            invalid,
        ),
        (
            "forged claim headers",
            "/whoami",
            vec![
                (
                    "authorization",
                    format!("Bearer {}", issuer.sign(ES256, &claims(json!({}))).unwrap()),
                ),
                ("x-user", "root".into()),
                ("x-groups", "admins".into()),
            ],
            200,
            "user=alice groups= authorization=true",
        ),
        (
            "forged claim headers, no token",
            "/whoami/open",
            vec![("x-user", "root".into()), ("x-groups", "admins".into())],
            200,
            "user= groups= authorization=false",
        ),
        (
            "cookie",
            "/whoami",
            vec![("cookie", format!("theme=dark; session={good}"))],
            200,
            "user=alice",
        ),
    ];
    let asked = cases.clone();
    let results = a
        .run(move || async move {
            let client = h1_client();
            let mut out = Vec::new();
            for (what, path, headers, _, _) in &asked {
                out.push((
                    *what,
                    ask(&client, VIP.parse().unwrap(), path, headers).await,
                ));
            }
            out
        })
        .unwrap();
    println!("| request | status | WWW-Authenticate |");
    for ((what, seen), (_, _, _, status, want)) in results.iter().zip(&cases) {
        println!("| {what} | {} | {} |", seen.status, seen.challenge);
        assert_eq!(seen.status, *status, "{what}: {seen:?}");
        let text = format!("{} {}", seen.challenge, seen.body);
        assert!(text.contains(want), "{what}: {seen:?}");
        if *status == 401 {
            assert!(
                seen.challenge.starts_with("Bearer realm=\"pillion\""),
                "{what}: {seen:?}"
            );
            assert!(
                !seen.error.is_empty(),
                "{what}: the proxy answered: {seen:?}"
            );
        }
        if *status != 200 {
            assert!(
                !seen.body.contains("user="),
                "{what}: the app saw it: {seen:?}"
            );
        }
    }
    for (what, seen) in &results {
        assert!(
            !seen.body.contains("root") && !seen.body.contains("admins"),
            "{what}: {seen:?}"
        );
    }
    // The server proxies counted each refusal of the table on the route it met.
    let refused = |route| -> f64 {
        w.sidecars[2..]
            .iter()
            .map(|s| {
                let m = s.metrics().unwrap();
                policy_actions(&m, "inbound", "8080", route, "token_refused")
            })
            .sum()
    };
    let table = |path: &str| cases.iter().filter(|c| c.1 == path && c.3 != 200).count() as f64;
    assert_eq!(refused("orders"), table("/whoami/orders"));
    assert_eq!(refused("open"), table("/whoami/open"));

    // HTTP/2 from the meshed client, and plaintext from an unmeshed pod straight to
    // a server pod: the same checks.
    let h2 = {
        let headers = bearer(&good);
        a.run(move || async move { ask(&h2_client(), VIP.parse().unwrap(), "/whoami", &headers).await })
            .unwrap()
    };
    assert_eq!(h2.status, 200, "{h2:?}");
    let b1 = SocketAddr::new(w.pods.b1.ipv4(), APP_PORT);
    let plain = {
        let headers = bearer(&good);
        w.pods
            .c
            .run(move || async move {
                (
                    ask(&h1_client(), b1, "/whoami", &headers).await,
                    ask(&h1_client(), b1, "/whoami", &[]).await,
                )
            })
            .unwrap()
    };
    assert_eq!((plain.0.status, plain.1.status), (200, 401), "{plain:?}");
    // Bytes that are not HTTP never reach the application on a port with tokens.
    let raw = w
        .pods
        .c
        .run(move || async move {
            let mut s = tokio::net::TcpStream::connect(b1).await.unwrap();
            s.write_all(b"\x16\x03\x01 not http at all\r\n\r\n")
                .await
                .unwrap();
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut out)).await;
            String::from_utf8_lossy(&out).to_string()
        })
        .unwrap();
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw:?}");

    // Rotation: the issuer publishes a new key and drops the old one; the new
    // key's tokens pass and the old key's stop, without restarting anything.
    let rotated = Issuer::new(ISS, "two", &[EdDSA]).unwrap();
    let new_token = rotated
        .sign(EdDSA, &rotated.claims("orders", json!({})))
        .unwrap();
    assert_eq!(
        until(&a, Duration::ZERO, "/whoami", &new_token, |_| true).status,
        401
    );
    jwks.answer(200, rotated.jwks());
    let started = Instant::now();
    let seen = until(&a, Duration::from_secs(60), "/whoami", &new_token, |s| {
        s.status == 200
    });
    let picked_up = started.elapsed();
    assert_eq!(seen.status, 200, "{seen:?}\n{}", w.dump());
    let old = until(&a, Duration::from_secs(10), "/whoami", &good, |s| {
        s.status == 401
    });
    assert_eq!(old.status, 401, "the removed key's tokens stop: {old:?}");
    println!("a rotated key was accepted {picked_up:?} after the issuer published it");

    // The issuer goes down: the last good keys stay in force.
    let fetched = jwks.fetched();
    jwks.answer(503, "down".into());
    let deadline = Instant::now() + Duration::from_secs(20);
    while jwks.fetched() < fetched + 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(jwks.fetched() >= fetched + 3, "the agent kept asking");
    let seen = until(&a, Duration::ZERO, "/whoami", &new_token, |_| true);
    assert_eq!(seen.status, 200, "{seen:?}");
    assert!(
        w.agent.logs().contains("the last good set stays in force"),
        "{}",
        w.agent.logs()
    );
}
