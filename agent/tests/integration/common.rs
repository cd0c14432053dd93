//! Shared helpers for the agent's integration tests: temporary directories, starting
//! an agent on loopback, and a real HTTPS client (HTTP/2 over tokio-rustls, or
//! HTTP/1.1) that verifies the agent by its trust anchor and SPIFFE id.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use pillion_agent::{Agent, AgentConfig, RunningAgent, SourceSpec};
use pillion_api::view::View;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

pub const CLIENT_TOKEN: &str = "demo-client-token";
pub const SERVER_TOKEN: &str = "demo-server-token";
pub const CLIENT_ID: &str = "spiffe://cluster.local/ns/demo/sa/client";
pub const SERVER_ID: &str = "spiffe://cluster.local/ns/demo/sa/server";

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "pillion-agent-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A config that listens on loopback with a free port and reloads quickly.
pub fn loopback_config(source: SourceSpec) -> AgentConfig {
    let mut config = AgentConfig::new(source);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.reload_interval = Duration::from_millis(50);
    config
}

/// Starts an agent serving the embedded demo default.
pub async fn start_default() -> RunningAgent {
    Agent::start(loopback_config(SourceSpec::Embedded))
        .await
        .unwrap()
}

/// Writes a file in one step (write to a temp name, then rename), like an editor.
pub fn write_file(path: &Path, text: &str) {
    let tmp = path.with_extension("writing");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A real HTTPS connection to the agent.
pub enum Client {
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
}

/// Connects over TLS, verifying the agent's chain against its trust anchor and its
/// URI SAN against its SPIFFE id, then speaks HTTP/2.
pub async fn connect(agent: &RunningAgent) -> Client {
    connect_with(agent, false).await
}

/// Same, but offers only `http/1.1` in ALPN, as curl --http1.1 would.
pub async fn connect_h1(agent: &RunningAgent) -> Client {
    connect_with(agent, true).await
}

async fn connect_with(agent: &RunningAgent, http1: bool) -> Client {
    connect_to(
        agent.local_addr(),
        agent.trust_anchor_pem(),
        agent.agent_identity(),
        http1,
    )
    .await
}

/// Connects to an agent at `addr` that must prove `agent_id` under `anchor_pem`.
pub async fn connect_to(
    addr: std::net::SocketAddr,
    anchor_pem: &str,
    agent_id: &pillion_identity::SpiffeId,
    http1: bool,
) -> Client {
    let config = pillion_identity::tls::agent_client_config(anchor_pem, agent_id).unwrap();
    let config = if http1 {
        let mut c = (*config).clone();
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(c)
    } else {
        config
    };
    let name = pillion_identity::tls::server_name_for(agent_id).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = TlsConnector::from(config).connect(name, tcp).await.unwrap();
    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let io = TokioIo::new(tls);
    if http1 {
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
        let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        Client::H1(send)
    } else {
        assert_eq!(alpn.as_deref(), Some(&b"h2"[..]), "the agent must speak h2");
        let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        Client::H2(send)
    }
}

impl Client {
    /// Sends one request; `token` goes in `Authorization: Bearer`.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Vec<u8>,
    ) -> Response<Incoming> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("https://agent.pillion.test{path}"));
        if matches!(self, Client::H1(_)) {
            req = req.header("host", "agent.pillion.test");
        }
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if !body.is_empty() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(Full::new(Bytes::from(body))).unwrap();
        match self {
            Client::H2(s) => s.send_request(req).await.unwrap(),
            Client::H1(s) => {
                s.ready().await.unwrap();
                s.send_request(req).await.unwrap()
            }
        }
    }

    /// The status of a `GET` without a token: routing and health checks.
    pub async fn get_status(&mut self, path: &str) -> StatusCode {
        self.send("GET", path, None, Vec::new()).await.status()
    }

    /// Sends a JSON request and reads the whole answer.
    pub async fn json(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &serde_json::Value,
    ) -> (StatusCode, serde_json::Value) {
        let resp = self
            .send(method, path, token, serde_json::to_vec(body).unwrap())
            .await;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (status, value)
    }

    /// Opens a view stream.
    pub async fn watch(&mut self, token: &str) -> ViewStream {
        self.stream("/v1/watch", token).await
    }

    /// Opens an NDJSON stream at `path` (with its query).
    pub async fn stream(&mut self, path: &str, token: &str) -> ViewStream {
        let resp = self.send("GET", path, Some(token), Vec::new()).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            resp.headers().get("content-type").unwrap(),
            "application/x-ndjson"
        );
        ViewStream {
            body: resp.into_body(),
            buf: Vec::new(),
        }
    }
}

/// Reads newline-delimited views (or other lines) from a stream response.
pub struct ViewStream {
    body: Incoming,
    buf: Vec<u8>,
}

impl ViewStream {
    /// The next view, or `None` if none arrives within `wait` (or the stream ends).
    pub async fn next_within(&mut self, wait: Duration) -> Option<View> {
        self.next_line_within(wait).await
    }

    /// The next line as a `T`, or `None` if none arrives within `wait`.
    pub async fn next_line_within<T: serde::de::DeserializeOwned>(
        &mut self,
        wait: Duration,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return Some(serde_json::from_slice(&line[..pos]).unwrap());
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame()).await;
            match frame {
                Err(_) => return None,
                Ok(None) => return None,
                Ok(Some(frame)) => {
                    if let Ok(data) = frame.unwrap().into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    /// Whether the server ended the stream within `wait` (lines before the end are
    /// skipped).
    pub async fn ends_within(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Err(_) => return false,
                Ok(None | Some(Err(_))) => return true,
                Ok(Some(Ok(_))) => continue,
            }
        }
    }
}
