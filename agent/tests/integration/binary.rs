//! The real `pillion-agent` binary: flags, start-up errors, serving, and SIGTERM.

use crate::common::*;
use pillion_agent::cli::main_with_args;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

fn run(args: &[&str]) -> ExitCode {
    main_with_args(
        std::iter::once("pillion-agent")
            .chain(args.iter().copied())
            .map(Into::into)
            .collect(),
    )
}

#[test]
fn bad_flags_exit_with_a_usage_error() {
    assert_eq!(run(&["--leaf-lifetime", "0s"]), ExitCode::from(2));
    assert_eq!(
        run(&["--config", "/nonexistent/agent.yaml"]),
        ExitCode::from(2)
    );
    assert_eq!(run(&["--listen", "not-an-address"]), ExitCode::from(2));
    assert_eq!(run(&["--help"]), ExitCode::SUCCESS);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn serves_until_sigterm() {
    let dir = TempDir::new("bin");
    let anchor = dir.join("root.pem");
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pillion-agent"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--trust-anchor-out")
        .arg(&anchor)
        .args(["--log-format", "json"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !anchor.exists() {
        assert!(
            Instant::now() < deadline,
            "the agent never wrote its trust anchor"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let anchor_pem = std::fs::read_to_string(&anchor).unwrap();
    let agent_id: pillion_identity::SpiffeId = "spiffe://cluster.local/ns/pillion/sa/agent"
        .parse()
        .unwrap();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut connected = None;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            connected = Some(connect_to(addr, &anchor_pem, &agent_id, false).await);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut client = connected.expect("the agent listens");
    let mut views = client.watch(CLIENT_TOKEN).await;
    let view = views.next_within(Duration::from_secs(1)).await.unwrap();
    assert_eq!(view.identity, CLIENT_ID);

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(views.ends_within(Duration::from_secs(5)).await);
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the agent did not stop on SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "{exit:?}");
}
