//! TokenReview authentication against a loopback API server answering real
//! TokenReview JSON: accepted, rejected, wrong audience, non-ServiceAccount users, an
//! API server error; the cache; and `/v1/certificates` in Kubernetes mode issuing for
//! exactly the reviewed ServiceAccount.

use crate::common::Client;
use crate::kubernetes_fake::*;
use pillion_agent::kubernetes::token_review::TokenReviewer;
use pillion_agent::kubernetes::{ClientSpec, KubernetesSpec};
use pillion_agent::{Agent, AgentConfig, SourceSpec};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

const TD: &str = "cluster.local";

async fn reviewer(ttl: Duration) -> (FakeApiServer, TokenReviewer) {
    let fake = FakeApiServer::start(Arc::new(|s: &Seen| review_by_token(&s.json()["spec"]))).await;
    let client = kube::Client::try_from(fake.kube_config()).unwrap();
    (fake, TokenReviewer::new(client, TD, ttl))
}

#[tokio::test]
async fn an_authenticated_service_account_token_maps_to_its_spiffe_id() {
    let (fake, reviewer) = reviewer(Duration::from_secs(30)).await;
    let id = reviewer.review("web-token").await.unwrap();
    assert_eq!(id.as_str(), "spiffe://cluster.local/ns/shop/sa/web");

    let seen = fake.seen();
    assert_eq!(seen.len(), 1);
    let req = &seen[0];
    assert_eq!(req.method, http::Method::POST);
    assert_eq!(req.path(), "/apis/authentication.k8s.io/v1/tokenreviews");
    assert_eq!(
        req.authorization.as_deref(),
        Some(format!("Bearer {AGENT_TOKEN}").as_str()),
        "the agent authenticates with its own ServiceAccount"
    );
    let body = req.json();
    assert_eq!(body["apiVersion"], "authentication.k8s.io/v1");
    assert_eq!(body["kind"], "TokenReview");
    assert_eq!(body["spec"]["token"], "web-token");
    assert_eq!(body["spec"]["audiences"], json!(["pillion"]));
}

#[tokio::test]
async fn positive_answers_are_cached_and_refusals_are_not() {
    let (fake, reviewer) = reviewer(Duration::from_secs(30)).await;
    for _ in 0..3 {
        reviewer.review("web-token").await.unwrap();
    }
    assert_eq!(fake.seen().len(), 1, "one review for three uses");
    for _ in 0..2 {
        reviewer.review("expired-token").await.unwrap_err();
    }
    assert_eq!(fake.seen().len(), 3, "refusals are asked again");

    let (fake, reviewer) = reviewer_uncached().await;
    reviewer.review("web-token").await.unwrap();
    reviewer.review("web-token").await.unwrap();
    assert_eq!(fake.seen().len(), 2);
}

async fn reviewer_uncached() -> (FakeApiServer, TokenReviewer) {
    reviewer(Duration::ZERO).await
}

#[tokio::test]
async fn every_refusal_says_why() {
    let (_fake, reviewer) = reviewer(Duration::from_secs(30)).await;
    let cases = [
        ("expired-token", "did not authenticate the token: [invalid bearer token, service account token has expired]"),
        ("unknown-token", "did not authenticate the token: invalid bearer token"),
        ("other-audience-token", "not for audience \"pillion\""),
        ("admin-token", "belongs to \"kubernetes-admin\", not to a ServiceAccount"),
        ("node-token", "belongs to \"system:node:node-a\""),
        ("boom-token", "could not be checked with the Kubernetes API"),
    ];
    for (token, expected) in cases {
        let e = reviewer.review(token).await.unwrap_err();
        assert!(e.reason.contains(expected), "{token}: {}", e.reason);
        assert!(
            !e.reason.contains(token),
            "the reason must not echo the token"
        );
    }
}

/// An agent in Kubernetes mode against the fake, with an empty cluster.
async fn kube_agent(fake: &FakeApiServer) -> pillion_agent::RunningAgent {
    let mut config = AgentConfig::new(SourceSpec::Embedded);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.kubernetes = Some(KubernetesSpec::new(ClientSpec::Config(Box::new(
        fake.kube_config(),
    ))));
    Agent::start(config).await.unwrap()
}

#[tokio::test]
async fn certificates_are_issued_for_exactly_the_reviewed_service_account() {
    let fake = FakeApiServer::start(cluster(empty_lists(), Default::default())).await;
    let agent = kube_agent(&fake).await;
    let mut client = crate::common::connect(&agent).await;

    let web: pillion_identity::SpiffeId = "spiffe://cluster.local/ns/shop/sa/web".parse().unwrap();
    let (_key, csr) = pillion_identity::csr::generate(&web).unwrap();
    let (status, body) = ask_for_certificate(&mut client, "web-token", &csr).await;
    assert_eq!(status, 200, "{body}");
    let leaf = body["chain_pem"].as_str().unwrap();
    assert_eq!(uri_sans(leaf), [web.as_str()]);

    // The same token asking for another ServiceAccount's identity.
    let echo: pillion_identity::SpiffeId =
        "spiffe://cluster.local/ns/shop/sa/echo".parse().unwrap();
    let (_key, csr) = pillion_identity::csr::generate(&echo).unwrap();
    let (status, body) = ask_for_certificate(&mut client, "web-token", &csr).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "identity_mismatch");

    for (token, reason) in [
        ("expired-token", "service account token has expired"),
        ("other-audience-token", "audience"),
        ("boom-token", "TokenReview failed"),
    ] {
        let (status, body) = ask_for_certificate(&mut client, token, &csr).await;
        assert_eq!(status, 401, "{token}: {body}");
        assert_eq!(body["error"], "unauthenticated");
        assert!(
            body["reason"].as_str().unwrap().contains(reason),
            "{token}: {body}"
        );
    }
    agent.shutdown().await;
}

/// `POST /v1/certificates` of `csr_pem` under `token`: the status and the JSON answer.
async fn ask_for_certificate(
    client: &mut Client,
    token: &str,
    csr_pem: &str,
) -> (http::StatusCode, serde_json::Value) {
    client
        .json(
            "POST",
            "/v1/certificates",
            Some(token),
            &json!({"csr_pem": csr_pem}),
        )
        .await
}

/// The URI SANs of the first certificate of a PEM chain.
fn uri_sans(chain_pem: &str) -> Vec<String> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .collect()
}
