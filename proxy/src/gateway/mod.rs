//! The gateway role (listeners `--gateway-https` and `--gateway-http`): traffic
//! from outside the mesh, on public ports without interception. Top to bottom:
//!
//! 1. TLS with a real server certificate, picked by the name the client asks for
//!    ([`certs`]); ALPN offers HTTP/2 and HTTP/1.1;
//! 2. per request ([`http`]): the host ([`host`]), which the connection's
//!    certificate must cover (else 421), and which the view must serve (else 404);
//!    the host's end-user policy (token, claims, rate limits: 401, 403, 429); then
//!    the mesh's own outbound path with the host's routes — retries, timeouts,
//!    balancing, and mesh TLS to each endpoint as the gateway's own identity;
//! 3. plaintext listeners answer every request with a redirect to HTTPS
//!    ([`redirect`]), never with content.

pub(crate) mod certs;
pub(crate) mod host;
pub(crate) mod http;
pub(crate) mod redirect;

use std::sync::Arc;

use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use crate::app::inputs::Inputs;
use crate::detect::Protocol;
use crate::telemetry::metrics::Direction;
use crate::transport::accept::{Accepted, Stack};
use certs::Certs;

/// ALPN protocols the gateway offers, most preferred first.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Serves the HTTPS listeners.
pub(crate) struct Gateway {
    inputs: Arc<Inputs>,
    certs: Arc<Certs>,
    /// `Strict-Transport-Security` for every answer, if any.
    hsts: Option<::http::HeaderValue>,
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").finish_non_exhaustive()
    }
}

impl Gateway {
    /// The stack over `certs` (TLS 1.2 and 1.3, the mesh's crypto provider),
    /// telling browsers to keep to HTTPS for `hsts` (zero: not at all).
    pub(crate) fn new(
        inputs: Arc<Inputs>,
        certs: Arc<Certs>,
        hsts: std::time::Duration,
    ) -> Result<Gateway, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&certs) as Arc<dyn rustls::server::ResolvesServerCert>);
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        // Whole seconds: under one, none (max-age=0 would clear a browser's record).
        let hsts = (hsts.as_secs() > 0)
            .then(|| format!("max-age={}", hsts.as_secs()))
            .and_then(|v| ::http::HeaderValue::from_str(&v).ok());
        Ok(Gateway {
            inputs,
            certs,
            hsts,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }
}

impl Stack for Gateway {
    fn direction(&self) -> Direction {
        Direction::Gateway
    }

    async fn serve(&self, conn: Accepted) {
        let (stream, info, _guard) = conn.split();
        let within = info.first_bytes_within(self.inputs.settings.detect_timeout);
        let tls = match tokio::time::timeout(within, self.acceptor.accept(stream)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(error)) => {
                tracing::debug!(%error, "gateway TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(?within, "gateway TLS handshake timed out");
                return;
            }
        };
        let (protocol, cert) = {
            let session = tls.get_ref().1;
            let protocol = match session.alpn_protocol() {
                Some(b"h2") => Protocol::Http2,
                _ => Protocol::Http1,
            };
            // The certificate this handshake presented: requests must be for its
            // hosts. Looked up again after the handshake; if a reload took it away
            // meanwhile, `None` makes every request of the connection misdirected,
            // never unchecked.
            let sni = session.server_name().map(host::lowercase);
            (protocol, self.certs.loaded().pick(sni.as_deref()).cloned())
        };
        let addrs = (info.client, info.local);
        let hsts = self.hsts.clone();
        http::serve(Arc::clone(&self.inputs), tls, protocol, addrs, cert, hsts).await;
    }
}
