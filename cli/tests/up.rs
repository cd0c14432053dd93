//! `pillion up` as CI runs it (the README's first command, bounded): meshed traffic
//! flows, everything is torn down and it exits 0.
#![allow(clippy::unwrap_used)] // A test: a panic with its reason is the report.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pillion::local::marker;

#[test]
fn pillion_up_runs_bounded_and_cleans_up() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping: pillion up needs root");
        return;
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_pillion"))
        .args(["up", "--duration", "3s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(90);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            child.kill().unwrap();
            let _ = child.wait();
            panic!("pillion up did not stop by itself");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "pillion up failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for needle in [
        "sidecars ready",
        "echoed in",
        "[client proxy] outbound opened",
        "exit status: 0",
        "world removed",
    ] {
        assert!(
            stdout.contains(needle),
            "pillion up output lacks {needle:?}:\n{stdout}"
        );
    }
    // Nothing it started outlives it.
    let leftovers = marker::processes_owned_by(pid);
    assert!(leftovers.is_empty(), "left running: {leftovers:?}");
}
