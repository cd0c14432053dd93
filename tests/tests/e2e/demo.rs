//! The demo binary as CI runs it: bounded, meshed traffic flows, everything is torn
//! down and it exits 0.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pillion_tests::marker;

#[test]
fn the_demo_runs_bounded_and_cleans_up() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pillion-demo"))
        .args(["--duration", "3s"])
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
            panic!("the demo did not stop by itself");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo failed ({}):\n{stdout}\n{stderr}",
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
            "demo output lacks {needle:?}:\n{stdout}"
        );
    }
    // Nothing the demo started outlives it.
    let leftovers = marker::processes_owned_by(pid);
    assert!(leftovers.is_empty(), "left running: {leftovers:?}");
}
