//! The CA on disk (`--ca-dir`) and the published trust anchor (`--trust-anchor-out`).

use crate::common::*;
use pillion_agent::ca::CaSpec;
use pillion_agent::{Agent, SourceSpec};
use std::os::unix::fs::PermissionsExt;

#[tokio::test]
async fn generates_once_with_a_private_key_then_reloads_the_same_root() {
    let dir = TempDir::new("cadir");
    let ca_dir = dir.join("ca");
    let anchor = dir.join("root.pem");
    let mut config = loopback_config(SourceSpec::Embedded);
    config.ca = CaSpec::Dir(ca_dir.clone());
    config.trust_anchor_out = Some(anchor.clone());

    let agent = Agent::start(config.clone()).await.unwrap();
    let key_mode = std::fs::metadata(ca_dir.join("ca-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600, "the CA key must be private");
    assert!(ca_dir.join("ca.pem").is_file());
    let root = agent.trust_anchor_pem().to_string();
    assert_eq!(std::fs::read_to_string(&anchor).unwrap(), root);
    assert!(!dir.join("root.pem.tmp").exists());

    // The written anchor is all a client needs to verify the agent.
    let written = std::fs::read_to_string(&anchor).unwrap();
    let mut client = connect_to(agent.local_addr(), &written, agent.agent_identity(), false).await;
    assert_eq!(client.get_status("/healthz").await, 200);
    agent.shutdown().await;

    // A second start loads the same CA.
    std::fs::remove_file(&anchor).unwrap();
    let again = Agent::start(config).await.unwrap();
    assert_eq!(again.trust_anchor_pem(), root);
    assert_eq!(std::fs::read_to_string(&anchor).unwrap(), root);
    again.shutdown().await;
}

#[tokio::test]
async fn in_memory_cas_differ_per_start() {
    let a = start_default().await;
    let b = start_default().await;
    assert_ne!(a.trust_anchor_pem(), b.trust_anchor_pem());
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_ca_of_another_trust_domain_is_refused() {
    let dir = TempDir::new("catd");
    let mut config = loopback_config(SourceSpec::Embedded);
    config.ca = CaSpec::Dir(dir.join("ca"));
    Agent::start(config.clone()).await.unwrap().shutdown().await;
    config.trust_domain = "other.test".into();
    let err = Agent::start(config).await.unwrap_err();
    assert!(err.to_string().contains("trust domain"), "{err}");
}

#[tokio::test]
async fn two_agents_on_one_issuer_dir_sign_under_the_same_roots() {
    let dir = TempDir::new("issuer");
    let issuer_dir = dir.join("identity");
    pillion_identity::ca::init_issuer_dir(
        &issuer_dir,
        "cluster.local",
        std::time::Duration::from_secs(3600),
    )
    .unwrap();
    let bundle = std::fs::read_to_string(issuer_dir.join("ca.crt")).unwrap();
    let mut config = loopback_config(SourceSpec::Embedded);
    config.ca = CaSpec::IssuerDir(issuer_dir.clone());
    let a = Agent::start(config.clone()).await.unwrap();
    let b = Agent::start(config.clone()).await.unwrap();
    // Both hand out the Secret's bundle, and a client holding only it trusts
    // either (their serving chains run through the issuer to the root).
    for agent in [&a, &b] {
        assert_eq!(agent.trust_anchor_pem(), bundle);
        let mut client =
            connect_to(agent.local_addr(), &bundle, agent.agent_identity(), false).await;
        assert_eq!(client.get_status("/healthz").await, 200);
    }
    a.shutdown().await;
    b.shutdown().await;

    // Nothing is generated: a directory without the issuer stops the start with
    // what is missing.
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    config.ca = CaSpec::IssuerDir(empty);
    let err = Agent::start(config).await.unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("--issuer-dir") && text.contains("ca.crt"),
        "{text}"
    );
}
