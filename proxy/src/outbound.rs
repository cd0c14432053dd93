//! The outbound stack (listener 15001): the local application's connections go
//! to their original destination. A destination the view lists as a meshed
//! endpoint is reached over mutual TLS, verifying its SPIFFE id; anything else
//! passes through as plain TCP.

use std::net::SocketAddr;

use pillion_identity::SpiffeId;

use crate::accept::{Accepted, Stack};
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
}

impl Outbound {
    /// An outbound stack that relays through `relay`; with `mesh`, meshed
    /// endpoints are reached over mutual TLS.
    pub fn new(relay: Relay, metrics: MeshMetrics, mesh: Option<Mesh>) -> Self {
        Self {
            relay,
            metrics,
            mesh,
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
