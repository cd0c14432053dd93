//! Route policy on loopback through real mesh TLS: retries and their budget,
//! timeouts, load balancing, outlier ejection, weighted splits and header matches,
//! client- and server-side rate limits, authorization, and route updates under load.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use pillion_proxy::OutlierConfig;
use pillion_proxy::Settings;
use serde_json::json;

/// An app failing `percent` % of requests with 503 at random.
fn flaky(percent: u32, seen: Arc<AtomicUsize>) -> Handler {
    handler(move |_req| {
        let seen = Arc::clone(&seen);
        async move {
            seen.fetch_add(1, Ordering::SeqCst);
            if rand::random::<u32>() % 100 < percent {
                text(503, "flaky")
            } else {
                text(200, "ok")
            }
        }
    })
}

/// An app that answers `status` while `broken`, else 200; `name` in `x-app`;
/// counts what it sees in `seen`.
fn switchable(
    name: &'static str,
    status: u16,
    broken: Arc<AtomicBool>,
    seen: Arc<AtomicUsize>,
) -> Handler {
    handler(move |_req| {
        let broken = Arc::clone(&broken);
        seen.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut r = text(
                if broken.load(Ordering::SeqCst) {
                    status
                } else {
                    200
                },
                name,
            );
            r.headers_mut()
                .insert("x-app", http::HeaderValue::from_static(name));
            r
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_turn_30_percent_failures_into_999_permille_success() {
    let seen = Arc::new(AtomicUsize::new(0));
    let routes = json!([{"name": "all", "retry": {
        "attempts": 10, "conditions": ["gateway-error"], "backoff_base": "1ms", "backoff_max": "5ms",
        "budget": {"ratio": 1.0, "min_per_second": 10, "window": "10s"}}}]);
    let fleet = Fleet::start(
        vec![(flaky(30, Arc::clone(&seen)), "v1")],
        routes,
        json!({}),
        Settings::default(),
    )
    .await;
    let results = load(fleet.outbound.addr, 2000, 8, "/").await;
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    let tries = seen.load(Ordering::SeqCst);
    println!("retries: {ok}/2000 succeeded with {tries} tries at the server");
    assert!(ok >= 1998, "only {ok} of 2000 succeeded");
    assert!(tries > 2000 + 400, "retries should have happened: {tries}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_backend_gets_retries_within_the_budget_and_clients_fail_fast() {
    let seen = Arc::new(AtomicUsize::new(0));
    let routes = json!([{"name": "all", "retry": {
        "attempts": 3, "conditions": ["5xx"], "backoff_base": "1ms", "backoff_max": "10ms",
        "budget": {"ratio": 0.2, "min_per_second": 5, "window": "10s"}}}]);
    let fleet = Fleet::start(
        vec![(flaky(100, Arc::clone(&seen)), "v1")],
        routes,
        json!({}),
        Settings::default(),
    )
    .await;
    let started = Instant::now();
    let results = load(fleet.outbound.addr, 500, 8, "/").await;
    let elapsed = started.elapsed();
    let tries = seen.load(Ordering::SeqCst);
    let retries = tries - 500;
    // Budget: 20 % of 500 requests + 5/s × 10 s, plus at most one racing try per task.
    let allowed = 100 + 50 + 8;
    println!("failing backend: {retries} retries (allowed {allowed}) in {elapsed:?}");
    assert!(results.iter().all(|(s, _)| *s == 503));
    assert!(
        retries <= allowed,
        "{retries} retries exceed the budget of {allowed}"
    );
    assert!(
        retries >= 100,
        "the budget should have been used: {retries}"
    );
    assert!(
        elapsed < Duration::from_secs(10),
        "clients waited {elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_per_try_timeouts_fire_on_time() {
    let routes = json!([
        {"name": "slow", "matches": [{"path": {"prefix": "/slow"}}], "timeout": "300ms"},
        {"name": "try", "matches": [{"path": {"prefix": "/try"}}], "per_try_timeout": "200ms"},
        {"name": "tries", "matches": [{"path": {"prefix": "/tries"}}], "per_try_timeout": "100ms",
         "timeout": "2s",
         "retry": {"attempts": 3, "conditions": ["gateway-error"], "backoff_base": "1ms", "backoff_max": "1ms"}}
    ]);
    let fleet = Fleet::start(
        vec![(named("sleepy", Duration::from_secs(2)), "v1")],
        routes,
        json!({}),
        Settings::default(),
    )
    .await;
    let client = h1_client();
    for (path, want_ms, code) in [
        ("/slow", 300.0, "timeout"),
        ("/try", 200.0, "per-try-timeout"),
        ("/tries", 300.0, "per-try-timeout"),
    ] {
        let started = Instant::now();
        let resp = client
            .request(get(fleet.outbound.addr, path))
            .await
            .unwrap();
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        println!("{path}: {} after {ms:.0} ms", resp.status());
        assert_eq!(resp.status(), 504, "{path}");
        assert_eq!(resp.headers()["pillion-error"], code, "{path}");
        assert!(
            (ms - want_ms).abs() <= want_ms * 0.2,
            "{path}: {ms:.0} ms, wanted {want_ms} ms ± 20 %"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_faster_of_two_endpoints_gets_most_requests() {
    let fleet = Fleet::start(
        vec![
            (named("fast", Duration::ZERO), "v1"),
            (named("slow", Duration::from_millis(50)), "v1"),
        ],
        json!([]),
        json!({}),
        Settings::default(),
    )
    .await;
    let results = load(fleet.outbound.addr, 400, 4, "/").await;
    let fast = results.iter().filter(|(_, a)| a == "fast").count();
    println!("balance: fast {fast}/400");
    assert!(results.iter().all(|(s, _)| *s == 200));
    assert!(fast >= 320, "the fast endpoint got only {fast} of 400");
}

/// Round robin, ejecting after `failures` in a row for `base` at first.
fn round_robin_ejecting(failures: u32, base: Duration) -> Settings {
    Settings {
        outlier: OutlierConfig {
            consecutive_failures: failures,
            base_ejection: base,
            ..OutlierConfig::default()
        },
        strategy: pillion_proxy::Strategy::RoundRobin,
        ..Settings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_is_ejected_and_returns_after_it_recovers() {
    let broken = Arc::new(AtomicBool::new(true));
    let sick = switchable("sick", 500, Arc::clone(&broken), Arc::default());
    let settings = round_robin_ejecting(5, Duration::from_secs(1));
    let fleet = Fleet::start(
        vec![(named("well", Duration::ZERO), "v1"), (sick, "v1")],
        json!([]),
        json!({}),
        settings,
    )
    .await;
    // Round robin: the sick one fails five times in a row within ten requests.
    let first = load(fleet.outbound.addr, 20, 1, "/").await;
    let failed = first.iter().filter(|(s, _)| *s == 500).count();
    assert_eq!(failed, 5, "{first:?}");
    let during = load(fleet.outbound.addr, 50, 2, "/").await;
    assert!(
        during.iter().all(|(s, a)| *s == 200 && a == "well"),
        "{during:?}"
    );
    broken.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let after = load(fleet.outbound.addr, 50, 2, "/").await;
    let back = after.iter().filter(|(_, a)| a == "sick").count();
    println!("ejection: {failed} failures, then 50 to the well one, then {back}/50 back");
    assert!(after.iter().all(|(s, _)| *s == 200));
    assert!(back >= 20, "the recovered endpoint got {back} of 50");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_goes_to_another_endpoint_than_the_one_that_just_failed() {
    // The failing endpoint answers at once, so by latency it looks the cheaper of
    // the two; without ejection to hide it, only where the retry goes decides.
    let sick = Arc::new(AtomicBool::new(true));
    let settings = Settings {
        outlier: OutlierConfig {
            consecutive_failures: 1_000_000,
            ..OutlierConfig::default()
        },
        ..Settings::default()
    };
    let routes = json!([{"name": "all", "retry": {
        "attempts": 2, "conditions": ["gateway-error"], "backoff_base": "1ms", "backoff_max": "1ms",
        "budget": {"ratio": 1.0, "min_per_second": 10, "window": "10s"}}}]);
    let fleet = Fleet::start(
        vec![
            (
                switchable("sick", 503, Arc::clone(&sick), Arc::default()),
                "v1",
            ),
            (named("well", Duration::from_millis(2)), "v1"),
        ],
        routes,
        json!({}),
        settings,
    )
    .await;
    let results = load(fleet.outbound.addr, 400, 4, "/").await;
    let failed = results.iter().filter(|(s, _)| *s != 200).count();
    println!("retry elsewhere: {failed} of 400 failed");
    assert_eq!(failed, 0, "{:?}", &results[..20.min(results.len())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_may_go_to_an_ejected_endpoint_which_answering_well_puts_back_in_service() {
    // B fails and is ejected for a minute; B recovers and A breaks. A first try
    // goes to A (B is out); its retry goes to B, the only other one, and B's good
    // answer ends its ejection: then A is ejected, and first tries go to B.
    let (a_broken, b_broken) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(true)),
    );
    let a_seen = Arc::new(AtomicUsize::new(0));
    let settings = round_robin_ejecting(3, Duration::from_secs(60));
    let routes = json!([{"name": "all", "retry": {
        "attempts": 2, "conditions": ["gateway-error"], "backoff_base": "1ms", "backoff_max": "1ms",
        "budget": {"ratio": 1.0, "min_per_second": 10, "window": "10s"}}}]);
    let fleet = Fleet::start(
        vec![
            (
                switchable("a", 503, Arc::clone(&a_broken), Arc::clone(&a_seen)),
                "v1",
            ),
            (
                switchable("b", 503, Arc::clone(&b_broken), Arc::default()),
                "v1",
            ),
        ],
        routes,
        json!({}),
        settings,
    )
    .await;
    // Round robin with retries: B fails three times in a row (each retried on A).
    let first = load(fleet.outbound.addr, 12, 1, "/").await;
    assert!(
        first.iter().all(|(s, a)| *s == 200 && a == "a"),
        "{first:?}"
    );
    b_broken.store(false, Ordering::SeqCst);
    a_broken.store(true, Ordering::SeqCst);
    let before = a_seen.load(Ordering::SeqCst);
    let after = load(fleet.outbound.addr, 50, 1, "/").await;
    let from_b = after.iter().filter(|(s, a)| *s == 200 && a == "b").count();
    let to_a = a_seen.load(Ordering::SeqCst) - before;
    println!("retry to the ejected: {from_b} of 50 answered by B, {to_a} tries at A");
    assert_eq!(from_b, 50, "{after:?}");
    // Round robin: A is tried every other request until its third failure in a row.
    assert!(to_a <= 4, "A was tried {to_a} times: B stayed ejected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_90_10_split_holds_and_a_header_selects_the_v2_subset() {
    let routes = json!([
        {"name": "canary", "matches": [{"headers": [{"name": "x-canary", "value": {"exact": "yes"}}]}],
         "backends": [{"subset": {"version": "v2"}}]},
        {"name": "split", "backends": [
            {"weight": 90, "subset": {"version": "v1"}},
            {"weight": 10, "subset": {"version": "v2"}}]}
    ]);
    let fleet = Fleet::start(
        vec![
            (named("one", Duration::ZERO), "v1"),
            (named("two", Duration::ZERO), "v2"),
        ],
        routes,
        json!({}),
        Settings::default(),
    )
    .await;
    let results = load(fleet.outbound.addr, 10_000, 16, "/").await;
    let two = results.iter().filter(|(_, a)| a == "two").count();
    let share = two as f64 / 100.0;
    println!("split: v2 got {share:.2} %");
    assert!(results.iter().all(|(s, _)| *s == 200));
    assert!((7.0..=13.0).contains(&share), "v2 share {share} %");

    let client = h1_client();
    for _ in 0..20 {
        let mut req = get(fleet.outbound.addr, "/");
        req.headers_mut()
            .insert("x-canary", http::HeaderValue::from_static("yes"));
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.headers()["x-app"], "two");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_side_rate_limit_holds_its_rate_and_says_so() {
    let routes =
        json!([{"name": "limited", "rate_limit": {"requests_per_second": 20, "burst": 5}}]);
    let fleet = Fleet::start(
        vec![(named("one", Duration::ZERO), "v1")],
        routes,
        json!({}),
        Settings::default(),
    )
    .await;
    let client = h1_client();
    let started = Instant::now();
    let (mut ok, mut limited) = (0u32, 0u32);
    let mut checked_headers = false;
    while started.elapsed() < Duration::from_secs(10) {
        let resp = client.request(get(fleet.outbound.addr, "/")).await.unwrap();
        match resp.status().as_u16() {
            200 => ok += 1,
            429 => {
                limited += 1;
                if !checked_headers {
                    let h = resp.headers();
                    assert_eq!(h["retry-after"], "1");
                    assert_eq!(
                        h["ratelimit-policy"],
                        "\"limited\";q=20;w=1;pillion-burst=5"
                    );
                    assert!(h["ratelimit"]
                        .to_str()
                        .unwrap()
                        .starts_with("\"limited\";r=0;t="));
                    checked_headers = true;
                }
            }
            other => panic!("unexpected status {other}"),
        }
        let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    println!("rate limit: {ok} allowed in 10 s (want 200 ± 10 %), {limited} refused");
    assert!((180..=220).contains(&ok), "{ok} allowed");
    assert!(limited > 100 && checked_headers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_identity_server_limit_limits_one_caller_not_another() {
    let inbound = json!({"ports": {"PORT": {"server": {"routes": [
        {"name": "per-caller", "rate_limit": {"requests_per_second": 1, "burst": 5, "key": "client_identity"}}
    ]}}}});
    // The inbound policy is keyed by the application port, known once the app runs.
    let app_handler = named("one", Duration::ZERO);
    let pki = Pki::new();
    let app = app(lo(1, 0), app_handler).await;
    let text_policy = inbound
        .to_string()
        .replace("PORT", &app.addr.port().to_string());
    let policy: serde_json::Value = serde_json::from_str(&text_policy).unwrap();
    let port = common_port().await;
    let endpoint = lo(40, port);
    let v = view(1, &[(endpoint, "v1")], true, json!([]), policy);
    let _inb = super::inbound(endpoint, app.addr, Some(pki.store(SERVER_ID)), &v).await;
    let greedy = outbound(client(Some(&pki.store(CLIENT_ID)), &v, Settings::default())).await;
    let polite = outbound(client(Some(&pki.store(OTHER_ID)), &v, Settings::default())).await;
    let greedy_results = load(greedy.addr, 20, 1, "/").await;
    let greedy_ok = greedy_results.iter().filter(|(s, _)| *s == 200).count();
    let polite_results = load(polite.addr, 5, 1, "/").await;
    println!(
        "per identity: greedy {greedy_ok}/20, polite {}/5",
        polite_results.iter().filter(|(s, _)| *s == 200).count()
    );
    assert!((5..=6).contains(&greedy_ok), "{greedy_results:?}");
    assert!(greedy_results.iter().any(|(s, _)| *s == 429));
    assert!(
        polite_results.iter().all(|(s, _)| *s == 200),
        "{polite_results:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_admits_allowed_identities_only() {
    let pki = Pki::new();
    let app = app(lo(1, 0), named("guarded", Duration::ZERO)).await;
    let policy = json!({"ports": {app.addr.port().to_string(): {
        "mode": "strict", "allow": [CLIENT_ID],
        "server": {"routes": [{"name": "admin", "matches": [{"path": {"prefix": "/admin"}}],
                               "allow": ["spiffe://cluster.local/ns/ops/*"]}]}}}});
    let port = common_port().await;
    let endpoint = lo(41, port);
    let v = view(1, &[(endpoint, "v1")], true, json!([]), policy);
    let _inb = super::inbound(endpoint, app.addr, Some(pki.store(SERVER_ID)), &v).await;
    let allowed = outbound(client(Some(&pki.store(CLIENT_ID)), &v, Settings::default())).await;
    let other = outbound(client(Some(&pki.store(OTHER_ID)), &v, Settings::default())).await;
    let client = h1_client();
    let (s, _) = read(client.request(get(allowed.addr, "/")).await.unwrap()).await;
    assert_eq!(s, 200);
    let resp = client.request(get(other.addr, "/")).await.unwrap();
    assert_eq!(resp.headers()["pillion-error"], "forbidden");
    assert_eq!(resp.status(), 403);
    // The route's own list replaces the port's: the client is not ops.
    let (s, body) = read(client.request(get(allowed.addr, "/admin/x")).await.unwrap()).await;
    assert_eq!(s, 403, "{body:?}");
    // A forged identity header does not help.
    let mut req = get(other.addr, "/");
    req.headers_mut().insert(
        "pillion-peer-identity",
        http::HeaderValue::from_static(CLIENT_ID),
    );
    let (s, _) = read(client.request(req).await.unwrap()).await;
    assert_eq!(s, 403);
    assert_eq!(
        app.requests(),
        1,
        "only the allowed request reached the app"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_change_applies_within_two_seconds_without_failing_requests() {
    let both = json!([{"name": "r", "backends": [{"subset": {"version": "v1"}}]}]);
    let fleet = Fleet::start(
        vec![
            (named("one", Duration::from_millis(5)), "v1"),
            (named("two", Duration::from_millis(5)), "v2"),
        ],
        both,
        json!({}),
        Settings::default(),
    )
    .await;
    let addr = fleet.outbound.addr;
    let running = Arc::new(AtomicBool::new(true));
    let r = Arc::clone(&running);
    let traffic = tokio::spawn(async move {
        let client = h1_client();
        let mut seen = Vec::new();
        while r.load(Ordering::SeqCst) {
            let resp = client.request(get(addr, "/")).await;
            let entry = match resp {
                Ok(resp) => {
                    let app = resp
                        .headers()
                        .get("x-app")
                        .map(|v| v.to_str().unwrap().to_string());
                    (
                        resp.status().as_u16(),
                        app.unwrap_or_default(),
                        Instant::now(),
                    )
                }
                Err(_) => (0, String::new(), Instant::now()),
            };
            seen.push(entry);
        }
        seen
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let switched = Instant::now();
    let v2 = json!([{"name": "r", "backends": [{"subset": {"version": "v2"}}]}]);
    fleet
        .outbound
        .views
        .install(fleet.view(2, v2, json!({})))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.store(false, Ordering::SeqCst);
    let seen = traffic.await.unwrap();
    assert!(seen.iter().all(|(s, _, _)| *s == 200), "a request failed");
    let last_old = seen
        .iter()
        .filter(|(_, a, _)| a == "one")
        .map(|(_, _, t)| *t)
        .max()
        .unwrap();
    let lag = last_old.saturating_duration_since(switched);
    println!(
        "route change: last v1 answer {lag:?} after the switch, {} requests",
        seen.len()
    );
    assert!(lag < Duration::from_secs(2));
    assert!(seen.iter().any(|(_, a, _)| a == "two"));
}
