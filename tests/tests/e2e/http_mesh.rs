//! HTTP through sidecars in namespaces with the real agent and its YAML routes:
//! retries and their budget, timeouts, peak-EWMA balancing, a 90/10 split and a
//! header-selected canary, rate limits (client side, and per caller on the server),
//! authorization with the verified identity header, outlier ejection and return,
//! a route change under load, WebSocket, 1 MiB bodies, keep-alive reuse, and the
//! proxy's 400/431 answers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use pillion_tests::http_mesh::{get, h1_client, load, one, rate, Answer, HttpWorld, VIP};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{sidecar_opts, testbin};

const CLIENT_ID: &str = "spiffe://cluster.local/ns/demo/sa/client";
const INTRUDER_ID: &str = "spiffe://cluster.local/ns/other/sa/intruder";

fn vip() -> std::net::SocketAddr {
    VIP.parse().unwrap()
}

const POLICY_ROUTES: &str = r#"- name: flaky
  matches: [{path: {prefix: /flaky}}]
  backends: [{subset: {version: v1}}]
  retry: {attempts: 10, conditions: [gateway-error], backoff_base: 1ms, backoff_max: 5ms,
          budget: {ratio: 1.0, min_per_second: 10, window: 10s}}
- name: fail
  matches: [{path: {prefix: /fail}}]
  backends: [{subset: {version: v1}}]
  retry: {attempts: 3, conditions: [5xx], backoff_base: 1ms, backoff_max: 10ms,
          budget: {ratio: 0.2, min_per_second: 5, window: 10s}}
- name: slow
  matches: [{path: {prefix: /slow}}]
  timeout: 300ms
- name: try
  matches: [{path: {prefix: /try}}]
  rewrite: {prefix: /slow}
  per_try_timeout: 200ms
- name: lb
  matches: [{path: {prefix: /lb}}]
- name: canary
  matches: [{path: {prefix: /split}, headers: [{name: x-canary, value: {exact: "yes"}}]}]
  backends: [{subset: {version: v2}}]
- name: split
  matches: [{path: {prefix: /split}}]
  backends: [{weight: 90, subset: {version: v1}}, {weight: 10, subset: {version: v2}}]
- name: limited
  matches: [{path: {prefix: /limited}}]
  rate_limit: {requests_per_second: 20, burst: 5}
"#;

#[test]
fn routes_retries_timeouts_balancing_splits_and_limits() {
    let w = HttpWorld::start(
        "http_policy",
        &testbin(),
        &sidecar_opts(),
        POLICY_ROUTES,
        "mode: permissive",
    )
    .unwrap();
    let a = w.pods.a.clone();
    let (b1, b2) = (&w.apps[0].stats, &w.apps[1].stats);

    // 30 % failures, retried: at least 99.9 % succeed.
    let flaky = a
        .run(|| async { load(vip(), 2000, 8, "/flaky", &[]).await })
        .unwrap();
    let ok = flaky.iter().filter(|r| r.status == 200).count();
    println!(
        "flaky: {ok}/2000 ok, {} tries at the server",
        b1.count("flaky")
    );
    assert!(ok >= 1998, "{ok} of 2000 succeeded\n{}", w.dump());

    // Always failing: retries stay within the budget, clients get 503 fast.
    let started = Instant::now();
    let fail = a
        .run(|| async { load(vip(), 500, 8, "/fail", &[]).await })
        .unwrap();
    let elapsed = started.elapsed();
    let retries = b1.count("fail") - 500;
    println!("fail: {retries} retries for 500 requests in {elapsed:?}");
    assert!(fail.iter().all(|r| r.status == 503));
    assert!(
        retries <= 100 + 50 + 8,
        "{retries} retries exceed the budget"
    );
    assert!(retries >= 100, "{retries}: the budget was not used");
    assert!(elapsed < Duration::from_secs(15), "{elapsed:?}");

    // Timeouts fire at their values.
    for (path, want, code) in [
        ("/slow", 300.0, "timeout"),
        ("/try", 200.0, "per-try-timeout"),
    ] {
        let (answer, ms) = a
            .run(move || async move {
                let started = Instant::now();
                let answer = one(&h1_client(), get(vip(), path, &[])).await;
                (answer, started.elapsed().as_secs_f64() * 1000.0)
            })
            .unwrap();
        println!(
            "{path}: {} ({}) after {ms:.0} ms",
            answer.status, answer.error
        );
        assert_eq!((answer.status, answer.error.as_str()), (504, code));
        assert!((ms - want).abs() <= want * 0.2, "{path}: {ms:.0} ms");
    }

    // One endpoint 50 ms slower: the other gets at least 80 %.
    b2.lb_delay_ms.store(50, Ordering::SeqCst);
    let lb = a
        .run(|| async { load(vip(), 400, 4, "/lb", &[]).await })
        .unwrap();
    let fast = lb.iter().filter(|r| r.app == "b1").count();
    println!("lb: fast endpoint {fast}/400");
    assert!(lb.iter().all(|r| r.status == 200));
    assert!(fast >= 320, "fast endpoint got {fast} of 400");

    // 90/10 within ±3 points over 10 000 requests; the header picks v2.
    let split = a
        .run(|| async { load(vip(), 10_000, 16, "/split", &[]).await })
        .unwrap();
    let v2 = split.iter().filter(|r| r.app == "b2").count() as f64 / 100.0;
    println!("split: v2 {v2:.2} %");
    assert!(split.iter().all(|r| r.status == 200));
    assert!((7.0..=13.0).contains(&v2), "v2 share {v2} %");
    let canary = a
        .run(|| async { load(vip(), 20, 2, "/split", &[("x-canary", "yes")]).await })
        .unwrap();
    assert!(canary.iter().all(|r| r.app == "b2"), "{canary:?}");

    // 20/s over 10 s, with the headers on refusals.
    let (allowed, refused, headers) = a
        .run(|| async {
            let client = h1_client();
            let started = Instant::now();
            let (mut ok, mut limited, mut headers) = (0u32, 0u32, None);
            while started.elapsed() < Duration::from_secs(10) {
                let resp = client.request(get(vip(), "/limited", &[])).await.unwrap();
                match resp.status().as_u16() {
                    200 => ok += 1,
                    429 => {
                        limited += 1;
                        if headers.is_none() {
                            let h = resp.headers();
                            headers =
                                Some(["retry-after", "ratelimit-policy", "ratelimit"].map(|n| {
                                    h.get(n)
                                        .and_then(|v| v.to_str().ok())
                                        .unwrap_or("")
                                        .to_string()
                                }));
                        }
                    }
                    _ => {}
                }
                let _ = resp.into_body().collect().await;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (ok, limited, headers)
        })
        .unwrap();
    println!("limited: {allowed} allowed in 10 s, {refused} refused, {headers:?}");
    assert!((180..=220).contains(&allowed), "{allowed} allowed");
    // Requests per second at 64 connections: meshed (a → both sidecars → b) and
    // direct (c → d, no sidecars), in the same run.
    let meshed = a
        .run(|| async { rate(vip(), "/rps", 64, Duration::from_secs(3)).await })
        .unwrap();
    let d = w.pods.d.addr_v4(pillion_tests::http_mesh::APP_PORT);
    let direct = w
        .pods
        .c
        .run(move || async move { rate(d, "/rps", 64, Duration::from_secs(3)).await })
        .unwrap();
    println!(
        "rps at 64 connections: direct {:.0}/s, through the mTLS pair {:.0}/s ({:.0} %)",
        direct.0,
        meshed.0,
        meshed.0 / direct.0 * 100.0
    );
    assert_eq!((meshed.1, direct.1), (0, 0), "errors under load");

    let [retry_after, policy, remaining] = headers.expect("a refusal");
    // The client proxy's per-route metrics saw all of it.
    let m = w.sidecars[0].metrics().unwrap();
    let out = |route| {
        [
            ("direction", "outbound"),
            ("service", "demo/web"),
            ("route", route),
        ]
    };
    assert_eq!(
        m.value("pillion_http_requests_total", &out("flaky")),
        2000.0
    );
    assert!(m.value("pillion_http_retries_total", &out("flaky")) >= 400.0);
    assert_eq!(
        m.value("pillion_http_retries_total", &out("fail")),
        retries as f64
    );
    assert_eq!(
        m.value("pillion_http_rate_limited_total", &out("limited")),
        f64::from(refused)
    );
    let mut ok_split = out("split").to_vec();
    ok_split.extend([("status_code", "200"), ("class", "2xx")]);
    assert_eq!(m.value("pillion_http_responses_total", &ok_split), 10_000.0);
    assert_eq!(
        m.value("pillion_http_request_duration_seconds_count", &out("lb")),
        400.0
    );
    assert_eq!(retry_after, "1");
    assert_eq!(policy, "\"limited\";q=20;w=1;pillion-burst=5");
    assert!(remaining.starts_with("\"limited\";r=0;t="), "{remaining}");
}

const FEATURE_ROUTES: &str = r#"- name: sick
  matches: [{path: {prefix: /sick}}]
- name: switch
  matches: [{path: {prefix: /switch}}]
  backends: [{subset: {version: v1}}]
- name: pinned
  matches: [{path: {prefix: /echo}}, {path: {prefix: /big}}, {path: {prefix: /limit}}]
  backends: [{subset: {version: v1}}]
"#;

const FEATURE_INBOUND: &str = r#"mode: permissive
allow: ["spiffe://cluster.local/ns/demo/*"]
routes:
  - name: per-caller
    matches: [{path: {prefix: /limit}}]
    allow: ["*"]
    rate_limit: {requests_per_second: 1, burst: 5, key: client_identity}
"#;

async fn body_of(req: hyper::Request<Full<Bytes>>) -> (u16, String) {
    let resp = h1_client().request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).to_string())
}

async fn raw(request: Vec<u8>) -> String {
    let mut s = TcpStream::connect(vip()).await.unwrap();
    s.write_all(&request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).to_string()
}

#[test]
fn identity_authorization_ejection_updates_and_streams() {
    let opts =
        sidecar_opts().proxy_args(["--outlier-base-ejection", "1s", "--balancer", "round-robin"]);
    let w = HttpWorld::start(
        "http_features",
        &testbin(),
        &opts,
        FEATURE_ROUTES,
        FEATURE_INBOUND,
    )
    .unwrap();
    let (a, x) = (w.pods.a.clone(), w.pods.x.clone());

    // HTTP/1.1 arrives as HTTP/1.1 with the verified identity; a forged one is replaced.
    let (status, body) = a
        .run(|| async {
            body_of(get(
                vip(),
                "/echo",
                &[("pillion-peer-identity", INTRUDER_ID)],
            ))
            .await
        })
        .unwrap();
    assert_eq!(status, 200, "{body}\n{}", w.dump());
    assert_eq!(
        body,
        format!("app=b1 version=HTTP/1.1 orig=false peer={CLIENT_ID} path=/echo")
    );
    // Another namespace is refused, forged header or not.
    const FORGED: &[(&str, &str)] = &[("pillion-peer-identity", CLIENT_ID)];
    for forged in [&[][..], FORGED] {
        let answer = x
            .run(move || async move { one(&h1_client(), get(vip(), "/echo", forged)).await })
            .unwrap();
        assert_eq!(
            (answer.status, answer.error.as_str()),
            (403, "forbidden"),
            "{answer:?}"
        );
    }
    // A gRPC caller gets the refusal as gRPC: x's own proxy turns the server proxy's
    // 403 into a trailers-only PERMISSION_DENIED (HTTP/2, prior knowledge).
    let grpc = pillion_tests::curl::to_service(
        &x,
        "/pkg.Service/Method",
        &[
            "--http2-prior-knowledge",
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "--data-binary",
            "@/dev/null",
        ],
    );
    assert_eq!(grpc.status, 200, "{grpc:?}");
    assert_eq!(grpc.header("grpc-status"), "7", "{grpc:?}");
    assert_eq!(grpc.header("content-type"), "application/grpc", "{grpc:?}");
    assert_eq!(grpc.header("pillion-error"), "forbidden", "{grpc:?}");
    assert!(grpc.body.is_empty(), "trailers-only: {grpc:?}");

    // A per-caller server limit (enforced by b1's proxy; the route pins b1): the
    // greedy caller is limited, the other is not.
    let greedy = a
        .run(|| async { load(vip(), 20, 1, "/limit", &[]).await })
        .unwrap();
    let polite = x
        .run(|| async { load(vip(), 5, 1, "/limit", &[]).await })
        .unwrap();
    let greedy_ok = greedy.iter().filter(|r| r.status == 200).count();
    println!(
        "per caller: greedy {greedy_ok}/20, polite {}/5",
        polite.iter().filter(|r| r.status == 200).count()
    );
    assert!((5..=6).contains(&greedy_ok), "{greedy:?}");
    assert!(polite.iter().all(|r| r.status == 200), "{polite:?}");

    // Ejection: b2 fails five times in a row, is ejected, then comes back.
    let b2 = Arc::clone(&w.apps[1].stats);
    b2.sick.store(true, Ordering::SeqCst);
    let first = a
        .run(|| async { load(vip(), 20, 1, "/sick", &[]).await })
        .unwrap();
    assert_eq!(
        first.iter().filter(|r| r.status == 500).count(),
        5,
        "{first:?}"
    );
    let during = a
        .run(|| async { load(vip(), 40, 2, "/sick", &[]).await })
        .unwrap();
    assert!(
        during.iter().all(|r| r.status == 200 && r.app == "b1"),
        "{during:?}"
    );
    b2.sick.store(false, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(1200));
    let after = a
        .run(|| async { load(vip(), 40, 2, "/sick", &[]).await })
        .unwrap();
    let back = after.iter().filter(|r| r.app == "b2").count();
    println!("ejection: back to b2 for {back}/40");
    assert!(
        after.iter().all(|r| r.status == 200) && back >= 15,
        "{after:?}"
    );
    let m = w.sidecars[0].metrics().unwrap();
    assert_eq!(
        m.value(
            "pillion_http_ejections_total",
            &[("direction", "outbound"), ("service", "demo/web")]
        ),
        1.0
    );
    // b1's inbound metrics carry the callers' identities and the 403s.
    let m = w.sidecars[2].metrics().unwrap();
    let port = pillion_tests::http_mesh::APP_PORT.to_string();
    let inbound = |peer: &'static str| {
        [
            ("direction", "inbound"),
            ("service", port.as_str()),
            ("peer", peer),
        ]
    };
    assert!(m.value("pillion_http_requests_total", &inbound(CLIENT_ID)) >= 20.0);
    let mut refused = inbound(INTRUDER_ID).to_vec();
    refused.push(("status_code", "403"));
    // Two HTTP refusals and the gRPC one: metrics keep the status the proxy decided.
    assert_eq!(m.value("pillion_http_responses_total", &refused), 3.0);

    // A route change in the agent's file applies within 2 s; nothing in flight fails.
    let running = Arc::new(AtomicBool::new(true));
    let r = Arc::clone(&running);
    let traffic = a
        .background(move || async move {
            let client = h1_client();
            let mut seen: Vec<(Answer, Instant)> = Vec::new();
            while r.load(Ordering::SeqCst) {
                seen.push((
                    one(&client, get(vip(), "/switch", &[])).await,
                    Instant::now(),
                ));
            }
            seen
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let changed = Instant::now();
    w.write_source(
        &FEATURE_ROUTES.replace(
            "[{subset: {version: v1}}]\n- name: pinned",
            "[{subset: {version: v2}}]\n- name: pinned",
        ),
        FEATURE_INBOUND,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(3000));
    running.store(false, Ordering::SeqCst);
    let seen = traffic.join().unwrap();
    let first_v2 = seen
        .iter()
        .find(|(r, _)| r.app == "b2")
        .map(|(_, t)| t.saturating_duration_since(changed));
    println!(
        "route change: {} requests, first v2 answer after {first_v2:?}",
        seen.len()
    );
    assert!(
        seen.iter().all(|(r, _)| r.status == 200),
        "a request failed during the change"
    );
    assert!(
        first_v2.is_some_and(|d| d < Duration::from_secs(2)),
        "{first_v2:?}\n{}",
        w.dump()
    );
    let last_v1 = seen
        .iter()
        .filter(|(r, _)| r.app == "b1")
        .map(|(_, t)| t.saturating_duration_since(changed))
        .max()
        .unwrap_or_default();
    assert!(
        last_v1 < Duration::from_secs(2),
        "v1 answered {last_v1:?} after the change"
    );

    // 1 MiB both ways on HTTP/1.1 and HTTP/2; keep-alive reuses the app connection.
    let b1 = Arc::clone(&w.apps[0].stats);
    let before = b1.counters.connections.load(Ordering::SeqCst);
    let sizes = a
        .run(|| async {
            let data = Bytes::from(vec![42u8; 1 << 20]);
            let mut sizes = Vec::new();
            let h2 =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .http2_only(true)
                    .build_http::<Full<Bytes>>();
            for client in [h1_client(), h2] {
                let mut req = get(vip(), "/big", &[]);
                *req.method_mut() = hyper::Method::POST;
                *req.body_mut() = Full::new(data.clone());
                let resp = client.request(req).await.unwrap();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                sizes.push((body.len(), body == data));
            }
            let client = h1_client();
            for _ in 0..50 {
                assert_eq!(one(&client, get(vip(), "/echo", &[])).await.status, 200);
            }
            sizes
        })
        .unwrap();
    assert_eq!(sizes, [(1 << 20, true), (1 << 20, true)]);
    let opened = b1.counters.connections.load(Ordering::SeqCst) - before;
    println!("keep-alive: {opened} new app connections for 52 requests");
    assert!(opened <= 2, "{opened} new connections at the app");

    // WebSocket echo through both sidecars.
    let echoed = a
        .run(|| async {
            use futures::{SinkExt, StreamExt};
            let tcp = TcpStream::connect(vip()).await.unwrap();
            let (mut ws, _) = tokio_tungstenite::client_async("ws://198.18.1.100/echo", tcp)
                .await
                .unwrap();
            let mut got = Vec::new();
            for i in 0..5 {
                ws.send(tokio_tungstenite::tungstenite::Message::text(format!(
                    "m{i}"
                )))
                .await
                .unwrap();
                let msg = ws.next().await.unwrap().unwrap();
                got.push(msg.into_text().unwrap().to_string());
            }
            got
        })
        .unwrap();
    assert_eq!(echoed, ["m0", "m1", "m2", "m3", "m4"]);

    // Malformed and oversize requests: 400 and 431, and the proxy keeps serving.
    let (bad, big, after) = a
        .run(|| async {
            let bad = raw(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n".to_vec()).await;
            let mut big = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
            big.extend(std::iter::repeat_n(b'a', 100 * 1024));
            big.extend_from_slice(b"\r\n\r\n");
            let big = raw(big).await;
            let after = one(&h1_client(), get(vip(), "/echo", &[])).await;
            (bad, big, after)
        })
        .unwrap();
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
    assert!(big.starts_with("HTTP/1.1 431"), "{big}");
    assert_eq!(after.status, 200);
}

/// Inbound TCP connections b1's proxy has accepted so far.
fn inbound_opened(w: &HttpWorld) -> f64 {
    w.sidecars[2].metrics().unwrap().value(
        "pillion_tcp_connections_opened_total",
        &[("direction", "inbound")],
    )
}

#[test]
fn mesh_protocol_keeps_http1_by_default_or_multiplexes_it_on_http2() {
    for (mode, multiplexed) in [("keep", false), ("http2", true)] {
        let opts = sidecar_opts().proxy_args(["--mesh-protocol", mode]);
        let w = HttpWorld::start(
            &format!("http_wire_{mode}"),
            &testbin(),
            &opts,
            FEATURE_ROUTES,
            FEATURE_INBOUND,
        )
        .unwrap();
        let a = w.pods.a.clone();
        // Either way the app sees its client's HTTP/1.1, without the hop's header.
        let (status, body) = a
            .run(|| async { body_of(get(vip(), "/echo", &[])).await })
            .unwrap();
        assert_eq!(status, 200, "{mode}: {body}\n{}", w.dump());
        assert_eq!(
            body,
            format!("app=b1 version=HTTP/1.1 orig=false peer={CLIENT_ID} path=/echo"),
            "{mode}"
        );
        let before = inbound_opened(&w);
        let answers = a
            .run(|| async { load(vip(), 400, 16, "/echo", &[]).await })
            .unwrap();
        assert!(
            answers.iter().all(|r| r.status == 200 && r.app == "b1"),
            "{mode}: {answers:?}"
        );
        let opened = inbound_opened(&w) - before;
        println!(
            "mesh protocol {mode}: {opened} new mesh connections for 400 requests from 16 callers"
        );
        if multiplexed {
            // One HTTP/2 connection (made by the first request) carries everything.
            assert_eq!(opened, 0.0, "{mode}\n{}", w.dump());
        } else {
            // Pooled HTTP/1.1: more connections for concurrent requests, then reuse.
            assert!(
                (1.0..=16.0).contains(&opened),
                "{mode}: {opened}\n{}",
                w.dump()
            );
        }
    }
}
