//! The proxy's current certificate and trust bundle, swappable while connections run.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use rcgen::KeyPair;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use thiserror::Error;
use tracing::{info, warn};

use crate::bundle::{BundleError, TrustBundle};
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
    /// The trust bundle is refused as a whole.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// The agent sent a leaf that its own trust bundle does not lead to.
    #[error("the new leaf does not chain to the trust bundle sent with it")]
    LeafNotUnderBundle,
    /// The agent sent a bundle that does not trust the agent itself.
    #[error("the trust bundle sent by the agent does not trust the agent's own certificate")]
    BundleUntrustsAgent,
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
    pub trust: TrustBundle,
    pub client_verifier: Arc<dyn ClientCertVerifier>,
}

/// Who offers a trust bundle. The operator's file is their word, even when it
/// stops trusting this proxy's own leaf (a hard cut: a renewal follows); a bundle
/// from the agent may not cut this proxy off from its peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleSource {
    /// `--trust-anchors`, as mounted from the trust-anchors ConfigMap.
    File,
    /// Pushed by the agent over its verified link.
    Agent,
}

impl BundleSource {
    /// Label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            BundleSource::File => "file",
            BundleSource::Agent => "agent",
        }
    }
}

/// What became of an offered bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleOutcome {
    /// The same roots as installed: nothing changed (session caches are kept).
    Unchanged,
    /// Installed for the next handshakes.
    Installed {
        /// Roots now trusted.
        roots: usize,
        /// The installed leaf no longer chains to it: renew now.
        renew: bool,
    },
    /// Not installed, because it would stop trusting something in use; offer it
    /// again later.
    Held(HeldBecause),
}

/// Why an offered bundle waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeldBecause {
    /// It does not trust the agent this proxy is connected to: it would cut the
    /// proxy off from renewals. It fits once that connection is gone.
    WouldUntrustAgent,
    /// It does not trust this proxy's own leaf, so peers holding it would refuse
    /// us: it comes again with the next leaf, which it does trust.
    WouldUntrustOwnLeaf,
}

impl BundleOutcome {
    /// Label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            BundleOutcome::Unchanged => "unchanged",
            BundleOutcome::Installed { .. } => "installed",
            BundleOutcome::Held(HeldBecause::WouldUntrustAgent) => "held_agent",
            BundleOutcome::Held(HeldBecause::WouldUntrustOwnLeaf) => "held_own_leaf",
        }
    }
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
    /// Serialises bundle offers, so a check and its swap never interleave with
    /// another source's (a late answer cannot undo a newer push half-way).
    offers: Mutex<()>,
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
            offers: Mutex::new(()),
        }
    }

    /// The identity this proxy serves as; installed leaves must carry it.
    pub fn local_id(&self) -> &SpiffeId {
        &self.local_id
    }

    /// Installs a new leaf: `chain_pem` (leaf first) signed for `key`, which must name
    /// this store's identity.
    pub fn set_leaf(&self, chain_pem: &str, key: &KeyPair) -> Result<(), StoreError> {
        let chain = certs_from_pem(chain_pem, "leaf chain")?;
        self.store_leaf(self.prepare_leaf(chain, pkcs8(key))?);
        Ok(())
    }

    /// Installs a new leaf from PEM key text (PKCS#8, SEC1 or PKCS#1).
    pub fn set_leaf_pem(&self, chain_pem: &str, key_pem: &str) -> Result<(), StoreError> {
        let key = private_key_from_pem(key_pem, "leaf private key")?;
        let chain = certs_from_pem(chain_pem, "leaf chain")?;
        self.store_leaf(self.prepare_leaf(chain, key)?);
        Ok(())
    }

    /// Checks a leaf chain and its key: it must name this store's identity, and the
    /// key must fit it.
    fn prepare_leaf(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Leaf, StoreError> {
        let info = LeafInfo::parse(&chain[0])?;
        if info.id != self.local_id {
            return Err(StoreError::WrongIdentity {
                expected: self.local_id.clone(),
                found: info.id,
            });
        }
        let certified =
            CertifiedKey::from_der(chain, key, &self.provider).map_err(StoreError::Key)?;
        Ok(Leaf {
            certified: Arc::new(certified),
            serial_hex: info.serial_hex,
            expires_at: info.not_after,
        })
    }

    /// Swaps in a checked leaf for the next handshakes.
    fn store_leaf(&self, leaf: Leaf) {
        let expires_at_unix = leaf
            .expires_at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        info!(id = %self.local_id, serial = %leaf.serial_hex, expires_at_unix, "installed leaf certificate");
        self.leaf.store(Some(Arc::new(leaf)));
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Installs a new trust bundle (PEM roots) without the offer rules; peers are
    /// verified against it from the next handshake on. The same roots again change
    /// nothing.
    pub fn set_trust_bundle(&self, pem: &str) -> Result<(), StoreError> {
        let _serial = self.lock_offers();
        let trust = self.parse_bundle(pem)?;
        self.install_bundle(trust, "direct").map(drop)
    }

    /// Offers a bundle from `source`; `agent_chain` is the chain of the agent this
    /// proxy is connected to now, if any. Installs it unless it is the same set of
    /// roots, or would stop trusting that agent, or (from the agent) this proxy's
    /// own leaf. A bundle that cannot be parsed or checked is refused whole.
    pub fn offer_trust_bundle(
        &self,
        pem: &str,
        source: BundleSource,
        agent_chain: Option<&[CertificateDer<'static>]>,
    ) -> Result<BundleOutcome, StoreError> {
        let _serial = self.lock_offers();
        let trust = self.parse_bundle(pem)?;
        if self.bundle().is_some_and(|b| b.trust.same_roots(&trust)) {
            return Ok(BundleOutcome::Unchanged);
        }
        let now = SystemTime::now();
        if agent_chain.is_some_and(|chain| !trust.verifies(chain, now)) {
            warn!(id = %self.local_id, source = source.as_str(), bundle = %trust,
                "trust bundle held: it does not trust the connected agent");
            return Ok(BundleOutcome::Held(HeldBecause::WouldUntrustAgent));
        }
        let untrusts_leaf = self
            .leaf()
            .is_some_and(|leaf| !trust.verifies(&leaf.certified.cert, now));
        if untrusts_leaf && source == BundleSource::Agent {
            info!(id = %self.local_id, bundle = %trust,
                "trust bundle held until a leaf under it is issued");
            return Ok(BundleOutcome::Held(HeldBecause::WouldUntrustOwnLeaf));
        }
        Ok(match self.install_bundle(trust, source.as_str())? {
            BundleOutcome::Installed { roots, .. } => BundleOutcome::Installed {
                roots,
                renew: untrusts_leaf,
            },
            other => other,
        })
    }

    /// Installs a renewal's answer: its bundle (checked as [`offer_trust_bundle`]
    /// checks the agent's, except that it must lead to the new leaf, not the old one)
    /// and then the leaf, so no handshake sees a leaf its own bundle does not trust.
    ///
    /// [`offer_trust_bundle`]: CertStore::offer_trust_bundle
    pub fn set_leaf_and_bundle(
        &self,
        chain_pem: &str,
        key: &KeyPair,
        bundle_pem: &str,
        agent_chain: Option<&[CertificateDer<'static>]>,
    ) -> Result<BundleOutcome, StoreError> {
        let _serial = self.lock_offers();
        let trust = self.parse_bundle(bundle_pem)?;
        let now = SystemTime::now();
        let chain = certs_from_pem(chain_pem, "leaf chain")?;
        if !trust.verifies(&chain, now) {
            return Err(StoreError::LeafNotUnderBundle);
        }
        if agent_chain.is_some_and(|agent| !trust.verifies(agent, now)) {
            return Err(StoreError::BundleUntrustsAgent);
        }
        // Both are checked before either is installed: a leaf refused for its
        // identity or key leaves the old bundle in place too.
        let leaf = self.prepare_leaf(chain, pkcs8(key))?;
        let outcome = self.install_bundle(trust, "certificate")?;
        self.store_leaf(leaf);
        Ok(outcome)
    }

    /// The roots of the installed bundle, if any (for metrics: count and expiry).
    pub fn trust_bundle(&self) -> Option<TrustBundle> {
        self.bundle().map(|b| b.trust.clone())
    }

    fn lock_offers(&self) -> std::sync::MutexGuard<'_, ()> {
        self.offers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn parse_bundle(&self, pem: &str) -> Result<TrustBundle, StoreError> {
        Ok(TrustBundle::parse(
            pem,
            self.local_id.trust_domain(),
            SystemTime::now(),
        )?)
    }

    /// Swaps in `trust`, unless the same roots are installed.
    fn install_bundle(
        &self,
        trust: TrustBundle,
        source: &'static str,
    ) -> Result<BundleOutcome, StoreError> {
        let roots = trust.len();
        if self.bundle().is_some_and(|b| b.trust.same_roots(&trust)) {
            return Ok(BundleOutcome::Unchanged);
        }
        let client_verifier = WebPkiClientVerifier::builder_with_provider(
            trust.roots().clone(),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| StoreError::Verifier(e.to_string()))?;
        info!(id = %self.local_id, source, roots, bundle = %trust, "installed trust bundle");
        self.bundle.store(Some(Arc::new(Bundle {
            trust,
            client_verifier,
        })));
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(BundleOutcome::Installed {
            roots,
            renew: false,
        })
    }

    /// The SHA-256 (hex) of the certificate that signed the installed leaf, when its
    /// chain carries it (an issuer below the root; a leaf signed by the root itself
    /// does not say).
    pub fn leaf_issuer_sha256(&self) -> Option<String> {
        let leaf = self.leaf.load();
        let issuer = leaf.as_ref()?.certified.cert.get(1)?;
        Some(crate::cert_info::sha256_hex(issuer))
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
        self.bundle.load().as_ref().map(|b| b.trust.pem())
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

/// A generated key as the PKCS#8 DER rustls takes (the copy is wiped on drop).
fn pkcs8(key: &KeyPair) -> PrivateKeyDer<'static> {
    let der = zeroize::Zeroizing::new(key.serialize_der());
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der.to_vec()))
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{csr, Ca};

    const HOUR: Duration = Duration::from_secs(3600);

    fn me() -> SpiffeId {
        SpiffeId::parse("spiffe://cluster.local/ns/demo/sa/me").unwrap()
    }

    fn chain_of(ca: &Ca) -> Vec<CertificateDer<'static>> {
        let agent = SpiffeId::parse("spiffe://cluster.local/ns/pillion/sa/agent").unwrap();
        let (issued, _key) = ca.issue(&agent, HOUR).unwrap();
        certs_from_pem(&issued.chain_pem, "chain").unwrap()
    }

    /// A store holding a leaf and the bundle of `ca`.
    fn store_under(ca: &Ca) -> CertStore {
        let store = CertStore::new(me());
        let (key, csr_pem) = csr::generate(&me()).unwrap();
        let issued = ca.sign_csr(&csr_pem, &me(), HOUR).unwrap();
        store
            .set_leaf_and_bundle(&issued.chain_pem, &key, &ca.trust_bundle_pem(), None)
            .unwrap();
        store
    }

    fn pems(cas: &[&Ca]) -> String {
        cas.iter().map(|c| c.trust_bundle_pem()).collect()
    }

    #[test]
    fn the_same_roots_again_change_nothing_not_even_the_session_caches() {
        let (r1, r2) = (
            Ca::generate("cluster.local").unwrap(),
            Ca::generate("cluster.local").unwrap(),
        );
        let store = store_under(&r1);
        let before = store.generation();
        for source in [BundleSource::File, BundleSource::Agent] {
            let outcome = store
                .offer_trust_bundle(&format!("\n{}", pems(&[&r1, &r1])), source, None)
                .unwrap();
            assert_eq!(outcome, BundleOutcome::Unchanged);
        }
        assert_eq!(store.generation(), before);
        let added = store
            .offer_trust_bundle(
                &pems(&[&r2, &r1]),
                BundleSource::Agent,
                Some(&chain_of(&r1)),
            )
            .unwrap();
        assert_eq!(
            added,
            BundleOutcome::Installed {
                roots: 2,
                renew: false
            }
        );
        assert_eq!(store.generation(), before + 1);
        let again = store
            .offer_trust_bundle(&pems(&[&r1, &r2]), BundleSource::File, None)
            .unwrap();
        assert_eq!(again, BundleOutcome::Unchanged);
        assert_eq!(store.generation(), before + 1);
    }

    #[test]
    fn a_bundle_that_drops_the_connected_agents_root_waits_for_that_link_to_go() {
        let (r1, r2) = (
            Ca::generate("cluster.local").unwrap(),
            Ca::generate("cluster.local").unwrap(),
        );
        let store = store_under(&r1);
        let agent_on_r1 = chain_of(&r1);
        for source in [BundleSource::File, BundleSource::Agent] {
            let outcome = store
                .offer_trust_bundle(&pems(&[&r2]), source, Some(&agent_on_r1))
                .unwrap();
            assert_eq!(outcome, BundleOutcome::Held(HeldBecause::WouldUntrustAgent));
            assert!(store
                .trust_bundle()
                .unwrap()
                .verifies(&agent_on_r1, SystemTime::now()));
        }
        // The link is gone: the operator's file wins, and the leaf must be renewed.
        let outcome = store
            .offer_trust_bundle(&pems(&[&r2]), BundleSource::File, None)
            .unwrap();
        assert_eq!(
            outcome,
            BundleOutcome::Installed {
                roots: 1,
                renew: true
            }
        );
        assert!(!store
            .trust_bundle()
            .unwrap()
            .verifies(&agent_on_r1, SystemTime::now()));
    }

    #[test]
    fn the_agent_cannot_push_a_bundle_that_untrusts_our_own_leaf() {
        let (r1, r2) = (
            Ca::generate("cluster.local").unwrap(),
            Ca::generate("cluster.local").unwrap(),
        );
        let store = store_under(&r1);
        let before = store.generation();
        let outcome = store
            .offer_trust_bundle(&pems(&[&r2]), BundleSource::Agent, Some(&chain_of(&r2)))
            .unwrap();
        assert_eq!(
            outcome,
            BundleOutcome::Held(HeldBecause::WouldUntrustOwnLeaf)
        );
        assert_eq!(store.generation(), before);
        // It comes with a leaf under r2 instead: installed together.
        let (key, csr_pem) = csr::generate(&me()).unwrap();
        let issued = r2.sign_csr(&csr_pem, &me(), HOUR).unwrap();
        let outcome = store
            .set_leaf_and_bundle(&issued.chain_pem, &key, &pems(&[&r2]), Some(&chain_of(&r2)))
            .unwrap();
        assert_eq!(
            outcome,
            BundleOutcome::Installed {
                roots: 1,
                renew: false
            }
        );
        assert_eq!(store.current_serial(), Some(issued.serial_hex));
    }

    #[test]
    fn a_renewal_whose_bundle_does_not_fit_its_leaf_or_agent_installs_nothing() {
        let (r1, r2) = (
            Ca::generate("cluster.local").unwrap(),
            Ca::generate("cluster.local").unwrap(),
        );
        let store = store_under(&r1);
        let serial = store.current_serial();
        let (key, csr_pem) = csr::generate(&me()).unwrap();
        let under_r2 = r2.sign_csr(&csr_pem, &me(), HOUR).unwrap();
        let err = store
            .set_leaf_and_bundle(&under_r2.chain_pem, &key, &pems(&[&r1]), None)
            .unwrap_err();
        assert!(matches!(err, StoreError::LeafNotUnderBundle), "{err}");
        let err = store
            .set_leaf_and_bundle(
                &under_r2.chain_pem,
                &key,
                &pems(&[&r2]),
                Some(&chain_of(&r1)),
            )
            .unwrap_err();
        assert!(matches!(err, StoreError::BundleUntrustsAgent), "{err}");
        let err = store
            .offer_trust_bundle("garbage", BundleSource::File, None)
            .unwrap_err();
        assert!(matches!(err, StoreError::Bundle(_)), "{err}");
        assert_eq!(store.current_serial(), serial);
        assert!(store
            .trust_bundle()
            .unwrap()
            .verifies(&chain_of(&r1), SystemTime::now()));
    }
}
