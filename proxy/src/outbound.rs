//! The outbound stack (listener 15001): the local application's connections go
//! to their original destination. A destination the view lists as a meshed
//! endpoint is reached over mutual TLS, verifying its SPIFFE id; anything else
//! passes through as plain TCP.
//!
//! A destination the view knows as a service (a VIP and port, or one of its
//! endpoints) goes through the HTTP layer instead: its protocol is detected (unless
//! the port is marked opaque or is a server-speaks-first port), HTTP is routed per
//! request, and anything else is relayed to an endpoint the balancer picks.

use std::net::SocketAddr;

use bytes::Bytes;
use pillion_identity::SpiffeId;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::accept::{Accepted, ConnInfo, Stack};
use crate::detect::{self, rewind::Rewind, Protocol};
use crate::http::connect::UpstreamConnectError;
use crate::http::outbound_table::Target;
use crate::http::HttpLayer;
use crate::mesh::{Mesh, HANDSHAKE_TIMEOUT};
use crate::mesh_metrics::{HandshakeFailure, MeshMetrics};
use crate::metrics::Direction;
use crate::relay::Relay;
use crate::tls::connect::connect;
use crate::view::Destination;

/// Serves connections the local application made to somewhere else.
#[derive(Clone, Debug)]
pub struct Outbound {
    relay: Relay,
    metrics: MeshMetrics,
    mesh: Option<Mesh>,
    http: Option<HttpLayer>,
}

impl Outbound {
    /// An outbound stack that relays through `relay`; with `mesh`, meshed
    /// endpoints are reached over mutual TLS.
    pub fn new(relay: Relay, metrics: MeshMetrics, mesh: Option<Mesh>) -> Self {
        Self {
            relay,
            metrics,
            mesh,
            http: None,
        }
    }

    /// Routes connections to known services through the HTTP layer.
    pub fn with_http(mut self, http: Option<HttpLayer>) -> Self {
        self.http = http;
        self
    }

    /// Serves a connection to a known service: detect, then HTTP or opaque.
    async fn serve_service(&self, conn: Accepted, target: Target, http: &HttpLayer) {
        let settings = http.tables.settings();
        let orig_dst = conn.orig_dst;
        let declared = target.port.protocol;
        let (stream, info, _guard) = conn.split();
        if detect::skips_detection(orig_dst.port(), Some(declared), &settings.opaque_ports) {
            return self
                .serve_opaque(Rewind::new(Bytes::new(), stream), info, &target)
                .await;
        }
        let (protocol, io) = match detect::declared(declared) {
            Some(protocol) => (protocol, Rewind::new(Bytes::new(), stream)),
            None => {
                let (protocol, reason, io) = detect::detect(stream, settings.detect_timeout).await;
                tracing::debug!(direction = "outbound", client = %info.client, %orig_dst,
                    protocol = protocol.as_str(), ?reason, "protocol detected");
                (protocol, io)
            }
        };
        match protocol {
            Protocol::Opaque => self.serve_opaque(io, info, &target).await,
            http_protocol => {
                crate::http::outbound::serve(
                    std::sync::Arc::clone(&http.tables),
                    io,
                    http_protocol,
                    orig_dst,
                    http.shutdown(),
                )
                .await
            }
        }
    }

    /// Relays opaque bytes to one endpoint of the service (mesh TLS when meshed).
    async fn serve_opaque<D>(&self, downstream: D, info: ConnInfo, target: &Target)
    where
        D: AsyncRead + AsyncWrite + Unpin,
    {
        let endpoint = match target.opaque_endpoint(std::time::Instant::now()) {
            Ok(endpoint) => endpoint,
            Err(err) => {
                tracing::info!(direction = "outbound", client = %info.client, orig_dst = %info.orig_dst,
                    error = %err, "no endpoint for an opaque connection; closing it");
                return;
            }
        };
        if self.relay.is_loop(&info, endpoint.addr) {
            return;
        }
        match endpoint.upstream.open().await {
            Ok(upstream) => {
                if let Some(peer) = &endpoint.identity {
                    self.metrics.tls_connection(Direction::Outbound, peer);
                }
                self.relay.forward(downstream, upstream, &info).await;
            }
            Err(err) => {
                match &err {
                    UpstreamConnectError::Tcp(_) => {
                        self.relay.metrics.connect_failures.inc();
                    }
                    UpstreamConnectError::Tls { source, .. } => self.metrics.handshake_failed(
                        Direction::Outbound,
                        crate::tls::failure::classify(source),
                    ),
                    UpstreamConnectError::TlsTimeout { .. } => self
                        .metrics
                        .handshake_failed(Direction::Outbound, HandshakeFailure::Timeout),
                }
                tracing::info!(direction = "outbound", client = %info.client, endpoint = %endpoint.addr,
                    error = %err, "upstream connect failed");
            }
        }
    }

    /// Where an outbound connection goes: exactly where the application aimed it.
    pub fn target(orig_dst: SocketAddr) -> SocketAddr {
        orig_dst
    }

    /// Relays over mutual TLS to an endpoint that must prove `peer`.
    async fn serve_meshed(&self, conn: Accepted, target: SocketAddr, peer: &SpiffeId, mesh: &Mesh) {
        let (stream, info, _guard) = conn.split();
        let Some(upstream) = self.relay.open(&info, target).await else {
            return;
        };
        match connect(&mesh.tls, upstream, peer, HANDSHAKE_TIMEOUT).await {
            Ok(tls) => {
                self.metrics
                    .tls_connection(Direction::Outbound, peer.as_str());
                self.relay.forward(stream, tls, &info).await;
            }
            Err(err) => {
                self.metrics
                    .handshake_failed(Direction::Outbound, err.reason);
                tracing::warn!(
                    direction = "outbound",
                    client = %info.client,
                    %target,
                    expected = %peer,
                    reason = err.reason.as_str(),
                    error = %err.source,
                    "mesh TLS handshake failed; closing the connection"
                );
            }
        }
    }
}

impl Stack for Outbound {
    fn direction(&self) -> Direction {
        Direction::Outbound
    }

    async fn serve(&self, conn: Accepted) {
        let target = Self::target(conn.orig_dst);
        if let Some(http) = &self.http {
            let service = http.tables.outbound().target(target).cloned();
            if let Some(service) = service {
                return self.serve_service(conn, service, http).await;
            }
        }
        let mesh = self.mesh.as_ref();
        let destination = mesh.and_then(|m| m.views.current().destination(target).cloned());
        match (destination, mesh) {
            (Some(Destination::Meshed(peer)), Some(mesh)) => {
                self.serve_meshed(conn, target, &peer, mesh).await;
            }
            (Some(Destination::BadIdentity), _) => {
                self.metrics
                    .handshake_failed(Direction::Outbound, HandshakeFailure::Other);
                tracing::warn!(direction = "outbound", client = %conn.client, %target,
                    "the view lists this endpoint with an invalid identity; closing the connection");
            }
            _ => {
                self.metrics.passthrough(Direction::Outbound);
                self.relay.relay(conn, target).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_the_original_destination() {
        let dst: SocketAddr = "198.18.0.1:7000".parse().unwrap();
        assert_eq!(Outbound::target(dst), dst);
    }
}
