//! The inbound stack (listener 15006): connections to this pod go to the local
//! application at the address and port the caller aimed at ([`target`]), and never
//! anywhere else. Top to bottom:
//!
//! 1. refuse a connection not aimed at this pod, or one that would loop back into
//!    the proxy;
//! 2. take the port's policy from the state the connection arrived with;
//! 3. where a plaintext caller's bytes could be relayed, hear an application that
//!    speaks first ([`crate::detect::first_word`]); detect mesh TLS
//!    ([`crate::detect::tls`]) and terminate it: the client's SPIFFE id becomes the
//!    peer identity, and its ALPN may say the bytes inside are opaque;
//! 4. admit the connection ([`admit`]): plaintext only where the port is
//!    permissive, a peer identity the port does not allow only for HTTP (where each
//!    request gets its 403);
//! 5. detect HTTP ([`crate::detect::http`]), then serve it per request ([`http`]:
//!    authorization, server rate limits, pooled connections to the application), or
//!    relay the bytes to the application; a connection nobody speaks on by the
//!    deadline is closed.

pub(crate) mod admit;
pub(crate) mod http;
pub(crate) mod target;
pub(crate) mod token;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ::http::StatusCode;
use pillion_api::defaults::MESH_ALPN_OPAQUE;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::app::inputs::Inputs;
use crate::app::settings::Settings;
use crate::detect::first_word::{first_word, FirstWord};
use crate::detect::http::Reason;
use crate::detect::rewind::Rewind;
use crate::detect::tls::Detected;
use crate::detect::{self, Peek, Protocol, Strict};
use crate::http::server::HEADER_READ_TIMEOUT;
use crate::state::inbound::PortRule;
use crate::telemetry::metrics::mesh::Denied;
use crate::telemetry::metrics::Direction;
use crate::transport::accept::{Accepted, ConnInfo, Stack};
use crate::transport::counted::Counted;
use crate::transport::relay::Relay;
use crate::transport::tls::{self, MeshTls, HANDSHAKE_TIMEOUT};
use crate::upstream::connect::UpstreamConnector;
use crate::upstream::Upstream;
use admit::Verdict;
use http::Peer;

/// An admitted connection: who it is from and how its bytes may be served.
struct Admitted {
    /// The verified peer (`None`: plaintext).
    peer: Option<Peer>,
    /// What the port's policy said.
    verdict: Verdict,
    /// How its bytes are told apart.
    detection: Detection,
    /// A connection to the application opened while a plaintext client was
    /// silent, for an opaque relay to reuse.
    early: Option<TcpStream>,
}

/// How a port's bytes are told apart, from its connection-level rule (which is let
/// go before the connection is served).
#[derive(Debug, Clone, Copy)]
struct Detection {
    /// No detection: a service marks the port opaque, or it is one of the mesh's
    /// (or this proxy's) opaque ports.
    opaque: bool,
    /// HTTP or a refusal, never relayed bytes ([`PortRule::fails_closed`]).
    fails_closed: bool,
    /// The client's proxy found the bytes opaque and said so in its ALPN.
    said_opaque: bool,
}

impl Detection {
    fn of(rule: &PortRule<'_>, port: u16, settings: &Settings) -> Detection {
        Detection {
            opaque: rule.opaque || detect::skips_detection(port, None, &settings.opaque_ports),
            fails_closed: rule.fails_closed(),
            said_opaque: false,
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

    /// Detects, authenticates and admits one connection, then serves it. What comes
    /// after detection (the handshake, HTTP, the relay) is boxed: allocated once a
    /// connection gets that far, so one still being detected (every connection of a
    /// flood) holds about 2 KiB of state, where it held 13 KiB.
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
        let settings = &self.inputs.settings;
        let port = info.orig_dst.port();
        // Shorter while the connection budget is crowded: a flood's silent newcomers
        // give their permits back within a second.
        let detect_timeout = info.first_bytes_within(settings.detect_timeout);
        let handshake_deadline = Instant::now() + detect_timeout.max(HANDSHAKE_TIMEOUT);
        let mut peek = Peek::new(stream, detect_timeout);
        // Where a plaintext caller's bytes may be relayed, a server that speaks first
        // is heard after a short silence (a mesh client always speaks first).
        let rule = state.inbound().rule(port);
        let mut detection = Detection::of(&rule, port, settings);
        let plaintext = admit::admit(rule, None);
        let mut early = None;
        if !detection.fails_closed && plaintext == Verdict::Admit {
            let open = || self.relay.connect(target);
            match first_word(
                &mut peek,
                self.inputs.server_first_after(&info),
                &self.inputs.probes,
                open,
            )
            .await
            {
                FirstWord::Server { upstream, greeting } => {
                    drop(state);
                    self.inputs.mesh_metrics.passthrough(Direction::Inbound);
                    tracing::debug!(
                        bytes = greeting.len(),
                        "the application spoke first; relaying"
                    );
                    let upstream = Rewind::new(greeting, upstream);
                    return self.relay.forward(peek.into_rewind(), upstream).await;
                }
                // A port marked opaque relays even a silent connection, as before.
                FirstWord::Silent if !detection.opaque => return self.silent(),
                FirstWord::Silent => {}
                FirstWord::Client { early: opened } => early = opened,
            }
        }
        match detect::tls::detect(peek).await {
            Detected::Mesh(start) => {
                drop(early);
                let accept = Box::pin(tls::accept(tls, *start, handshake_deadline));
                let (tls, peer) = match accept.await {
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
                drop(state);
                if let Verdict::Refuse(denied) = verdict {
                    return self.refuse(denied);
                }
                detection.said_opaque = tls.get_ref().1.alpn_protocol() == Some(MESH_ALPN_OPAQUE);
                self.inputs
                    .mesh_metrics
                    .tls_connection(Direction::Inbound, peer.as_str());
                tracing::debug!(said_opaque = detection.said_opaque, "mesh TLS accepted");
                let peer = Peer::verified(peer.as_str());
                let peek = Peek::new(tls, detect_timeout);
                let admitted = Admitted {
                    peer,
                    verdict,
                    detection,
                    early: None,
                };
                Box::pin(self.serve_admitted(peek, &info, target, admitted)).await;
            }
            Detected::Plain(reason, peek) => {
                let verdict = plaintext;
                drop(state);
                if let Verdict::Refuse(denied) = verdict {
                    tracing::info!(detected = reason.as_str(), "plaintext on a strict port");
                    return self.refuse(denied);
                }
                self.inputs.mesh_metrics.passthrough(Direction::Inbound);
                let admitted = Admitted {
                    peer: None,
                    verdict,
                    detection,
                    early,
                };
                Box::pin(self.serve_admitted(peek, &info, target, admitted)).await;
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
        admitted: Admitted,
    ) where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Admitted {
            peer,
            verdict,
            detection,
            early,
        } = admitted;
        // Where HTTP policy lives the client proxy's "opaque" is not taken on trust:
        // its bytes go to the strict detector like anyone's, and get their status.
        let (protocol, io) = if detection.fails_closed {
            // A crowded newcomer's second (the detection deadline) is all it gets.
            let header_timeout = if info.crowded {
                Duration::ZERO
            } else {
                HEADER_READ_TIMEOUT
            };
            let (verdict, io) = detect::http::detect_strict(peek, header_timeout).await;
            match verdict {
                Strict::Serve(protocol) => (protocol, io),
                Strict::Closed => return,
                Strict::Silent => return self.not_http(io, StatusCode::REQUEST_TIMEOUT).await,
                Strict::TooLong => return self.not_http(io, StatusCode::URI_TOO_LONG).await,
            }
        } else if detection.opaque || detection.said_opaque {
            (Protocol::Opaque, peek.into_rewind())
        } else {
            let (protocol, reason, io) = detect::http::detect_peeked(peek).await;
            tracing::debug!(protocol = protocol.as_str(), ?reason, "protocol detected");
            if reason == Reason::Silent {
                return self.silent();
            }
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
                let upstream = match early {
                    Some(upstream) => Some(upstream),
                    None => self.relay.connect(target).await,
                };
                if let Some(upstream) = upstream {
                    Box::pin(self.relay.forward(io, upstream)).await;
                }
            }
            http_protocol => {
                drop(early);
                Box::pin(http::serve(
                    Arc::clone(&self.inputs),
                    self.app(target),
                    Counted::new(io, self.relay.counters.clone()),
                    http_protocol,
                    target,
                    peer,
                    Some(info.client),
                ))
                .await
            }
        }
    }

    /// Closes a connection on which nobody said a word by the detection deadline.
    fn silent(&self) {
        self.relay.metrics.silent_closed.inc();
        tracing::debug!("nobody spoke before the detection deadline; closing");
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
