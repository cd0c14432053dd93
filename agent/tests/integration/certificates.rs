//! `POST /v1/certificates` over real HTTPS on loopback.

use crate::common::*;
use pillion_agent::{Agent, SourceSpec};
use pillion_api::certs::{CertificateResponse, ErrorBody};
use pillion_identity::SpiffeId;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn csr_for(id: &str) -> String {
    let id: SpiffeId = id.parse().unwrap();
    pillion_identity::csr::generate(&id).unwrap().1
}

fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

/// Verifies `chain_pem` up to `bundle_pem` with webpki, as a mesh peer would.
fn verify_chain(chain_pem: &str, bundle_pem: &str) {
    let mut roots = RootCertStore::empty();
    for root in certs(bundle_pem) {
        roots.add(root).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .unwrap();
    let chain = certs(chain_pem);
    verifier
        .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
        .expect("the issued chain verifies to the trust bundle");
}

#[tokio::test]
async fn signs_a_csr_for_the_tokens_identity() {
    let mut config = loopback_config(SourceSpec::Embedded);
    config.leaf_lifetime = Duration::from_secs(10);
    let agent = Agent::start(config).await.unwrap();
    let mut client = connect(&agent).await;

    let body = json!({ "csr_pem": csr_for(CLIENT_ID) });
    let (status, answer) = client
        .json("POST", "/v1/certificates", Some(CLIENT_TOKEN), &body)
        .await;
    assert_eq!(status, 200, "{answer}");
    let answer: CertificateResponse = serde_json::from_value(answer).unwrap();
    assert_eq!(answer.trust_bundle_pem, agent.trust_anchor_pem());
    verify_chain(&answer.chain_pem, &answer.trust_bundle_pem);

    let leaf_der = certs(&answer.chain_pem).remove(0);
    let (_, leaf) = x509_parser::parse_x509_certificate(&leaf_der).unwrap();
    let uris: Vec<String> = leaf
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(uris, [CLIENT_ID]);
    let not_after = leaf.validity().not_after.timestamp() as u64;
    assert_eq!(not_after, answer.expires_at_unix);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let life = answer.expires_at_unix as i64 - now as i64;
    assert!(
        (8..=11).contains(&life),
        "expiry {life}s from now, wanted ~10s"
    );
    agent.shutdown().await;
}

#[tokio::test]
async fn refuses_a_csr_for_another_identity() {
    let agent = start_default().await;
    let mut client = connect(&agent).await;
    let body = json!({ "csr_pem": csr_for(SERVER_ID) });
    let (status, answer) = client
        .json("POST", "/v1/certificates", Some(CLIENT_TOKEN), &body)
        .await;
    assert_eq!(status, 403);
    let err: ErrorBody = serde_json::from_value(answer).unwrap();
    assert_eq!(err.error, "identity_mismatch");
    assert!(
        err.reason.starts_with("identity mismatch:"),
        "{}",
        err.reason
    );
    assert!(
        err.reason.contains(SERVER_ID) && err.reason.contains(CLIENT_ID),
        "{}",
        err.reason
    );
    agent.shutdown().await;
}

#[tokio::test]
async fn refuses_garbage_and_weak_keys() {
    let agent = start_default().await;
    let mut client = connect(&agent).await;

    let (status, answer) = client
        .json(
            "POST",
            "/v1/certificates",
            Some(CLIENT_TOKEN),
            &json!({"csr_pem": "not a CSR"}),
        )
        .await;
    assert_eq!(status, 403, "{answer}");
    let err: ErrorBody = serde_json::from_value(answer).unwrap();
    assert_eq!(err.error, "malformed_csr");
    assert!(err.reason.starts_with("malformed CSR:"), "{}", err.reason);

    // A well-formed CSR with a P-384 key: the mesh only takes P-256.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(CLIENT_ID.try_into().unwrap())];
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let (status, answer) = client
        .json(
            "POST",
            "/v1/certificates",
            Some(CLIENT_TOKEN),
            &json!({"csr_pem": csr}),
        )
        .await;
    assert_eq!(status, 403, "{answer}");
    let err: ErrorBody = serde_json::from_value(answer).unwrap();
    assert_eq!(err.error, "weak_key");
    assert!(err.reason.starts_with("weak key:"), "{}", err.reason);

    let (status, answer) = client
        .json(
            "POST",
            "/v1/certificates",
            Some(CLIENT_TOKEN),
            &json!({"csr": "x"}),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    agent.shutdown().await;
}

#[tokio::test]
async fn requires_a_known_token() {
    let agent = start_default().await;
    let mut client = connect(&agent).await;
    let body = json!({ "csr_pem": csr_for(CLIENT_ID) });

    let resp = client
        .send(
            "POST",
            "/v1/certificates",
            None,
            serde_json::to_vec(&body).unwrap(),
        )
        .await;
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers().get("www-authenticate").unwrap(), "Bearer");

    let (status, answer) = client
        .json("POST", "/v1/certificates", Some("not-a-known-token"), &body)
        .await;
    assert_eq!(status, 401);
    let err: ErrorBody = serde_json::from_value(answer).unwrap();
    assert_eq!(err.error, "unauthenticated");
    agent.shutdown().await;
}

#[tokio::test]
async fn caps_the_body_at_64_kib() {
    let agent = start_default().await;
    let mut client = connect(&agent).await;
    let big = json!({ "csr_pem": "A".repeat(70 * 1024) });
    let (status, answer) = client
        .json("POST", "/v1/certificates", Some(CLIENT_TOKEN), &big)
        .await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["error"], "too_large");
    agent.shutdown().await;
}

#[tokio::test]
async fn healthz_routing_and_http1() {
    let agent = start_default().await;
    let mut client = connect(&agent).await;
    assert_eq!(client.get_status("/healthz").await, 200);
    assert_eq!(client.get_status("/nope").await, 404);
    assert_eq!(client.get_status("/v1/certificates").await, 405);

    // curl-style HTTP/1.1 works too.
    let mut h1 = connect_h1(&agent).await;
    assert_eq!(h1.get_status("/healthz").await, 200);
    let (status, _) = h1
        .json(
            "POST",
            "/v1/certificates",
            Some(SERVER_TOKEN),
            &json!({ "csr_pem": csr_for(SERVER_ID) }),
        )
        .await;
    assert_eq!(status, 200);
    agent.shutdown().await;
}
