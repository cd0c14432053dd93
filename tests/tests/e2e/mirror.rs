//! Request mirroring through sidecars in namespaces with the real agent: every
//! request of a route copied to the `v2` endpoint while `v1` answers, bodies
//! included (up to 64 KiB), a slow shadow that never slows the primary and is
//! bounded in flight, and a shadow with no endpoint that never fails it.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use pillion_testkit::wait::eventually_blocking;
use pillion_tests::http_mesh::{h1_client, load, one, policy_actions, HttpWorld, VIP};

use crate::common::{sidecar_opts, testbin};

const MIRROR_ROUTES: &str = r#"- name: mirrored
  matches: [{path: {prefix: /mirror}}, {path: {prefix: /big}}, {path: {prefix: /lb}}]
  backends: [{subset: {version: v1}}]
  mirror: {backend: {subset: {version: v2}}}
- name: nowhere
  matches: [{path: {prefix: /echo}}]
  backends: [{subset: {version: v1}}]
  mirror: {backend: {subset: {version: v3}}}
"#;

fn post(path: &str, body: Vec<u8>) -> http::Request<Full<Bytes>> {
    http::Request::post(format!("http://{VIP}{path}"))
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

#[test]
fn routes_copy_requests_to_a_shadow_without_touching_the_primary() {
    let w = HttpWorld::start(
        "http_mirror",
        &testbin(),
        &sidecar_opts(),
        MIRROR_ROUTES,
        "mode: permissive",
    )
    .unwrap();
    let a = w.pods.a.clone();
    let vip = VIP.parse().unwrap();
    let (v1, v2) = (&w.apps[0].stats, &w.apps[1].stats);

    // Every request answered by v1, and a copy of each reaches v2.
    let answers = a
        .run(move || async move { load(vip, 100, 4, "/mirror", &[]).await })
        .unwrap();
    assert!(
        answers.iter().all(|r| r.status == 200 && r.app == "b1"),
        "{answers:?}\n{}",
        w.dump()
    );
    assert!(
        eventually_blocking(Duration::from_secs(10), || v2.count("mirror") == 100),
        "copies at v2: {}\n{}",
        v2.count("mirror"),
        w.dump()
    );
    assert_eq!(v1.count("mirror"), 100);

    // Bodies are copied whole up to 64 KiB; a larger one goes to v1 only.
    let answers = a
        .run(move || async move {
            let client = h1_client();
            let mut out = Vec::new();
            for size in [1_000, 60_000, 100_000] {
                out.push(one(&client, post("/big", vec![b'x'; size])).await);
            }
            out
        })
        .unwrap();
    assert!(
        answers.iter().all(|r| r.status == 200 && r.app == "b1"),
        "{answers:?}"
    );
    assert!(eventually_blocking(Duration::from_secs(10), || v2
        .count("big")
        == 2));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        (v1.count("big"), v2.count("big")),
        (3, 2),
        "the large body was not copied"
    );

    // A slow shadow: v2 takes 3 s, v1 answers at once; the primary does not wait,
    // and no more than 64 copies are in flight.
    v2.lb_delay_ms.store(3000, Ordering::SeqCst);
    let (took, answers) = a
        .run(move || async move {
            let start = Instant::now();
            let answers = load(vip, 200, 8, "/lb", &[]).await;
            (start.elapsed(), answers)
        })
        .unwrap();
    let in_flight = v2.count("lb");
    println!("a slow shadow: 200 requests in {took:?}, {in_flight} copies reached it");
    assert!(
        answers.iter().all(|r| r.status == 200 && r.app == "b1"),
        "{answers:?}"
    );
    assert!(
        took < Duration::from_secs(2),
        "the primary waited for the shadow: {took:?}"
    );
    assert!(
        (1..=64).contains(&in_flight),
        "{in_flight} copies in flight"
    );

    // A shadow with no endpoint at all: the primary never notices.
    let answers = a
        .run(move || async move { load(vip, 20, 2, "/echo", &[]).await })
        .unwrap();
    assert!(
        answers.iter().all(|r| r.status == 200 && r.app == "b1"),
        "{answers:?}"
    );

    // The client proxy counted every copy: sent (once the slow ones are answered),
    // skipped at the bound, dropped (the large body, and no shadow endpoint).
    let action = |route: &'static str, action: &'static str| {
        let m = w.sidecars[0].metrics().unwrap();
        policy_actions(&m, "outbound", "demo/web", route, action)
    };
    let sent = 100.0 + 2.0 + in_flight as f64;
    assert!(
        eventually_blocking(Duration::from_secs(15), || action(
            "mirrored",
            "mirror_sent"
        ) == sent),
        "sent {} of {sent}",
        action("mirrored", "mirror_sent")
    );
    assert_eq!(
        action("mirrored", "mirror_skipped"),
        200.0 - in_flight as f64
    );
    assert_eq!(action("mirrored", "mirror_dropped"), 1.0);
    assert!(eventually_blocking(Duration::from_secs(5), || action(
        "nowhere",
        "mirror_dropped"
    ) == 20.0));
}
