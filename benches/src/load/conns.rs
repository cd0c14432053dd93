//! Connection-bound figures: new connections per second (one request per TCP
//! connection, `Connection: close`, closed loop) and holding many idle keep-alive
//! connections open while the proxies' memory is read.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use super::{connect_many, get, sum_workers, Throughput, REQUEST_TIMEOUT};

/// Runs `workers` loops of connect → one request → read to close, for `duration`.
pub async fn rate(addr: SocketAddr, workers: usize, duration: Duration) -> Result<Throughput> {
    let request = format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let request = request.clone();
            tokio::spawn(async move {
                let (mut ok, mut errors) = (0u64, 0u64);
                let mut buf = Vec::with_capacity(1024);
                while Instant::now() < deadline {
                    match timeout(REQUEST_TIMEOUT, once(addr, request.as_bytes(), &mut buf)).await {
                        Ok(Ok(())) => ok += 1,
                        _ => {
                            errors += 1;
                            // Back off a little so a refusing peer is not hammered.
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
                (ok, errors)
            })
        })
        .collect();
    sum_workers(tasks, start, "a connection worker panicked").await
}

/// One connection: write the request, read until the peer closes, check the status.
async fn once(addr: SocketAddr, request: &[u8], buf: &mut Vec<u8>) -> Result<()> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    stream.write_all(request).await?;
    buf.clear();
    stream.read_to_end(buf).await?;
    if !buf.starts_with(b"HTTP/1.1 200") {
        bail!(
            "unexpected answer: {:?}",
            String::from_utf8_lossy(&buf[..buf.len().min(40)])
        );
    }
    Ok(())
}

/// Opens `conns` keep-alive connections, sends one request on each (so the whole path,
/// mesh hop included, exists), reports the count on `held`, then keeps them open until
/// the future is dropped.
pub async fn hold(addr: SocketAddr, conns: usize, held: mpsc::Sender<Result<usize>>) {
    let host = addr.to_string();
    let opened = async {
        let mut senders = connect_many(addr, conns).await?;
        let mut set = tokio::task::JoinSet::new();
        for mut s in senders.drain(..) {
            let host = host.clone();
            set.spawn(async move {
                timeout(REQUEST_TIMEOUT, get(&mut s, &host, "/"))
                    .await
                    .context("request timed out")??;
                anyhow::Ok(s)
            });
        }
        while let Some(joined) = set.join_next().await {
            senders.push(joined.context("a hold task panicked")??);
        }
        anyhow::Ok(senders)
    }
    .await;
    match opened {
        Ok(senders) => {
            let _ = held.send(Ok(senders.len()));
            std::future::pending::<()>().await;
            drop(senders);
        }
        Err(e) => {
            let _ = held.send(Err(e));
        }
    }
}
