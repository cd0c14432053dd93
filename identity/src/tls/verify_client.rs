//! Server-side check of a client: required certificate, chaining to the store's
//! current bundle, carrying a SPIFFE id of our trust domain.

use std::sync::Arc;

use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::DistinguishedName;
use tracing::warn;

use super::error::PeerRejected;
use super::verify::{peer_id, provider_signatures};
use crate::store::CertStore;

/// Reads the store's bundle on every handshake and delegates path validation to
/// the `WebPkiClientVerifier` built once per bundle (kept in the store).
#[derive(Debug)]
pub(crate) struct MeshClientVerifier {
    store: Arc<CertStore>,
    algs: WebPkiSupportedAlgorithms,
}

impl MeshClientVerifier {
    pub fn new(store: Arc<CertStore>) -> Self {
        let algs = store.provider().signature_verification_algorithms;
        MeshClientVerifier { store, algs }
    }
}

impl ClientCertVerifier for MeshClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Roots change at runtime and mesh clients always send their one leaf.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let Some(bundle) = self.store.bundle() else {
            return Err(PeerRejected::NoTrustBundle.into_rustls());
        };
        bundle
            .client_verifier
            .verify_client_cert(end_entity, intermediates, now)
            .inspect_err(
                |e| warn!(error = %e, "client certificate does not chain to the trust bundle"),
            )?;
        let found = peer_id(end_entity)?;
        let trust_domain = self.store.local_id().trust_domain();
        if found.trust_domain() != trust_domain {
            warn!(found = %found, trust_domain, "client is outside our trust domain");
            return Err(PeerRejected::ForeignTrustDomain {
                found,
                trust_domain: trust_domain.to_string(),
            }
            .into_rustls());
        }
        Ok(ClientCertVerified::assertion())
    }

    provider_signatures!();
}
