//! A tiny HTTP/1.1 client (hyper's connection API over one tokio `TcpStream`) for the
//! proxies' admin endpoints.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::HOST;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Bound of one admin request, connect to last body byte.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Status and body of one response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The body, lossily decoded as UTF-8.
    pub body: String,
}

/// Sends one bodiless request (`GET`, `POST`, …) to `addr` and reads the whole answer,
/// within [`REQUEST_TIMEOUT`]. Must run inside a tokio runtime (e.g. in a pod thread).
pub async fn request(addr: SocketAddr, method: &str, path: &str) -> Result<HttpResponse> {
    tokio::time::timeout(REQUEST_TIMEOUT, request_unbounded(addr, method, path))
        .await
        .with_context(|| format!("{method} http://{addr}{path} timed out"))?
}

async fn request_unbounded(addr: SocketAddr, method: &str, path: &str) -> Result<HttpResponse> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP/1.1 handshake")?;
    let driver = tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .context("building the request")?;
    let result = async {
        let resp = sender
            .send_request(req)
            .await
            .context("sending the request")?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .context("reading the body")?
            .to_bytes();
        Ok(HttpResponse {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
    .await;
    driver.abort();
    result
}
