//! Client-side check of a server: chain to the trust bundle, then the SPIFFE id.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::RootCertStore;
use tracing::warn;

use super::error::PeerRejected;
use super::server_name::id_from_server_name;
use super::verify::{peer_id, provider_signatures};
use crate::spiffe::SpiffeId;
use crate::store::CertStore;

/// Where the trusted roots come from.
pub(crate) enum Roots {
    /// The store's current bundle, read on every handshake.
    Store(Arc<CertStore>),
    /// A fixed anchor set (the agent's API).
    Fixed(Arc<RootCertStore>),
}

/// Which identity the server must prove.
pub(crate) enum Expected {
    /// Decoded from the connection's server name (see `server_name_for`).
    FromServerName,
    /// Always this one (the agent's id).
    Fixed(SpiffeId),
}

/// Verifies server certificates by SPIFFE id instead of DNS name.
pub(crate) struct SpiffeServerVerifier {
    roots: Roots,
    expected: Expected,
    algs: WebPkiSupportedAlgorithms,
}

impl SpiffeServerVerifier {
    pub fn new(roots: Roots, expected: Expected, algs: WebPkiSupportedAlgorithms) -> Self {
        SpiffeServerVerifier {
            roots,
            expected,
            algs,
        }
    }
}

impl fmt::Debug for SpiffeServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let expected = match &self.expected {
            Expected::FromServerName => "from server name".to_string(),
            Expected::Fixed(id) => id.to_string(),
        };
        f.debug_struct("SpiffeServerVerifier")
            .field("expected", &expected)
            .finish()
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let expected = match &self.expected {
            Expected::FromServerName => {
                id_from_server_name(server_name).map_err(PeerRejected::into_rustls)?
            }
            Expected::Fixed(id) => id.clone(),
        };
        let roots = match &self.roots {
            Roots::Store(store) => match store.bundle() {
                Some(bundle) => bundle.trust.roots().clone(),
                None => return Err(PeerRejected::NoTrustBundle.into_rustls()),
            },
            Roots::Fixed(roots) => roots.clone(),
        };
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(&parsed, &roots, intermediates, now, self.algs.all)
            .inspect_err(|e| warn!(expected = %expected, error = %e, "server certificate does not chain to the trust bundle"))?;
        let found = peer_id(end_entity)?;
        if found != expected {
            warn!(expected = %expected, found = %found, "server presented another identity");
            return Err(PeerRejected::WrongIdentity { expected, found }.into_rustls());
        }
        Ok(ServerCertVerified::assertion())
    }

    provider_signatures!();
}
