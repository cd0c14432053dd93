//! The outbound stack (listener 15001): the local application's connections, each
//! aimed at its original destination. Top to bottom:
//!
//! 1. look the destination up in the state the connection arrived with
//!    ([`crate::state::Destination`]);
//! 2. a service port (its VIP, or one of its endpoints): detect the protocol unless
//!    the port declares one or is opaque ([`crate::detect`]), then serve HTTP per
//!    request ([`http`], with its tries in [`retry`]) or relay the bytes to one
//!    endpoint the balancer picks ([`tcp`]);
//! 3. a meshed endpoint under no service port: bytes over mesh TLS to it ([`tcp`]);
//! 4. an endpoint the view lists with an identity this proxy cannot verify: refused;
//! 5. anything else passes through as plain TCP, counted ([`tcp`]).

pub(crate) mod http;
pub(crate) mod retry;
pub(crate) mod tcp;

use std::sync::Arc;

use bytes::Bytes;
use tokio::net::TcpStream;

use crate::app::inputs::Inputs;
use crate::detect::rewind::Rewind;
use crate::detect::{self, Protocol};
use crate::state::outbound::Target;
use crate::state::Destination;
use crate::telemetry::metrics::mesh::HandshakeFailure;
use crate::telemetry::metrics::Direction;
use crate::transport::accept::{Accepted, ConnInfo, Stack};
use crate::transport::relay::Relay;

/// Serves connections the local application made to somewhere else.
#[derive(Debug)]
pub(crate) struct Outbound {
    relay: Relay,
    inputs: Arc<Inputs>,
}

impl Outbound {
    /// The outbound stack over the proxy's inputs, relaying through `relay`.
    pub(crate) fn new(relay: Relay, inputs: Arc<Inputs>) -> Outbound {
        Outbound { relay, inputs }
    }

    /// A connection to a service port: detect, then HTTP or opaque bytes.
    async fn serve_service(&self, stream: TcpStream, info: ConnInfo, target: Target) {
        let settings = &self.inputs.settings;
        let declared = target.port.protocol;
        let port = info.orig_dst.port();
        let (protocol, io) =
            if detect::skips_detection(port, Some(declared), &settings.opaque_ports) {
                (Protocol::Opaque, Rewind::new(Bytes::new(), stream))
            } else if let Some(protocol) = detect::declared(declared) {
                (protocol, Rewind::new(Bytes::new(), stream))
            } else {
                let (protocol, reason, io) = detect::detect(stream, settings.detect_timeout).await;
                tracing::debug!(protocol = protocol.as_str(), ?reason, "protocol detected");
                (protocol, io)
            };
        match protocol {
            Protocol::Opaque => tcp::to_service(&self.relay, io, &info, &target).await,
            http_protocol => {
                http::serve(
                    Arc::clone(&self.inputs),
                    io,
                    http_protocol,
                    info.orig_dst,
                    self.inputs.shutdown(),
                )
                .await
            }
        }
    }
}

impl Stack for Outbound {
    fn direction(&self) -> Direction {
        Direction::Outbound
    }

    async fn serve(&self, conn: Accepted) {
        let (stream, info, _guard) = conn.split();
        // The state the connection arrived with decides; only what it needs is kept.
        let destination = self
            .inputs
            .state
            .load()
            .outbound()
            .destination(info.orig_dst)
            .cloned();
        match destination {
            Some(Destination::Service(target)) => self.serve_service(stream, info, target).await,
            Some(Destination::Endpoint(endpoint)) => {
                tcp::to_endpoint(&self.relay, stream, &info, &endpoint).await
            }
            Some(Destination::Refused) => {
                self.inputs
                    .mesh_metrics
                    .handshake_failed(Direction::Outbound, HandshakeFailure::Other);
                tracing::warn!(
                    "the view lists this endpoint with an invalid identity; closing the connection"
                );
            }
            None => tcp::passthrough(&self.relay, &self.inputs, stream, &info).await,
        }
    }
}
