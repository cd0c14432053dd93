//! A service port's circuit breaker through sidecars in namespaces with the real
//! agent: with `max_requests: 2`, two slow requests are in flight and every other
//! concurrent one is answered `503 overflow` at once by the caller's proxy, never
//! reaching the service; places come back when the answers end, and the refusals
//! are counted. With `max_connections: 2, max_pending_requests: 2`, two requests
//! are sent, two wait for their connections and are sent when those come back,
//! and the rest are refused at once.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pillion_tests::http_mesh::{
    get, h1_client, load, one, policy_actions, source_yaml, HttpWorld, APP_PORT, VIP,
};

use crate::common::{sidecar_opts, testbin};

const ROUTES: &str = r#"- name: lb
  matches: [{path: {prefix: /lb}}]
  backends: [{subset: {version: v1}}]
"#;

/// The world, with `breaker` as the service port's `circuit_breaker`.
fn world(test: &str, breaker: &'static str) -> HttpWorld {
    HttpWorld::start_with_source(
        test,
        &testbin(),
        &sidecar_opts(),
        |pods| {
            let text = source_yaml(pods, ROUTES, "mode: permissive");
            let port = format!("        target_port: {APP_PORT}\n");
            assert!(text.contains(&port));
            text.replace(
                &port,
                &format!("{port}        circuit_breaker: {breaker}\n"),
            )
        },
        &[],
    )
    .unwrap()
}

#[test]
fn a_full_breaker_answers_503_at_once() {
    let w = world("http_breaker", "{max_requests: 2}");
    let a = w.pods.a.clone();
    let vip = VIP.parse().unwrap();
    let app = &w.apps[0].stats;
    app.lb_delay_ms.store(1500, Ordering::SeqCst);

    // Six at once against a bound of two: two are served after 1.5 s, the other
    // four are refused by the caller's proxy without waiting.
    let answers = a
        .run(move || async move {
            let start = Instant::now();
            let answers = load(vip, 6, 6, "/lb", &[]).await;
            (start.elapsed(), answers)
        })
        .unwrap();
    let (took, answers) = answers;
    let served = answers.iter().filter(|r| r.status == 200).count();
    let refused: Vec<_> = answers.iter().filter(|r| r.status == 503).collect();
    assert_eq!((served, refused.len()), (2, 4), "{answers:?}\n{}", w.dump());
    assert!(refused.iter().all(|r| r.error == "overflow"), "{answers:?}");
    assert_eq!(
        app.count("lb"),
        2,
        "refused requests must not reach the service"
    );
    assert!(took < Duration::from_secs(3), "{took:?}");

    // Once the answers have ended, the places are back.
    app.lb_delay_ms.store(0, Ordering::SeqCst);
    let answers = a
        .run(move || async move { load(vip, 20, 2, "/lb", &[]).await })
        .unwrap();
    assert!(answers.iter().all(|r| r.status == 200), "{answers:?}");

    let m = w.sidecars[0].metrics().unwrap();
    assert_eq!(
        policy_actions(&m, "outbound", "demo/web", "lb", "overflow"),
        4.0
    );
    // No endpoint was blamed for the refusals.
    assert_eq!(
        m.value(
            "pillion_http_ejections_total",
            &[("direction", "outbound"), ("service", "demo/web")]
        ),
        0.0
    );
}

#[test]
fn a_full_connection_bound_queues_then_refuses() {
    let w = world(
        "http_breaker_conns",
        "{max_connections: 2, max_pending_requests: 2}",
    );
    let a = w.pods.a.clone();
    let vip = VIP.parse().unwrap();
    let app = &w.apps[0].stats;
    app.lb_delay_ms.store(1000, Ordering::SeqCst);

    // Eight at once, each on its own client connection: two go out on the two
    // connections allowed, two wait for them, four are refused at once.
    let answers = a
        .run(move || async move {
            let start = Instant::now();
            let tasks: Vec<_> = (0..8)
                .map(|_| {
                    tokio::spawn(async move {
                        let answer = one(&h1_client(), get(vip, "/lb", &[])).await;
                        (start.elapsed(), answer)
                    })
                })
                .collect();
            let mut answers = Vec::new();
            for t in tasks {
                answers.push(t.await.unwrap());
            }
            answers
        })
        .unwrap();
    let served: Vec<_> = answers.iter().filter(|(_, r)| r.status == 200).collect();
    let refused: Vec<_> = answers.iter().filter(|(_, r)| r.status == 503).collect();
    assert_eq!(
        (served.len(), refused.len()),
        (4, 4),
        "{answers:?}\n{}",
        w.dump()
    );
    assert!(
        refused
            .iter()
            .all(|(took, r)| r.error == "overflow" && *took < Duration::from_millis(900)),
        "{answers:?}"
    );
    let mut took: Vec<_> = served.iter().map(|(took, _)| *took).collect();
    took.sort();
    assert!(
        took[1] < Duration::from_millis(1900),
        "the first two: {took:?}"
    );
    assert!(
        took[2] >= Duration::from_millis(1900),
        "the two that waited went out after the first answers: {took:?}"
    );
    assert_eq!(
        app.count("lb"),
        4,
        "refused requests must not reach the service"
    );
    let m = w.sidecars[0].metrics().unwrap();
    assert_eq!(
        policy_actions(&m, "outbound", "demo/web", "lb", "overflow"),
        4.0
    );

    // With the answers back, the connections serve again.
    app.lb_delay_ms.store(0, Ordering::SeqCst);
    let answers = a
        .run(move || async move { load(vip, 20, 2, "/lb", &[]).await })
        .unwrap();
    assert!(answers.iter().all(|r| r.status == 200), "{answers:?}");
}
