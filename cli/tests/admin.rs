//! `pillion proxy-config` and `pillion log-level` against a real proxy (`pillion
//! proxy`, loopback only), as an operator in the pod would run them.
#![allow(clippy::unwrap_used)] // Tests: a panic with its reason is the report.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_pillion");

/// Kills the proxy by PID when the test ends, however it ends.
struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pillion(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_proxys_config_and_log_level_from_its_admin_server() {
    let mut proxy = Proxy(
        Command::new(BIN)
            .args(["proxy", "--log-format", "json"])
            .args([
                "--outbound-addrs",
                "127.0.0.1:0",
                "--inbound-addrs",
                "127.0.0.1:0",
            ])
            .args(["--admin-addr", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = proxy.0.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let admin: SocketAddr = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("a log line");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["message"] == "pillion-proxy listening" {
            break v["admin"].as_str().unwrap().parse().unwrap();
        }
    };
    let admin = admin.to_string();

    let (ok, out, _) = pillion(&["log-level", &admin]);
    assert!(ok);
    assert_eq!(out, "info\n");
    let (ok, out, _) = pillion(&["log-level", &admin, "info,pillion_proxy=debug"]);
    assert!(ok);
    assert_eq!(out, "info,pillion_proxy=debug\n");
    let (ok, _, err) = pillion(&["log-level", &admin, "pillion_proxy=loud"]);
    assert!(!ok);
    assert!(
        err.contains("answered 400") && err.contains("not a valid filter"),
        "{err}"
    );
    let (ok, out, _) = pillion(&["log-level", &admin]);
    assert!(ok);
    assert_eq!(
        out, "info,pillion_proxy=debug\n",
        "a refused filter changes nothing"
    );

    let (ok, out, _) = pillion(&["proxy-config", &admin]);
    assert!(ok);
    let config: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(config.is_object(), "{out}");

    // Nothing listening: a clear failure.
    drop(proxy);
    let (ok, _, err) = pillion(&["proxy-config", &admin]);
    assert!(!ok);
    assert!(
        err.contains("cannot reach the proxy's admin server"),
        "{err}"
    );
}
