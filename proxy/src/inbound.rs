//! The inbound stack (listener 15006): connections to this pod go to the local
//! application on loopback at the original port, and never anywhere else. With a
//! mesh, the first bytes decide: mesh TLS is terminated and its peer identity
//! checked against the port's allow list; plaintext is let in only where the
//! port's mode is permissive.
//!
//! With the HTTP layer, what arrives (inside mesh TLS or plaintext) is detected
//! once more: HTTP goes to the HTTP layer (per-request authorization, identity
//! header, server rate limits, pooled connections to the application); anything
//! else, and server-speaks-first ports, is relayed as before.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use pillion_api::defaults::DETECT_TIMEOUT;
use pillion_api::view::Mode;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::accept::{Accepted, ConnInfo, Stack};
use crate::detect::{self, Protocol};
use crate::http::{HttpLayer, Peer};
use crate::mesh::{Mesh, HANDSHAKE_TIMEOUT};
use crate::mesh_metrics::{Denied, MeshMetrics};
use crate::metrics::Direction;
use crate::relay::Relay;
use crate::tls::accept::accept;
use crate::tls::detect::{detect, Detected};
use crate::tls::rewind::Rewind;
use crate::view::InboundRule;

/// Serves connections from elsewhere to the local application.
#[derive(Clone, Debug)]
pub struct Inbound {
    relay: Relay,
    metrics: MeshMetrics,
    mesh: Option<Mesh>,
    http: Option<HttpLayer>,
}

impl Inbound {
    /// An inbound stack that relays through `relay`; with `mesh`, it terminates
    /// mesh TLS and enforces the view's inbound policy.
    pub fn new(relay: Relay, metrics: MeshMetrics, mesh: Option<Mesh>) -> Self {
        Self {
            relay,
            metrics,
            mesh,
            http: None,
        }
    }

    /// Serves HTTP (inside mesh TLS or plaintext) through the HTTP layer.
    pub fn with_http(mut self, http: Option<HttpLayer>) -> Self {
        self.http = http;
        self
    }

    /// Detects HTTP in an admitted connection (plaintext or already decrypted) and
    /// serves it per request; relays anything else to the application.
    async fn serve_admitted<IO>(
        &self,
        io: IO,
        info: ConnInfo,
        target: SocketAddr,
        peer: Option<Peer>,
        admitted: Result<(), &pillion_identity::SpiffeId>,
    ) where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Some(http) = &self.http else {
            if let Some(upstream) = self.relay.connect(&info, target).await {
                self.relay.forward(io, upstream, &info).await;
            }
            return;
        };
        let settings = http.tables.settings();
        let port = info.orig_dst.port();
        let opaque = detect::skips_detection(port, None, &settings.opaque_ports)
            || http.tables.inbound().is_opaque(port);
        let (protocol, io) = if opaque {
            (
                Protocol::Opaque,
                detect::rewind::Rewind::new(bytes::Bytes::new(), io),
            )
        } else {
            let (protocol, reason, io) = detect::detect(io, settings.detect_timeout).await;
            tracing::debug!(direction = "inbound", client = %info.client, port,
                protocol = protocol.as_str(), ?reason, "protocol detected");
            (protocol, io)
        };
        match protocol {
            Protocol::Opaque => {
                if let Err(peer) = admitted {
                    self.refuse_identity(&info, peer);
                    return;
                }
                if let Some(upstream) = self.relay.connect(&info, target).await {
                    self.relay.forward(io, upstream, &info).await;
                }
            }
            http_protocol => {
                // The caller's address goes into the request's SERVER span.
                http.inbound
                    .serve_from(
                        io,
                        http_protocol,
                        target,
                        peer,
                        Some(info.client),
                        http.shutdown(),
                    )
                    .await
            }
        }
    }

    /// Where an inbound connection goes: loopback of the same family at the
    /// original port, whatever address the caller aimed at.
    pub fn target(orig_dst: SocketAddr) -> SocketAddr {
        let ip = match orig_dst.ip().to_canonical() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        };
        SocketAddr::new(ip, orig_dst.port())
    }

    /// Detects, authenticates and authorizes one connection, then relays it.
    async fn serve_meshed(
        &self,
        stream: TcpStream,
        info: ConnInfo,
        target: SocketAddr,
        mesh: &Mesh,
    ) {
        // The policy in force when the connection arrived decides it.
        let rule: InboundRule = mesh.views.current().inbound(info.orig_dst.port()).clone();
        let deadline = Instant::now() + DETECT_TIMEOUT.max(HANDSHAKE_TIMEOUT);
        match detect(stream, DETECT_TIMEOUT).await {
            Detected::Mesh(start) => {
                let (tls, peer) = match accept(&mesh.tls, *start, deadline).await {
                    Ok(done) => done,
                    Err(err) => {
                        self.metrics
                            .handshake_failed(Direction::Inbound, err.reason);
                        tracing::warn!(direction = "inbound", client = %info.client, port = info.orig_dst.port(),
                            reason = err.reason.as_str(), error = %err.source,
                            "mesh TLS handshake failed; closing the connection");
                        return;
                    }
                };
                // With the HTTP layer, an HTTP connection is judged per request
                // (403, and per-route allow lists); anything else right here.
                let admitted = rule.admits(&peer);
                if !admitted && self.http.is_none() {
                    self.refuse_identity(&info, &peer);
                    return;
                }
                self.metrics
                    .tls_connection(Direction::Inbound, peer.as_str());
                tracing::debug!(direction = "inbound", client = %info.client, peer_identity = %peer, "mesh TLS accepted");
                let verified = Peer::verified(peer.as_str());
                let admitted = if admitted { Ok(()) } else { Err(&peer) };
                self.serve_admitted(tls, info, target, verified, admitted)
                    .await;
            }
            Detected::Plain(reason, io) => {
                if rule.mode == Mode::Strict {
                    self.metrics.denied(Denied::Plaintext);
                    tracing::info!(direction = "inbound", client = %info.client, port = info.orig_dst.port(),
                        detected = reason.as_str(), "plaintext refused on a strict port; closing the connection");
                    return;
                }
                self.forward_plain(io, info, target).await;
            }
            Detected::Gone => {}
        }
    }

    /// Counts and logs a connection whose verified identity the port does not allow.
    fn refuse_identity(&self, info: &ConnInfo, peer: &pillion_identity::SpiffeId) {
        self.metrics.denied(Denied::Identity);
        tracing::info!(direction = "inbound", client = %info.client, port = info.orig_dst.port(),
            peer_identity = %peer, "peer identity not allowed on this port; closing the connection");
    }

    async fn forward_plain(&self, io: Rewind<TcpStream>, info: ConnInfo, target: SocketAddr) {
        self.metrics.passthrough(Direction::Inbound);
        self.serve_admitted(io, info, target, None, Ok(())).await;
    }
}

impl Stack for Inbound {
    fn direction(&self) -> Direction {
        Direction::Inbound
    }

    async fn serve(&self, conn: Accepted) {
        let target = Self::target(conn.orig_dst);
        let Some(mesh) = &self.mesh else {
            self.metrics.passthrough(Direction::Inbound);
            self.relay.relay(conn, target).await;
            return;
        };
        let (stream, info, _guard) = conn.split();
        if self.relay.is_loop(&info, target) {
            return;
        }
        self.serve_meshed(stream, info, target, mesh).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_loopback_at_the_original_port() {
        let t = |s: &str| Inbound::target(s.parse().unwrap()).to_string();
        assert_eq!(t("198.18.0.7:8080"), "127.0.0.1:8080");
        assert_eq!(t("[2001:2::7]:8080"), "[::1]:8080");
        assert_eq!(t("[::ffff:198.18.0.7]:80"), "127.0.0.1:80");
        assert_eq!(t("203.0.113.9:22"), "127.0.0.1:22");
    }
}
