//! HTTP/2 throughput: a few h2c (prior knowledge) connections carrying many concurrent
//! streams, closed loop, for a fixed time.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use super::{sum_workers, Throughput, REQUEST_TIMEOUT};

/// Opens `conns` h2c connections and runs `streams` concurrent request loops spread
/// evenly over them, for `duration`.
pub async fn run(
    addr: SocketAddr,
    conns: usize,
    streams: usize,
    duration: Duration,
) -> Result<Throughput> {
    let mut senders = Vec::with_capacity(conns);
    for _ in 0..conns.max(1) {
        let sender = timeout(REQUEST_TIMEOUT, connect(addr))
            .await
            .with_context(|| format!("h2c connect to {addr} timed out"))??;
        senders.push(sender);
    }
    let uri: hyper::Uri = format!("http://{addr}/").parse()?;
    let start = Instant::now();
    let deadline = start + duration;
    let workers: Vec<_> = (0..streams)
        .map(|i| {
            let sender = senders[i % senders.len()].clone();
            tokio::spawn(stream_loop(sender, uri.clone(), deadline))
        })
        .collect();
    sum_workers(workers, start, "a stream worker panicked").await
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Empty<Bytes>>> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .context("HTTP/2 handshake")?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn stream_loop(
    mut sender: SendRequest<Empty<Bytes>>,
    uri: hyper::Uri,
    deadline: Instant,
) -> (u64, u64) {
    let (mut ok, mut errors) = (0, 0);
    while Instant::now() < deadline {
        let req = hyper::Request::get(uri.clone())
            .body(Empty::new())
            .expect("a static request is valid");
        match timeout(REQUEST_TIMEOUT, one(&mut sender, req)).await {
            Ok(Ok(())) => ok += 1,
            Ok(Err(_)) if sender.is_closed() => {
                // The connection is gone: the rest of this stream's time is lost.
                errors += 1;
                break;
            }
            _ => errors += 1,
        }
    }
    (ok, errors)
}

async fn one(
    sender: &mut SendRequest<Empty<Bytes>>,
    req: hyper::Request<Empty<Bytes>>,
) -> Result<()> {
    sender.ready().await?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    resp.into_body().collect().await?;
    if !status.is_success() {
        bail!("status {status}");
    }
    Ok(())
}
