//! A source directory: every `*.yaml` file one part of the mesh. A change to one
//! file reaches the watchers like a change to a single file; a broken file holds
//! back only itself; files come and go; a name one file uses from another follows
//! it, and removing what another file uses is refused.

use crate::common::*;
use pillion_agent::{Agent, SourceSpec};
use std::time::Duration;

const ONE_SECOND: Duration = Duration::from_secs(1);

const WORKLOADS: &str = "\
workloads:
  - name: client
    namespace: demo
    token: demo-client-token
    addresses: [198.18.0.2]
  - name: server
    namespace: demo
    token: demo-server-token
    addresses: [198.18.0.3]
";

fn echo(port: u16) -> String {
    format!(
        "services:\n  - name: echo\n    namespace: demo\n    addresses: [198.18.0.100]\n    \
         ports: [{{port: {port}}}]\n    endpoints:\n      - workload: server\n"
    )
}

fn db(port: u16) -> String {
    format!(
        "services:\n  - name: db\n    namespace: demo\n    addresses: [198.18.0.101]\n    \
         ports: [{{port: {port}}}]\n    endpoints:\n      - addresses: [198.18.0.9]\n"
    )
}

/// The (name, first port) of every service in a view.
fn services(view: &pillion_api::view::View) -> Vec<(String, u16)> {
    (view.services.iter())
        .map(|s| (s.name.clone(), s.ports[0].port))
        .collect()
}

#[tokio::test]
async fn a_directory_is_a_mesh_in_parts() {
    let dir = TempDir::new("sourcedir");
    write_file(&dir.join("00-workloads.yaml"), WORKLOADS);
    write_file(&dir.join("db.yaml"), &db(5432));
    write_file(&dir.join("echo.yml"), &echo(7000));
    // Not parts: another extension, a hidden file, a subdirectory.
    write_file(&dir.join("notes.txt"), "not yaml: [");
    write_file(&dir.join(".hidden.yaml"), "not yaml: [");
    std::fs::create_dir(dir.join("sub.yaml")).unwrap();
    let agent = Agent::start(loopback_config(SourceSpec::File(dir.join(""))))
        .await
        .unwrap();
    let mut client = connect(&agent).await;
    let mut views = client.watch(CLIENT_TOKEN).await;
    let first = views.next_within(ONE_SECOND).await.expect("a first view");
    assert_eq!(first.identity, CLIENT_ID);
    assert_eq!(
        services(&first),
        [("db".into(), 5432), ("echo".into(), 7000)],
        "files in name order"
    );

    // One file changes: the view follows.
    write_file(&dir.join("echo.yml"), &echo(7001));
    let v = views.next_within(ONE_SECOND).await.expect("echo changed");
    assert_eq!(services(&v), [("db".into(), 5432), ("echo".into(), 7001)]);

    // A broken file is refused with its file and line, and holds back only itself.
    write_file(
        &dir.join("db.yaml"),
        &db(5433).replace("ports:", "ports: [\n"),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let err = agent.last_error().expect("the refusal is recorded");
    assert_eq!(err.file, dir.join("db.yaml").display().to_string());
    assert!(err.line().is_some(), "{err}");
    write_file(&dir.join("echo.yml"), &echo(7002));
    let v = views
        .next_within(ONE_SECOND)
        .await
        .expect("echo still changes");
    assert_eq!(services(&v), [("db".into(), 5432), ("echo".into(), 7002)]);
    assert!(agent.last_error().is_some(), "db.yaml is still broken");
    write_file(&dir.join("db.yaml"), &db(5433));
    let v = views.next_within(ONE_SECOND).await.expect("db fixed");
    assert_eq!(services(&v), [("db".into(), 5433), ("echo".into(), 7002)]);
    assert!(agent.last_error().is_none());

    // The workload a service of another file uses moves: the service follows.
    write_file(
        &dir.join("00-workloads.yaml"),
        &WORKLOADS.replace("198.18.0.3", "198.18.0.4"),
    );
    let v = views
        .next_within(ONE_SECOND)
        .await
        .expect("the server moved");
    let echo_service = v.services.iter().find(|s| s.name == "echo").unwrap();
    assert_eq!(echo_service.endpoints[0].address.to_string(), "198.18.0.4");

    // A new file adds its services; removing it removes them.
    let extra = db(6379)
        .replace("name: db", "name: cache")
        .replace(".101", ".102");
    write_file(&dir.join("cache.yaml"), &extra);
    let v = views.next_within(ONE_SECOND).await.expect("cache added");
    assert_eq!(
        services(&v),
        [
            ("cache".into(), 6379),
            ("db".into(), 5433),
            ("echo".into(), 7002)
        ]
    );
    std::fs::remove_file(dir.join("cache.yaml")).unwrap();
    let v = views.next_within(ONE_SECOND).await.expect("cache removed");
    assert_eq!(services(&v), [("db".into(), 5433), ("echo".into(), 7002)]);

    // Two files may not define one name; the first keeps it.
    write_file(
        &dir.join("zz-echo.yaml"),
        &echo(9999).replace(".100", ".110"),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let err = agent.last_error().expect("the duplicate is refused");
    assert_eq!(err.file, dir.join("zz-echo.yaml").display().to_string());
    assert!(
        err.reason.contains(&format!(
            "services[0] of {} already has",
            dir.join("echo.yml").display()
        )),
        "{err}"
    );
    std::fs::remove_file(dir.join("zz-echo.yaml")).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(agent.last_error().is_none(), "a refused file that is gone");

    // Removing the workloads a service uses is refused, naming the user; the
    // tokens stay valid and nothing is published.
    let version = agent.version();
    std::fs::remove_file(dir.join("00-workloads.yaml")).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let err = agent.last_error().expect("the removal is refused");
    assert_eq!(err.file, dir.join("echo.yml").display().to_string());
    assert!(err.reason.contains("no workload named `server`"), "{err}");
    assert_eq!(agent.version(), version);
    assert!(views
        .next_within(Duration::from_millis(300))
        .await
        .is_none());

    // Once the user no longer needs them, the removal goes through with it.
    write_file(
        &dir.join("echo.yml"),
        &echo(7003).replace("workload: server", "addresses: [198.18.0.4]"),
    );
    let ended = views.ends_within(ONE_SECOND).await;
    assert!(ended, "the client's token is gone with its file");
    assert!(agent.last_error().is_none());
    agent.shutdown().await;
}

#[tokio::test]
async fn a_directory_without_source_files_is_refused_at_start() {
    let dir = TempDir::new("sourcedir-empty");
    write_file(&dir.join("readme.txt"), "nothing");
    let e = Agent::start(loopback_config(SourceSpec::File(dir.join(""))))
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(e.to_string().contains("no *.yaml or *.yml file"), "{e}");
}

#[tokio::test]
async fn a_workload_moved_between_files_in_two_steps_lands() {
    let dir = TempDir::new("sourcedir-move");
    write_file(&dir.join("00-workloads.yaml"), WORKLOADS);
    write_file(&dir.join("echo.yaml"), &echo(7000));
    let agent = Agent::start(loopback_config(SourceSpec::File(dir.join(""))))
        .await
        .unwrap();
    let mut client = connect(&agent).await;
    let mut views = client.watch(CLIENT_TOKEN).await;
    views.next_within(ONE_SECOND).await.expect("a first view");

    // Step one, seen alone: the server's workload also in a new file, at a new
    // address. A duplicate, so it waits.
    let (client_part, server_part) = WORKLOADS
        .split_once("  - name: server")
        .expect("two workloads");
    let moved = format!("workloads:\n  - name: server{server_part}").replace(".0.3", ".0.5");
    write_file(&dir.join("01-server.yaml"), &moved);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let err = agent.last_error().expect("a duplicate for now");
    assert!(
        err.reason.contains("duplicate workload demo/server"),
        "{err}"
    );

    // Step two, in a later poll: the old file lets the workload go. Alone it would
    // leave the service without its workload; with the first step it is a move.
    write_file(&dir.join("00-workloads.yaml"), client_part);
    let v = views.next_within(ONE_SECOND).await.expect("the move lands");
    let echo_service = v.services.iter().find(|s| s.name == "echo").unwrap();
    assert_eq!(echo_service.endpoints[0].address.to_string(), "198.18.0.5");
    assert!(agent.last_error().is_none(), "{:?}", agent.last_error());

    // A removal refused stays refused, quietly: nothing is published.
    let version = agent.version();
    std::fs::remove_file(dir.join("01-server.yaml")).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let err = agent
        .last_error()
        .expect("the service still uses the workload");
    assert!(err.reason.contains("no workload named `server`"), "{err}");
    assert_eq!(agent.version(), version);
    agent.shutdown().await;
}
