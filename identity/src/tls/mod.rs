//! rustls configurations: mesh mTLS between proxies and the agent's HTTPS API.

mod agent;
mod error;
mod mesh;
mod resolve;
mod resumption;
mod server_name;
mod verify;
mod verify_client;
mod verify_server;

#[cfg(test)]
mod tests;

pub use agent::{
    agent_client_config, agent_client_config_following, agent_server_config, AGENT_ALPN,
};
pub use error::{PeerRejected, TlsError};
pub use mesh::{client_config, opaque_client_config, server_config};
pub use resumption::{SESSION_CACHE_SIZE, SESSION_MAX_AGE};
pub use server_name::server_name_for;

use rustls::CommonState;

use crate::spiffe::SpiffeId;

/// The SPIFFE id the peer proved in this handshake (its leaf's URI SAN), once the
/// handshake is done; `None` if it sent no certificate.
pub fn peer_identity(conn: &CommonState) -> Option<SpiffeId> {
    let leaf = conn.peer_certificates()?.first()?;
    crate::cert_info::id_of_der(leaf).ok()
}
