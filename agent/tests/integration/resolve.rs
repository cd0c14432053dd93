//! `GET /v1/resolve` and on-demand views: a view without services, one answer per
//! destination (service, or outside the mesh) at once and again on every change
//! of that answer, and the refusals of a malformed or anonymous question.

use crate::common::*;
use pillion_agent::{Agent, SourceSpec};
use pillion_api::resolve::Resolution;
use pillion_api::view::View;
use std::time::Duration;

const ONE_SECOND: Duration = Duration::from_secs(1);

/// Two services: `echo` on `port`, and `web` whose route sends 10 % to `web-v2`.
fn source(port: u16) -> String {
    format!(
        "\
workloads:
  - name: client
    namespace: demo
    token: {CLIENT_TOKEN}
    addresses: [198.18.0.2]
  - name: server
    namespace: demo
    token: {SERVER_TOKEN}
    addresses: [198.18.0.3, \"2001:2::3\"]
services:
  - name: echo
    namespace: demo
    addresses: [198.18.0.100]
    ports:
      - port: {port}
    endpoints:
      - workload: server
  - name: web
    namespace: demo
    addresses: [198.18.0.101]
    ports:
      - port: 80
        target_port: 8080
        routes:
          - name: split
            backends: [{{weight: 90}}, {{weight: 10, service: web-v2}}]
    endpoints:
      - workload: server
  - name: web-v2
    namespace: demo
    addresses: [198.18.0.102]
    ports:
      - port: 80
        target_port: 8080
    endpoints:
      - workload: server
"
    )
}

async fn answer(stream: &mut ViewStream) -> Resolution {
    stream
        .next_line_within(ONE_SECOND)
        .await
        .expect("an answer within a second")
}

fn service_name(r: &Resolution) -> Option<&str> {
    r.service.as_ref().map(|s| s.name.as_str())
}

#[tokio::test]
async fn answers_come_at_once_and_again_when_they_change() {
    let dir = TempDir::new("resolve");
    let path = dir.join("agent.yaml");
    write_file(&path, &source(7000));
    let agent = Agent::start(loopback_config(SourceSpec::File(path.clone())))
        .await
        .unwrap();
    let mut client = connect(&agent).await;

    // An on-demand view carries the workload's policy and bundle, and no service
    // but its own (the client backs none).
    let mut views = client
        .stream("/v1/watch?discovery=on-demand", CLIENT_TOKEN)
        .await;
    let view: View = views.next_within(ONE_SECOND).await.expect("a view");
    assert!(view.services.is_empty(), "{:?}", view.services);
    assert!(view.trust_bundle_pem.is_some());
    let mut own = client
        .stream("/v1/watch?discovery=on-demand", SERVER_TOKEN)
        .await;
    let own: View = own.next_within(ONE_SECOND).await.expect("a view");
    let names: Vec<&str> = own.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        ["echo", "web", "web-v2"],
        "the server backs all three"
    );
    let full = client
        .watch(CLIENT_TOKEN)
        .await
        .next_within(ONE_SECOND)
        .await;
    assert_eq!(full.expect("a full view").services.len(), 3);

    // A VIP, an endpoint (IPv6 too) and an address no service has.
    let mut vip = client
        .stream("/v1/resolve?ip=198.18.0.100&port=7000", CLIENT_TOKEN)
        .await;
    let first = answer(&mut vip).await;
    assert_eq!(service_name(&first), Some("echo"));
    assert_eq!(first.address, "198.18.0.100:7000".parse().unwrap());
    assert!(first.backends.is_empty());
    let mut pod = client
        .stream("/v1/resolve?ip=2001:2::3&port=7000", CLIENT_TOKEN)
        .await;
    assert_eq!(service_name(&answer(&mut pod).await), Some("echo"));
    let mut later = client
        .stream("/v1/resolve?ip=198.18.0.100&port=7001", CLIENT_TOKEN)
        .await;
    let outside = answer(&mut later).await;
    assert_eq!(outside.service, None);

    // A service whose route sends to another brings that one along.
    let mut web = client
        .stream("/v1/resolve?ip=198.18.0.101&port=80", SERVER_TOKEN)
        .await;
    let web = answer(&mut web).await;
    assert_eq!(service_name(&web), Some("web"));
    let backends: Vec<&str> = web.backends.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(backends, ["web-v2"]);

    // The port moves: the old address leaves the mesh, the new one joins it, and
    // each stream says so once.
    write_file(&path, &source(7001));
    let gone = answer(&mut vip).await;
    assert!(gone.version > first.version);
    assert_eq!(gone.service, None);
    assert_eq!(
        answer(&mut pod).await.service,
        None,
        "the pod's old port too"
    );
    let joined = answer(&mut later).await;
    assert_eq!(service_name(&joined), Some("echo"));
    assert_eq!(joined.service.as_ref().unwrap().ports[0].port, 7001);
    assert!(
        vip.next_line_within::<Resolution>(Duration::from_millis(300))
            .await
            .is_none(),
        "an unchanged answer is not sent again"
    );

    let text = client
        .send("GET", "/metrics", None, Vec::new())
        .await
        .into_body();
    let text = http_body_util::BodyExt::collect(text)
        .await
        .unwrap()
        .to_bytes();
    let text = String::from_utf8_lossy(&text);
    for line in [
        "pillion_agent_resolvers 4",
        "pillion_agent_resolutions_total{answer=\"service\"} 4",
        "pillion_agent_resolutions_total{answer=\"outside\"} 3",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    agent.shutdown().await;
}

#[tokio::test]
async fn a_question_must_name_one_address_and_come_with_a_token() {
    let agent = start_default().await;
    let mut client = connect(&agent).await;
    for bad in [
        "/v1/resolve",
        "/v1/resolve?ip=198.18.0.100",
        "/v1/resolve?ip=example.com&port=80",
        "/v1/resolve?ip=198.18.0.100&port=0",
        "/v1/resolve?ip=198.18.0.100&port=80&port=81",
    ] {
        let resp = client
            .send("GET", bad, Some(CLIENT_TOKEN), Vec::new())
            .await;
        assert_eq!(resp.status(), 400, "{bad}");
    }
    let anonymous = "/v1/resolve?ip=198.18.0.100&port=8080";
    let resp = client.send("GET", anonymous, None, Vec::new()).await;
    assert_eq!(resp.status(), 401);
    let resp = client
        .send("GET", anonymous, Some("nope"), Vec::new())
        .await;
    assert_eq!(resp.status(), 401);
    let resp = client
        .send("POST", anonymous, Some(CLIENT_TOKEN), Vec::new())
        .await;
    assert_eq!(resp.status(), 405);
    agent.shutdown().await;
}

/// A proxy follows every destination its workload uses on its one connection:
/// far more streams than hyper's default of 200 stay open and answered.
#[tokio::test]
async fn one_connection_carries_hundreds_of_answer_streams() {
    let agent = start_default().await;
    let mut client = connect(&agent).await;
    let mut streams = Vec::new();
    for i in 0..300u32 {
        let path = format!("/v1/resolve?ip=192.0.2.{}&port={}", i % 250 + 1, 1000 + i);
        let mut stream = client.stream(&path, CLIENT_TOKEN).await;
        let first: Resolution = answer(&mut stream).await;
        assert_eq!(first.service, None);
        streams.push(stream);
    }
    let mut vip = client
        .stream("/v1/resolve?ip=198.18.0.100&port=8080", CLIENT_TOKEN)
        .await;
    assert_eq!(service_name(&answer(&mut vip).await), Some("echo"));
    drop(streams);
    agent.shutdown().await;
}
