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

/// Writes `text` to `dir/name` whole, by rename, as a Secret volume update lands.
fn replace(dir: &std::path::Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// True when `chain_pem` leads to a root of `bundle_pem`.
fn chains_to(chain_pem: &str, bundle_pem: &str) -> bool {
    use rustls::pki_types::pem::PemObject;
    let chain: Vec<rustls::pki_types::CertificateDer<'static>> =
        rustls::pki_types::CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    pillion_identity::TrustBundle::parse(bundle_pem, "cluster.local", std::time::SystemTime::now())
        .unwrap()
        .verifies(&chain, std::time::SystemTime::now())
}

#[tokio::test]
async fn a_running_agent_follows_its_issuer_dir_through_a_rotation() {
    use std::time::Duration;
    let dir = TempDir::new("issuer-rotate");
    let issuer_dir = dir.join("identity");
    pillion_identity::ca::init_issuer_dir(&issuer_dir, "cluster.local", Duration::from_secs(3600))
        .unwrap();
    let r1 = std::fs::read_to_string(issuer_dir.join("ca.crt")).unwrap();
    let anchor = dir.join("anchors.pem");
    let mut config = loopback_config(SourceSpec::Embedded);
    config.ca = CaSpec::IssuerDir(issuer_dir.clone());
    config.trust_anchor_out = Some(anchor.clone());
    let agent = Agent::start(config).await.unwrap();
    let mut client = connect(&agent).await;
    let mut views = client.watch(CLIENT_TOKEN).await;
    let first = views.next_within(Duration::from_secs(1)).await.unwrap();
    assert_eq!(first.trust_bundle_pem.as_deref(), Some(r1.as_str()));

    // Step 1: a second root joins the bundle. Open streams end (their connection is
    // closed gracefully), so every proxy reconnects and gets it; so does the anchor
    // file.
    let r2 = pillion_identity::Ca::generate("cluster.local").unwrap();
    let both = format!("{r1}{}", r2.trust_bundle_pem());
    replace(&issuer_dir, "ca.crt", &both);
    assert!(
        views.ends_within(Duration::from_secs(2)).await,
        "the stream did not end"
    );
    let mut client = connect(&agent).await;
    let mut views = client.watch(CLIENT_TOKEN).await;
    let pushed = views
        .next_within(Duration::from_secs(1))
        .await
        .expect("a view");
    let pushed = pushed.trust_bundle_pem.unwrap_or_default();
    assert_eq!(pushed.matches("BEGIN CERTIFICATE").count(), 2, "{pushed}");
    assert_eq!(std::fs::read_to_string(&anchor).unwrap(), pushed);

    // Step 2: the issuer switches to one under the new root. Leaves and the
    // agent's own chain lead to it, so a client trusting only the new root gets in.
    let (issuer, key) = r2.issue_intermediate(Duration::from_secs(3600)).unwrap();
    replace(&issuer_dir, "tls.key", &key);
    replace(&issuer_dir, "tls.crt", &issuer);
    let csr = || {
        let id = CLIENT_ID.parse().unwrap();
        serde_json::json!({ "csr_pem": pillion_identity::csr::generate(&id).unwrap().1 })
    };
    let r2_pem = r2.trust_bundle_pem();
    let mut under_r2 = false;
    for _ in 0..40 {
        // A fresh connection each time: the switch closes the ones from before it.
        let (status, answer) =
            connect_to(agent.local_addr(), &pushed, agent.agent_identity(), false)
                .await
                .json("POST", "/v1/certificates", Some(CLIENT_TOKEN), &csr())
                .await;
        assert_eq!(status, 200, "{answer}");
        if chains_to(answer["chain_pem"].as_str().unwrap(), &r2_pem) {
            assert_eq!(answer["trust_bundle_pem"].as_str(), Some(pushed.as_str()));
            under_r2 = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(under_r2, "no leaf under the new issuer within 2 s");
    let mut fresh = connect_to(agent.local_addr(), &r2_pem, agent.agent_identity(), false).await;
    assert_eq!(fresh.get_status("/healthz").await, 200);

    // A broken key is refused, and the last good issuer keeps signing.
    replace(&issuer_dir, "tls.key", "not a key");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, answer) = connect_to(agent.local_addr(), &pushed, agent.agent_identity(), false)
        .await
        .json("POST", "/v1/certificates", Some(CLIENT_TOKEN), &csr())
        .await;
    assert_eq!(status, 200, "{answer}");
    assert!(chains_to(answer["chain_pem"].as_str().unwrap(), &r2_pem));
    agent.shutdown().await;
}
