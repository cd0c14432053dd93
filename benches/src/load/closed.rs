//! Maximum requests per second: a closed loop of HTTP/1.1 keep-alive connections, each
//! sending its next request as soon as the previous answer is in, for a fixed time.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::time::Instant;

use super::{connect_many, sum_workers, Reconnecting, Sent, Throughput};

/// What the requests of a run ask for.
#[derive(Debug, Clone, Copy)]
pub enum Paths {
    /// Always this path.
    Fixed(&'static str),
    /// This path with a query no other request of the run has (`?w=…&n=…`).
    Numbered(&'static str),
}

impl Paths {
    fn path(self, worker: usize, n: u64) -> std::borrow::Cow<'static, str> {
        match self {
            Paths::Fixed(path) => path.into(),
            Paths::Numbered(path) => format!("{path}?w={worker}&n={n}").into(),
        }
    }
}

/// Runs `conns` connections against `addr` for `duration`; connections are opened
/// before the clock starts, and a failed one is re-opened (counting an error).
pub async fn run(addr: SocketAddr, conns: usize, duration: Duration) -> Result<Throughput> {
    run_paths(addr, conns, duration, Paths::Fixed("/")).await
}

/// [`run`], asking for `paths`.
pub async fn run_paths(
    addr: SocketAddr,
    conns: usize,
    duration: Duration,
    paths: Paths,
) -> Result<Throughput> {
    let host = addr.to_string();
    let senders = connect_many(addr, conns)
        .await
        .context("opening the keep-alive connections")?;
    let start = Instant::now();
    let deadline = start + duration;
    let workers: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(i, sender)| tokio::spawn(worker(addr, host.clone(), sender, deadline, (i, paths))))
        .collect();
    sum_workers(workers, start, "a load worker panicked").await
}

async fn worker(
    addr: SocketAddr,
    host: String,
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    deadline: Instant,
    (me, paths): (usize, Paths),
) -> (u64, u64) {
    let (mut ok, mut errors) = (0, 0);
    let mut conn = Reconnecting::new(addr, sender);
    while Instant::now() < deadline {
        let path = paths.path(me, ok + errors);
        match conn.get_path(&host, &path).await {
            Sent::Answered => ok += 1,
            Sent::Failed => errors += 1,
            Sent::NoConnection => {
                errors += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    (ok, errors)
}
