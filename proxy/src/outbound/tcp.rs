//! Outbound connections carried as bytes: opaque traffic to one endpoint of a
//! service (picked by load, or the one the application aimed at), a meshed endpoint
//! under no service port, and passthrough to destinations the mesh does not know.
//! Every endpoint is reached through its connector, so meshed ones always get mesh
//! TLS with the identity the view expects.

use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::app::inputs::Inputs;
use crate::state::outbound::Target;
use crate::telemetry::metrics::Direction;
use crate::transport::accept::ConnInfo;
use crate::transport::relay::Relay;
use crate::upstream::connect::{UpstreamConnectError, UpstreamIo};
use crate::upstream::endpoint::EndpointState;

/// How the server side's proxy is to take the bytes of a relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Found {
    /// This side found them opaque: the server side relays them at once.
    Opaque,
    /// Nobody has spoken yet: the server side detects (and applies its own
    /// deadlines and, where HTTP policy lives, its statuses).
    Nothing,
}

/// Relays bytes to one endpoint of the service port.
pub(crate) async fn to_service<D>(
    relay: &Relay,
    downstream: D,
    info: &ConnInfo,
    target: &Target,
    found: Found,
) where
    D: AsyncRead + AsyncWrite + Unpin,
{
    let endpoint = match target.opaque_endpoint(Instant::now()) {
        Ok(endpoint) => endpoint,
        Err(err) => {
            return tracing::info!(error = %err, "no endpoint for an opaque connection; closing it")
        }
    };
    if let Some(upstream) = open(relay, info, &endpoint, found).await {
        relay.forward(downstream, upstream).await;
    }
}

/// Relays bytes to `endpoint` over a fresh connection from its connector.
pub(crate) async fn to_endpoint<D>(
    relay: &Relay,
    downstream: D,
    info: &ConnInfo,
    endpoint: &Arc<EndpointState>,
) where
    D: AsyncRead + AsyncWrite + Unpin,
{
    if let Some(upstream) = open(relay, info, endpoint, Found::Opaque).await {
        relay.forward(downstream, upstream).await;
    }
}

/// Opens the connection an opaque relay to the service would use, while the
/// client is still silent: the server may be one that speaks first.
pub(crate) async fn open_early(
    relay: &Relay,
    info: &ConnInfo,
    target: &Target,
) -> Option<UpstreamIo> {
    let endpoint = target.opaque_endpoint(Instant::now()).ok()?;
    open(relay, info, &endpoint, Found::Opaque).await
}

/// Opens a connection to `endpoint` for a relay whose bytes are as `found`;
/// `None`, logged and counted, when there is none to be had.
async fn open(
    relay: &Relay,
    info: &ConnInfo,
    endpoint: &Arc<EndpointState>,
    found: Found,
) -> Option<UpstreamIo> {
    if relay.is_loop(info, endpoint.addr) {
        return None;
    }
    let opened = match found {
        Found::Opaque => endpoint.upstream.open_opaque().await,
        Found::Nothing => endpoint.upstream.open().await,
    };
    match opened {
        Ok(upstream) => Some(upstream),
        Err(UpstreamConnectError::Tcp(err)) => {
            relay.metrics.connect_failures.inc();
            tracing::info!(endpoint = %endpoint.addr, error = %err, "upstream connect failed");
            None
        }
        Err(UpstreamConnectError::Tls { source, .. }) => {
            tracing::warn!(endpoint = %endpoint.addr, expected = endpoint.identity.as_deref().unwrap_or(""),
                reason = source.reason.as_str(), error = %source.source,
                "mesh TLS handshake failed; closing the connection");
            None
        }
    }
}

/// Relays to the original destination as plain TCP, counted as passthrough.
pub(crate) async fn passthrough(
    relay: &Relay,
    inputs: &Inputs,
    stream: TcpStream,
    info: &ConnInfo,
) {
    inputs.mesh_metrics.passthrough(Direction::Outbound);
    relay.relay(stream, info, info.orig_dst).await;
}
