//! A closed loop of HTTPS keep-alive connections (TLS 1.3, HTTP/1.1 by ALPN), each
//! sending its next request as soon as the previous answer is in, for a fixed time,
//! with every request's latency in one histogram: what a visitor sees at the edge.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{Throughput, REQUEST_TIMEOUT};

/// Where the load goes and whom it trusts.
#[derive(Clone)]
pub struct Edge {
    /// The edge proxy's address.
    pub addr: SocketAddr,
    /// The name asked for (SNI, `Host`).
    pub host: &'static str,
    /// The client's TLS configuration (the edge's CA).
    pub tls: Arc<rustls::ClientConfig>,
}

impl Edge {
    /// An edge at `addr` serving `host` with a certificate from the CA in `ca_pem`.
    pub fn new(addr: SocketAddr, host: &'static str, ca_pem: &str) -> Result<Edge> {
        let mut roots = rustls::RootCertStore::empty();
        for block in pem_blocks(ca_pem) {
            roots.add(block.into())?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Edge {
            addr,
            host,
            tls: Arc::new(config),
        })
    }

    async fn connect(&self) -> Result<SendRequest<Empty<Bytes>>> {
        let tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(self.host)?;
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(&self.tls))
            .connect(name, tcp)
            .await
            .context("TLS with the edge")?;
        let (sender, conn) = http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        Ok(sender)
    }
}

/// The DER of each `CERTIFICATE` block of `pem`.
fn pem_blocks(pem: &str) -> Vec<Vec<u8>> {
    use base64::Engine;
    let mut out = Vec::new();
    let mut body = String::new();
    let mut inside = false;
    for line in pem.lines() {
        match line.trim() {
            "-----BEGIN CERTIFICATE-----" => {
                inside = true;
                body.clear();
            }
            "-----END CERTIFICATE-----" => {
                inside = false;
                if let Ok(der) = base64::engine::general_purpose::STANDARD.decode(&body) {
                    out.push(der);
                }
            }
            l if inside => body.push_str(l),
            _ => {}
        }
    }
    out
}

/// Runs `conns` connections against `edge` for `duration`, asking for `path`; the
/// throughput and every answered request's latency (microseconds).
pub async fn run(
    edge: &Edge,
    conns: usize,
    duration: Duration,
    path: &'static str,
) -> Result<(Throughput, Histogram<u64>)> {
    let mut senders = Vec::with_capacity(conns);
    for _ in 0..conns {
        let sender = tokio::time::timeout(REQUEST_TIMEOUT, edge.connect())
            .await
            .context("connecting to the edge timed out")??;
        senders.push(sender);
    }
    let start = Instant::now();
    let deadline = start + duration;
    let mut workers = Vec::with_capacity(conns);
    for sender in senders {
        let latency = Histogram::<u64>::new(3)?;
        workers.push(tokio::spawn(worker(
            edge.clone(),
            sender,
            deadline,
            path,
            latency,
        )));
    }
    let mut total = Throughput {
        ok: 0,
        errors: 0,
        seconds: 0.0,
    };
    let mut latency = Histogram::<u64>::new(3)?;
    for w in workers {
        let (ok, errors, h) = w.await.context("a TLS load worker panicked")?;
        total.ok += ok;
        total.errors += errors;
        latency.add(h)?;
    }
    total.seconds = start.elapsed().as_secs_f64();
    Ok((total, latency))
}

async fn worker(
    edge: Edge,
    sender: SendRequest<Empty<Bytes>>,
    deadline: Instant,
    path: &'static str,
    mut latency: Histogram<u64>,
) -> (u64, u64, Histogram<u64>) {
    let (mut ok, mut errors) = (0, 0);
    let mut sender = Some(sender);
    while Instant::now() < deadline {
        let mut current = match sender.take() {
            Some(s) => s,
            None => match tokio::time::timeout(REQUEST_TIMEOUT, edge.connect()).await {
                Ok(Ok(s)) => s,
                _ => {
                    errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let sent = Instant::now();
        match tokio::time::timeout(REQUEST_TIMEOUT, get(&mut current, edge.host, path)).await {
            Ok(Ok(())) => {
                ok += 1;
                let _ = latency.record(sent.elapsed().as_micros() as u64);
                sender = Some(current);
            }
            _ => errors += 1,
        }
    }
    (ok, errors, latency)
}

async fn get(sender: &mut SendRequest<Empty<Bytes>>, host: &str, path: &str) -> Result<()> {
    sender.ready().await.context("connection closed")?;
    let resp = sender
        .send_request(super::http1::request(host, path))
        .await?;
    let status = resp.status();
    resp.into_body().collect().await?;
    if !status.is_success() {
        bail!("status {status}");
    }
    Ok(())
}
