//! The certificate authority: holds the signing key and issues workload leaves.

use std::fmt;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    PublicKeyData, SanType,
};
use rustls::pki_types::CertificateDer;
use tracing::{debug, info};
use zeroize::Zeroizing;

use super::chain::check_chain;
use super::csr_check::check_csr;
use super::error::{CaError, IssueError};
use super::leaf::{
    leaf_params, random_serial, to_offset, Issued, P256PublicKey, Validity, ORGANIZATION,
};
use crate::cert_info;
use crate::pem_blocks::{cert_to_pem, certs_from_pem};
use crate::spiffe::{validate_trust_domain, SpiffeId};

/// Lifetime of a generated root.
pub const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The mesh certificate authority (a self-signed root or an intermediate under one).
///
/// The agent owns one and signs proxies' CSRs with it; the key never leaves it and
/// `Debug` never prints it.
pub struct Ca {
    trust_domain: Option<String>,
    pub(super) key: KeyPair,
    /// The CA certificate re-built by rcgen, used only as the issuer of leaves.
    pub(super) signer: rcgen::Certificate,
    /// The CA certificate exactly as loaded or generated.
    cert_der: CertificateDer<'static>,
    /// PEM appended to every leaf: the CA itself and intermediates, not the root.
    pub(super) chain_tail_pem: String,
    /// The root(s) peers must trust.
    pub(super) roots_pem: String,
    pub(super) not_after: SystemTime,
    /// SHA-256 (hex) of `cert_der`, computed once: every view names it.
    issuer_sha256: String,
}

impl Ca {
    /// Generates a new self-signed root for `trust_domain`: ECDSA P-256, 10 years,
    /// CA:true, keyCertSign + cRLSign, URI SAN `spiffe://<trust_domain>`.
    pub fn generate(trust_domain: &str) -> Result<Ca, CaError> {
        validate_trust_domain(trust_domain).map_err(CaError::TrustDomain)?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|source| {
            CaError::Generate {
                what: "generating the CA key",
                source,
            }
        })?;
        let validity = Validity::starting_now(ROOT_LIFETIME)?;
        let params = ca_params(
            trust_domain,
            "root",
            BasicConstraints::Unconstrained,
            validity,
        )?;
        let cert = params
            .self_signed(&key)
            .map_err(|source| CaError::Generate {
                what: "self-signing the CA certificate",
                source,
            })?;
        let ca = Ca::assemble(vec![cert.der().clone()], key)?;
        info!(trust_domain, "generated a new mesh root CA");
        Ok(ca)
    }

    /// Loads a CA from PEM. `cert_pem` holds the CA certificate first; if the CA is
    /// an intermediate, the certificates above it up to the root follow in the same text.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, CaError> {
        Ca::from_pem_with_chain(cert_pem, key_pem, "")
    }

    /// Loads an intermediate CA whose chain up to (and including) the root is given
    /// separately in `chain_pem`, ordered from the CA's issuer up to the root.
    pub fn from_pem_with_chain(
        cert_pem: &str,
        key_pem: &str,
        chain_pem: &str,
    ) -> Result<Ca, CaError> {
        let mut certs = certs_from_pem(cert_pem, "CA certificate")?;
        if !chain_pem.trim().is_empty() {
            certs.extend(certs_from_pem(chain_pem, "CA chain")?);
        }
        let key = KeyPair::from_pem(key_pem).map_err(|e| {
            CaError::Key(format!(
                "{e} (a PKCS#8 \"PRIVATE KEY\" PEM block is required)"
            ))
        })?;
        Ca::assemble(certs, key)
    }

    /// Checks the chain and the key, and prepares the signer.
    pub(super) fn assemble(
        certs: Vec<CertificateDer<'static>>,
        key: KeyPair,
    ) -> Result<Ca, CaError> {
        let checked = check_chain(&certs)?;
        let cert_der = certs[0].clone();
        let cert = cert_info::parse(&cert_der).map_err(|e| CaError::Certificate(e.to_string()))?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CaError::KeyMismatch);
        }
        if let Ok(Some(ku)) = cert.key_usage() {
            if !ku.value.key_cert_sign() {
                return Err(CaError::NoKeyCertSign);
            }
        }
        let not_after = cert_info::to_system_time(cert.validity().not_after.timestamp());
        if not_after <= SystemTime::now() {
            return Err(CaError::Expired);
        }
        // rcgen re-encodes the issuer name from its parsed form; it must come out
        // byte-identical or webpki could not chain leaves to this CA.
        let single_valued = cert.subject().iter().all(|rdn| rdn.iter().count() == 1);
        if !single_valued {
            return Err(CaError::Certificate(
                "multi-valued RDNs in the CA subject are not supported".into(),
            ));
        }
        let signer = CertificateParams::from_ca_cert_der(&cert_der)
            .and_then(|params| params.self_signed(&key))
            .map_err(|e| CaError::Certificate(format!("cannot sign with it: {e}")))?;
        let rebuilt =
            cert_info::parse(signer.der()).map_err(|e| CaError::Certificate(e.to_string()))?;
        if rebuilt.subject().as_raw() != cert.subject().as_raw() {
            return Err(CaError::Certificate(
                "its subject name cannot be reproduced byte for byte".into(),
            ));
        }
        let trust_domain = [&cert_der, &checked.root]
            .into_iter()
            .find_map(|der| ca_trust_domain(der));
        let chain_tail_pem = checked
            .intermediates
            .iter()
            .map(|c| cert_to_pem(c))
            .collect();
        Ok(Ca {
            trust_domain,
            key,
            signer,
            issuer_sha256: cert_info::sha256_hex(&cert_der),
            cert_der,
            chain_tail_pem,
            roots_pem: cert_to_pem(&checked.root),
            not_after,
        })
    }

    /// The trust domain the CA is bound to (from its `spiffe://<td>` URI SAN), if any;
    /// a bound CA refuses identities of other trust domains.
    pub fn trust_domain(&self) -> Option<&str> {
        self.trust_domain.as_deref()
    }

    /// The trust bundle peers must trust: the root certificate(s), PEM.
    pub fn trust_bundle_pem(&self) -> String {
        self.roots_pem.clone()
    }

    /// The SHA-256 (hex) of the certificate that signs leaves: a proxy whose leaf
    /// names another issuer knows a rotation switched issuers and renews.
    pub fn issuer_sha256(&self) -> &str {
        &self.issuer_sha256
    }

    /// The CA's own certificate, PEM (what `ca.pem` holds first).
    pub fn cert_pem(&self) -> String {
        cert_to_pem(&self.cert_der)
    }

    /// When the CA certificate expires; leaves are never issued past it.
    pub fn expires_at(&self) -> SystemTime {
        self.not_after
    }

    /// The CA's private key, PKCS#8 PEM, wiped from memory on drop.
    pub(crate) fn key_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(self.key.serialize_pem())
    }

    /// Signs a workload's CSR for `expected`: verifies the CSR, requires an ECDSA
    /// P-256 key and, if the CSR names an identity, that it is `expected`.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        expected: &SpiffeId,
        lifetime: Duration,
    ) -> Result<Issued, IssueError> {
        self.check_trust_domain(expected)?;
        let csr = check_csr(csr_pem)?;
        match csr.requested_uris.as_slice() {
            [] => debug!(id = %expected, "CSR names no identity; issuing the expected one"),
            [one] if one == expected.as_str() => {}
            [one] => {
                return Err(IssueError::IdentityMismatch {
                    requested: one.clone(),
                    allowed: expected.clone(),
                })
            }
            many => {
                return Err(IssueError::IdentityMismatch {
                    requested: many.join(", "),
                    allowed: expected.clone(),
                })
            }
        }
        let validity = Validity::starting_now(lifetime)?;
        self.sign_key(&P256PublicKey(csr.public_point), expected, &[], validity)
    }

    /// Issues a certificate and a new P-256 key for `id` (the agent's own server
    /// certificate). The key PEM is wiped from memory when dropped.
    pub fn issue(
        &self,
        id: &SpiffeId,
        lifetime: Duration,
    ) -> Result<(Issued, Zeroizing<String>), CaError> {
        let validity = Validity::starting_now(lifetime)?;
        self.issue_with_validity(id, validity)
    }

    /// `issue` plus DNS SANs, for the agent's serving certificate: the Kubernetes API
    /// server calls the admission webhook by its Service DNS name, not its SPIFFE id.
    pub fn issue_with_dns_names(
        &self,
        id: &SpiffeId,
        dns_names: &[&str],
        lifetime: Duration,
    ) -> Result<(Issued, Zeroizing<String>), CaError> {
        if let Some(bad) = dns_names.iter().find(|n| !is_dns_name(n)) {
            return Err(IssueError::InvalidDnsName((*bad).to_string()).into());
        }
        let validity = Validity::starting_now(lifetime)?;
        self.issue_inner(id, dns_names, validity)
    }

    /// `issue` with an explicit validity window; tests use it for expired certificates.
    pub(crate) fn issue_with_validity(
        &self,
        id: &SpiffeId,
        validity: Validity,
    ) -> Result<(Issued, Zeroizing<String>), CaError> {
        self.issue_inner(id, &[], validity)
    }

    fn issue_inner(
        &self,
        id: &SpiffeId,
        dns_names: &[&str],
        validity: Validity,
    ) -> Result<(Issued, Zeroizing<String>), CaError> {
        self.check_trust_domain(id)?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|source| {
            CaError::Generate {
                what: "generating a leaf key",
                source,
            }
        })?;
        let issued = self.sign_key(&key, id, dns_names, validity)?;
        Ok((issued, Zeroizing::new(key.serialize_pem())))
    }

    fn check_trust_domain(&self, id: &SpiffeId) -> Result<(), IssueError> {
        match &self.trust_domain {
            Some(td) if td != id.trust_domain() => Err(IssueError::WrongTrustDomain {
                id: id.clone(),
                ca_trust_domain: td.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// Signs a leaf for `public_key`, never past the CA's own expiry.
    fn sign_key(
        &self,
        public_key: &impl PublicKeyData,
        id: &SpiffeId,
        dns_names: &[&str],
        mut validity: Validity,
    ) -> Result<Issued, IssueError> {
        if validity.not_after > self.not_after {
            debug!(id = %id, "leaf lifetime clamped to the CA's expiry");
            validity.not_after = self.not_after;
        }
        let mut params = leaf_params(id, validity)?;
        for name in dns_names {
            let name = (*name)
                .try_into()
                .map_err(|e: rcgen::Error| IssueError::Signing(e))?;
            params.subject_alt_names.push(SanType::DnsName(name));
        }
        let cert = params
            .signed_by(public_key, &self.signer, &self.key)
            .map_err(IssueError::Signing)?;
        let serial_hex = cert_info::parse(cert.der())
            .map(|c| cert_info::serial_hex(&c))
            .map_err(|e| IssueError::Malformed(format!("issued certificate unreadable: {e}")))?;
        let mut chain_pem = cert_to_pem(cert.der());
        chain_pem.push_str(&self.chain_tail_pem);
        let expires_at_unix = validity
            .not_after
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        info!(id = %id, serial = %serial_hex, expires_at_unix, "issued workload certificate");
        Ok(Issued {
            chain_pem,
            expires_at: validity.not_after,
            serial_hex,
        })
    }
}

/// A lowercase DNS name: labels of 1-63 `a-z`, `0-9`, `-` (not at either end), at
/// most 253 bytes in all.
fn is_dns_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// The trust domain of a CA certificate's `spiffe://<td>` URI SAN, if it has one.
pub(crate) fn ca_trust_domain(der: &CertificateDer<'_>) -> Option<String> {
    let cert = cert_info::parse(der).ok()?;
    let uris = cert_info::uri_sans(&cert).ok()?;
    uris.iter().find_map(|uri| {
        let rest = uri.strip_prefix("spiffe://")?;
        let td = rest.split('/').next()?;
        validate_trust_domain(td).ok()?;
        Some(td.to_string())
    })
}

/// The parameters of a CA certificate the mesh makes (a root, or an issuer under
/// one): ECDSA P-256, keyCertSign + cRLSign, URI SAN `spiffe://<trust_domain>`, and a
/// per-certificate suffix in its name, so two of them (old and new during a
/// rotation) never share a subject and path building never confuses them.
pub(crate) fn ca_params(
    trust_domain: &str,
    kind: &str,
    constraints: BasicConstraints,
    validity: Validity,
) -> Result<CertificateParams, CaError> {
    let serial = random_serial();
    let suffix: String = serial.to_bytes()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, ORGANIZATION);
    dn.push(DnType::CommonName, format!("Pillion {kind} CA {suffix}"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(constraints);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let uri = format!("spiffe://{trust_domain}")
        .try_into()
        .map_err(|source| CaError::Generate {
            what: "encoding the CA's URI SAN",
            source,
        })?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    params.serial_number = Some(serial);
    params.not_before = to_offset(validity.not_before);
    params.not_after = to_offset(validity.not_after);
    Ok(params)
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let subject = cert_info::parse(&self.cert_der)
            .map(|c| c.subject().to_string())
            .unwrap_or_default();
        f.debug_struct("Ca")
            .field("trust_domain", &self.trust_domain)
            .field("subject", &subject)
            .field("key", &"<redacted>")
            .finish()
    }
}
