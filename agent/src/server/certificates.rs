//! `POST /v1/certificates`: signs a proxy's CSR for exactly the identity its bearer
//! token proves.

use super::auth::authenticate;
use super::reply::{self, Body};
use super::Shared;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use pillion_api::certs::{
    error_codes, CertificateRequest, CertificateResponse, MAX_CERTIFICATE_REQUEST_BYTES,
};
use pillion_identity::ca::IssueError;
use std::time::UNIX_EPOCH;

/// Answers one certificate request.
pub async fn handle(req: Request<Incoming>, shared: &Shared) -> Response<Body> {
    let (identity, token) =
        match authenticate(req.headers(), shared.auth.as_ref(), "certificates").await {
            Ok(found) => found,
            Err(resp) => {
                shared.metrics.certificate("refused", "unauthenticated");
                return *resp;
            }
        };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_CERTIFICATE_REQUEST_BYTES as u64) {
        return too_large(shared);
    }
    let body = match Limited::new(req.into_body(), MAX_CERTIFICATE_REQUEST_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return too_large(shared),
        Err(e) => {
            shared.metrics.certificate("refused", "bad_request");
            tracing::info!(error = %e, "cannot read a certificate request body");
            return reply::error(
                StatusCode::BAD_REQUEST,
                error_codes::BAD_REQUEST,
                format!("cannot read the request body: {e}"),
            );
        }
    };
    let request: CertificateRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            shared.metrics.certificate("refused", "bad_request");
            return reply::error(
                StatusCode::BAD_REQUEST,
                error_codes::BAD_REQUEST,
                format!("the body must be JSON like {{\"csr_pem\": \"-----BEGIN CERTIFICATE REQUEST-----...\"}}: {e}"),
            );
        }
    };
    match shared
        .ca
        .sign_workload(&request.csr_pem, &identity, shared.leaf_lifetime)
    {
        Ok((issued, trust_bundle_pem)) => {
            let expires_at_unix = issued
                .expires_at
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            tracing::info!(%identity, serial = %issued.serial_hex, expires_at_unix,
                token_sha256 = %token.short(), "certificate issued");
            shared.metrics.certificate("issued", "");
            reply::json(
                StatusCode::OK,
                &CertificateResponse {
                    chain_pem: issued.chain_pem,
                    trust_bundle_pem,
                    expires_at_unix,
                },
            )
        }
        Err(e) => refused(e, &identity.to_string(), &token.short(), shared),
    }
}

fn too_large(shared: &Shared) -> Response<Body> {
    shared.metrics.certificate("refused", "too_large");
    reply::error(
        StatusCode::PAYLOAD_TOO_LARGE,
        error_codes::TOO_LARGE,
        format!("the request body is larger than {MAX_CERTIFICATE_REQUEST_BYTES} bytes; a CSR needs far less"),
    )
}

/// The answer to a CSR the CA would not sign.
fn refused(e: IssueError, identity: &str, token: &str, shared: &Shared) -> Response<Body> {
    let (status, code, reason) = match &e {
        IssueError::IdentityMismatch { requested, allowed } => (
            StatusCode::FORBIDDEN,
            error_codes::IDENTITY_MISMATCH,
            format!(
                "identity mismatch: the CSR asks for {requested} but the token proves {allowed}"
            ),
        ),
        IssueError::Malformed(why) => (
            StatusCode::FORBIDDEN,
            error_codes::MALFORMED_CSR,
            format!("malformed CSR: {why}"),
        ),
        IssueError::WeakKey(why) => (
            StatusCode::FORBIDDEN,
            error_codes::WEAK_KEY,
            format!("weak key: {why}; the mesh requires ECDSA P-256"),
        ),
        _ => {
            shared.metrics.certificate("refused", "internal");
            tracing::error!(%identity, error = %e, "the CA failed to sign a certificate");
            return reply::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                error_codes::INTERNAL,
                format!("the agent could not sign the certificate: {e}"),
            );
        }
    };
    shared.metrics.certificate("refused", code);
    tracing::info!(%identity, token_sha256 = %token, code, %reason, "certificate refused");
    reply::error(status, code, reason)
}
