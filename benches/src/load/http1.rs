//! One HTTP/1.1 keep-alive connection (hyper's connection API over a tokio socket)
//! and the request every HTTP figure sends.

use std::net::SocketAddr;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::HOST;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Opens a TCP connection (no Nagle) and runs the HTTP/1.1 handshake; the connection's
/// driver runs as a task until the sender is dropped.
pub async fn connect_h1(addr: SocketAddr) -> Result<SendRequest<Empty<Bytes>>> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP/1.1 handshake")?;
    tokio::spawn(conn);
    Ok(sender)
}

/// Opens `n` keep-alive connections at once; fails if any cannot be opened in time.
pub async fn connect_many(addr: SocketAddr, n: usize) -> Result<Vec<SendRequest<Empty<Bytes>>>> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        set.spawn(tokio::time::timeout(
            super::REQUEST_TIMEOUT,
            connect_h1(addr),
        ));
    }
    let mut out = Vec::with_capacity(n);
    while let Some(joined) = set.join_next().await {
        let sender = joined
            .context("a connect task panicked")?
            .with_context(|| format!("connecting to {addr} timed out"))??;
        out.push(sender);
    }
    Ok(out)
}

/// `GET path` with the target as `Host`.
pub fn request(host: &str, path: &str) -> Request<Empty<Bytes>> {
    let mut req = Request::new(Empty::new());
    if let Ok(uri) = path.parse() {
        *req.uri_mut() = uri;
    }
    if let Ok(value) = host.parse() {
        req.headers_mut().insert(HOST, value);
    }
    req
}

/// Sends one `GET path` on `sender` and reads the whole answer; an error unless 200.
pub async fn get(sender: &mut SendRequest<Empty<Bytes>>, host: &str, path: &str) -> Result<()> {
    sender.ready().await.context("connection closed")?;
    let resp = sender.send_request(request(host, path)).await?;
    let status = resp.status();
    resp.into_body().collect().await?;
    if !status.is_success() {
        bail!("status {status}");
    }
    Ok(())
}

/// How one request of a [`Reconnecting`] connection went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// 200 and the whole body.
    Answered,
    /// It failed or timed out; the connection is dropped and re-opened next time.
    Failed,
    /// No connection could be opened for it.
    NoConnection,
}

/// A load worker's keep-alive connection: kept while it works, re-opened (within the
/// request timeout) after a failure.
pub struct Reconnecting {
    addr: SocketAddr,
    sender: Option<SendRequest<Empty<Bytes>>>,
}

impl Reconnecting {
    /// Starts from an open connection.
    pub fn new(addr: SocketAddr, sender: SendRequest<Empty<Bytes>>) -> Reconnecting {
        Reconnecting {
            addr,
            sender: Some(sender),
        }
    }

    /// Sends one `GET /` within the request timeout, re-opening the connection first
    /// if the last request failed.
    pub async fn get(&mut self, host: &str) -> Sent {
        self.get_path(host, "/").await
    }

    /// [`Reconnecting::get`] of another path.
    pub async fn get_path(&mut self, host: &str, path: &str) -> Sent {
        use tokio::time::timeout;
        let sender = match self.sender.as_mut() {
            Some(s) => s,
            None => match timeout(super::REQUEST_TIMEOUT, connect_h1(self.addr)).await {
                Ok(Ok(s)) => self.sender.insert(s),
                _ => return Sent::NoConnection,
            },
        };
        match timeout(super::REQUEST_TIMEOUT, get(sender, host, path)).await {
            Ok(Ok(())) => Sent::Answered,
            _ => {
                self.sender = None;
                Sent::Failed
            }
        }
    }
}
