//! Wire types of the agent's certificate API, shared by the agent (server) and the
//! proxy (client).
//!
//! # Wire format
//!
//! All bodies are JSON. A proxy asks for a certificate with
//!
//! ```text
//! POST /v1/certificates
//! Authorization: Bearer <token proving the workload's identity>
//! Content-Type: application/json
//!
//! {"csr_pem": "-----BEGIN CERTIFICATE REQUEST-----\n..."}
//! ```
//!
//! and on success (200) gets
//!
//! ```text
//! {"chain_pem": "-----BEGIN CERTIFICATE-----\n...",
//!  "trust_bundle_pem": "-----BEGIN CERTIFICATE-----\n...",
//!  "expires_at_unix": 1767225600}
//! ```
//!
//! Every failure (4xx/5xx) answers an [`ErrorBody`], e.g.
//! `{"error": "identity_mismatch", "reason": "identity mismatch: ..."}`. The private
//! key never leaves the proxy: only the CSR travels.

use serde::{Deserialize, Serialize};

/// Path of the certificate signing endpoint (`POST`).
pub const CERTIFICATES_PATH: &str = "/v1/certificates";
/// Path of the streaming discovery + policy endpoint (`GET`).
pub const WATCH_PATH: &str = "/v1/watch";
/// Path of the agent's liveness probe (`GET`, answers 200).
pub const HEALTHZ_PATH: &str = "/healthz";
/// Largest request body the agent accepts on [`CERTIFICATES_PATH`], in bytes.
pub const MAX_CERTIFICATE_REQUEST_BYTES: usize = 64 * 1024;

/// A proxy's request for a leaf certificate; the credential travels in the
/// `Authorization: Bearer` header, not in the body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateRequest {
    /// PKCS#10 certificate signing request, PEM encoded, naming exactly one SPIFFE id.
    pub csr_pem: String,
}

/// The agent's answer to a good [`CertificateRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateResponse {
    /// The signed leaf first, then any intermediates, PEM encoded.
    pub chain_pem: String,
    /// The roots a proxy must trust to verify its peers, PEM encoded.
    pub trust_bundle_pem: String,
    /// When the leaf expires, in seconds since the Unix epoch.
    pub expires_at_unix: u64,
}

/// The body of every error answer, so a proxy can act on `error` and show `reason`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Short machine-readable code, such as `unauthenticated` or `identity_mismatch`.
    pub error: String,
    /// Human-readable explanation of what went wrong and, where possible, what to fix.
    pub reason: String,
}

/// Machine codes used in [`ErrorBody::error`], so both sides spell them alike.
pub mod error_codes {
    /// No bearer token, or one the agent does not know (401).
    pub const UNAUTHENTICATED: &str = "unauthenticated";
    /// The CSR names another identity than the token proves (403).
    pub const IDENTITY_MISMATCH: &str = "identity_mismatch";
    /// The CSR cannot be parsed or is not a valid workload CSR (403).
    pub const MALFORMED_CSR: &str = "malformed_csr";
    /// The CSR's key is of a kind or size the mesh refuses (403).
    pub const WEAK_KEY: &str = "weak_key";
    /// The request body is not the expected JSON (400).
    pub const BAD_REQUEST: &str = "bad_request";
    /// The request body is larger than the agent accepts (413).
    pub const TOO_LARGE: &str = "too_large";
    /// No such endpoint (404).
    pub const NOT_FOUND: &str = "not_found";
    /// The endpoint exists but not for this method (405).
    pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
    /// The agent failed on its side (500).
    pub const INTERNAL: &str = "internal";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_types_round_trip_as_documented() {
        let req: CertificateRequest =
            serde_json::from_str(r#"{"csr_pem":"PEM"}"#).expect("request parses");
        assert_eq!(req.csr_pem, "PEM");
        let resp = CertificateResponse {
            chain_pem: "A".into(),
            trust_bundle_pem: "B".into(),
            expires_at_unix: 7,
        };
        let json = serde_json::to_value(&resp).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({"chain_pem": "A", "trust_bundle_pem": "B", "expires_at_unix": 7})
        );
        let err: ErrorBody =
            serde_json::from_str(r#"{"error":"weak_key","reason":"weak key: RSA-1024"}"#)
                .expect("error body parses");
        assert_eq!(err.error, error_codes::WEAK_KEY);
    }
}
