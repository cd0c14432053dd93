//! Bulk TCP throughput: one connection writes a fixed number of bytes to the server's
//! sink, half-closes, and waits for the sink's byte count; Gbit/s over the whole time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Size of each write.
const CHUNK: usize = 256 * 1024;
/// A transfer slower than this is a failure, not a figure.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(120);

/// One transfer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Transfer {
    /// Bytes sent and confirmed by the sink.
    pub bytes: u64,
    /// Connect to confirmation, seconds.
    pub seconds: f64,
}

impl Transfer {
    /// Throughput in Gbit/s (10^9 bits per second).
    pub fn gbit_per_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.seconds / 1e9
    }
}

/// Sends `bytes` to the sink at `addr`.
pub async fn run(addr: SocketAddr, bytes: u64) -> Result<Transfer> {
    timeout(TRANSFER_TIMEOUT, transfer(addr, bytes))
        .await
        .with_context(|| format!("bulk transfer to {addr} took over {TRANSFER_TIMEOUT:?}"))?
}

async fn transfer(addr: SocketAddr, bytes: u64) -> Result<Transfer> {
    let chunk = vec![0x5au8; CHUNK];
    let start = Instant::now();
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        stream.write_all(&chunk[..n]).await.context("sending")?;
        left -= n as u64;
    }
    stream.shutdown().await.context("half-closing")?;
    let mut count = [0u8; 8];
    stream
        .read_exact(&mut count)
        .await
        .context("reading the sink's byte count")?;
    let seconds = start.elapsed().as_secs_f64();
    let got = u64::from_be_bytes(count);
    if got != bytes {
        bail!("the sink received {got} bytes of {bytes}");
    }
    Ok(Transfer { bytes, seconds })
}
