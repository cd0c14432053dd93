//! The proxy's current certificate and trust bundle, swappable while connections run.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use rcgen::KeyPair;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use thiserror::Error;
use tracing::info;

use crate::cert_info::{CertInfoError, LeafInfo};
use crate::pem_blocks::{certs_from_pem, private_key_from_pem, PemError};
use crate::spiffe::SpiffeId;

/// Why a leaf or trust bundle was not installed; the previous one stays in place.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The PEM input is unusable.
    #[error(transparent)]
    Pem(#[from] PemError),
    /// The leaf certificate cannot be read or names no valid SPIFFE id.
    #[error("the leaf certificate cannot be used: {0}")]
    Leaf(#[from] CertInfoError),
    /// The leaf names another identity than this store's.
    #[error("the leaf is for {found}, but this proxy is {expected}")]
    WrongIdentity {
        /// The store's local identity.
        expected: SpiffeId,
        /// The identity in the certificate.
        found: SpiffeId,
    },
    /// The private key cannot be loaded or does not match the leaf.
    #[error("the private key does not fit the leaf: {0}")]
    Key(#[source] rustls::Error),
    /// A trust bundle certificate is not a usable trust anchor.
    #[error("trust bundle certificate {index} is not a usable root: {reason}")]
    BadRoot {
        /// Position in the bundle.
        index: usize,
        /// webpki's complaint.
        reason: String,
    },
    /// The client verifier could not be built from the bundle.
    #[error("building the client verifier from the trust bundle: {0}")]
    Verifier(String),
}

/// The installed leaf: what handshakes present, plus facts for renewal.
pub(crate) struct Leaf {
    pub certified: Arc<CertifiedKey>,
    pub serial_hex: String,
    pub expires_at: SystemTime,
}

/// The installed trust bundle and the verifier built for it once.
pub(crate) struct Bundle {
    pub roots: Arc<RootCertStore>,
    pub client_verifier: Arc<dyn ClientCertVerifier>,
    pub pem: String,
}

/// Holds the proxy's current leaf (chain + key) and trust bundle.
///
/// Both can be replaced at any time; each new handshake reads the newest, while
/// connections already open keep the keys they negotiated.
pub struct CertStore {
    local_id: SpiffeId,
    provider: Arc<CryptoProvider>,
    leaf: ArcSwapOption<Leaf>,
    bundle: ArcSwapOption<Bundle>,
    /// Bumped on every install, so TLS session caches know to forget old sessions.
    generation: AtomicU64,
}

impl CertStore {
    /// An empty store for the workload `local_id`; install a leaf and a bundle before use.
    pub fn new(local_id: SpiffeId) -> CertStore {
        CertStore {
            local_id,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            leaf: ArcSwapOption::empty(),
            bundle: ArcSwapOption::empty(),
            generation: AtomicU64::new(0),
        }
    }

    /// The identity this proxy serves as; installed leaves must carry it.
    pub fn local_id(&self) -> &SpiffeId {
        &self.local_id
    }

    /// Installs a new leaf: `chain_pem` (leaf first) signed for `key`, which must name
    /// this store's identity.
    pub fn set_leaf(&self, chain_pem: &str, key: &KeyPair) -> Result<(), StoreError> {
        let der = zeroize::Zeroizing::new(key.serialize_der());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der.to_vec()));
        self.install_leaf(chain_pem, key)
    }

    /// Installs a new leaf from PEM key text (PKCS#8, SEC1 or PKCS#1).
    pub fn set_leaf_pem(&self, chain_pem: &str, key_pem: &str) -> Result<(), StoreError> {
        let key = private_key_from_pem(key_pem, "leaf private key")?;
        self.install_leaf(chain_pem, key)
    }

    fn install_leaf(&self, chain_pem: &str, key: PrivateKeyDer<'static>) -> Result<(), StoreError> {
        let chain = certs_from_pem(chain_pem, "leaf chain")?;
        let info = LeafInfo::parse(&chain[0])?;
        if info.id != self.local_id {
            return Err(StoreError::WrongIdentity {
                expected: self.local_id.clone(),
                found: info.id,
            });
        }
        let certified =
            CertifiedKey::from_der(chain, key, &self.provider).map_err(StoreError::Key)?;
        let expires_at_unix = info
            .not_after
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        info!(id = %self.local_id, serial = %info.serial_hex, expires_at_unix, "installed leaf certificate");
        self.leaf.store(Some(Arc::new(Leaf {
            certified: Arc::new(certified),
            serial_hex: info.serial_hex,
            expires_at: info.not_after,
        })));
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Installs a new trust bundle (PEM roots); peers are verified against it from
    /// the next handshake on.
    pub fn set_trust_bundle(&self, pem: &str) -> Result<(), StoreError> {
        let certs = certs_from_pem(pem, "trust bundle")?;
        let count = certs.len();
        let mut roots = RootCertStore::empty();
        for (index, cert) in certs.into_iter().enumerate() {
            roots.add(cert).map_err(|e| StoreError::BadRoot {
                index,
                reason: e.to_string(),
            })?;
        }
        let roots = Arc::new(roots);
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), self.provider.clone())
                .build()
                .map_err(|e| StoreError::Verifier(e.to_string()))?;
        self.bundle.store(Some(Arc::new(Bundle {
            roots,
            client_verifier,
            pem: pem.to_string(),
        })));
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        info!(id = %self.local_id, roots = count, generation, "installed trust bundle");
        Ok(())
    }

    /// Serial (lowercase hex) of the installed leaf, if any.
    pub fn current_serial(&self) -> Option<String> {
        self.leaf.load().as_ref().map(|l| l.serial_hex.clone())
    }

    /// Expiry of the installed leaf, if any; renewal is planned from it.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.leaf.load().as_ref().map(|l| l.expires_at)
    }

    /// True once a leaf is installed (readiness).
    pub fn has_leaf(&self) -> bool {
        self.leaf.load().is_some()
    }

    /// True once a trust bundle is installed (readiness).
    pub fn has_trust_bundle(&self) -> bool {
        self.bundle.load().is_some()
    }

    /// The installed trust bundle as given, if any (for the admin `/config` view).
    pub fn trust_bundle_pem(&self) -> Option<String> {
        self.bundle.load().as_ref().map(|b| b.pem.clone())
    }

    pub(crate) fn leaf(&self) -> Option<Arc<Leaf>> {
        self.leaf.load_full()
    }

    pub(crate) fn bundle(&self) -> Option<Arc<Bundle>> {
        self.bundle.load_full()
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub(crate) fn provider(&self) -> &Arc<CryptoProvider> {
        &self.provider
    }
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("local_id", &self.local_id)
            .field("serial", &self.current_serial())
            .field("has_trust_bundle", &self.has_trust_bundle())
            .field("key", &"<redacted>")
            .finish()
    }
}
