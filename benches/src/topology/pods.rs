//! The pods' plumbing: kernel settings a load test needs inside each pod's own network
//! namespace, the benchmark server, and waiting for a listener to come up.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use pillion_tests::{Pod, Process, Task};
use tokio::net::TcpStream;

use crate::pin::pin_this_thread;
use crate::server::{self, HTTP_PORT, SINK_PORT};

/// How long a server or proxy may take to start listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Per-namespace sysctls: a wide ephemeral port range and TIME_WAIT reuse (the
/// new-connection test opens tens of thousands of connections), deep accept queues.
const SYSCTLS: &[&str] = &[
    "net.ipv4.ip_local_port_range=1024 65000",
    "net.ipv4.tcp_tw_reuse=1",
    "net.core.somaxconn=8192",
    "net.ipv4.tcp_max_syn_backlog=8192",
];

/// Applies [`SYSCTLS`] in the pod's namespace (never the root namespace's).
pub fn tune(pod: &Pod) -> Result<()> {
    let mut args = vec!["sysctl", "-q", "-w"];
    args.extend_from_slice(SYSCTLS);
    pod.exec_ok(args)
        .with_context(|| format!("tuning pod {}", pod.name()))?;
    Ok(())
}

/// Starts the HTTP server and the sink in `pod`, on one thread pinned to `cpu`, and
/// returns once both listen.
pub fn start_server(pod: &Pod, cpu: Option<usize>) -> Result<Task<()>> {
    let (tx, rx) = mpsc::channel::<Result<()>>();
    let task = pod.background(move || async move {
        let bound = pin_this_thread(cpu)
            .and_then(|()| Ok((server::bind(HTTP_PORT)?, server::bind(SINK_PORT)?)));
        match bound {
            Ok((http, sink)) => {
                let _ = tx.send(Ok(()));
                server::serve(http, sink).await;
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        }
    })?;
    rx.recv_timeout(START_TIMEOUT)
        .map_err(|_| anyhow!("the server in pod {} did not start", pod.name()))?
        .with_context(|| format!("the server in pod {}", pod.name()))?;
    Ok(task)
}

/// Waits until something accepts TCP connections on `addr`, as seen from inside `pod`;
/// fails early (with its logs) if `process` exits meanwhile.
pub fn wait_listening(pod: &Pod, addr: SocketAddr, what: &str, process: &Process) -> Result<()> {
    wait_listening_within(pod, addr, what, process, START_TIMEOUT)
}

/// [`wait_listening`] with a bound of its own (a large source takes a while to load).
pub fn wait_listening_within(
    pod: &Pod,
    addr: SocketAddr,
    what: &str,
    process: &Process,
    limit: Duration,
) -> Result<()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = process.try_status() {
            bail!(
                "{what} in pod {} exited ({status})\n{}",
                pod.name(),
                process.logs()
            );
        }
        let up = pod.run(move || async move {
            let until = tokio::time::Instant::now() + Duration::from_millis(500);
            while tokio::time::Instant::now() < until {
                if TcpStream::connect(addr).await.is_ok() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            false
        })?;
        if up {
            return Ok(());
        }
    }
    bail!(
        "{what} is not listening on {addr} in pod {} after {limit:?}\n{}",
        pod.name(),
        process.logs()
    )
}
