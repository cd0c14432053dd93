//! The `pillion-proxy` binary as an operator meets it: exit codes, error
//! messages that name the flag, JSON logs, and SIGTERM. Loopback only.
#![allow(clippy::unwrap_used)] // A test: a panic with its reason is the report.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_pillion-proxy");

/// Flags that keep every listener on loopback with kernel-chosen ports.
const LOOPBACK: [&str; 6] = [
    "--outbound-addrs",
    "127.0.0.1:0",
    "--inbound-addrs",
    "127.0.0.1:0",
    "--admin-addr",
    "127.0.0.1:0",
];

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Kills the proxy by PID if a test ends early.
struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn unknown_flags_are_rejected() {
    let out = run(&["--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-such-flag"));
}

#[test]
fn validation_errors_say_what_to_fix() {
    let mut args = LOOPBACK.to_vec();
    args.extend(["--connect-timeout", "0s"]);
    let out = run(&args);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--connect-timeout must be > 0, got 0s"),
        "{stderr}"
    );
}

#[test]
fn a_taken_address_names_the_flag_and_the_address() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = run(&[
        "--outbound-addrs",
        "127.0.0.1:0",
        "--inbound-addrs",
        &addr,
        "--admin-addr",
        "127.0.0.1:0",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot bind --inbound-addrs address {addr}")),
        "{stderr}"
    );
}

#[test]
fn serves_json_logs_and_drains_on_sigterm() {
    let mut args = LOOPBACK.to_vec();
    args.extend(["--log-format", "json"]);
    let mut child = Proxy(
        Command::new(BIN)
            .args(&args)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.0.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let next = |what: &str| -> serde_json::Value {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("no log line while waiting for {what}"));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    };
    let admin: SocketAddr = loop {
        let line = next("the listening line");
        if line["message"] == "pillion-proxy listening" {
            break line["admin"].as_str().unwrap().parse().unwrap();
        }
    };

    let mut s = TcpStream::connect(admin).unwrap();
    s.write_all(b"GET /live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.ends_with("live\n"), "{raw}");

    // The log filter changes at runtime, from loopback, and says so in the log.
    let filter = "info,pillion_proxy=debug";
    let mut s = TcpStream::connect(admin).unwrap();
    let put = format!(
        "PUT /log-level HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{filter}",
        filter.len()
    );
    s.write_all(put.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    loop {
        let line = next("the log filter's change");
        if line["message"] == "log filter changed through the admin server" {
            assert_eq!(line["filter"], filter, "{line}");
            break;
        }
    }

    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.0.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    let mut saw_drain = false;
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(2)) {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        saw_drain |= v["message"] == "drain complete";
    }
    assert!(saw_drain);
    assert!(TcpStream::connect(admin).is_err());
}
