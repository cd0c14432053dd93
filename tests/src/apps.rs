//! The applications tests run inside pods: the test kit's echo and reply-after-EOF
//! servers on a dual-stack listener in a pod, and clients for them.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use pillion::local::Pod;
use pillion::local::Task;

pub use pillion_testkit::tcp::{
    checksum, decode_reply, echo, echo_over, pump, random_bytes, reply_after_eof, COPY_BUF,
};

/// What a test server does with each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum App {
    /// Writes back everything it reads; shuts its write side when the client does.
    Echo,
    /// Reads until EOF, then answers with the 8-byte length and 8-byte [`checksum`] of
    /// what it read (big-endian) and closes: exercises half-close.
    ReplyAfterEof,
    /// Speaks first, as SMTP, MySQL or SSH do ([`GREETING`]), then echoes.
    Greeter,
}

/// What [`App::Greeter`] says before the client has said anything.
pub const GREETING: &[u8] = b"220 pillion greeter ready\r\n";

/// Starts `app` in `pod`, listening on `[::]:port` for both IPv4 and IPv6, and returns
/// once it is bound. Drop (or shut down) the task to stop it.
pub fn spawn_server(pod: &Pod, port: u16, app: App) -> Result<Task<()>> {
    spawn_listener(pod, port, &format!("{app:?} server"), move |listener| {
        serve(listener, app)
    })
}

pub use pillion::local::apps::{bind_dual_stack, spawn_listener};

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
                        App::Greeter => greet_then_echo(stream).await,
                    };
                });
            }
            // Out of descriptors or a connection reset before accept: try again soon.
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// Writes [`GREETING`], then echoes.
async fn greet_then_echo(mut stream: TcpStream) -> std::io::Result<()> {
    stream.write_all(GREETING).await?;
    echo(stream).await.map(drop)
}

/// Sends `data` to an echo server at `addr` and reads the echo to its end, both
/// directions at once.
pub async fn echo_roundtrip(addr: SocketAddr, data: &[u8]) -> Result<Vec<u8>> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    echo_over(stream, data).await.context("echoing")
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
