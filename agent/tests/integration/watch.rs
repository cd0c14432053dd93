//! `GET /v1/watch` and the reloader: the current view at once, a new one within a
//! second of a change, a broken file logged and ignored, a fixed one served.

use crate::common::*;
use pillion_agent::{Agent, RunningAgent, SourceSpec};
use pillion_api::view::Mode;
use std::path::PathBuf;
use std::time::Duration;

const ONE_SECOND: Duration = Duration::from_secs(1);

fn source(echo_port: u16, client_extra: &str) -> String {
    format!(
        "\
workloads:
  - name: client
    namespace: demo
    token: {CLIENT_TOKEN}
    addresses: [198.18.0.2]
{client_extra}
  - name: server
    namespace: demo
    token: {SERVER_TOKEN}
    addresses: [198.18.0.3]
services:
  - name: echo
    namespace: demo
    addresses: [198.18.0.100]
    ports:
      - port: {echo_port}
        protocol: opaque
    endpoints:
      - workload: server
"
    )
}

/// An agent serving `agent.yaml` in a fresh folder tagged `tag`, first written as
/// `source(7000, "")`; the test rewrites the file at the path, in the folder kept alive.
async fn agent_on_file(tag: &str) -> (TempDir, PathBuf, RunningAgent) {
    let dir = TempDir::new(tag);
    let path = dir.join("agent.yaml");
    write_file(&path, &source(7000, ""));
    let agent = Agent::start(loopback_config(SourceSpec::File(path.clone())))
        .await
        .unwrap();
    (dir, path, agent)
}

#[tokio::test]
async fn streams_views_and_survives_broken_files() {
    let (_dir, path, agent) = agent_on_file("watch").await;
    let mut client = connect(&agent).await;
    let mut views = client.watch(CLIENT_TOKEN).await;

    // The current view at once.
    let first = views.next_within(ONE_SECOND).await.expect("a first view");
    assert_eq!(first.identity, CLIENT_ID);
    assert_eq!(first.version, 1);
    assert_eq!(first.services[0].ports[0].port, 7000);
    // The agent's trust bundle rides along, for proxies to follow a new root.
    assert_eq!(
        first.trust_bundle_pem.as_deref(),
        Some(agent.trust_anchor_pem())
    );
    // And the issuer it signs with, for proxies to notice a switch.
    assert_eq!(first.issuer_sha256.as_ref().map(String::len), Some(64));

    // A change arrives within a second, with a higher version.
    write_file(&path, &source(7001, ""));
    let second = views
        .next_within(ONE_SECOND)
        .await
        .expect("a view after the change");
    assert!(second.version > first.version);
    assert_eq!(second.services[0].ports[0].port, 7001);

    // A syntax error: nothing new is sent, the error is recorded with its line.
    write_file(&path, &source(7002, "    inbound: [unclosed"));
    assert!(
        views
            .next_within(Duration::from_millis(600))
            .await
            .is_none(),
        "a broken file must not produce a view"
    );
    let err = agent.last_error().expect("the refusal is recorded");
    assert_eq!(err.file, path.display().to_string());
    assert!(err.line().is_some(), "{err}");
    assert!(
        err.to_string().starts_with(&format!("{}:", path.display())),
        "{err}"
    );
    assert_eq!(agent.version(), second.version);

    // A new watcher still gets the last good view.
    let mut client2 = connect(&agent).await;
    let mut views2 = client2.watch(CLIENT_TOKEN).await;
    let again = views2
        .next_within(ONE_SECOND)
        .await
        .expect("the last good view");
    assert_eq!(again.version, second.version);
    assert_eq!(again.services[0].ports[0].port, 7001);

    // A semantic error is refused the same way, naming the entry.
    write_file(
        &path,
        &source(7002, "").replace("workload: server", "workload: nobody"),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let err = agent.last_error().expect("the refusal is recorded");
    assert!(
        err.reason.contains("services[0].endpoints[0].workload"),
        "{err}"
    );
    assert_eq!(err.line(), Some(19), "{err}");

    // A fixed file: both watchers get the new view, the error is cleared.
    let policy = "    inbound:\n      default_mode: strict\n";
    write_file(&path, &source(7002, policy));
    let third = views
        .next_within(ONE_SECOND)
        .await
        .expect("a view after the fix");
    assert!(third.version > second.version);
    assert_eq!(third.services[0].ports[0].port, 7002);
    assert_eq!(third.inbound.default_mode, Mode::Strict);
    let third2 = views2
        .next_within(ONE_SECOND)
        .await
        .expect("second watcher too");
    assert_eq!(third2, third);
    assert!(agent.last_error().is_none());

    agent.shutdown().await;
}

#[tokio::test]
async fn views_are_per_workload_and_only_sent_when_they_change() {
    let (_dir, path, agent) = agent_on_file("perworkload").await;
    let mut client = connect(&agent).await;
    let mut server_views = client.watch(SERVER_TOKEN).await;
    let mut client_views = client.watch(CLIENT_TOKEN).await;
    assert_eq!(
        server_views.next_within(ONE_SECOND).await.unwrap().identity,
        SERVER_ID
    );
    client_views.next_within(ONE_SECOND).await.unwrap();

    // Only the client's inbound policy changes: the server's view stays the same.
    write_file(&path, &source(7000, "    inbound: {default_mode: strict}"));
    let changed = client_views.next_within(ONE_SECOND).await.unwrap();
    assert_eq!(changed.inbound.default_mode, Mode::Strict);
    assert!(server_views
        .next_within(Duration::from_millis(300))
        .await
        .is_none());

    // A comment-only change publishes nothing at all.
    let version = agent.version();
    write_file(
        &path,
        &format!(
            "# edited\n{}",
            source(7000, "    inbound: {default_mode: strict}")
        ),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(agent.version(), version);
    assert!(agent.last_error().is_none());

    // Removing a workload's token ends its stream.
    write_file(
        &path,
        &source(7000, "").replace(&format!("token: {SERVER_TOKEN}"), ""),
    );
    assert!(server_views.ends_within(ONE_SECOND).await);
    agent.shutdown().await;
}

#[tokio::test]
async fn watch_needs_a_known_token() {
    let agent = start_default().await;
    let mut client = connect(&agent).await;
    let resp = client.send("GET", "/v1/watch", None, Vec::new()).await;
    assert_eq!(resp.status(), 401);
    let resp = client
        .send("GET", "/v1/watch", Some("unknown-token-1"), Vec::new())
        .await;
    assert_eq!(resp.status(), 401);
    agent.shutdown().await;
}

#[tokio::test]
async fn watch_works_over_http1_and_ends_on_shutdown() {
    let agent = start_default().await;
    let mut client = connect_h1(&agent).await;
    let mut views = client.watch(SERVER_TOKEN).await;
    let view = views.next_within(ONE_SECOND).await.unwrap();
    assert_eq!(view.identity, SERVER_ID);
    assert_eq!(view.inbound.for_port(7000).0, Mode::Strict);
    let stopping = tokio::spawn(agent.shutdown());
    assert!(views.ends_within(Duration::from_secs(3)).await);
    stopping.await.unwrap();
}

#[tokio::test]
async fn a_broken_file_at_start_is_fatal_with_its_location() {
    let dir = TempDir::new("fatal");
    let path = dir.join("agent.yaml");
    write_file(
        &path,
        "workloads:\n  - name: a\n    namespace: demo\n    colour: blue\n",
    );
    let err = Agent::start(loopback_config(SourceSpec::File(path.clone())))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&format!("{}:4:5:", path.display())), "{msg}");
    assert!(msg.contains("unknown field `colour`"), "{msg}");

    let missing = dir.join("missing.yaml");
    let err = Agent::start(loopback_config(SourceSpec::File(missing)))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("--config"), "{err}");
}

/// The agent's `GET /metrics` text.
async fn agent_metrics(client: &mut Client) -> String {
    use http_body_util::BodyExt;
    let resp = client.send("GET", "/metrics", None, Vec::new()).await;
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

fn has(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

#[tokio::test]
async fn metrics_count_watchers_pushes_certificates_and_source_updates() {
    let (_dir, path, agent) = agent_on_file("metrics").await;
    let mut client = connect(&agent).await;
    let text = agent_metrics(&mut client).await;
    assert!(has(&text, "pillion_agent_watchers 0"), "{text}");
    assert!(has(&text, "pillion_agent_source_version 1"), "{text}");

    // Two watchers; a change reaches both (two pushes measured), a broken file is
    // counted refused and publishes nothing.
    let mut views = client.watch(CLIENT_TOKEN).await;
    let mut other = connect(&agent).await;
    let mut server_views = other.watch(SERVER_TOKEN).await;
    views.next_within(ONE_SECOND).await.expect("a first view");
    server_views
        .next_within(ONE_SECOND)
        .await
        .expect("a first view");
    write_file(&path, &source(7001, ""));
    views.next_within(ONE_SECOND).await.expect("the change");
    server_views
        .next_within(ONE_SECOND)
        .await
        .expect("the change");
    write_file(&path, &source(7002, "    inbound: [unclosed"));
    tokio::time::sleep(Duration::from_millis(600)).await;

    // One certificate issued, one refused for another identity, one unauthenticated.
    let csr = |id: &str| {
        pillion_identity::csr::generate(&id.parse().unwrap())
            .unwrap()
            .1
    };
    let ask = |id: &str| serde_json::json!({ "csr_pem": csr(id) });
    let mut certs = connect(&agent).await;
    let (ok, _) = certs
        .json(
            "POST",
            "/v1/certificates",
            Some(CLIENT_TOKEN),
            &ask(CLIENT_ID),
        )
        .await;
    let (mismatch, _) = certs
        .json(
            "POST",
            "/v1/certificates",
            Some(CLIENT_TOKEN),
            &ask(SERVER_ID),
        )
        .await;
    let (unknown, _) = certs
        .json("POST", "/v1/certificates", Some("nobody"), &ask(CLIENT_ID))
        .await;
    assert_eq!(
        (ok.as_u16(), mismatch.as_u16(), unknown.as_u16()),
        (200, 403, 401)
    );

    let text = agent_metrics(&mut client).await;
    for line in [
        "pillion_agent_watchers 2",
        "pillion_agent_source_version 2",
        "pillion_agent_source_updates_total{result=\"published\"} 2",
        "pillion_agent_source_updates_total{result=\"refused\"} 1",
        "pillion_agent_push_seconds_count 2",
        "pillion_agent_certificates_total{result=\"issued\",reason=\"\"} 1",
        "pillion_agent_certificates_total{result=\"refused\",reason=\"identity_mismatch\"} 1",
        "pillion_agent_certificates_total{result=\"refused\",reason=\"unauthenticated\"} 1",
    ] {
        assert!(has(&text, line), "missing {line:?} in\n{text}");
    }
    drop((views, server_views));
    drop(other);
    let gone = async {
        while !has(
            &agent_metrics(&mut client).await,
            "pillion_agent_watchers 0",
        ) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), gone)
        .await
        .expect("the watchers are let go when their streams end");
}

#[tokio::test]
async fn a_watch_on_the_embedded_default_stays_open() {
    let agent = start_default().await;
    let mut client = connect(&agent).await;
    let mut views = client.watch(CLIENT_TOKEN).await;
    assert!(views.next_within(ONE_SECOND).await.is_some());
    // The embedded source never changes; its stream must not end for that.
    assert!(!views.ends_within(Duration::from_millis(500)).await);
}
