//! Turns a failed handshake's error into one of the bounded metric reasons.

use std::io;

use pillion_identity::PeerRejected;
use rustls::{AlertDescription, CertificateError};

use crate::telemetry::metrics::mesh::HandshakeFailure;

/// The reason label for a handshake that failed with `err` (as tokio-rustls
/// reports it: an `io::Error` that may carry the `rustls::Error`).
pub(crate) fn classify(err: &io::Error) -> HandshakeFailure {
    if err.kind() == io::ErrorKind::TimedOut {
        return HandshakeFailure::Timeout;
    }
    match err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => classify_rustls(tls),
        None => HandshakeFailure::Other,
    }
}

/// The reason label for a rustls error.
pub(crate) fn classify_rustls(err: &rustls::Error) -> HandshakeFailure {
    match err {
        rustls::Error::InvalidCertificate(cert) => classify_certificate(cert),
        rustls::Error::NoCertificatesPresented => HandshakeFailure::BadCertificate,
        rustls::Error::AlertReceived(alert) => classify_alert(*alert),
        _ => HandshakeFailure::Other,
    }
}

fn classify_certificate(err: &CertificateError) -> HandshakeFailure {
    match err {
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            HandshakeFailure::Expired
        }
        CertificateError::UnknownIssuer => HandshakeFailure::UnknownCa,
        CertificateError::Other(other) => match other.0.downcast_ref::<PeerRejected>() {
            Some(PeerRejected::WrongIdentity { .. } | PeerRejected::ForeignTrustDomain { .. }) => {
                HandshakeFailure::IdentityMismatch
            }
            Some(PeerRejected::NoIdentity(_)) => HandshakeFailure::BadCertificate,
            _ => HandshakeFailure::Other,
        },
        _ => HandshakeFailure::BadCertificate,
    }
}

fn classify_alert(alert: AlertDescription) -> HandshakeFailure {
    match alert {
        AlertDescription::UnknownCA => HandshakeFailure::UnknownCa,
        AlertDescription::CertificateExpired => HandshakeFailure::Expired,
        AlertDescription::BadCertificate
        | AlertDescription::CertificateRequired
        | AlertDescription::CertificateUnknown
        | AlertDescription::UnsupportedCertificate => HandshakeFailure::BadCertificate,
        _ => HandshakeFailure::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn wrapped(e: rustls::Error) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }

    #[test]
    fn reasons() {
        let c = |e| classify(&wrapped(e));
        assert_eq!(
            c(rustls::Error::InvalidCertificate(CertificateError::Expired)),
            HandshakeFailure::Expired
        );
        assert_eq!(
            c(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer
            )),
            HandshakeFailure::UnknownCa
        );
        assert_eq!(
            c(rustls::Error::InvalidCertificate(
                CertificateError::BadSignature
            )),
            HandshakeFailure::BadCertificate
        );
        assert_eq!(
            c(rustls::Error::AlertReceived(AlertDescription::UnknownCA)),
            HandshakeFailure::UnknownCa
        );
        let mismatch = PeerRejected::WrongIdentity {
            expected: "spiffe://td/ns/a/sa/b".parse().unwrap(),
            found: "spiffe://td/ns/a/sa/c".parse().unwrap(),
        };
        assert_eq!(
            c(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(mismatch))
            ))),
            HandshakeFailure::IdentityMismatch
        );
        assert_eq!(
            classify(&io::Error::from(io::ErrorKind::TimedOut)),
            HandshakeFailure::Timeout
        );
        assert_eq!(
            classify(&io::Error::from(io::ErrorKind::ConnectionReset)),
            HandshakeFailure::Other
        );
    }
}
