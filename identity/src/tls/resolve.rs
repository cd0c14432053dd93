//! Picks the certificate to present: always the store's newest leaf.

use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;
use tracing::debug;

use crate::store::CertStore;

/// Presents the store's current leaf, on either side of a handshake.
#[derive(Debug)]
pub(crate) struct StoreResolver(pub Arc<CertStore>);

impl StoreResolver {
    fn current(&self) -> Option<Arc<CertifiedKey>> {
        let leaf = self.0.leaf();
        if leaf.is_none() {
            debug!(id = %self.0.local_id(), "no leaf certificate installed yet");
        }
        leaf.map(|l| l.certified.clone())
    }
}

impl ResolvesServerCert for StoreResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl ResolvesClientCert for StoreResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        self.0.has_leaf()
    }
}
