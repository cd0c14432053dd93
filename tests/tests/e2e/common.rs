//! Helpers shared by the end-to-end test files (each file uses a subset).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use pillion_testkit::wait::{eventually_blocking as eventually, within};
use pillion_tests::{Pod, Process, SidecarOpts};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The multicall binary (`pillion-testbin init|proxy …`) that pods run.
pub fn testbin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pillion-testbin"))
}

/// Sidecar options with the mesh defaults, run from the test binary; a short drain so
/// teardown is quick.
pub fn sidecar_opts() -> SidecarOpts {
    SidecarOpts::new(testbin()).proxy_args(["--drain-timeout", "5s"])
}

/// Prints the logs of the given processes (for a failing assertion's context).
pub fn dump(procs: &[&Process]) -> String {
    procs.iter().map(|p| p.logs().to_string()).collect()
}

/// MiB per second of `bytes` moved in `elapsed`.
pub fn mib_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64()
}

/// The service port's routes of the edge tests: one route for everything.
pub const ALL_ROUTES: &str = "- name: all\n  matches: [{path: {prefix: /}}]\n";

/// The server's port policy of the edge tests: `/admin` admits only `ns/ops`
/// callers; everything else is open, and plaintext is allowed.
pub const ADMIN_ONLY_FOR_OPS: &str = r#"mode: permissive
routes:
  - name: admin
    matches: [{path: {prefix: /admin}}]
    allow: ["spiffe://cluster.local/ns/ops/*"]
"#;

/// Metric names of the proxy's TCP contract.
pub mod m {
    pub const OPENED: &str = "pillion_tcp_connections_opened_total";
    pub const CLOSED: &str = "pillion_tcp_connections_closed_total";
    pub const OPEN: &str = "pillion_tcp_connections_open";
    pub const SENT: &str = "pillion_tcp_sent_bytes_total";
    pub const RECEIVED: &str = "pillion_tcp_received_bytes_total";
    pub const CONNECT_FAILURES: &str = "pillion_tcp_connect_failures_total";
    pub const LOOPS: &str = "pillion_tcp_loops_refused_total";
    pub const OUT: &[(&str, &str)] = &[("direction", "outbound")];
    pub const IN: &[(&str, &str)] = &[("direction", "inbound")];
}

/// Sends `request` as raw bytes from `pod` to `target` after `pause`, and answers
/// everything read back until the peer closes (or 10 s pass): for heads no HTTP
/// client library would write.
pub fn raw_exchange(
    pod: &Pod,
    target: SocketAddr,
    pause: Duration,
    request: Vec<u8>,
) -> std::io::Result<String> {
    pod.run(move || async move {
        let mut s = tokio::net::TcpStream::connect(target).await?;
        tokio::time::sleep(pause).await;
        let _ = s.write_all(&request).await;
        let mut raw = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw)).await;
        Ok(String::from_utf8_lossy(&raw).into_owned())
    })
    .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
}

/// The status code of a raw HTTP/1 reply; 0 when there was none.
pub fn status_code(reply: &str) -> u16 {
    reply.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0)
}
