//! The applications tests run inside pods: small tokio servers (echo, reply-after-EOF)
//! and clients, plus deterministic test data and a fast checksum.

use std::net::{Ipv6Addr, SocketAddr};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::netns::Task;
use crate::pod::Pod;

/// Size of the copy buffers the apps use; big, so bulk transfers cost few syscalls.
pub const COPY_BUF: usize = 256 * 1024;
/// How long a server may take to bind.
const BIND_TIMEOUT: Duration = Duration::from_secs(10);

/// What a test server does with each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum App {
    /// Writes back everything it reads; shuts its write side when the client does.
    Echo,
    /// Reads until EOF, then answers with the 8-byte length and 8-byte [`checksum`] of
    /// what it read (big-endian) and closes: exercises half-close.
    ReplyAfterEof,
}

/// Starts `app` in `pod`, listening on `[::]:port` for both IPv4 and IPv6, and returns
/// once it is bound. Drop (or shut down) the task to stop it.
pub fn spawn_server(pod: &Pod, port: u16, app: App) -> Result<Task<()>> {
    let (tx, rx) = mpsc::channel::<Result<()>>();
    let task = pod.background(move || async move {
        let listener = match bind_dual_stack(port) {
            Ok(l) => {
                let _ = tx.send(Ok(()));
                l
            }
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        serve(listener, app).await;
    })?;
    rx.recv_timeout(BIND_TIMEOUT)
        .map_err(|_| anyhow!("{app:?} server in pod {} did not bind", pod.name()))?
        .with_context(|| format!("{app:?} server on port {port} in pod {}", pod.name()))?;
    Ok(task)
}

/// A listener on `[::]:port` that also takes IPv4 (v6only off), with a deep backlog.
pub fn bind_dual_stack(port: u16) -> Result<TcpListener> {
    let socket = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_only_v6(false)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port).into())?;
    socket.listen(4096)?;
    Ok(TcpListener::from_std(socket.into())?)
}

/// Accepts forever, one task per connection.
pub async fn serve(listener: TcpListener, app: App) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(async move {
                    // A client that goes away mid-stream is not the server's problem.
                    let _ = match app {
                        App::Echo => echo(stream).await.map(drop),
                        App::ReplyAfterEof => reply_after_eof(stream).await,
                    };
                });
            }
            // Out of descriptors or a connection reset before accept: try again soon.
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// Copies everything from `reader` to `writer` with a big buffer; returns the bytes.
pub async fn pump<R, W>(reader: &mut R, writer: &mut W) -> std::io::Result<u64>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut buf = vec![0u8; COPY_BUF];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            return Ok(total);
        }
        writer.write_all(&buf[..n]).await?;
        total += n as u64;
    }
}

/// The echo app for one connection.
pub async fn echo(stream: TcpStream) -> std::io::Result<u64> {
    let (mut r, mut w) = stream.into_split();
    let n = pump(&mut r, &mut w).await?;
    w.shutdown().await?;
    Ok(n)
}

/// The reply-after-EOF app for one connection.
pub async fn reply_after_eof(mut stream: TcpStream) -> std::io::Result<()> {
    let mut data = Vec::new();
    stream.read_to_end(&mut data).await?;
    let mut reply = [0u8; 16];
    reply[..8].copy_from_slice(&(data.len() as u64).to_be_bytes());
    reply[8..].copy_from_slice(&checksum(&data).to_be_bytes());
    stream.write_all(&reply).await?;
    stream.shutdown().await
}

/// Sends `data` to an echo server at `addr` and reads the echo to its end, both
/// directions at once.
pub async fn echo_roundtrip(addr: SocketAddr, data: &[u8]) -> Result<Vec<u8>> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    echo_over(stream, data).await
}

/// [`echo_roundtrip`] over an already connected stream.
pub async fn echo_over(stream: TcpStream, data: &[u8]) -> Result<Vec<u8>> {
    let (mut r, mut w) = stream.into_split();
    let write = async {
        w.write_all(data).await?;
        w.shutdown().await
    };
    let read = async {
        let mut back = Vec::with_capacity(data.len());
        r.read_to_end(&mut back).await.map(|_| back)
    };
    let (written, back) = tokio::join!(write, read);
    written.context("sending")?;
    back.context("reading the echo")
}

/// Sends `data`, shuts the write side, then reads the server's whole reply.
pub async fn send_then_read_reply(addr: SocketAddr, data: &[u8]) -> Result<Vec<u8>> {
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.write_all(data).await.context("sending")?;
    stream.shutdown().await.context("half-closing")?;
    let mut reply = Vec::new();
    stream
        .read_to_end(&mut reply)
        .await
        .context("reading the reply")?;
    Ok(reply)
}

/// Decodes a [`App::ReplyAfterEof`] answer into (length, checksum).
pub fn decode_reply(reply: &[u8]) -> Option<(u64, u64)> {
    let len = u64::from_be_bytes(reply.get(..8)?.try_into().ok()?);
    let sum = u64::from_be_bytes(reply.get(8..16)?.try_into().ok()?);
    (reply.len() == 16).then_some((len, sum))
}

/// `len` pseudo-random bytes from `seed` (xorshift64*): incompressible, reproducible
/// and cheap even in a debug build.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A fast, order-sensitive 64-bit checksum (not cryptographic: it catches lost,
/// reordered or corrupted bytes, which is what transfer tests need).
pub fn checksum(data: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h = (data.len() as u64).wrapping_mul(K);
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        h = (h ^ u64::from_le_bytes(b)).wrapping_mul(K).rotate_left(29);
    }
    for &b in words.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(K).rotate_left(29);
    }
    h ^ (h >> 31)
}

/// Raises this process's soft open-files limit to its hard limit (children inherit
/// it); returns the new soft limit. Thousands of sockets need it.
pub fn raise_nofile_limit() -> Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit")?;
    let want = hard.min(1 << 20);
    if soft < want {
        setrlimit(Resource::RLIMIT_NOFILE, want, hard).context("setrlimit")?;
    }
    Ok(want.max(soft))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_reproducible_and_checksums_differ() {
        let a = random_bytes(1000, 7);
        assert_eq!(a, random_bytes(1000, 7));
        assert_ne!(a, random_bytes(1000, 8));
        assert_eq!(checksum(&a), checksum(&a.clone()));
        let mut b = a.clone();
        b.swap(3, 500);
        assert_ne!(checksum(&a), checksum(&b));
        assert_ne!(checksum(&a[..999]), checksum(&a));
        assert_ne!(checksum(&[]), checksum(&[0]));
    }

    #[test]
    fn reply_codec() {
        let mut r = 5u64.to_be_bytes().to_vec();
        r.extend_from_slice(&9u64.to_be_bytes());
        assert_eq!(decode_reply(&r), Some((5, 9)));
        assert_eq!(decode_reply(&r[..15]), None);
    }

    // Loopback of the test process's own namespace only; no wildcard listener here.
    #[tokio::test]
    async fn echo_and_reply_on_loopback() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, App::Echo));
        let data = random_bytes(3 * COPY_BUF + 5, 1);
        let back = echo_roundtrip(addr, &data).await.unwrap();
        assert_eq!(checksum(&back), checksum(&data));

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, App::ReplyAfterEof));
        let reply = send_then_read_reply(addr, &data).await.unwrap();
        assert_eq!(
            decode_reply(&reply),
            Some((data.len() as u64, checksum(&data)))
        );
    }
}
