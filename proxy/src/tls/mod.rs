//! Mutual TLS between proxies: detecting mesh TLS on inbound connections,
//! terminating it, and originating it toward meshed endpoints. The rustls
//! configurations come from `pillion-identity` and follow the [`CertStore`] as
//! certificates rotate.

pub mod accept;
pub mod connect;
pub mod detect;
pub mod failure;
pub mod rewind;

use std::sync::Arc;

use pillion_identity::tls::{client_config, server_config};
use pillion_identity::{CertStore, TlsError};
use rustls::{ClientConfig, ServerConfig};

/// The proxy's mesh TLS: its certificate store and the configs built on it once.
#[derive(Clone, Debug)]
pub struct MeshTls {
    store: Arc<CertStore>,
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
}

impl MeshTls {
    /// Builds the client and server configs over `store` (which may still be empty:
    /// handshakes fail until it holds a certificate and a trust bundle).
    pub fn new(store: Arc<CertStore>) -> Result<MeshTls, TlsError> {
        Ok(MeshTls {
            client: client_config(Arc::clone(&store))?,
            server: server_config(Arc::clone(&store))?,
            store,
        })
    }

    /// The certificate store both configs read.
    pub fn store(&self) -> &Arc<CertStore> {
        &self.store
    }

    /// The outbound (client) config.
    pub fn client_config(&self) -> &Arc<ClientConfig> {
        &self.client
    }

    /// The inbound (server) config.
    pub fn server_config(&self) -> &Arc<ServerConfig> {
        &self.server
    }
}

/// A mesh handshake that failed, with the metric reason and the error to log.
#[derive(Debug, thiserror::Error)]
#[error("mesh TLS handshake failed ({}): {source}", reason.as_str())]
pub struct HandshakeError {
    /// The bounded reason, for `pillion_tls_handshake_failures_total`.
    pub reason: crate::mesh_metrics::HandshakeFailure,
    /// What went wrong.
    #[source]
    pub source: std::io::Error,
}

impl HandshakeError {
    /// Wraps an I/O error from a handshake, classifying it.
    pub fn from_io(source: std::io::Error) -> HandshakeError {
        HandshakeError {
            reason: failure::classify(&source),
            source,
        }
    }

    /// A handshake that ran out of time.
    pub fn timeout(what: &'static str) -> HandshakeError {
        HandshakeError {
            reason: crate::mesh_metrics::HandshakeFailure::Timeout,
            source: std::io::Error::new(std::io::ErrorKind::TimedOut, what),
        }
    }
}

#[cfg(test)]
mod tests;
