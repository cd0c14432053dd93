//! The CA: the shape of issued leaves, CSR checks, intermediates, files on disk.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pillion_identity::{csr, Ca, CaError, IssueError, SpiffeId};
use rcgen::{CertificateParams, KeyPair, SanType};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

const HOUR: Duration = Duration::from_secs(3600);

fn id(s: &str) -> SpiffeId {
    s.parse().unwrap()
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A CSR signed by `key` whose URI SANs are `uris`.
fn csr_with(key: &KeyPair, uris: &[&str]) -> String {
    let mut params = CertificateParams::default();
    params.subject_alt_names = uris
        .iter()
        .map(|u| SanType::URI((*u).try_into().unwrap()))
        .collect();
    params.serialize_request(key).unwrap().pem().unwrap()
}

#[test]
fn signed_leaf_has_the_mesh_shape() {
    let ca = Ca::generate("cluster.local").unwrap();
    let me = id("spiffe://cluster.local/ns/demo/sa/client");
    let (_key, csr_pem) = csr::generate(&me).unwrap();
    let before = unix(SystemTime::now());
    let issued = ca.sign_csr(&csr_pem, &me, HOUR).unwrap();
    let after = unix(SystemTime::now());

    let chain = crate::common::certs(&issued.chain_pem);
    assert_eq!(chain.len(), 1, "a root CA appends nothing");
    let (_, leaf) = X509Certificate::from_der(&chain[0]).unwrap();

    let san = leaf.subject_alternative_name().unwrap().unwrap();
    assert_eq!(san.value.general_names.len(), 1, "exactly one SAN");
    assert!(matches!(san.value.general_names[0], GeneralName::URI(u) if u == me.as_str()));

    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth && !eku.any);
    let bc = leaf.basic_constraints().unwrap().unwrap().value;
    assert!(!bc.ca);
    let ku = leaf.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && !ku.key_cert_sign());

    let nb = leaf.validity().not_before.timestamp();
    let na = leaf.validity().not_after.timestamp();
    assert!(nb >= before - 60 && nb <= after - 60, "backdated by 60 s");
    assert_eq!(na - nb, 3600 + 60);
    assert_eq!(unix(issued.expires_at), na);

    let ca_certs = crate::common::certs(&ca.trust_bundle_pem());
    let (_, root) = X509Certificate::from_der(&ca_certs[0]).unwrap();
    assert_eq!(leaf.issuer().as_raw(), root.subject().as_raw());
    leaf.verify_signature(Some(root.public_key())).unwrap();
    assert_eq!(
        issued.serial_hex,
        leaf.raw_serial_as_string().replace(':', "")
    );
    crate::common::verify_chain(&issued.chain_pem, &ca.trust_bundle_pem()).unwrap();
}

#[test]
fn generated_root_is_a_ten_year_p256_ca() {
    let ca = Ca::generate("cluster.local").unwrap();
    assert_eq!(ca.trust_domain(), Some("cluster.local"));
    let der = &crate::common::certs(&ca.trust_bundle_pem())[0];
    let (_, root) = X509Certificate::from_der(der).unwrap();
    assert!(root.is_ca());
    assert!(root.key_usage().unwrap().unwrap().value.key_cert_sign());
    let life = root.validity().not_after.timestamp() - root.validity().not_before.timestamp();
    assert!(life >= 10 * 365 * 24 * 3600);
    assert_eq!(
        root.public_key()
            .algorithm
            .parameters
            .as_ref()
            .unwrap()
            .as_oid()
            .unwrap(),
        x509_parser::oid_registry::OID_EC_P256
    );
    assert!(Ca::generate("Bad Domain").is_err());
}

#[test]
fn serials_are_random_and_distinct() {
    let ca = Ca::generate("cluster.local").unwrap();
    let me = id("spiffe://cluster.local/ns/demo/sa/client");
    let mut seen = HashSet::new();
    for _ in 0..20 {
        let (issued, _key) = ca.issue(&me, HOUR).unwrap();
        assert!(issued.serial_hex.len() >= 16, "at least 64 bits");
        assert!(seen.insert(issued.serial_hex));
    }
}

#[test]
fn issue_returns_a_matching_key() {
    let ca = Ca::generate("cluster.local").unwrap();
    let me = id("spiffe://cluster.local/ns/pillion/sa/agent");
    let (issued, key_pem) = ca.issue(&me, HOUR).unwrap();
    let key = KeyPair::from_pem(&key_pem).unwrap();
    let der = &crate::common::certs(&issued.chain_pem)[0];
    let (_, leaf) = X509Certificate::from_der(der).unwrap();
    assert_eq!(
        leaf.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw()
    );
}

#[test]
fn refuses_identity_mismatch() {
    let ca = Ca::generate("cluster.local").unwrap();
    let me = id("spiffe://cluster.local/ns/demo/sa/client");
    let other = id("spiffe://cluster.local/ns/demo/sa/admin");
    let (_key, csr_pem) = csr::generate(&other).unwrap();
    match ca.sign_csr(&csr_pem, &me, HOUR) {
        Err(IssueError::IdentityMismatch { requested, allowed }) => {
            assert_eq!(requested, other.as_str());
            assert_eq!(allowed, me);
        }
        r => panic!("expected IdentityMismatch, got {r:?}"),
    }
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let two = csr_with(&key, &[me.as_str(), other.as_str()]);
    assert!(matches!(
        ca.sign_csr(&two, &me, HOUR),
        Err(IssueError::IdentityMismatch { .. })
    ));
}

#[test]
fn csr_without_identity_gets_the_expected_one() {
    let ca = Ca::generate("cluster.local").unwrap();
    let me = id("spiffe://cluster.local/ns/demo/sa/client");
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let issued = ca.sign_csr(&csr_with(&key, &[]), &me, HOUR).unwrap();
    let der = &crate::common::certs(&issued.chain_pem)[0];
    let (_, leaf) = X509Certificate::from_der(der).unwrap();
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    assert!(matches!(san.value.general_names[..], [GeneralName::URI(u)] if u == me.as_str()));
}

#[test]
fn refuses_malformed_csrs() {
    let ca = Ca::generate("cluster.local").unwrap();
    let me = id("spiffe://cluster.local/ns/demo/sa/client");
    let junk = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", b"not der".to_vec()));
    for bad in [
        "",
        "garbage",
        "-----BEGIN CERTIFICATE REQUEST-----\n%%%\n-----END CERTIFICATE REQUEST-----\n",
        junk.as_str(),
        ca.trust_bundle_pem().as_str(),
    ] {
        match ca.sign_csr(bad, &me, HOUR) {
            Err(IssueError::Malformed(reason)) => assert!(!reason.is_empty()),
            r => panic!("{bad:?}: expected Malformed, got {r:?}"),
        }
    }
}

#[test]
fn refuses_a_broken_signature() {
    let ca = Ca::generate("cluster.local").unwrap();
    let me = id("spiffe://cluster.local/ns/demo/sa/client");
    let (_key, csr_pem) = csr::generate(&me).unwrap();
    let mut der = pem::parse(&csr_pem).unwrap().into_contents();
    let last = der.len() - 1;
    der[last] ^= 0x01;
    let tampered = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der));
    match ca.sign_csr(&tampered, &me, HOUR) {
        Err(IssueError::Malformed(reason)) => assert!(reason.contains("signature"), "{reason}"),
        r => panic!("expected Malformed(signature), got {r:?}"),
    }
}

#[test]
fn refuses_weak_or_unsupported_keys() {
    let ca = Ca::generate("cluster.local").unwrap();
    let me = id("spiffe://cluster.local/ns/demo/sa/client");
    let rsa = KeyPair::from_pem_and_sign_algo(
        include_str!("../fixtures/rsa2048-test-only-key.pem"),
        &rcgen::PKCS_RSA_SHA256,
    )
    .unwrap();
    let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    for (what, key) in [("RSA", rsa), ("EdDSA", ed), ("P-384", p384)] {
        match ca.sign_csr(&csr_with(&key, &[me.as_str()]), &me, HOUR) {
            Err(IssueError::WeakKey(reason)) => {
                assert!(reason.contains(what) || what == "P-384", "{what}: {reason}")
            }
            r => panic!("{what}: expected WeakKey, got {r:?}"),
        }
    }
}

#[test]
fn refuses_other_trust_domains_and_zero_lifetime() {
    let ca = Ca::generate("cluster.local").unwrap();
    let foreign = id("spiffe://other.local/ns/demo/sa/client");
    let (_key, csr_pem) = csr::generate(&foreign).unwrap();
    assert!(matches!(
        ca.sign_csr(&csr_pem, &foreign, HOUR),
        Err(IssueError::WrongTrustDomain { .. })
    ));
    let me = id("spiffe://cluster.local/ns/demo/sa/client");
    let (_key, csr_pem) = csr::generate(&me).unwrap();
    assert!(matches!(
        ca.sign_csr(&csr_pem, &me, Duration::ZERO),
        Err(IssueError::InvalidLifetime)
    ));
}

#[test]
fn intermediate_ca_issues_chains_that_verify_to_the_root() {
    let (root, root_key) = crate::common::rcgen_root("test root");
    let (int, int_key) = crate::common::rcgen_intermediate(&root, &root_key);
    let ca = Ca::from_pem_with_chain(&int.pem(), &int_key.serialize_pem(), &root.pem()).unwrap();
    assert_eq!(ca.trust_bundle_pem(), root.pem());
    assert_eq!(ca.trust_domain(), None, "no spiffe:// SAN, not bound");

    let me = id("spiffe://cluster.local/ns/demo/sa/client");
    let (_key, csr_pem) = csr::generate(&me).unwrap();
    let issued = ca.sign_csr(&csr_pem, &me, HOUR).unwrap();
    let chain = crate::common::certs(&issued.chain_pem);
    assert_eq!(chain.len(), 2, "leaf then intermediate");
    assert_eq!(chain[1].as_ref(), int.der().as_ref());
    crate::common::verify_chain(&issued.chain_pem, &root.pem()).unwrap();
    // Without the intermediate the leaf does not chain to the root.
    let leaf_only = pem::encode(&pem::Pem::new("CERTIFICATE", chain[0].to_vec()));
    assert!(crate::common::verify_chain(&leaf_only, &root.pem()).is_err());

    // The same CA from one PEM text holding the chain.
    let both = format!("{}{}", int.pem(), root.pem());
    let ca2 = Ca::from_pem(&both, &int_key.serialize_pem()).unwrap();
    assert_eq!(ca2.trust_bundle_pem(), root.pem());
}

#[test]
fn refuses_bad_ca_material() {
    let (root, root_key) = crate::common::rcgen_root("test root");
    let (int, int_key) = crate::common::rcgen_intermediate(&root, &root_key);
    // An intermediate without its root.
    assert!(matches!(
        Ca::from_pem(&int.pem(), &int_key.serialize_pem()),
        Err(CaError::MissingRoot)
    ));
    // A key that is not the certificate's.
    assert!(matches!(
        Ca::from_pem(&root.pem(), &int_key.serialize_pem()),
        Err(CaError::KeyMismatch)
    ));
    // A leaf is not a CA.
    let ca = Ca::generate("cluster.local").unwrap();
    let me = id("spiffe://cluster.local/ns/demo/sa/client");
    let (issued, key_pem) = ca.issue(&me, HOUR).unwrap();
    let leaf_and_root = format!("{}{}", issued.chain_pem, ca.trust_bundle_pem());
    assert!(matches!(
        Ca::from_pem(&leaf_and_root, &key_pem),
        Err(CaError::NotCa { index: 0, .. })
    ));
    // A chain in the wrong order.
    let (other_root, _) = crate::common::rcgen_root("another root");
    assert!(matches!(
        Ca::from_pem_with_chain(&int.pem(), &int_key.serialize_pem(), &other_root.pem()),
        Err(CaError::BrokenChain { .. })
    ));
    assert!(matches!(
        Ca::from_pem("nothing here", &root_key.serialize_pem()),
        Err(CaError::Pem(_))
    ));
    assert!(matches!(
        Ca::from_pem(&root.pem(), "nothing"),
        Err(CaError::Key(_))
    ));
}

#[test]
fn debug_redacts_the_key() {
    let ca = Ca::generate("cluster.local").unwrap();
    let dbg = format!("{ca:?}");
    assert!(dbg.contains("<redacted>"));
    assert!(!dbg.contains("PRIVATE KEY"));
}

#[test]
fn load_or_generate_writes_0600_key_and_reloads_the_same_ca() {
    let dir = crate::common::TempDir::new("ca-files");
    let ca_dir = dir.0.join("nested/ca");
    let first = Ca::load_or_generate(&ca_dir, "cluster.local").unwrap();
    let key_path = ca_dir.join("ca-key.pem");
    let mode = std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(std::fs::read_to_string(&key_path)
        .unwrap()
        .contains("PRIVATE KEY"));
    assert!(!ca_dir.join("ca-key.pem.tmp").exists());

    let second = Ca::load_or_generate(&ca_dir, "cluster.local").unwrap();
    assert_eq!(first.trust_bundle_pem(), second.trust_bundle_pem());
    // The reloaded CA signs leaves that chain to the first one's bundle.
    let me = id("spiffe://cluster.local/ns/demo/sa/client");
    let (issued, _) = second.issue(&me, HOUR).unwrap();
    crate::common::verify_chain(&issued.chain_pem, &first.trust_bundle_pem()).unwrap();

    assert!(matches!(
        Ca::load_or_generate(&ca_dir, "other.local"),
        Err(CaError::TrustDomainMismatch { .. })
    ));
    std::fs::remove_file(ca_dir.join("ca.pem")).unwrap();
    assert!(matches!(
        Ca::load_or_generate(&ca_dir, "cluster.local"),
        Err(CaError::PartialFiles { .. })
    ));
}

#[test]
fn issue_with_dns_names_adds_dns_sans_after_the_spiffe_id() {
    let ca = Ca::generate("cluster.local").unwrap();
    let me = id("spiffe://cluster.local/ns/pillion/sa/agent");
    let names = [
        "pillion-agent.pillion.svc",
        "pillion-agent.pillion.svc.cluster.local",
    ];
    let (issued, _key) = ca.issue_with_dns_names(&me, &names, HOUR).unwrap();
    let der = &crate::common::certs(&issued.chain_pem)[0];
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    let mut uris = Vec::new();
    let mut dns = Vec::new();
    for name in &san.value.general_names {
        match name {
            GeneralName::URI(u) => uris.push(u.to_string()),
            GeneralName::DNSName(d) => dns.push(d.to_string()),
            other => panic!("unexpected SAN {other:?}"),
        }
    }
    assert_eq!(uris, [me.as_str()]);
    assert_eq!(dns, names);
    assert!(ca
        .issue_with_dns_names(&me, &["not a dns name\u{0}"], HOUR)
        .is_err());
}
