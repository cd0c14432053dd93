//! A service port's circuit breaker through sidecars in namespaces with the real
//! agent: with `max_requests: 2`, two slow requests are in flight and every other
//! concurrent one is answered `503 overflow` at once by the caller's proxy, never
//! reaching the service; places come back when the answers end, and the refusals
//! are counted.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pillion_tests::http_mesh::{load, policy_actions, source_yaml, HttpWorld, APP_PORT, VIP};

use crate::common::{sidecar_opts, testbin};

const ROUTES: &str = r#"- name: lb
  matches: [{path: {prefix: /lb}}]
  backends: [{subset: {version: v1}}]
"#;

#[test]
fn a_full_breaker_answers_503_at_once() {
    let w = HttpWorld::start_with_source(
        "http_breaker",
        &testbin(),
        &sidecar_opts(),
        |pods| {
            let text = source_yaml(pods, ROUTES, "mode: permissive");
            let port = format!("        target_port: {APP_PORT}\n");
            assert!(text.contains(&port));
            text.replace(
                &port,
                &format!("{port}        circuit_breaker: {{max_requests: 2}}\n"),
            )
        },
        &[],
    )
    .unwrap();
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
