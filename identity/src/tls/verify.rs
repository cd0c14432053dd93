//! What the client and the server verifier share once a chain is trusted: the SPIFFE
//! id its leaf carries, and the handshake signatures checked with the provider's
//! algorithms.

use rustls::pki_types::CertificateDer;

use super::error::PeerRejected;
use crate::cert_info;
use crate::spiffe::SpiffeId;

/// The SPIFFE id a trusted peer leaf carries, or the rustls error refusing a leaf
/// without exactly one usable id.
pub(super) fn peer_id(end_entity: &CertificateDer<'_>) -> Result<SpiffeId, rustls::Error> {
    cert_info::id_of_der(end_entity).map_err(|e| PeerRejected::NoIdentity(e).into_rustls())
}

/// The three handshake-signature methods of a rustls verifier, checked with the
/// provider's algorithms kept in the verifier's `algs` field: both verifiers use the
/// same ones, so a peer's signature is judged the same in either direction.
macro_rules! provider_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &::rustls::pki_types::CertificateDer<'_>,
            dss: &::rustls::DigitallySignedStruct,
        ) -> Result<::rustls::client::danger::HandshakeSignatureValid, ::rustls::Error> {
            ::rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &::rustls::pki_types::CertificateDer<'_>,
            dss: &::rustls::DigitallySignedStruct,
        ) -> Result<::rustls::client::danger::HandshakeSignatureValid, ::rustls::Error> {
            ::rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
        }

        fn supported_verify_schemes(&self) -> Vec<::rustls::SignatureScheme> {
            self.algs.supported_schemes()
        }
    };
}

pub(super) use provider_signatures;
