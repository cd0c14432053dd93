//! What the mesh reads from a certificate: its SPIFFE id, serial and expiry.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use thiserror::Error;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::spiffe::{IdError, SpiffeId};

/// Why a certificate does not name exactly one valid SPIFFE id (or cannot be read).
#[derive(Debug, Error)]
pub enum CertInfoError {
    /// The DER is not an X.509 certificate.
    #[error("not a parseable X.509 certificate: {0}")]
    Parse(String),
    /// No URI subject alternative name at all.
    #[error("the certificate carries no URI SAN (no SPIFFE id)")]
    NoUriSan,
    /// SPIFFE allows exactly one URI SAN.
    #[error("the certificate carries {0} URI SANs, SPIFFE allows exactly one")]
    ManyUriSans(usize),
    /// The URI SAN is not a workload SPIFFE id.
    #[error("the URI SAN {uri:?} is not a valid SPIFFE id: {source}")]
    BadId {
        /// The URI found.
        uri: String,
        /// Why it is refused.
        #[source]
        source: IdError,
    },
}

/// The facts about a leaf certificate the store and verifiers need.
#[derive(Debug, Clone)]
pub(crate) struct LeafInfo {
    /// The SPIFFE id of its only URI SAN.
    pub id: SpiffeId,
    /// Serial number, lowercase hex without leading zero bytes.
    pub serial_hex: String,
    /// End of validity.
    pub not_after: SystemTime,
}

impl LeafInfo {
    /// Reads id, serial and expiry from a leaf's DER.
    pub fn parse(der: &[u8]) -> Result<LeafInfo, CertInfoError> {
        let cert = parse(der)?;
        Ok(LeafInfo {
            id: id_of(&cert)?,
            serial_hex: serial_hex(&cert),
            not_after: to_system_time(cert.validity().not_after.timestamp()),
        })
    }
}

/// Parses DER into an x509-parser certificate, refusing trailing bytes.
pub(crate) fn parse(der: &[u8]) -> Result<X509Certificate<'_>, CertInfoError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(CertInfoError::Parse(
            "trailing bytes after certificate".into(),
        )),
        Err(e) => Err(CertInfoError::Parse(e.to_string())),
    }
}

/// The URI SANs of a certificate, as written.
pub(crate) fn uri_sans<'a>(cert: &X509Certificate<'a>) -> Result<Vec<&'a str>, CertInfoError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| CertInfoError::Parse(e.to_string()))?;
    Ok(san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(*u),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// The SPIFFE id of a parsed certificate: its one and only URI SAN.
pub(crate) fn id_of(cert: &X509Certificate<'_>) -> Result<SpiffeId, CertInfoError> {
    let uris = uri_sans(cert)?;
    match uris.as_slice() {
        [] => Err(CertInfoError::NoUriSan),
        [uri] => SpiffeId::parse(uri).map_err(|source| CertInfoError::BadId {
            uri: (*uri).to_string(),
            source,
        }),
        many => Err(CertInfoError::ManyUriSans(many.len())),
    }
}

/// The SPIFFE id named by a certificate's DER.
pub(crate) fn id_of_der(der: &[u8]) -> Result<SpiffeId, CertInfoError> {
    id_of(&parse(der)?)
}

/// Serial number as lowercase hex, leading zero bytes dropped.
pub(crate) fn serial_hex(cert: &X509Certificate<'_>) -> String {
    let raw = cert.raw_serial();
    let start = raw.iter().position(|b| *b != 0).unwrap_or(raw.len());
    let hex: String = raw[start..].iter().map(|b| format!("{b:02x}")).collect();
    if hex.is_empty() {
        "00".to_string()
    } else {
        hex
    }
}

/// Converts Unix seconds (possibly negative) into a `SystemTime`.
pub(crate) fn to_system_time(unix: i64) -> SystemTime {
    if unix >= 0 {
        UNIX_EPOCH + Duration::from_secs(unix.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(unix.unsigned_abs())
    }
}

/// The SHA-256 of a certificate's DER, lowercase hex: how the agent names the issuer
/// it signs with, and a proxy the issuer of its own leaf.
pub(crate) fn sha256_hex(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
