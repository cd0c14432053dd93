//! The outbound stack (listener 15001): the local application's connections, each
//! aimed at its original destination. Top to bottom:
//!
//! 1. look the destination up in the state the connection arrived with
//!    ([`crate::state::Destination`]);
//! 2. a service port (its VIP, or one of its endpoints): detect the protocol unless
//!    the port declares one or is opaque ([`crate::detect`]; a server that speaks
//!    first is heard after a short silence, and a connection nobody speaks on by
//!    the deadline goes on undecided, for the server side to judge), then serve
//!    HTTP per request ([`http`], with its tries in [`retry`]) or relay the bytes
//!    to one endpoint the balancer picks ([`tcp`]);
//! 3. a meshed endpoint under no service port: bytes over mesh TLS to it ([`tcp`]);
//! 4. an endpoint the view lists with an identity this proxy cannot verify: refused;
//! 5. a destination the agent placed outside the mesh, or (with a full view) one
//!    the view does not know, passes through as plain TCP, counted ([`tcp`]).
//!
//! With on-demand discovery a destination the state does not know yet is first
//! asked about ([`crate::control::resolve`]) and then served as above; one the agent
//! cannot be asked about is refused, never passed through.

pub(crate) mod aggregate;
pub(crate) mod cache;
pub(crate) mod http;
pub(crate) mod introspect;
pub(crate) mod mirror;
pub(crate) mod retry;
pub(crate) mod tcp;
pub(crate) mod transform;

use std::sync::Arc;

use bytes::Bytes;
use tokio::net::TcpStream;

use crate::app::inputs::Inputs;
use crate::detect::first_word::{first_word, FirstWord};
use crate::detect::http::Reason;
use crate::detect::rewind::Rewind;
use crate::detect::{self, Peek, Protocol};
use crate::state::outbound::Target;
use crate::state::Destination;
use crate::telemetry::metrics::mesh::HandshakeFailure;
use crate::telemetry::metrics::Direction;
use crate::transport::accept::{Accepted, ConnInfo, Stack};
use crate::transport::counted::Counted;
use crate::transport::relay::Relay;
use tcp::Found;

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

    /// A connection to a service port: detect, then HTTP or opaque bytes (boxed, so a
    /// connection still being detected holds only detection's state).
    async fn serve_service(&self, stream: TcpStream, info: ConnInfo, target: Target) {
        let settings = &self.inputs.settings;
        let declared = target.port.protocol;
        let port = info.orig_dst.port();
        if detect::skips_detection(port, Some(declared), &settings.opaque_ports) {
            let io = Rewind::new(Bytes::new(), stream);
            return Box::pin(tcp::to_service(
                &self.relay,
                io,
                &info,
                &target,
                Found::Opaque,
            ))
            .await;
        }
        if let Some(protocol) = detect::declared(declared) {
            let io = Rewind::new(Bytes::new(), stream);
            return Box::pin(self.serve_http(io, protocol, &info)).await;
        }
        let detect_timeout = info.first_bytes_within(settings.detect_timeout);
        let mut peek = Peek::new(stream, detect_timeout);
        let open = || tcp::open_early(&self.relay, &info, &target);
        let early = match first_word(
            &mut peek,
            self.inputs.server_first_after(&info),
            &self.inputs.probes,
            open,
        )
        .await
        {
            FirstWord::Server { upstream, greeting } => {
                tracing::debug!(bytes = greeting.len(), "the server spoke first; relaying");
                let upstream = Rewind::new(greeting, upstream);
                return self.relay.forward(peek.into_rewind(), upstream).await;
            }
            FirstWord::Silent => return self.silent(peek.into_rewind(), &info, &target).await,
            FirstWord::Client { early } => early,
        };
        let (protocol, reason, io) = detect::http::detect_peeked(peek).await;
        tracing::debug!(protocol = protocol.as_str(), ?reason, "protocol detected");
        match (protocol, early) {
            _ if reason == Reason::Silent => self.silent(io, &info, &target).await,
            (Protocol::Opaque, Some(upstream)) => Box::pin(self.relay.forward(io, upstream)).await,
            (Protocol::Opaque, None) => {
                Box::pin(tcp::to_service(
                    &self.relay,
                    io,
                    &info,
                    &target,
                    Found::Opaque,
                ))
                .await
            }
            (http_protocol, _) => Box::pin(self.serve_http(io, http_protocol, &info)).await,
        }
    }

    /// A connection on which nobody has said a word by the deadline goes to the
    /// server side undecided: that proxy detects, with its own deadline, so a late
    /// first byte still meets the server's policy (served, or refused with a
    /// status) and a connection that stays silent is closed there.
    async fn silent(&self, io: Rewind<TcpStream>, info: &ConnInfo, target: &Target) {
        tracing::debug!("nobody spoke before the detection deadline; the server side decides");
        Box::pin(tcp::to_service(
            &self.relay,
            io,
            info,
            target,
            Found::Nothing,
        ))
        .await
    }

    /// Serves `io` as HTTP, request by request.
    async fn serve_http(&self, io: Rewind<TcpStream>, protocol: Protocol, info: &ConnInfo) {
        http::serve(
            Arc::clone(&self.inputs),
            Counted::new(io, self.relay.counters.clone()),
            protocol,
            info.orig_dst,
            self.inputs.shutdown(),
        )
        .await
    }
}

impl Stack for Outbound {
    fn direction(&self) -> Direction {
        Direction::Outbound
    }

    async fn serve(&self, conn: Accepted) {
        let (stream, info, _guard) = conn.split();
        let Some(destination) = self.destination(&info).await else {
            return;
        };
        match destination {
            Destination::Service(target) => self.serve_service(stream, info, target).await,
            Destination::Endpoint(endpoint) => {
                tcp::to_endpoint(&self.relay, stream, &info, &endpoint).await
            }
            Destination::Refused => {
                self.inputs
                    .mesh_metrics
                    .handshake_failed(Direction::Outbound, HandshakeFailure::Other);
                tracing::warn!(
                    "the view lists this endpoint with an invalid identity; closing the connection"
                );
            }
            Destination::Outside => {
                tcp::passthrough(&self.relay, &self.inputs, stream, &info).await
            }
        }
    }
}

impl Outbound {
    /// Where a connection goes, by the state it arrived with (only what it needs is
    /// kept). A destination the state does not know passes through with a full view;
    /// with on-demand discovery it is asked about first, and `None` (close the
    /// connection) means the agent could not say.
    async fn destination(&self, info: &ConnInfo) -> Option<Destination> {
        let lookup = || {
            (self.inputs.state.load())
                .outbound()
                .destination(info.orig_dst)
                .cloned()
        };
        if let Some(known) = lookup() {
            return Some(known);
        }
        let Some(resolver) = &self.inputs.resolver else {
            return Some(Destination::Outside);
        };
        if let Err(error) = resolver.resolve(info.orig_dst).await {
            tracing::warn!(%error, "cannot tell where the connection goes; closing it");
            return None;
        }
        let found = lookup();
        if found.is_none() {
            tracing::warn!(
                "the answer for the destination did not reach the state; closing the connection"
            );
        }
        found
    }
}
