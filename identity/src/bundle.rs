//! A trust bundle: the roots a proxy trusts, checked as a whole before any of it is
//! used, so a bad file or push can never leave a proxy trusting half a bundle (or
//! nothing, or a root of another mesh).

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::RootCertStore;
use thiserror::Error;

use crate::ca::ca_trust_domain;
use crate::cert_info;
use crate::pem_blocks::{cert_to_pem, certs_from_pem, PemError};

/// Most roots a bundle may hold: a rotation needs two, a merger of meshes a few.
pub const MAX_BUNDLE_ROOTS: usize = 16;
/// Largest bundle text read, from a file or the wire.
pub const MAX_BUNDLE_BYTES: usize = 64 * 1024;

/// Why a bundle was refused; the one in use stays.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BundleError {
    /// Larger than [`MAX_BUNDLE_BYTES`].
    #[error("the trust bundle is {bytes} bytes, more than the {MAX_BUNDLE_BYTES} allowed")]
    TooLarge {
        /// Its size.
        bytes: usize,
    },
    /// Not PEM, or no certificate in it.
    #[error(transparent)]
    Pem(#[from] PemError),
    /// More than [`MAX_BUNDLE_ROOTS`] distinct certificates.
    #[error("the trust bundle holds {count} roots, more than the {MAX_BUNDLE_ROOTS} allowed")]
    TooMany {
        /// How many distinct certificates.
        count: usize,
    },
    /// A certificate cannot be read, or webpki cannot use it as an anchor.
    #[error("trust bundle certificate {index} cannot be used: {reason}")]
    Unreadable {
        /// Position in the bundle, from 0.
        index: usize,
        /// The parser's complaint.
        reason: String,
    },
    /// A leaf (CA:false, or no basic constraints) where a root belongs.
    #[error("trust bundle certificate {index} ({subject}) is not a CA certificate")]
    NotCa {
        /// Position in the bundle, from 0.
        index: usize,
        /// Its subject.
        subject: String,
    },
    /// A root that names another mesh's trust domain.
    #[error(
        "trust bundle certificate {index} ({subject}) is for trust domain {found:?}, \
         this proxy is in {expected:?}"
    )]
    ForeignTrustDomain {
        /// Position in the bundle, from 0.
        index: usize,
        /// Its subject.
        subject: String,
        /// The trust domain its `spiffe://` URI SAN names.
        found: String,
        /// This proxy's trust domain.
        expected: String,
    },
    /// Every root has expired.
    #[error("every root of the trust bundle has expired ({count} of them)")]
    AllExpired {
        /// How many there were.
        count: usize,
    },
}

/// A checked set of roots: at least one, all CA certificates of this trust domain
/// (or of none), none expired, no duplicates, compared as a set.
#[derive(Clone)]
pub struct TrustBundle {
    /// The roots' DER, sorted, without duplicates.
    ders: Vec<CertificateDer<'static>>,
    /// The same roots as webpki anchors.
    roots: Arc<RootCertStore>,
    /// One line per root, for logs: subject and expiry.
    summary: Vec<String>,
    /// When the first root expires.
    earliest_expiry: SystemTime,
    /// Expired roots that were left out.
    expired_skipped: usize,
}

impl TrustBundle {
    /// Parses and checks `pem` for a proxy in `trust_domain` at time `now`. Expired
    /// roots are left out (see [`TrustBundle::expired_skipped`]); anything else wrong
    /// with any certificate refuses the whole bundle.
    pub fn parse(pem: &str, trust_domain: &str, now: SystemTime) -> Result<Self, BundleError> {
        if pem.len() > MAX_BUNDLE_BYTES {
            return Err(BundleError::TooLarge { bytes: pem.len() });
        }
        let mut certs = certs_from_pem(pem, "trust bundle")?;
        certs.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
        certs.dedup();
        if certs.len() > MAX_BUNDLE_ROOTS {
            return Err(BundleError::TooMany { count: certs.len() });
        }
        let total = certs.len();
        let mut kept = Vec::with_capacity(total);
        let mut summary = Vec::with_capacity(total);
        let mut earliest_expiry: Option<SystemTime> = None;
        for (index, der) in certs.into_iter().enumerate() {
            let unreadable = |reason: String| BundleError::Unreadable { index, reason };
            let cert = cert_info::parse(&der).map_err(|e| unreadable(e.to_string()))?;
            let subject = cert.subject().to_string();
            if !cert.is_ca() {
                return Err(BundleError::NotCa { index, subject });
            }
            if let Some(found) = ca_trust_domain(&der) {
                if found != trust_domain {
                    return Err(BundleError::ForeignTrustDomain {
                        index,
                        subject,
                        found,
                        expected: trust_domain.to_string(),
                    });
                }
            }
            let not_after = cert_info::to_system_time(cert.validity().not_after.timestamp());
            if not_after <= now {
                tracing::warn!(%subject, "trust bundle root has expired; left out");
                continue;
            }
            earliest_expiry = Some(earliest_expiry.map_or(not_after, |e| e.min(not_after)));
            summary.push(format!("{subject} (expires {})", unix(not_after)));
            kept.push(der);
        }
        let Some(earliest_expiry) = earliest_expiry else {
            return Err(BundleError::AllExpired { count: total });
        };
        let mut roots = RootCertStore::empty();
        for (index, der) in kept.iter().enumerate() {
            roots
                .add(der.clone())
                .map_err(|e| BundleError::Unreadable {
                    index,
                    reason: e.to_string(),
                })?;
        }
        Ok(TrustBundle {
            expired_skipped: total - kept.len(),
            ders: kept,
            roots: Arc::new(roots),
            summary,
            earliest_expiry,
        })
    }

    /// The roots' DER, in the bundle's canonical order.
    pub(crate) fn ders(&self) -> &[CertificateDer<'static>] {
        &self.ders
    }

    /// The roots as webpki anchors, for verifiers.
    pub fn roots(&self) -> &Arc<RootCertStore> {
        &self.roots
    }

    /// How many roots are trusted.
    pub fn len(&self) -> usize {
        self.ders.len()
    }

    /// Never true for a parsed bundle; here for the `len` convention.
    pub fn is_empty(&self) -> bool {
        self.ders.is_empty()
    }

    /// Expired roots that the source held and this bundle left out.
    pub fn expired_skipped(&self) -> usize {
        self.expired_skipped
    }

    /// When the first root expires: after that, peers under it are refused.
    pub fn earliest_expiry(&self) -> SystemTime {
        self.earliest_expiry
    }

    /// True when both trust exactly the same roots (order, whitespace, duplicates
    /// and expired roots left aside).
    pub fn same_roots(&self, other: &TrustBundle) -> bool {
        self.ders == other.ders
    }

    /// The roots as PEM, in a canonical order.
    pub fn pem(&self) -> String {
        self.ders.iter().map(|d| cert_to_pem(d)).collect()
    }

    /// True when `chain` (leaf first, then intermediates) leads to one of these roots
    /// at `now`. Purposes and names are the verifiers' business, not this one's.
    pub fn verifies(&self, chain: &[CertificateDer<'_>], now: SystemTime) -> bool {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return false;
        };
        let Ok(parsed) = ParsedCertificate::try_from(leaf) else {
            return false;
        };
        let at = UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap_or_default());
        let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        verify_server_cert_signed_by_trust_anchor(&parsed, &self.roots, intermediates, at, algs.all)
            .is_ok()
    }
}

impl fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.summary).finish()
    }
}

impl fmt::Display for TrustBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary.join("; "))
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::spiffe::SpiffeId;
    use crate::Ca;

    const TD: &str = "cluster.local";

    fn now() -> SystemTime {
        SystemTime::now()
    }

    fn root() -> Ca {
        Ca::generate(TD).unwrap()
    }

    fn leaf_chain(ca: &Ca) -> Vec<CertificateDer<'static>> {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/a/sa/b").unwrap();
        let (issued, _key) = ca.issue(&id, Duration::from_secs(3600)).unwrap();
        certs_from_pem(&issued.chain_pem, "chain").unwrap()
    }

    #[test]
    fn two_roots_verify_both_leaves_and_compare_as_a_set() {
        let (r1, r2) = (root(), root());
        let (p1, p2) = (r1.trust_bundle_pem(), r2.trust_bundle_pem());
        let both = TrustBundle::parse(&format!("{p1}{p2}"), TD, now()).unwrap();
        let reversed = TrustBundle::parse(&format!("\n{p2}\n\n{p1}{p2}"), TD, now()).unwrap();
        assert_eq!(both.len(), 2);
        assert!(
            both.same_roots(&reversed),
            "order and duplicates do not count"
        );
        assert!(both.verifies(&leaf_chain(&r1), now()));
        assert!(both.verifies(&leaf_chain(&r2), now()));
        let one = TrustBundle::parse(&p1, TD, now()).unwrap();
        assert!(!one.same_roots(&both));
        assert!(!one.verifies(&leaf_chain(&r2), now()));
        assert!(TrustBundle::parse(&both.pem(), TD, now())
            .unwrap()
            .same_roots(&both));
        assert!(!one.verifies(&[], now()));
        assert!(!one.verifies(&[CertificateDer::from(b"junk".to_vec())], now()));
    }

    #[test]
    fn a_leaf_where_a_root_belongs_refuses_the_whole_bundle() {
        let r1 = root();
        let leaf = cert_to_pem(&leaf_chain(&r1)[0]);
        let err =
            TrustBundle::parse(&format!("{}{leaf}", r1.trust_bundle_pem()), TD, now()).unwrap_err();
        assert!(matches!(err, BundleError::NotCa { .. }), "{err}");
    }

    #[test]
    fn a_root_of_another_trust_domain_is_refused() {
        let ours = root().trust_bundle_pem();
        let theirs = Ca::generate("other.example").unwrap().trust_bundle_pem();
        let err = TrustBundle::parse(&format!("{ours}{theirs}"), TD, now()).unwrap_err();
        assert!(
            matches!(&err, BundleError::ForeignTrustDomain { found, .. } if found == "other.example"),
            "{err}"
        );
    }

    #[test]
    fn expired_roots_are_left_out_and_a_bundle_of_only_expired_ones_refused() {
        let (r1, r2) = (root(), root());
        let both = format!("{}{}", r1.trust_bundle_pem(), r2.trust_bundle_pem());
        let later = now() + Duration::from_secs(20 * 365 * 24 * 3600);
        let err = TrustBundle::parse(&both, TD, later).unwrap_err();
        assert!(matches!(err, BundleError::AllExpired { count: 2 }), "{err}");
    }

    #[test]
    fn garbage_empty_oversized_and_crowded_bundles_are_refused() {
        for text in [
            "",
            "hello",
            "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n",
        ] {
            assert!(TrustBundle::parse(text, TD, now()).is_err(), "{text:?}");
        }
        let junk_cert = cert_to_pem(b"not a certificate");
        let err = TrustBundle::parse(&junk_cert, TD, now()).unwrap_err();
        assert!(matches!(err, BundleError::Unreadable { .. }), "{err}");
        let big = "x".repeat(MAX_BUNDLE_BYTES + 1);
        assert!(matches!(
            TrustBundle::parse(&big, TD, now()),
            Err(BundleError::TooLarge { .. })
        ));
        let many: String = (0..=MAX_BUNDLE_ROOTS)
            .map(|_| root().trust_bundle_pem())
            .collect();
        assert!(matches!(
            TrustBundle::parse(&many, TD, now()),
            Err(BundleError::TooMany { count: 17 })
        ));
    }
}
