//! The server every row talks to, run in-process on a pod thread: an HTTP server
//! (HTTP/1.1 keep-alive and h2c prior knowledge on one port) answering a small fixed
//! body, and a TCP sink for the bulk test that answers the byte count after EOF.

use std::convert::Infallible;
use std::net::{Ipv6Addr, SocketAddr};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The body of every HTTP answer: small, so the figures measure the proxies, not copying.
pub const BODY: &[u8] = b"hello from the pillion bench server\n";
/// Port of the HTTP server in a server pod.
pub const HTTP_PORT: u16 = 8080;
/// Port of the TCP sink in a server pod.
pub const SINK_PORT: u16 = 9000;
/// Listen backlog: the new-connection test opens connections fast.
const BACKLOG: i32 = 4096;
/// Concurrent HTTP/2 streams a client may open per connection.
const H2_STREAMS: u32 = 1024;

/// Binds `[::]:port` for IPv4 and IPv6 with a deep backlog.
pub fn bind(port: u16) -> Result<TcpListener> {
    let socket = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_only_v6(false)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    let addr = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
    socket
        .bind(&addr.into())
        .with_context(|| format!("binding {addr}"))?;
    socket.listen(BACKLOG)?;
    Ok(TcpListener::from_std(socket.into())?)
}

/// Serves HTTP on `http` and the sink on `sink` until the future is dropped.
pub async fn serve(http: TcpListener, sink: TcpListener) {
    tokio::join!(serve_http(http), serve_sink(sink));
}

async fn serve_http(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http2()
                .max_concurrent_streams(H2_STREAMS)
                .keep_alive_interval(None);
            let service = service_fn(|_req: Request<hyper::body::Incoming>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(BODY))))
            });
            // A client that goes away mid-request is normal under load.
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn serve_sink(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(sink(stream));
    }
}

/// Reads to EOF, then writes the byte count (8 bytes, big-endian) and closes.
async fn sink(mut stream: TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total: u64 = 0;
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    stream.write_all(&total.to_be_bytes()).await?;
    stream.shutdown().await
}
