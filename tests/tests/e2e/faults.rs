//! Injected faults on client-side routes, through sidecars in namespaces with the
//! real agent: aborts (all, half, only for callers who ask with a header, gRPC), a
//! delay, and a delay that the route's timeout cuts short; an aborted request never
//! reaches the application and is not retried.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use pillion_testkit::http::h2_client;
use pillion_tests::http_mesh::{get, h1_client, load, one, policy_actions, HttpWorld, VIP};

use crate::common::{sidecar_opts, testbin};

const FAULT_ROUTES: &str = r#"- name: chaos
  matches: [{path: {prefix: /fault}, headers: [{name: x-chaos, value: {exact: "on"}}]}]
  fault: {abort: {http_status: 418}}
- name: abort
  matches: [{path: {prefix: /fault/abort}}]
  retry: {attempts: 3, conditions: [5xx]}
  fault: {abort: {http_status: 503}}
- name: half
  matches: [{path: {prefix: /fault/half}}]
  fault: {abort: {http_status: 500, percent: 50}}
- name: delay
  matches: [{path: {prefix: /fault/delay}}]
  fault: {delay: {fixed: 300ms}}
- name: slowdown
  matches: [{path: {prefix: /fault/slowdown}}]
  timeout: 300ms
  fault: {delay: {fixed: 5s}}
- name: grpc
  matches: [{path: {prefix: /fault.Service}}]
  fault: {abort: {grpc_status: 14, http_status: 502}}
"#;

fn vip() -> std::net::SocketAddr {
    VIP.parse().unwrap()
}

#[test]
fn routes_inject_aborts_and_delays() {
    let w = HttpWorld::start(
        "http_faults",
        &testbin(),
        &sidecar_opts(),
        FAULT_ROUTES,
        "mode: permissive",
    )
    .unwrap();
    let a = w.pods.a.clone();
    let apps = || w.apps[0].stats.count("fault") + w.apps[1].stats.count("fault");

    // Every request aborted: 503 from the proxy, never retried, never sent.
    let answers = a
        .run(|| async { load(vip(), 50, 4, "/fault/abort", &[]).await })
        .unwrap();
    assert!(
        answers
            .iter()
            .all(|r| r.status == 503 && r.error == "fault-injected"),
        "{answers:?}\n{}",
        w.dump()
    );
    assert_eq!(apps(), 0, "an aborted request reached the application");

    // Half of them: 1,000 requests, 50 % ± 8 (five standard deviations); the rest
    // reach the application.
    let answers = a
        .run(|| async { load(vip(), 1000, 8, "/fault/half", &[]).await })
        .unwrap();
    let aborted = answers.iter().filter(|r| r.status == 500).count();
    let ok = answers.iter().filter(|r| r.status == 200).count();
    println!("half: {aborted} of 1000 aborted");
    assert!((420..=580).contains(&aborted), "{aborted}");
    assert_eq!(aborted + ok, 1000);
    assert_eq!(
        apps(),
        ok,
        "only the requests not aborted reached the application"
    );

    // Only the callers who ask: the header selects the chaos route.
    let (with, without) = a
        .run(|| async {
            let client = h1_client();
            (
                one(&client, get(vip(), "/fault/x", &[("x-chaos", "on")])).await,
                one(&client, get(vip(), "/fault/x", &[])).await,
            )
        })
        .unwrap();
    assert_eq!((with.status, with.error.as_str()), (418, "fault-injected"));
    assert_eq!(without.status, 200, "{without:?}");

    // A delay: the request waits, then goes through.
    let (took, answer) = a
        .run(|| async {
            let start = Instant::now();
            let answer = one(&h1_client(), get(vip(), "/fault/delay", &[])).await;
            (start.elapsed(), answer)
        })
        .unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(took >= Duration::from_millis(300), "{took:?}");

    // A delay longer than the route's timeout: 504 when the timeout passes.
    let (took, answer) = a
        .run(|| async {
            let start = Instant::now();
            let answer = one(&h1_client(), get(vip(), "/fault/slowdown", &[])).await;
            (start.elapsed(), answer)
        })
        .unwrap();
    assert_eq!((answer.status, answer.error.as_str()), (504, "timeout"));
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );

    // gRPC callers get a gRPC status (trailers-only), others the HTTP one.
    let (grpc, plain) = a
        .run(|| async {
            let grpc = {
                let mut req = http::Request::post(format!("http://{}/fault.Service/Call", vip()))
                    .header("content-type", "application/grpc")
                    .header("te", "trailers")
                    .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
                    .unwrap();
                *req.version_mut() = http::Version::HTTP_2;
                let resp = h2_client().request(req).await.unwrap();
                let (parts, body) = resp.into_parts();
                let _ = body.collect().await;
                (parts.status.as_u16(), parts.headers)
            };
            let plain = one(&h1_client(), get(vip(), "/fault.Service/Call", &[])).await;
            (grpc, plain)
        })
        .unwrap();
    assert_eq!(grpc.0, 200);
    assert_eq!(grpc.1.get("grpc-status").unwrap(), "14", "{:?}", grpc.1);
    assert_eq!(grpc.1.get("content-type").unwrap(), "application/grpc");
    assert_eq!(plain.status, 502, "{plain:?}");
    // Since the half: one request without the header and one delayed reached the
    // application; the one the timeout cut short never left the proxy.
    assert_eq!(apps(), ok + 2);
    // The client proxy counted each fault on its route.
    let m = w.sidecars[0].metrics().unwrap();
    let action = |route, action| policy_actions(&m, "outbound", "demo/web", route, action);
    assert_eq!(action("abort", "fault_abort"), 50.0);
    assert_eq!(action("half", "fault_abort"), aborted as f64);
    assert_eq!(action("chaos", "fault_abort"), 1.0);
    assert_eq!(action("grpc", "fault_abort"), 2.0);
    assert_eq!(
        (
            action("delay", "fault_delay"),
            action("slowdown", "fault_delay")
        ),
        (1.0, 1.0)
    );
    assert_eq!(action("delay", "fault_abort"), 0.0);
    let grpc_seen = w.apps[0].stats.count("fault.Service") + w.apps[1].stats.count("fault.Service");
    assert_eq!(grpc_seen, 0, "aborted gRPC reached the application");
}
