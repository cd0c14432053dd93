//! A root with an issuer under it, in the files of a `kubernetes.io/tls` Secret:
//! what agents load so the CA outlives any one of them.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use pillion_identity::ca::{
    init_issuer_dir, load_root_dir, next_issuer_dir, ISSUER_CERT_FILE, ISSUER_KEY_FILE,
    ROOT_KEY_FILE, TRUST_BUNDLE_FILE,
};
use pillion_identity::{BundleError, Ca, CaError, SpiffeId};

use crate::common::{certs, verify_chain, TempDir};

const TD: &str = "cluster.local";
const DAY: Duration = Duration::from_secs(24 * 3600);

fn workload() -> SpiffeId {
    SpiffeId::new(TD, "demo", "web").unwrap()
}

#[test]
fn an_initialised_directory_loads_the_same_issuer_every_time() {
    let tmp = TempDir::new("issuer-init");
    let dir = tmp.0.join("identity");
    let made = init_issuer_dir(&dir, TD, 30 * DAY).unwrap();
    for (name, mode) in [
        (ROOT_KEY_FILE, 0o600),
        (ISSUER_KEY_FILE, 0o600),
        (ISSUER_CERT_FILE, 0o644),
        (TRUST_BUNDLE_FILE, 0o644),
    ] {
        let meta = std::fs::metadata(dir.join(name)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{name}");
    }
    let bundle = std::fs::read_to_string(dir.join(TRUST_BUNDLE_FILE)).unwrap();
    assert_eq!(made.trust_bundle_pem(), bundle);
    // Two agents (or one, restarted) load the same issuer: leaves of either verify
    // under the one bundle, and carry the issuer between leaf and root.
    for _ in 0..2 {
        let ca = Ca::load_issuer_dir(&dir, TD).unwrap();
        assert_eq!(ca.trust_bundle_pem(), bundle);
        let (issued, _key) = ca.issue(&workload(), DAY).unwrap();
        assert_eq!(certs(&issued.chain_pem).len(), 2, "leaf + issuer");
        verify_chain(&issued.chain_pem, &bundle).unwrap();
        assert!(ca.expires_at() <= made.expires_at() + Duration::from_secs(1));
    }
    // An existing directory is never overwritten.
    let err = init_issuer_dir(&dir, TD, DAY).unwrap_err();
    assert!(matches!(err, CaError::Io { .. }), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.join(TRUST_BUNDLE_FILE)).unwrap(),
        bundle
    );
}

#[test]
fn the_next_issuer_comes_from_the_same_root_and_nothing_is_overwritten() {
    let tmp = TempDir::new("issuer-next");
    let (first, next) = (tmp.0.join("first"), tmp.0.join("next"));
    let made = init_issuer_dir(&first, TD, 30 * DAY).unwrap();
    let again = next_issuer_dir(&first, &next, TD, 10 * DAY).unwrap();
    assert_ne!(again.cert_pem(), made.cert_pem(), "a new issuer");
    assert_eq!(
        again.trust_bundle_pem(),
        made.trust_bundle_pem(),
        "the same root"
    );
    let mode = |p: std::path::PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(next.join(ISSUER_KEY_FILE)), 0o600);
    assert!(
        !next.join(ROOT_KEY_FILE).exists(),
        "the root key stays where it was"
    );
    // What the agents load from the new files verifies under the old bundle.
    let loaded = Ca::load_issuer_dir(&next, TD).unwrap();
    let (issued, _) = loaded.issue(&workload(), DAY).unwrap();
    verify_chain(&issued.chain_pem, &made.trust_bundle_pem()).unwrap();
    assert!(
        next_issuer_dir(&first, &next, TD, DAY).is_err(),
        "never overwritten"
    );

    // Mid-rotation ca.crt holds two roots: the one root.key belongs to signs.
    let other = Ca::generate(TD).unwrap();
    let bundle = made.trust_bundle_pem();
    std::fs::write(
        first.join(TRUST_BUNDLE_FILE),
        format!("{}{bundle}", other.trust_bundle_pem()),
    )
    .unwrap();
    let root = load_root_dir(&first, TD).unwrap();
    let (issuer, key) = root.issue_intermediate(DAY).unwrap();
    let ca = Ca::from_issuer(&issuer, &key, &bundle, TD).unwrap();
    let (issued, _) = ca.issue(&workload(), DAY).unwrap();
    verify_chain(&issued.chain_pem, &bundle).unwrap();

    // A root key that fits no root of ca.crt is refused.
    std::fs::write(first.join(TRUST_BUNDLE_FILE), other.trust_bundle_pem()).unwrap();
    let err = load_root_dir(&first, TD).unwrap_err();
    assert!(matches!(err, CaError::KeyMismatch), "{err}");
}

#[test]
fn an_issuer_under_the_new_of_two_roots_hands_out_both() {
    let (old, new) = (Ca::generate(TD).unwrap(), Ca::generate(TD).unwrap());
    let (issuer, key) = new.issue_intermediate(DAY).unwrap();
    let both = format!("{}{}", old.trust_bundle_pem(), new.trust_bundle_pem());
    let ca = Ca::from_issuer(&issuer, &key, &both, TD).unwrap();
    assert_eq!(certs(&ca.trust_bundle_pem()).len(), 2);
    let (issued, _) = ca.issue(&workload(), DAY).unwrap();
    verify_chain(&issued.chain_pem, &new.trust_bundle_pem()).unwrap();
    assert!(verify_chain(&issued.chain_pem, &old.trust_bundle_pem()).is_err());
    // tls.crt may carry the root too (some tools write the full chain).
    let with_root = format!("{issuer}{}", new.trust_bundle_pem());
    assert!(Ca::from_issuer(&with_root, &key, &both, TD).is_ok());
    // The issuer never outlives the root that signed it.
    let (long, long_key) = new.issue_intermediate(100 * 365 * DAY).unwrap();
    let long = Ca::from_issuer(&long, &long_key, &both, TD).unwrap();
    assert!(long.expires_at() <= new.expires_at());
}

#[test]
fn an_issuer_that_does_not_fit_its_bundle_or_key_is_refused_with_what_to_fix() {
    let (r1, r2) = (Ca::generate(TD).unwrap(), Ca::generate(TD).unwrap());
    let (issuer, key) = r1.issue_intermediate(DAY).unwrap();
    let err = Ca::from_issuer(&issuer, &key, &r2.trust_bundle_pem(), TD).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, CaError::IssuerNotInBundle { .. }), "{text}");
    assert!(
        text.contains("Pillion root CA") && text.contains("ca.crt"),
        "{text}"
    );

    let (_, other_key) = r1.issue_intermediate(DAY).unwrap();
    let err = Ca::from_issuer(&issuer, &other_key, &r1.trust_bundle_pem(), TD).unwrap_err();
    assert!(matches!(err, CaError::KeyMismatch), "{err}");

    let foreign = Ca::generate("other.example").unwrap();
    let bundle = format!("{}{}", r1.trust_bundle_pem(), foreign.trust_bundle_pem());
    let err = Ca::from_issuer(&issuer, &key, &bundle, TD).unwrap_err();
    assert!(
        matches!(err, CaError::Bundle(BundleError::ForeignTrustDomain { .. })),
        "{err}"
    );

    let err = Ca::from_issuer(&issuer, &key, &r1.trust_bundle_pem(), "other.example").unwrap_err();
    assert!(
        matches!(err, CaError::Bundle(BundleError::ForeignTrustDomain { .. })),
        "{err}"
    );

    // A missing file is named.
    let tmp = TempDir::new("issuer-missing");
    std::fs::write(tmp.0.join(TRUST_BUNDLE_FILE), r1.trust_bundle_pem()).unwrap();
    std::fs::write(tmp.0.join(ISSUER_CERT_FILE), &issuer).unwrap();
    let err = Ca::load_issuer_dir(&tmp.0, TD).unwrap_err();
    assert!(err.to_string().contains(ISSUER_KEY_FILE), "{err}");
}
