//! The inbound stack (listener 15006): connections to this pod go to the local
//! application at the address and port the caller aimed at ([`target`]), and never
//! anywhere else. Top to bottom:
//!
//! 1. refuse a connection not aimed at this pod, or one that would loop back into
//!    the proxy;
//! 2. take the port's policy from the state the connection arrived with;
//! 3. detect mesh TLS ([`crate::detect::tls`]) and terminate it: the client's
//!    SPIFFE id becomes the peer identity;
//! 4. admit the connection ([`admit`]): plaintext only where the port is
//!    permissive, a peer identity the port does not allow only for HTTP (where each
//!    request gets its 403);
//! 5. detect HTTP ([`crate::detect::http`]), then serve it per request ([`http`]:
//!    authorization, server rate limits, pooled connections to the application), or
//!    relay the bytes to the application.

pub(crate) mod admit;
pub(crate) mod http;
pub(crate) mod target;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use ::http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::app::inputs::Inputs;
use crate::detect::tls::Detected;
use crate::detect::{self, Peek, Protocol, Strict};
use crate::http::server::HEADER_READ_TIMEOUT;
use crate::state::inbound::PortRule;
use crate::telemetry::metrics::mesh::Denied;
use crate::telemetry::metrics::Direction;
use crate::transport::accept::{Accepted, ConnInfo, Stack};
use crate::transport::relay::Relay;
use crate::transport::tls::{self, MeshTls, HANDSHAKE_TIMEOUT};
use crate::upstream::connect::UpstreamConnector;
use crate::upstream::Upstream;
use admit::Verdict;
use http::Peer;

/// How a port's bytes are told apart, from its connection-level rule (which is let
/// go before the connection is served).
#[derive(Debug, Clone, Copy)]
struct Detection {
    /// A service marks the port opaque: no detection.
    marked_opaque: bool,
    /// HTTP or a refusal, never relayed bytes ([`PortRule::fails_closed`]).
    fails_closed: bool,
}

impl Detection {
    fn of(rule: &PortRule<'_>) -> Detection {
        Detection {
            marked_opaque: rule.opaque,
            fails_closed: rule.fails_closed(),
        }
    }
}

/// Serves connections from elsewhere to the local application.
#[derive(Debug)]
pub(crate) struct Inbound {
    relay: Relay,
    inputs: Arc<Inputs>,
    /// Connection pools towards the application, one per port, shared by every
    /// inbound HTTP connection.
    apps: Mutex<HashMap<SocketAddr, Arc<Upstream>>>,
}

impl Inbound {
    /// The inbound stack over the proxy's inputs, relaying through `relay`.
    pub(crate) fn new(relay: Relay, inputs: Arc<Inputs>) -> Inbound {
        Inbound {
            relay,
            inputs,
            apps: Mutex::new(HashMap::new()),
        }
    }

    /// The pools towards the application at `target`.
    fn app(&self, target: SocketAddr) -> Arc<Upstream> {
        let mut apps = self.apps.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(apps.entry(target).or_insert_with(|| {
            Arc::new(Upstream::new(UpstreamConnector::new(
                target,
                None,
                self.inputs.settings.connect_timeout,
            )))
        }))
    }

    /// Detects, authenticates and admits one connection, then serves it.
    async fn serve_meshed(
        &self,
        stream: TcpStream,
        info: ConnInfo,
        target: SocketAddr,
        tls: &MeshTls,
    ) {
        // The state the connection arrived with decides it; it is let go before the
        // connection is served.
        let state = self.inputs.state.load_full();
        let port = info.orig_dst.port();
        let detect_timeout = self.inputs.settings.detect_timeout;
        let handshake_deadline = Instant::now() + detect_timeout.max(HANDSHAKE_TIMEOUT);
        match detect::tls::detect(Peek::new(stream, detect_timeout)).await {
            Detected::Mesh(start) => {
                let (tls, peer) = match tls::accept(tls, *start, handshake_deadline).await {
                    Ok(done) => done,
                    Err(err) => {
                        self.inputs
                            .mesh_metrics
                            .handshake_failed(Direction::Inbound, err.reason);
                        tracing::warn!(reason = err.reason.as_str(), error = %err.source,
                            "mesh TLS handshake failed; closing the connection");
                        return;
                    }
                };
                tracing::Span::current().record("peer_identity", peer.as_str());
                let rule = state.inbound().rule(port);
                let verdict = admit::admit(rule, Some(peer.as_str()));
                let detection = Detection::of(&rule);
                drop(state);
                if let Verdict::Refuse(denied) = verdict {
                    return self.refuse(denied);
                }
                self.inputs
                    .mesh_metrics
                    .tls_connection(Direction::Inbound, peer.as_str());
                tracing::debug!("mesh TLS accepted");
                let peer = Peer::verified(peer.as_str());
                let peek = Peek::new(tls, detect_timeout);
                self.serve_admitted(peek, &info, target, peer, verdict, detection)
                    .await;
            }
            Detected::Plain(reason, peek) => {
                let rule = state.inbound().rule(port);
                let verdict = admit::admit(rule, None);
                let detection = Detection::of(&rule);
                drop(state);
                if let Verdict::Refuse(denied) = verdict {
                    tracing::info!(detected = reason.as_str(), "plaintext on a strict port");
                    return self.refuse(denied);
                }
                self.inputs.mesh_metrics.passthrough(Direction::Inbound);
                self.serve_admitted(peek, &info, target, None, verdict, detection)
                    .await;
            }
        }
    }

    /// Detects HTTP in an admitted connection (plaintext, or already decrypted) and
    /// serves it per request; relays anything else to the application, except on a
    /// port where HTTP policy lives, which refuses it with a status instead.
    async fn serve_admitted<IO>(
        &self,
        peek: Peek<IO>,
        info: &ConnInfo,
        target: SocketAddr,
        peer: Option<Peer>,
        verdict: Verdict,
        detection: Detection,
    ) where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let settings = &self.inputs.settings;
        let app_port = info.orig_dst.port();
        let opaque = detection.marked_opaque
            || detect::skips_detection(app_port, None, &settings.opaque_ports);
        let (protocol, io) = if detection.fails_closed {
            let (verdict, io) = detect::http::detect_strict(peek, HEADER_READ_TIMEOUT).await;
            match verdict {
                Strict::Serve(protocol) => (protocol, io),
                Strict::Closed => return,
                Strict::Silent => return self.not_http(io, StatusCode::REQUEST_TIMEOUT).await,
                Strict::TooLong => return self.not_http(io, StatusCode::URI_TOO_LONG).await,
            }
        } else if opaque {
            (Protocol::Opaque, peek.into_rewind())
        } else {
            let (protocol, reason, io) = detect::http::detect_peeked(peek).await;
            tracing::debug!(protocol = protocol.as_str(), ?reason, "protocol detected");
            (protocol, io)
        };
        match protocol {
            Protocol::Opaque => {
                if verdict == Verdict::OnlyHttp {
                    let denied = match peer {
                        Some(_) => Denied::Identity,
                        None => Denied::Plaintext,
                    };
                    return self.refuse(denied);
                }
                if let Some(upstream) = self.relay.connect(target).await {
                    self.relay.forward(io, upstream).await;
                }
            }
            http_protocol => {
                http::serve(
                    Arc::clone(&self.inputs),
                    self.app(target),
                    io,
                    http_protocol,
                    target,
                    peer,
                    Some(info.client),
                )
                .await
            }
        }
    }

    /// Answers a connection on an HTTP-only port that sent no request `status` and
    /// closes it; its bytes never reach the application.
    async fn not_http<IO: AsyncWrite + Unpin>(&self, mut io: IO, status: StatusCode) {
        self.inputs.mesh_metrics.denied(Denied::NotHttp);
        tracing::info!(
            status = status.as_u16(),
            "no HTTP request on an HTTP-only port"
        );
        let reason = status.canonical_reason().unwrap_or("");
        let answer = format!(
            "HTTP/1.1 {} {reason}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            status.as_u16()
        );
        let _ = io.write_all(answer.as_bytes()).await;
        let _ = io.shutdown().await;
    }

    /// Counts and logs a connection the port's policy refuses.
    fn refuse(&self, denied: Denied) {
        self.inputs.mesh_metrics.denied(denied);
        tracing::info!(
            reason = denied.as_str(),
            "refused by the port's policy; closing the connection"
        );
    }
}

impl Stack for Inbound {
    fn direction(&self) -> Direction {
        Direction::Inbound
    }

    async fn serve(&self, conn: Accepted) {
        let (stream, info, _guard) = conn.split();
        let Some(target) = target::app_target(&info, &self.inputs.settings.loopback_ports) else {
            tracing::info!(orig_dst = %info.orig_dst, local = %info.local,
                "not aimed at this pod; closing the connection");
            return self.refuse(Denied::NotThisPod);
        };
        if self.relay.is_loop_to_local(&info, target) {
            return;
        }
        let Some(tls) = &self.inputs.tls else {
            self.inputs.mesh_metrics.passthrough(Direction::Inbound);
            if let Some(upstream) = self.relay.connect(target).await {
                self.relay.forward(stream, upstream).await;
            }
            return;
        };
        self.serve_meshed(stream, info, target, tls).await;
    }
}
