//! The gateway role at the edge, in namespaces with the real agent: the proxy
//! binary in a pod of its own without interception, TLS with real server
//! certificates (a CA made in the test) picked by SNI, HTTP/2 and HTTP/1.1 by ALPN,
//! hosts and paths routed with the mesh's route model into strict (mTLS only)
//! servers as the gateway's own SPIFFE identity; then what a client outside must
//! not get: a host the connection's certificate does not cover (421), a name no
//! certificate covers (no handshake), a host or path nobody serves (404), plaintext
//! (308 to HTTPS), a forged identity header, a missing, wrong or tampered token
//! (401/403), too many requests (429). All asked with curl, as a user would.

use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm::ES256;
use pillion::local::{Pod, Process};
use pillion_testkit::jwt::{tampered, Issuer};
use pillion_testkit::pki::EdgeCert;
use pillion_tests::curl::Seen;
use pillion_tests::http_mesh::{source_yaml, HttpWorld};
use pillion_tests::mesh::mesh_sidecar_opts;
use serde_json::json;

use crate::common::{gateway_cert_dir, raw_exchange, sidecar_opts, testbin, ALL_ROUTES};

const SHOP: &str = "shop.pillion.test";
const OTHER: &str = "other.pillion.test";
const HTTPS_PORT: u16 = 8443;
const HTTP_PORT: u16 = 8081;
const ISS: &str = "https://issuer.test";
/// API keys of the `api.` host's plans: `free` (3 a day) and `gold`.
const ACME_KEY: &str = "acme-4f1c2e9b-secret";
const BETA_KEY: &str = "beta-77d0a1c3-secret";

fn sha256_hex(text: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, text.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The gateway workload, put first in the agent's source.
fn gateway_workload(jwks: &str) -> String {
    let acme = sha256_hex(ACME_KEY);
    let beta = sha256_hex(BETA_KEY);
    format!(
        r#"  - name: edge
    namespace: edge
    token: edge-token-http
    gateway:
      hosts:
        - hostnames: [{SHOP}, "*.{SHOP}"]
          jwt:
            required: false
            providers:
              - issuer: {ISS}
                audiences: [shop]
                jwks: '{jwks}'
                claim_headers: {{sub: x-user}}
          server_routes:
            - name: orders
              matches: [{{path: {{prefix: /orders}}}}]
              claims: {{scope: [orders.read]}}
            - name: limited
              matches: [{{path: {{prefix: /limited}}}}]
              rate_limit: {{requests_per_second: 0.01, burst: 2}}
          routes:
            - name: web
              matches: [{{path: {{prefix: /echo}}}}, {{path: {{prefix: /limited}}}}]
              backends: [{{service: demo/web, port: 80}}]
            - name: v2
              matches: [{{path: {{prefix: /v2}}}}]
              rewrite: {{prefix: /echo}}
              backends: [{{service: demo/web, port: 80, subset: {{version: v2}}}}]
            - name: orders
              matches: [{{path: {{prefix: /orders}}}}]
              rewrite: {{prefix: /whoami}}
              backends: [{{service: demo/web, port: 80}}]
        - hostnames: [api.{SHOP}]
          api_keys:
            id_header: x-api-key-id
            plans:
              - name: free
                rate_limit: {{requests_per_second: 0.01, burst: 100}}
                quota: {{requests: 3, per: day}}
              - name: gold
            keys:
              - {{id: acme, sha256: {acme}, plan: free}}
              - {{id: beta, sha256: {beta}, plan: gold}}
          routes:
            - name: api
              matches: [{{path: {{prefix: /}}}}]
              backends: [{{service: demo/web, port: 80}}]
        - hostnames: [{OTHER}]
          routes:
            - name: other
              matches: [{{path: {{prefix: /}}}}]
              rewrite: {{prefix: /echo/}}
              backends: [{{service: demo/web, port: 80, subset: {{version: v1}}}}]
"#
    )
}

/// curl from `pod`: `url` with `flags`, the gateway's name resolved to `gw`.
fn curl(pod: &Pod, gw: &str, ca: &str, url: &str, flags: &[&str]) -> Seen {
    let mut args: Vec<String> = ["curl", "-sS", "-i", "--max-time", "10", "--cacert", ca]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for name in [
        SHOP,
        OTHER,
        "www.shop.pillion.test",
        "api.shop.pillion.test",
        "nobody.pillion.test",
    ] {
        for port in [HTTPS_PORT, HTTP_PORT] {
            args.push("--resolve".into());
            args.push(format!("{name}:{port}:{gw}"));
        }
    }
    args.extend(flags.iter().map(|s| s.to_string()));
    args.push(url.to_string());
    Seen::of(&pod.exec(&args).expect("curl runs"))
}

/// Writes one certificate directory (`tls.crt`, `tls.key` 0600), owned by the proxy user.
fn cert_dir(root: &std::path::Path, name: &str, cert: &EdgeCert) -> std::path::PathBuf {
    gateway_cert_dir(root, name, &cert.chain_pem, &cert.key_pem)
}

#[test]
fn the_gateway_terminates_tls_routes_by_host_and_enters_the_mesh_as_itself() {
    let issuer = Issuer::new(ISS, "gw", &[ES256]).unwrap();
    let jwks = issuer.jwks();
    let source = |pods: &pillion_tests::http_mesh::HttpPods| {
        // The servers take mesh TLS only: every answer below came over mTLS.
        source_yaml(pods, ALL_ROUTES, "mode: strict\n").replacen(
            "workloads:\n",
            &format!("workloads:\n{}", gateway_workload(&jwks)),
            1,
        )
    };
    let w = HttpWorld::start_with_source("gw", &testbin(), &sidecar_opts(), source, &[])
        .expect("world");

    // Two certificates from one CA: one for the shop (and its subdomains), one for
    // the other host.
    let shop_cert = EdgeCert::new("edge test CA", &[SHOP, "*.shop.pillion.test"]).unwrap();
    let ca_path = w.dir.write("edge-ca.pem", &shop_cert.ca_pem).unwrap();
    let other_cert = EdgeCert::new("other CA", &[OTHER]).unwrap();
    let both_cas = w
        .dir
        .write(
            "both-cas.pem",
            &format!("{}{}", shop_cert.ca_pem, other_cert.ca_pem),
        )
        .unwrap();
    let shop_dir = cert_dir(w.dir.path(), "shop-tls", &shop_cert);
    let other_dir = cert_dir(w.dir.path(), "other-tls", &other_cert);

    let gw_pod = w.world.pod("gw").unwrap();
    let token = w.dir.write("gw.token", "edge-token-http").unwrap();
    let opts = mesh_sidecar_opts(
        sidecar_opts(),
        w.agent.addr(),
        w.agent.anchors(),
        &token,
        "edge",
        "edge",
    )
    .proxy_args([
        "--gateway-https".to_string(),
        format!("0.0.0.0:{HTTPS_PORT}"),
        "--gateway-http".into(),
        format!("0.0.0.0:{HTTP_PORT}"),
        "--gateway-redirect-port".into(),
        HTTPS_PORT.to_string(),
        "--detect-timeout".into(),
        "1s".into(),
        "--gateway-certs".into(),
        format!("{},{}", shop_dir.display(), other_dir.display()),
    ]);
    let gateway: Process = gw_pod.spawn(opts.proxy_cmd()).expect("the gateway starts");
    let gw = gw_pod.ipv4().to_string();
    let client = &w.pods.c; // no sidecar: a client outside the mesh
    let ca = ca_path.display().to_string();
    let dump = || format!("--- gateway\n{}\n{}", gateway.logs(), w.dump());
    let shop = |path: &str, flags: &[&str]| {
        curl(
            client,
            &gw,
            &ca,
            &format!("https://{SHOP}:{HTTPS_PORT}{path}"),
            flags,
        )
    };

    // Ready once its view arrived: the first answer from the mesh.
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        let seen = shop("/echo/ready", &[]);
        if seen.status == 200 || Instant::now() > deadline {
            break seen;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(first.status, 200, "{first:?}\n{}", dump());

    // HTTP/2 by ALPN, and HTTP/1.1; the server's proxy saw the gateway's identity.
    let h2 = shop("/echo/a", &["--http2"]);
    assert_eq!((h2.version.as_str(), h2.status), ("HTTP/2", 200), "{h2:?}");
    assert!(
        h2.body
            .contains("peer=spiffe://cluster.local/ns/edge/sa/edge"),
        "{h2:?}"
    );
    let h1 = shop("/echo/b", &["--http1.1"]);
    assert_eq!(
        (h1.version.as_str(), h1.status),
        ("HTTP/1.1", 200),
        "{h1:?}"
    );
    // The application is asked in HTTP/1.1 whatever the visitor spoke, except gRPC,
    // which only runs on HTTP/2.
    assert!(h2.body.contains("version=HTTP/1.1"), "{h2:?}");
    let grpc = shop(
        "/echo/pkg.Service/Call",
        &[
            "--http2",
            "-H",
            "content-type: application/grpc",
            "--data-binary",
            "@/dev/null",
        ],
    );
    assert_eq!(grpc.status, 200, "{grpc:?}");
    assert!(grpc.body.contains("version=HTTP/2.0"), "{grpc:?}");

    // A client's claim to be a mesh identity never reaches the application.
    let forged = shop(
        "/echo/c",
        &[
            "-H",
            "pillion-peer-identity: spiffe://cluster.local/ns/demo/sa/client",
        ],
    );
    assert!(
        forged
            .body
            .contains("peer=spiffe://cluster.local/ns/edge/sa/edge path")
            && !forged.body.contains("ns/demo/sa/client"),
        "{forged:?}"
    );

    // A route to a subset, with a rewrite: only v2 answers.
    for _ in 0..5 {
        let v2 = shop("/v2/x", &[]);
        assert!(
            v2.body.contains("app=b2") && v2.body.contains("path=/echo/x"),
            "{v2:?}"
        );
    }

    // A wildcard name: the certificate's and the host's.
    let www = curl(
        client,
        &gw,
        &ca,
        &format!("https://www.shop.pillion.test:{HTTPS_PORT}/echo/w"),
        &[],
    );
    assert_eq!(www.status, 200, "{www:?}");

    // SNI picks the other host's certificate (curl verifies it against its CA).
    let other_url = format!("https://{OTHER}:{HTTPS_PORT}/hello");
    let other = curl(
        client,
        &gw,
        &both_cas.display().to_string(),
        &other_url,
        &[],
    );
    assert_eq!(other.status, 200, "{other:?}");
    assert!(
        other.body.contains("app=b1") && other.body.contains("path=/echo/hello"),
        "{other:?}"
    );

    // A host the connection's certificate does not cover: 421, never served.
    let misdirected = shop("/echo/m", &["-H", &format!("Host: {OTHER}")]);
    assert_eq!(misdirected.status, 421, "{misdirected:?}");
    assert_eq!(misdirected.header("pillion-error"), "misdirected");

    // A name no certificate covers: no handshake at all (curl: TLS error).
    let nobody = curl(
        client,
        &gw,
        &ca,
        &format!("https://nobody.pillion.test:{HTTPS_PORT}/echo"),
        &[],
    );
    assert_eq!(nobody.status, 0, "{nobody:?}");
    assert_ne!(nobody.exit, 0, "{nobody:?}");

    // Around TLS: a connection that never says hello is closed at the handshake
    // deadline; plaintext HTTP on the TLS port gets no HTTP answer at all.
    let tls_port = std::net::SocketAddr::new(gw_pod.ipv4(), HTTPS_PORT);
    let started = Instant::now();
    let silent = raw_exchange(client, tls_port, Duration::ZERO, Vec::new()).unwrap();
    assert!(silent.is_empty(), "{silent:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed at the deadline"
    );
    let plain_head = format!("GET /echo/x HTTP/1.1\r\nHost: {SHOP}\r\n\r\n").into_bytes();
    let plaintext = raw_exchange(client, tls_port, Duration::ZERO, plain_head).unwrap();
    assert!(!plaintext.contains("HTTP/1.1"), "{plaintext:?}");

    // A path no route of the host matches: 404, sent nowhere.
    let nothing = shop("/nothing/here", &[]);
    assert_eq!(
        (nothing.status, nothing.header("pillion-error")),
        (404, "not-found"),
        "{nothing:?}"
    );

    // Plaintext: a redirect to the same host and target over HTTPS.
    let plain = curl(
        client,
        &gw,
        &ca,
        &format!("http://{SHOP}:{HTTP_PORT}/echo/p?q=1"),
        &[],
    );
    assert_eq!(plain.status, 308, "{plain:?}");
    assert_eq!(
        plain.header("location"),
        format!("https://{SHOP}:{HTTPS_PORT}/echo/p?q=1")
    );
    assert!(
        !plain.body.contains("app="),
        "nothing served in the clear: {plain:?}"
    );

    // End-user tokens at the edge.
    let read = issuer
        .sign(
            ES256,
            &issuer.claims("shop", json!({"scope": "orders.read"})),
        )
        .unwrap();
    let no_scope = issuer
        .sign(ES256, &issuer.claims("shop", json!({"scope": "profile"})))
        .unwrap();
    let wrong_aud = issuer
        .sign(
            ES256,
            &issuer.claims("bank", json!({"scope": "orders.read"})),
        )
        .unwrap();
    let forged_claims = tampered(
        &no_scope,
        &issuer.claims("shop", json!({"scope": "orders.read"})),
    );
    let bearer = |t: &str| format!("Authorization: Bearer {t}");
    let missing = shop("/orders/1", &[]);
    assert_eq!(missing.status, 401, "{missing:?}");
    assert!(
        missing.header("www-authenticate").starts_with("Bearer"),
        "{missing:?}"
    );
    for (token, status) in [(&no_scope, 403), (&wrong_aud, 401), (&forged_claims, 401)] {
        let seen = shop("/orders/1", &["-H", &bearer(token)]);
        assert_eq!(seen.status, status, "{seen:?}");
    }
    let ok = shop(
        "/orders/1",
        &["-H", &bearer(&read), "-H", "x-user: mallory"],
    );
    assert_eq!(ok.status, 200, "{ok:?}");
    assert!(
        ok.body.contains("user=alice "),
        "the claim, never the client's header: {ok:?}"
    );

    // A server-side limit at the edge: the burst, then 429 with its headers.
    let statuses: Vec<u16> = (0..3).map(|_| shop("/limited/x", &[]).status).collect();
    assert_eq!(statuses, [200, 200, 429], "{}", dump());
    let limited = shop("/limited/x", &[]);
    assert_eq!(limited.status, 429);
    assert!(
        !limited.header("ratelimit-policy").is_empty(),
        "{limited:?}"
    );

    // API keys and usage plans: no key, a wrong key, the free plan's quota, and
    // another key's own count; the application sees the key's id, never the key.
    let api = |key: Option<&str>| {
        let url = format!("https://api.shop.pillion.test:{HTTPS_PORT}/headers/x");
        let header = key.map(|k| format!("x-api-key: {k}"));
        let mut flags = vec![
            "-H",
            "x-api-key-id: forged",
            "-H",
            "x-forwarded-for: 192.0.2.66",
        ];
        if let Some(h) = &header {
            flags.extend(["-H", h.as_str()]);
        }
        curl(client, &gw, &ca, &url, &flags)
    };
    let none = api(None);
    assert_eq!(
        (none.status, none.header("pillion-error")),
        (401, "missing-api-key"),
        "{none:?}"
    );
    assert_eq!(
        none.header("www-authenticate"),
        "ApiKey header=\"x-api-key\""
    );
    let wrong = api(Some("acme-4f1c2e9b-SECRET"));
    assert_eq!(
        (wrong.status, wrong.header("pillion-error")),
        (401, "invalid-api-key"),
        "{wrong:?}"
    );
    for _ in 0..3 {
        let ok = api(Some(ACME_KEY));
        assert_eq!(ok.status, 200, "{ok:?}");
        assert!(ok.body.contains("x-api-key-id=acme"), "{ok:?}");
        // The gateway's own account of the visitor, never the visitor's.
        let visitor = format!("x-forwarded-for={}", w.pods.c.ipv4());
        assert!(ok.body.contains(&visitor), "{ok:?}");
        assert!(
            ok.body.contains("x-forwarded-proto=https") && !ok.body.contains("192.0.2.66"),
            "{ok:?}"
        );
        assert!(
            !ok.body.contains("forged") && !ok.body.contains("secret"),
            "{ok:?}"
        );
    }
    let spent = api(Some(ACME_KEY));
    assert_eq!(
        (spent.status, spent.header("pillion-error")),
        (429, "over-quota"),
        "{spent:?}"
    );
    assert_eq!(
        spent.header("ratelimit-policy"),
        "\"free-quota\";q=3;w=86400"
    );
    assert!(
        spent
            .header("ratelimit")
            .starts_with("\"free-quota\";r=0;t="),
        "{spent:?}"
    );
    assert!(spent.header("retry-after").parse::<u64>().unwrap() <= 86_400);
    let gold = api(Some(BETA_KEY));
    assert_eq!(gold.status, 200, "another key, another plan: {gold:?}");

    // Its TCP counters carry their own direction.
    let metrics = pillion::local::metrics::scrape(&gw_pod, 15020).expect("gateway metrics");
    let opened = metrics.value(
        "pillion_tcp_connections_opened_total",
        &[("direction", "gateway")],
    );
    assert!(opened >= 20.0, "gateway connections counted: {opened}");
    let key = |key: &str, outcome: &str| {
        metrics.value(
            "pillion_gateway_api_key_requests_total",
            &[("key", key), ("outcome", outcome)],
        )
    };
    assert_eq!(
        (
            key("acme", "allowed"),
            key("acme", "over_quota"),
            key("beta", "allowed")
        ),
        (3.0, 1.0, 1.0)
    );
    assert_eq!((key("-", "missing"), key("-", "unknown")), (1.0, 1.0));
}
