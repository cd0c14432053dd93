//! The proxy's HTTPS client to the agent: one HTTP/2 connection over TLS (the agent
//! verified by the store's current trust bundle and its SPIFFE id), reopened when
//! it dies, and a bearer token read from its file before every request.
//!
//! `--agent-addr` may name several replicas (`a:15012,b:15012`): the first that
//! answers is used, and when its connection is lost the next one is tried first,
//! so a replica that goes away costs one reconnect. (In Kubernetes the agent's
//! Service address already spreads proxies over the replicas.)

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use pillion_api::certs::{
    CertificateRequest, CertificateResponse, ErrorBody, CERTIFICATES_PATH, WATCH_PATH,
};
use pillion_api::resolve::{resolve_query, ON_DEMAND_QUERY, RESOLVE_PATH};
use pillion_identity::{BundleSource, CertStore};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::config::ControlConfig;

/// Time to reach the agent and finish TLS and the HTTP/2 handshake.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a certificate request may take, answer included.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 PING interval, so a dead agent is noticed even on an idle watch.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Time a PING has to be answered.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest answer to a certificate request read.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Why a request to the agent failed. Tokens never appear in these messages.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The agent's address did not resolve.
    #[error("cannot resolve the agent address {addr}: {source}")]
    Resolve {
        /// The address.
        addr: String,
        /// The resolver's error.
        #[source]
        source: io::Error,
    },
    /// TCP or TLS to the agent failed.
    #[error("cannot connect to the agent at {addr}: {source}")]
    Connect {
        /// The address.
        addr: String,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// Reaching the agent took too long.
    #[error("connecting to the agent at {addr} timed out after {timeout:?}")]
    ConnectTimeout {
        /// The address.
        addr: String,
        /// The bound.
        timeout: Duration,
    },
    /// HTTP/2 failed (handshake, stream, or connection).
    #[error("HTTP/2 with the agent at {addr} failed: {source}")]
    Http {
        /// The address.
        addr: String,
        /// hyper's error.
        #[source]
        source: hyper::Error,
    },
    /// The request took too long.
    #[error("{path} on the agent timed out after {timeout:?}")]
    RequestTimeout {
        /// The request path.
        path: &'static str,
        /// The bound.
        timeout: Duration,
    },
    /// The token file cannot be read or holds no usable token.
    #[error("the token file {}: {reason}", path.display())]
    Token {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The agent answered with an error status.
    #[error("the agent refused {path} with {status}: {code}: {reason}")]
    Refused {
        /// The request path.
        path: &'static str,
        /// The HTTP status.
        status: StatusCode,
        /// The machine code of its error body (`unknown` if it sent none).
        code: String,
        /// Its explanation.
        reason: String,
    },
    /// The answer cannot be read or parsed.
    #[error("the agent's answer to {path} is unusable: {reason}")]
    BadResponse {
        /// The request path.
        path: &'static str,
        /// Why.
        reason: String,
    },
}

/// Why a client could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] pillion_identity::TlsError),
    /// The trust anchors are not a usable bundle.
    #[error("the trust anchors cannot be used: {0}")]
    Anchors(#[from] pillion_identity::StoreError),
}

/// The certificate chain an agent proved on the open connection.
pub(crate) type AgentChain = Arc<[CertificateDer<'static>]>;

/// The open connection to the agent and the chain it proved.
struct Link {
    sender: SendRequest<Full<Bytes>>,
    chain: AgentChain,
    /// Which replica it goes to.
    replica: usize,
}

/// One agent replica's address.
#[derive(Debug)]
struct Replica {
    addr: String,
    server_name: ServerName<'static>,
}

/// A client of the agent (one or several replicas), shared by the certificate,
/// watch and discovery loops.
pub struct AgentClient {
    /// As configured, for logs.
    addr: String,
    replicas: Vec<Replica>,
    /// The replica to try first on the next connect.
    next: std::sync::atomic::AtomicUsize,
    tls: TlsConnector,
    token_file: PathBuf,
    conn: tokio::sync::Mutex<Option<Link>>,
}

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient")
            .field("addr", &self.addr)
            .field("token_file", &self.token_file)
            .finish_non_exhaustive()
    }
}

impl AgentClient {
    /// A client for the agent `config` names, trusting its anchors alone (probes
    /// and tests); no connection is made yet.
    pub fn new(config: &ControlConfig) -> Result<AgentClient, ClientError> {
        let store = Arc::new(CertStore::new(config.workload.clone()));
        store.offer_trust_bundle(&config.trust_anchors_pem, BundleSource::File, None)?;
        AgentClient::following(config, store)
    }

    /// A client for the agent `config` names that trusts what `store` trusts now,
    /// handshake by handshake: the proxy's one bundle verifies mesh peers and the
    /// agent alike, so a new root reaches both at once. No connection is made yet.
    pub fn following(
        config: &ControlConfig,
        store: Arc<CertStore>,
    ) -> Result<AgentClient, ClientError> {
        let tls =
            pillion_identity::tls::agent_client_config_following(store, &config.agent_identity)?;
        let replicas = (config.agent_addr.split(','))
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(|addr| Replica {
                server_name: server_name(addr),
                addr: addr.to_string(),
            })
            .collect();
        Ok(AgentClient {
            addr: config.agent_addr.clone(),
            replicas,
            next: std::sync::atomic::AtomicUsize::new(0),
            tls: TlsConnector::from(tls),
            token_file: config.token_file.clone(),
            conn: tokio::sync::Mutex::new(None),
        })
    }

    /// The agent's address (or replicas' addresses) as configured.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The chain the agent proved on the connection open now, if one is: a new
    /// trust bundle must still trust it, or this proxy would cut itself off.
    pub(crate) async fn agent_chain(&self) -> Option<AgentChain> {
        let conn = self.conn.lock().await;
        conn.as_ref()
            .filter(|link| !link.sender.is_closed())
            .map(|link| Arc::clone(&link.chain))
    }

    /// `POST /v1/certificates`: asks for a certificate for `csr_pem`.
    pub async fn request_certificate(
        &self,
        csr_pem: String,
    ) -> Result<CertificateResponse, AgentError> {
        let path = CERTIFICATES_PATH;
        let body = serde_json::to_vec(&CertificateRequest { csr_pem }).map_err(|e| {
            AgentError::BadResponse {
                path,
                reason: format!("cannot encode the request: {e}"),
            }
        })?;
        let exchange = async {
            let resp = self.send(Method::POST, path, "", Bytes::from(body)).await?;
            let status = resp.status();
            let bytes = read_limited(resp.into_body(), path).await?;
            if status != StatusCode::OK {
                return Err(refused(path, status, &bytes));
            }
            serde_json::from_slice::<CertificateResponse>(&bytes).map_err(|e| {
                AgentError::BadResponse {
                    path,
                    reason: e.to_string(),
                }
            })
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(result) => result,
            Err(_) => Err(AgentError::RequestTimeout {
                path,
                timeout: REQUEST_TIMEOUT,
            }),
        }
    }

    /// `GET /v1/watch`: opens the view stream; its body yields NDJSON views. An
    /// on-demand view carries no services (see [`AgentClient::resolve`]).
    pub async fn watch(&self, on_demand: bool) -> Result<Incoming, AgentError> {
        let query = if on_demand { ON_DEMAND_QUERY } else { "" };
        self.stream(WATCH_PATH, query).await
    }

    /// `GET /v1/resolve`: opens the answer stream for one destination; its body
    /// yields NDJSON [`pillion_api::resolve::Resolution`]s.
    pub async fn resolve(&self, addr: SocketAddr) -> Result<Incoming, AgentError> {
        self.stream(RESOLVE_PATH, &resolve_query(addr)).await
    }

    /// Opens a streaming GET; a refusal is read whole and reported.
    async fn stream(&self, path: &'static str, query: &str) -> Result<Incoming, AgentError> {
        let opened = async {
            let resp = self.send(Method::GET, path, query, Bytes::new()).await?;
            let status = resp.status();
            if status != StatusCode::OK {
                let bytes = read_limited(resp.into_body(), path).await?;
                return Err(refused(path, status, &bytes));
            }
            Ok(resp.into_body())
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, opened).await {
            Ok(result) => result,
            Err(_) => Err(AgentError::RequestTimeout {
                path,
                timeout: REQUEST_TIMEOUT,
            }),
        }
    }

    /// Sends one request (`query` may be empty) with the current token over the
    /// shared connection, opening it first if needed.
    async fn send(
        &self,
        method: Method,
        path: &'static str,
        query: &str,
        body: Bytes,
    ) -> Result<http::Response<Incoming>, AgentError> {
        let token = self.token().await?;
        let separator = if query.is_empty() { "" } else { "?" };
        let (mut sender, authority) = self.sender().await?;
        let mut req = Request::builder()
            .method(method)
            .uri(format!("https://{authority}{path}{separator}{query}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| AgentError::BadResponse {
                path,
                reason: format!("cannot build the request: {e}"),
            })?;
        req.headers_mut().insert(header::AUTHORIZATION, token);
        match sender.send_request(req).await {
            Ok(resp) => Ok(resp),
            Err(source) => {
                // The connection may be gone; the next request opens a new one,
                // trying the next replica first.
                if let Some(lost) = self.conn.lock().await.take() {
                    self.move_past(lost.replica);
                }
                Err(AgentError::Http {
                    addr: authority.to_string(),
                    source,
                })
            }
        }
    }

    /// `Bearer <token>` from the token file, marked sensitive so it is never logged.
    async fn token(&self) -> Result<HeaderValue, AgentError> {
        let bad = |reason: String| AgentError::Token {
            path: self.token_file.clone(),
            reason,
        };
        let text = tokio::fs::read_to_string(&self.token_file)
            .await
            .map_err(|e| bad(format!("cannot be read: {e}")))?;
        let token = text.trim();
        if token.is_empty() {
            return Err(bad("is empty".into()));
        }
        let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| bad("holds characters a token cannot have".into()))?;
        value.set_sensitive(true);
        Ok(value)
    }

    /// Makes the replica after `lost` the first to try on the next connect.
    fn move_past(&self, lost: usize) {
        let after = (lost + 1) % self.replicas.len().max(1);
        self.next.store(after, std::sync::atomic::Ordering::Relaxed);
    }

    /// The open connection's sender and the replica's address, or a new
    /// connection's: a lost one moves to the next replica first.
    async fn sender(&self) -> Result<(SendRequest<Full<Bytes>>, &str), AgentError> {
        use std::sync::atomic::Ordering;
        let mut conn = self.conn.lock().await;
        if let Some(link) = conn.as_mut() {
            if !link.sender.is_closed() && link.sender.ready().await.is_ok() {
                return Ok((link.sender.clone(), &self.replicas[link.replica].addr));
            }
            self.move_past(link.replica);
        }
        *conn = None;
        let first = self.next.load(Ordering::Relaxed);
        let mut last = None;
        for k in 0..self.replicas.len() {
            let i = (first + k) % self.replicas.len();
            let replica = &self.replicas[i];
            let attempt = tokio::time::timeout(CONNECT_TIMEOUT, self.connect(replica, i)).await;
            match attempt {
                Ok(Ok(link)) => {
                    self.next.store(i, Ordering::Relaxed);
                    let sender = link.sender.clone();
                    *conn = Some(link);
                    return Ok((sender, &replica.addr));
                }
                Ok(Err(e)) => last = Some(e),
                Err(_) => {
                    last = Some(AgentError::ConnectTimeout {
                        addr: replica.addr.clone(),
                        timeout: CONNECT_TIMEOUT,
                    })
                }
            }
            if self.replicas.len() > 1 {
                tracing::debug!(agent = %replica.addr, "agent replica unreachable; trying the next");
            }
        }
        Err(last.unwrap_or_else(|| AgentError::Connect {
            addr: self.addr.clone(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "no agent address"),
        }))
    }

    /// TCP, TLS (verifying the agent), then the HTTP/2 handshake to `replica`
    /// (number `index`); the connection is driven by a task that ends when it closes.
    async fn connect(&self, replica: &Replica, index: usize) -> Result<Link, AgentError> {
        let connect_err = |source| AgentError::Connect {
            addr: replica.addr.clone(),
            source,
        };
        let mut addrs = tokio::net::lookup_host(&replica.addr)
            .await
            .map_err(|source| AgentError::Resolve {
                addr: replica.addr.clone(),
                source,
            })?;
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the name resolved to no address");
        let mut tcp = None;
        for addr in addrs.by_ref() {
            match TcpStream::connect(addr).await {
                Ok(stream) => {
                    tcp = Some(stream);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let tcp = tcp.ok_or_else(|| connect_err(last))?;
        let _ = tcp.set_nodelay(true);
        let tls = self
            .tls
            .connect(replica.server_name.clone(), tcp)
            .await
            .map_err(connect_err)?;
        let chain: AgentChain = tls
            .get_ref()
            .1
            .peer_certificates()
            .map(|certs| certs.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default();
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|source| AgentError::Http {
                addr: replica.addr.clone(),
                source,
            })?;
        let addr = replica.addr.clone();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(agent = %addr, %error, "agent connection ended");
            }
        });
        tracing::debug!(agent = %replica.addr, "connected to the agent");
        Ok(Link {
            sender,
            chain,
            replica: index,
        })
    }
}

/// Reads a whole (small) body.
async fn read_limited(body: Incoming, path: &'static str) -> Result<Bytes, AgentError> {
    Limited::new(body, MAX_RESPONSE_BYTES)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| AgentError::BadResponse {
            path,
            reason: format!("cannot read the body: {e}"),
        })
}

/// The error for a non-200 answer, with the agent's code and reason if it sent them.
fn refused(path: &'static str, status: StatusCode, body: &[u8]) -> AgentError {
    let (code, reason) = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => (b.error, b.reason),
        Err(_) => (
            "unknown".to_string(),
            String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
        ),
    };
    AgentError::Refused {
        path,
        status,
        code,
        reason,
    }
}

/// The TLS server name for `addr`'s host (SNI only; trust is by SPIFFE id). A
/// host that is no valid name falls back to an address, which sends no SNI.
fn server_name(addr: &str) -> ServerName<'static> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).unwrap_or(ServerName::IpAddress(
        std::net::IpAddr::from(std::net::Ipv4Addr::LOCALHOST).into(),
    ))
}
