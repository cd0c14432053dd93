//! The shape of every workload certificate the CA issues.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::rngs::OsRng;
use rand::RngCore;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose,
    PublicKeyData, SanType, SerialNumber, SignatureAlgorithm,
};
use time::OffsetDateTime;

use super::error::IssueError;
use crate::spiffe::SpiffeId;

/// How far notBefore is set in the past, to absorb clock skew between nodes.
pub const BACKDATE: Duration = Duration::from_secs(60);
/// Bytes of the random serial number (127 random bits after clearing the sign bit).
const SERIAL_LEN: usize = 16;
/// Organization written into every subject the CA makes.
pub(crate) const ORGANIZATION: &str = "pillion";

/// A freshly issued workload certificate, as the agent hands it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// The leaf first, then any intermediates (never the root), PEM encoded.
    pub chain_pem: String,
    /// The leaf's notAfter.
    pub expires_at: SystemTime,
    /// The leaf's serial number, lowercase hex.
    pub serial_hex: String,
}

/// The validity window of a certificate, whole seconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// `now - BACKDATE .. now + lifetime`, whole seconds.
    pub fn starting_now(lifetime: Duration) -> Result<Validity, IssueError> {
        if lifetime.as_secs() == 0 {
            return Err(IssueError::InvalidLifetime);
        }
        let now = whole_seconds(SystemTime::now());
        Ok(Validity {
            not_before: now.checked_sub(BACKDATE).unwrap_or(UNIX_EPOCH),
            not_after: now + Duration::from_secs(lifetime.as_secs()),
        })
    }
}

/// Drops sub-second precision: certificates carry whole seconds.
pub(crate) fn whole_seconds(t: SystemTime) -> SystemTime {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// Converts to the `time` crate's type rcgen wants.
pub(crate) fn to_offset(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(t)
}

/// A random positive serial number of `SERIAL_LEN` bytes with no leading zero byte.
pub(crate) fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; SERIAL_LEN];
    OsRng.fill_bytes(&mut bytes);
    // Positive (sign bit clear) and a fixed length (first byte non-zero).
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

/// Parameters of a workload leaf: the id as the only (URI) SAN, CA:false,
/// digitalSignature, serverAuth + clientAuth, random serial.
pub(crate) fn leaf_params(
    id: &SpiffeId,
    validity: Validity,
) -> Result<CertificateParams, IssueError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, ORGANIZATION);
    params.distinguished_name = dn;
    let uri = id
        .as_str()
        .try_into()
        .map_err(|e: rcgen::Error| IssueError::Signing(e))?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    params.not_before = to_offset(validity.not_before);
    params.not_after = to_offset(validity.not_after);
    Ok(params)
}

/// A P-256 public key taken from a CSR, in the form rcgen signs over.
pub(crate) struct P256PublicKey(pub Vec<u8>);

impl PublicKeyData for P256PublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_positive_fixed_length_and_distinct() {
        let a = random_serial().to_bytes();
        let b = random_serial().to_bytes();
        assert_eq!(a.len(), SERIAL_LEN);
        assert!(a[0] & 0x80 == 0 && a[0] != 0);
        assert_ne!(a, b);
    }

    #[test]
    fn validity_is_backdated_and_whole_seconds() {
        let v = Validity::starting_now(Duration::from_secs(3600)).unwrap();
        assert_eq!(
            v.not_after.duration_since(v.not_before).unwrap(),
            Duration::from_secs(3660)
        );
        assert_eq!(whole_seconds(v.not_after), v.not_after);
        assert!(matches!(
            Validity::starting_now(Duration::from_millis(500)),
            Err(IssueError::InvalidLifetime)
        ));
    }
}
