//! Route details on loopback: method and regex matches, header edits both ways,
//! prefix rewrite; retried request bodies (up to 64 KiB, not beyond, and only for
//! idempotent methods unless the route allows); endpoint changes under load.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use pillion_proxy::Settings;
use serde_json::json;

/// Reports method, path, query and the headers the test cares about.
fn mirror() -> Handler {
    handler(|req: Request<hyper::body::Incoming>| async move {
        let h = |n: &str| {
            req.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_string()
        };
        let text = format!(
            "{} {} x-route={} x-debug={} via={}",
            req.method(),
            req.uri(),
            h("x-route"),
            h("x-debug"),
            h("via")
        );
        let mut r = text_response(text);
        r.headers_mut()
            .insert("server", http::HeaderValue::from_static("app/1.0"));
        r
    })
}

fn text_response(body: String) -> http::Response<AppBody> {
    text(200, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matches_edits_and_rewrites() {
    let routes = json!([
        {"name": "items", "matches": [{"path": {"regex": "/v[0-9]+/items/[^/]+"}, "method": "GET"}],
         "request_headers": {"set": {"x-route": "items"}, "add": {"via": "pillion"}, "remove": ["x-debug"]},
         "response_headers": {"remove": ["server"], "set": {"x-served-by": "items"}}},
        {"name": "legacy", "matches": [{"path": {"prefix": "/old"}}], "rewrite": {"prefix": "/new"}}
    ]);
    let f = Fleet::start(
        vec![(mirror(), "v1")],
        routes,
        json!({}),
        Settings::default(),
    )
    .await;
    let client = h1_client();

    let mut req = get(f.outbound.addr, "/v2/items/42?x=1");
    req.headers_mut()
        .insert("x-debug", http::HeaderValue::from_static("1"));
    let resp = client.request(req).await.unwrap();
    assert!(!resp.headers().contains_key("server"));
    assert_eq!(resp.headers()["x-served-by"], "items");
    let (_, body) = read(resp).await;
    assert_eq!(
        body,
        "GET /v2/items/42?x=1 x-route=items x-debug=- via=pillion"
    );

    // POST does not match the GET-only route: no edits.
    let req = Request::post(format!("http://{}/v2/items/42", f.outbound.addr))
        .header("x-debug", "1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.headers()["server"], "app/1.0");
    let (_, body) = read(resp).await;
    assert_eq!(body, "POST /v2/items/42 x-route=- x-debug=1 via=-");

    let (_, body) = read(
        client
            .request(get(f.outbound.addr, "/old/a/b?q=2"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(body, "GET /new/a/b?q=2 x-route=- x-debug=- via=-");
    let (_, body) = read(
        client
            .request(get(f.outbound.addr, "/older"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        body, "GET /older x-route=- x-debug=- via=-",
        "prefixes match whole segments"
    );
}

/// Fails the first try of every request body it has not seen yet; counts tries.
fn fails_first(tries: Arc<AtomicUsize>) -> Handler {
    let seen = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    handler(move |req: Request<hyper::body::Incoming>| {
        let (tries, seen) = (Arc::clone(&tries), Arc::clone(&seen));
        async move {
            tries.fetch_add(1, Ordering::SeqCst);
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let first = seen.lock().unwrap().insert(body.clone());
            if first {
                text(503, "try again")
            } else {
                text(200, format!("len={}", body.len()))
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_up_to_64_kib_are_retried() {
    let tries = Arc::new(AtomicUsize::new(0));
    let routes = json!([
        {"name": "puts", "matches": [{"method": "PUT"}],
         "retry": {"attempts": 2, "conditions": ["503"], "backoff_base": "1ms", "backoff_max": "1ms"}},
        {"name": "posts", "matches": [{"method": "POST"}, {"path": {"prefix": "/post-ok"}}],
         "retry": {"attempts": 2, "conditions": ["503"], "backoff_base": "1ms", "backoff_max": "1ms"}}
    ]);
    let f = Fleet::start(
        vec![(fails_first(Arc::clone(&tries)), "v1")],
        routes,
        json!({}),
        Settings::default(),
    )
    .await;
    let client = h1_client();
    let send = |method: http::Method, path: &str, size: usize, fill: u8| {
        Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", f.outbound.addr))
            .body(Full::new(Bytes::from(vec![fill; size])))
            .unwrap()
    };
    // 64 KiB: recorded and sent again.
    let (s, body) = read(
        client
            .request(send(http::Method::PUT, "/", 64 * 1024, 1))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, &body[..]), (200, &b"len=65536"[..]));
    assert_eq!(tries.swap(0, Ordering::SeqCst), 2);
    // One byte more: sent once, the 503 comes back.
    let (s, _) = read(
        client
            .request(send(http::Method::PUT, "/", 64 * 1024 + 1, 2))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 503);
    assert_eq!(tries.swap(0, Ordering::SeqCst), 1);
    // POST is not idempotent: not retried, even on a route with retries.
    let (s, _) = read(
        client
            .request(send(http::Method::POST, "/", 10, 3))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 503);
    assert_eq!(tries.swap(0, Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_can_leave_and_join_under_load_without_failures() {
    let f = Fleet::start(
        vec![
            (named("one", Duration::from_millis(2)), "v1"),
            (named("two", Duration::from_millis(2)), "v1"),
        ],
        json!([]),
        json!({}),
        Settings::default(),
    )
    .await;
    let addr = f.outbound.addr;
    let running = Arc::new(AtomicBool::new(true));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let r = Arc::clone(&running);
        workers.push(tokio::spawn(async move {
            let client = h1_client();
            let mut seen = Vec::new();
            while r.load(Ordering::SeqCst) {
                let resp = client.request(get(addr, "/")).await.unwrap();
                let app = resp
                    .headers()
                    .get("x-app")
                    .map(|v| v.to_str().unwrap().to_string());
                seen.push((resp.status().as_u16(), app.unwrap_or_default()));
                let _ = resp.into_body().collect().await;
            }
            seen
        }));
    }
    let only_one = |version| {
        let eps = [(f.endpoints[0].0, "v1")];
        view(version, &eps, true, json!([]), json!({}))
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    f.outbound.views.install(only_one(2)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    f.outbound
        .views
        .install(f.view(3, json!([]), json!({})))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.store(false, Ordering::SeqCst);
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap());
    }
    println!("membership changes: {} requests", all.len());
    assert!(all.iter().all(|(s, _)| *s == 200), "a request failed");
    assert!(all.iter().any(|(_, a)| a == "two"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_to_one_endpoint_stays_there_with_the_routes_policy() {
    let routes = json!([{"name": "all", "backends": [{"subset": {"version": "v1"}}],
        "request_headers": {"set": {"x-route": "all"}}}]);
    let f = Fleet::start(
        vec![(mirror(), "v1"), (named("two", Duration::ZERO), "v2")],
        routes,
        json!({}),
        Settings::default(),
    )
    .await;
    // Aimed at the v2 endpoint's own address: the split (v1 only) does not apply.
    let direct = f.outbound_to(f.endpoints[1].0).await;
    let client = h1_client();
    for _ in 0..10 {
        let resp = client.request(get(direct.addr, "/")).await.unwrap();
        assert_eq!(resp.headers()["x-app"], "two");
    }
    // Aimed at v1's address: its route policy (header edit) still applies.
    let direct = f.outbound_to(f.endpoints[0].0).await;
    let (_, body) = read(client.request(get(direct.addr, "/p")).await.unwrap()).await;
    assert_eq!(body, "GET /p x-route=all x-debug=- via=-");
}
