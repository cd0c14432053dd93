//! TCP test applications and clients: an echo server that answers each chunk as it
//! arrives and half-closes after the client does, a reply-after-EOF server, the
//! clients that talk to them, and reproducible test data with a checksum.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Size of the copy buffers the apps use; big, so bulk transfers cost few syscalls.
pub const COPY_BUF: usize = 256 * 1024;

/// An echo server on a free loopback port.
pub async fn echo_server() -> SocketAddr {
    echo_server_on(std::net::Ipv4Addr::LOCALHOST.into()).await
}

/// An echo server on `ip` at a free port (e.g. 127.0.0.2, standing in for a pod's
/// own address beside loopback's 127.0.0.1).
pub async fn echo_server_on(ip: std::net::IpAddr) -> SocketAddr {
    let listener = TcpListener::bind((ip, 0))
        .await
        .expect("a port on that address");
    let addr = listener.local_addr().expect("a bound address");
    spawn_echo(listener);
    addr
}

/// An echo server on `addr`.
pub async fn echo_on(addr: SocketAddr) {
    spawn_echo(TcpListener::bind(addr).await.expect("the echo address"));
}

fn spawn_echo(listener: TcpListener) {
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(echo(stream));
        }
    });
}

/// Copies `reader` to `writer` until EOF; the bytes copied.
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

/// The echo app for one connection: writes back everything, then half-closes.
pub async fn echo(stream: TcpStream) -> std::io::Result<u64> {
    let (mut r, mut w) = stream.into_split();
    let n = pump(&mut r, &mut w).await?;
    w.shutdown().await?;
    Ok(n)
}

/// The reply-after-EOF app for one connection: reads to EOF, then answers the
/// 8-byte length and 8-byte [`checksum`] of what it read (big-endian) and closes.
pub async fn reply_after_eof(mut stream: TcpStream) -> std::io::Result<()> {
    let mut data = Vec::new();
    stream.read_to_end(&mut data).await?;
    let mut reply = [0u8; 16];
    reply[..8].copy_from_slice(&(data.len() as u64).to_be_bytes());
    reply[8..].copy_from_slice(&checksum(&data).to_be_bytes());
    stream.write_all(&reply).await?;
    stream.shutdown().await
}

/// Decodes a [`reply_after_eof`] answer into (length, checksum).
pub fn decode_reply(reply: &[u8]) -> Option<(u64, u64)> {
    let len = u64::from_be_bytes(reply.get(..8)?.try_into().ok()?);
    let sum = u64::from_be_bytes(reply.get(8..16)?.try_into().ok()?);
    (reply.len() == 16).then_some((len, sum))
}

/// Sends `msg`, half-closes, and reads the whole answer until EOF, within 10 s.
pub async fn exchange(addr: SocketAddr, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let fut = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(msg).await?;
        s.shutdown().await?;
        let mut got = Vec::new();
        s.read_to_end(&mut got).await?;
        Ok(got)
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// Sends `data` over `stream` and reads the echo to its end, both directions at once.
pub async fn echo_over(stream: TcpStream, data: &[u8]) -> std::io::Result<Vec<u8>> {
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
    written?;
    back
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn echo_and_reply_after_eof_round_trip() {
        let addr = echo_server().await;
        let data = random_bytes(100_000, 7);
        assert_eq!(exchange(addr, &data).await.unwrap(), data);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            reply_after_eof(s).await.unwrap();
        });
        let reply = exchange(at, &data).await.unwrap();
        assert_eq!(decode_reply(&reply), Some((100_000, checksum(&data))));
        assert_ne!(checksum(&data), checksum(&random_bytes(100_000, 8)));
    }
}
