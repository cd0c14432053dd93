//! The certificate store and the proxy's CSRs, without handshakes.

use std::time::{Duration, SystemTime};

use pillion_identity::store::{CertStore, StoreError};
use pillion_identity::{csr, Ca, SpiffeId};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

const HOUR: Duration = Duration::from_secs(3600);

fn id(s: &str) -> SpiffeId {
    s.parse().unwrap()
}

fn assert_send_sync<T: Send + Sync>() {}

#[test]
fn shared_types_are_send_and_sync() {
    assert_send_sync::<Ca>();
    assert_send_sync::<CertStore>();
    assert_send_sync::<SpiffeId>();
}

#[test]
fn proxy_csr_names_the_id_with_a_p256_key() {
    let me = id("spiffe://cluster.local/ns/demo/sa/client");
    let (key, csr_pem) = csr::generate(&me).unwrap();
    assert!(key.is_compatible(&rcgen::PKCS_ECDSA_P256_SHA256));
    let der = pem::parse(&csr_pem).unwrap().into_contents();
    let (_, req) = X509CertificationRequest::from_der(&der).unwrap();
    req.verify_signature().unwrap();
    let uris: Vec<String> = req
        .requested_extensions()
        .unwrap()
        .filter_map(|e| match e {
            ParsedExtension::SubjectAlternativeName(san) => Some(san),
            _ => None,
        })
        .flat_map(|san| san.general_names.iter())
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(uris, vec![me.to_string()]);
    assert!(!csr_pem.contains("PRIVATE KEY"));
}

#[test]
fn store_installs_and_reports_the_leaf() {
    let ca = Ca::generate("cluster.local").unwrap();
    let me = id("spiffe://cluster.local/ns/demo/sa/client");
    let store = CertStore::new(me.clone());
    assert!(!store.has_leaf() && !store.has_trust_bundle());
    assert_eq!(store.current_serial(), None);
    assert_eq!(store.expires_at(), None);

    let (key, csr_pem) = csr::generate(&me).unwrap();
    let issued = ca.sign_csr(&csr_pem, &me, HOUR).unwrap();
    store.set_leaf(&issued.chain_pem, &key).unwrap();
    store.set_trust_bundle(&ca.trust_bundle_pem()).unwrap();
    assert!(store.has_leaf() && store.has_trust_bundle());
    assert_eq!(store.current_serial(), Some(issued.serial_hex.clone()));
    assert_eq!(store.expires_at(), Some(issued.expires_at));
    assert!(issued.expires_at > SystemTime::now());
    assert_eq!(store.local_id(), &me);
    assert_eq!(store.trust_bundle_pem(), Some(ca.trust_bundle_pem()));
    assert!(!format!("{store:?}").contains("PRIVATE"));
}

#[test]
fn store_refuses_bad_leaves_and_bundles_and_keeps_the_old_ones() {
    let ca = Ca::generate("cluster.local").unwrap();
    let me = id("spiffe://cluster.local/ns/demo/sa/client");
    let store = CertStore::new(me.clone());
    let (key, csr_pem) = csr::generate(&me).unwrap();
    let issued = ca.sign_csr(&csr_pem, &me, HOUR).unwrap();
    store.set_leaf(&issued.chain_pem, &key).unwrap();

    // Someone else's certificate.
    let other = id("spiffe://cluster.local/ns/demo/sa/other");
    let (other_key, other_csr) = csr::generate(&other).unwrap();
    let other_issued = ca.sign_csr(&other_csr, &other, HOUR).unwrap();
    assert!(matches!(
        store.set_leaf(&other_issued.chain_pem, &other_key),
        Err(StoreError::WrongIdentity { .. })
    ));
    // Our certificate with the wrong key.
    let (wrong_key, _) = csr::generate(&me).unwrap();
    assert!(matches!(
        store.set_leaf(&issued.chain_pem, &wrong_key),
        Err(StoreError::Key(_))
    ));
    // Not PEM, and a CA certificate (no SPIFFE id with a path).
    assert!(matches!(
        store.set_leaf("garbage", &key),
        Err(StoreError::Pem(_))
    ));
    assert!(matches!(
        store.set_leaf(&ca.trust_bundle_pem(), &key),
        Err(StoreError::Leaf(_))
    ));
    assert!(store.set_trust_bundle("").is_err());
    assert!(matches!(
        store.set_trust_bundle("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
        Err(StoreError::Bundle(_))
    ));
    assert_eq!(store.current_serial(), Some(issued.serial_hex));
    assert!(!store.has_trust_bundle());
}
