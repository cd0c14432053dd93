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

/// A connection that echoes a line every 200 ms from a pod until stopped: proof that
/// an open connection lives through whatever the test does meanwhile.
pub struct LongLived {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    echoed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: Option<pillion_tests::Task<std::io::Result<usize>>>,
}

impl LongLived {
    /// Opens it from `pod` to the echo server at `target`.
    pub fn open(pod: &Pod, target: SocketAddr) -> LongLived {
        use std::sync::atomic::Ordering;
        let (stop, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let echoed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = std::sync::Arc::clone(&echoed);
        let task = pod
            .background(move || async move {
                let mut s = tokio::net::TcpStream::connect(target).await?;
                let mut n = 0usize;
                loop {
                    let msg = format!("long-lived {n:05}\n");
                    s.write_all(msg.as_bytes()).await?;
                    let mut back = vec![0u8; msg.len()];
                    within(Duration::from_secs(5), "an echo", s.read_exact(&mut back)).await?;
                    assert_eq!(back, msg.as_bytes());
                    n += 1;
                    counter.store(n, Ordering::SeqCst);
                    tokio::select! {
                        _ = &mut stop_rx => return Ok(n),
                        () = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                }
            })
            .unwrap();
        LongLived {
            stop: Some(stop),
            echoed,
            task: Some(task),
        }
    }

    /// Asserts that two more echoes come within 5 s.
    pub fn flowing(&self, phase: &str) {
        use std::sync::atomic::Ordering;
        let from = self.echoed.load(Ordering::SeqCst);
        let more = eventually(Duration::from_secs(5), || {
            self.echoed.load(Ordering::SeqCst) >= from + 2
        });
        assert!(more, "the long-lived connection stalled {phase}");
    }

    /// Stops it; how many echoes it made, or why it broke.
    pub fn finish(mut self) -> std::io::Result<usize> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take().map(|t| t.join()) {
            Some(Ok(result)) => result,
            Some(Err(e)) => Err(std::io::Error::other(e.to_string())),
            None => Ok(0),
        }
    }
}

/// The proxy user: a gateway's key files must be its own (0600).
pub const PROXY_UID: u32 = 2580;

/// Writes a gateway certificate directory `root/name` (`tls.crt` the chain,
/// `tls.key` 0600), owned by the proxy user, as a mounted TLS Secret is.
pub fn gateway_cert_dir(
    root: &std::path::Path,
    name: &str,
    chain_pem: &str,
    key_pem: &str,
) -> PathBuf {
    use std::os::unix::fs::{chown, PermissionsExt};
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tls.crt"), chain_pem).unwrap();
    let key = dir.join("tls.key");
    std::fs::write(&key, key_pem).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    for path in [&dir, &dir.join("tls.crt"), &key] {
        chown(path, Some(PROXY_UID), Some(PROXY_UID)).unwrap();
    }
    dir
}
