//! A CA split the way it outlives any one agent: a long-lived root (the trust
//! anchor, whose key can stay offline) and an issuer under it that agents sign
//! with. They live in the three files of a `kubernetes.io/tls` Secret, the shape
//! cert-manager writes for a CA certificate: `tls.crt` (the issuer, then any
//! intermediates below the root), `tls.key` (its key) and `ca.crt` (the trust
//! bundle: one root, or two during a rotation).

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{BasicConstraints, KeyPair};
use tracing::{info, warn};
use zeroize::Zeroizing;

use super::authority::{ca_params, Ca};
use super::error::CaError;
use super::files::{io_err, write_new};
use super::leaf::Validity;
use crate::bundle::TrustBundle;
use crate::cert_info;
use crate::pem_blocks::{cert_to_pem, certs_from_pem};
use crate::spiffe::validate_trust_domain;

/// File of the trust bundle in an issuer directory (the Secret's `ca.crt`).
pub const TRUST_BUNDLE_FILE: &str = "ca.crt";
/// File of the issuer certificate and any intermediates below the root (`tls.crt`).
pub const ISSUER_CERT_FILE: &str = "tls.crt";
/// File of the issuer's private key, PKCS#8 PEM (`tls.key`), mode 0600.
pub const ISSUER_KEY_FILE: &str = "tls.key";
/// File of the root's private key that `init_issuer_dir` leaves beside them: move it
/// offline, it is needed only to make the next issuer.
pub const ROOT_KEY_FILE: &str = "root.key";
/// Default lifetime of an issuer: a year, renewed well before by rotation.
pub const ISSUER_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// An issuer closer than this to its expiry is loaded with a warning.
pub const ISSUER_EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

impl Ca {
    /// Issues an intermediate CA (the issuer agents sign with) under this one, for
    /// `lifetime` but never past this CA's expiry: its certificate PEM (followed by
    /// this CA's own chain below the root) and its key, wiped on drop.
    pub fn issue_intermediate(
        &self,
        lifetime: Duration,
    ) -> Result<(String, Zeroizing<String>), CaError> {
        let td = self.trust_domain().ok_or_else(|| {
            CaError::Certificate("a CA without a trust domain cannot make issuers".into())
        })?;
        let mut validity = Validity::starting_now(lifetime)?;
        validity.not_after = validity.not_after.min(self.not_after);
        let params = ca_params(td, "issuer", BasicConstraints::Constrained(0), validity)?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|source| {
            CaError::Generate {
                what: "generating the issuer key",
                source,
            }
        })?;
        let cert = params
            .signed_by(&key, &self.signer, &self.key)
            .map_err(|source| CaError::Generate {
                what: "signing the issuer certificate",
                source,
            })?;
        let mut pem = cert_to_pem(cert.der());
        pem.push_str(&self.chain_tail_pem);
        Ok((pem, Zeroizing::new(key.serialize_pem())))
    }

    /// Loads an issuer: `issuer_pem` (tls.crt: the issuer first, then any
    /// intermediates, with or without the root), its key, and `bundle_pem` (ca.crt),
    /// one of whose roots must sign the last certificate of `issuer_pem`. Leaves
    /// chain to that root, and the CA hands out the whole bundle, so proxies trust
    /// every root in it (old and new, during a rotation).
    pub fn from_issuer(
        issuer_pem: &str,
        key_pem: &str,
        bundle_pem: &str,
        trust_domain: &str,
    ) -> Result<Ca, CaError> {
        validate_trust_domain(trust_domain).map_err(CaError::TrustDomain)?;
        let bundle = TrustBundle::parse(bundle_pem, trust_domain, SystemTime::now())?;
        let mut chain = certs_from_pem(issuer_pem, "issuer certificate")?;
        let last_der = chain.last().cloned().ok_or(CaError::MissingRoot)?;
        let last = cert_info::parse(&last_der).map_err(|e| CaError::Certificate(e.to_string()))?;
        let self_signed = last.issuer().as_raw() == last.subject().as_raw();
        if !self_signed {
            let root = bundle.ders().iter().find(|root| {
                cert_info::parse(root).is_ok_and(|r| {
                    r.subject().as_raw() == last.issuer().as_raw()
                        && last.verify_signature(Some(r.public_key())).is_ok()
                })
            });
            match root {
                Some(root) => chain.push(root.clone()),
                None => {
                    return Err(CaError::IssuerNotInBundle {
                        issuer: last.issuer().to_string(),
                    })
                }
            }
        } else if !bundle.ders().contains(&last_der) {
            return Err(CaError::IssuerNotInBundle {
                issuer: last.subject().to_string(),
            });
        }
        let key = KeyPair::from_pem(key_pem).map_err(|e| {
            CaError::Key(format!(
                "{e} (a PKCS#8 \"PRIVATE KEY\" PEM block is required)"
            ))
        })?;
        let mut ca = Ca::assemble(chain, key)?;
        if let Some(td) = ca.trust_domain() {
            if td != trust_domain {
                return Err(CaError::TrustDomainMismatch {
                    ca: td.to_string(),
                    requested: trust_domain.to_string(),
                });
            }
        }
        ca.roots_pem = bundle.pem();
        Ok(ca)
    }

    /// Loads the issuer in `dir` ([`TRUST_BUNDLE_FILE`], [`ISSUER_CERT_FILE`],
    /// [`ISSUER_KEY_FILE`], e.g. a mounted Secret). Never creates anything: a
    /// missing file is an error naming it.
    pub fn load_issuer_dir(dir: &Path, trust_domain: &str) -> Result<Ca, CaError> {
        let read = |name: &str| {
            let path = dir.join(name);
            fs::read_to_string(&path).map_err(io_err("reading", &path))
        };
        let key_path = dir.join(ISSUER_KEY_FILE);
        if let Ok(meta) = fs::metadata(&key_path) {
            let mode = meta.permissions().mode();
            // A Secret volume's files are symlinks to 0400/0644 files; a group or
            // world bit on a real file is worth a word.
            if mode & 0o077 != 0 && !key_path.is_symlink() {
                warn!(path = %key_path.display(), mode = format!("{:o}", mode & 0o777),
                    "the issuer key file is accessible to group or others; chmod 600 it");
            }
        }
        let bundle = read(TRUST_BUNDLE_FILE)?;
        let issuer = read(ISSUER_CERT_FILE)?;
        let key = Zeroizing::new(read(ISSUER_KEY_FILE)?);
        let ca = Ca::from_issuer(&issuer, &key, &bundle, trust_domain)?;
        let left = ca
            .expires_at()
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        if left < ISSUER_EXPIRY_WARNING {
            warn!(dir = %dir.display(), days_left = left.as_secs() / 86_400,
                "the issuer expires soon; rotate it (docs/kubernetes.md)");
        }
        info!(dir = %dir.display(), trust_domain, "loaded the mesh issuer");
        Ok(ca)
    }
}

/// Loads the root of `dir` as a CA that can sign the next issuer: the root in its
/// `ca.crt` (of one or two, the one `root.key` belongs to) with that key, as
/// [`init_issuer_dir`] left them.
pub fn load_root_dir(dir: &Path, trust_domain: &str) -> Result<Ca, CaError> {
    read_root_dir(dir, trust_domain).map(|(root, _)| root)
}

/// [`load_root_dir`], and the `ca.crt` it read.
fn read_root_dir(dir: &Path, trust_domain: &str) -> Result<(Ca, String), CaError> {
    let read = |name: &str| {
        let path = dir.join(name);
        fs::read_to_string(&path).map_err(io_err("reading", &path))
    };
    let bundle = read(TRUST_BUNDLE_FILE)?;
    let key = Zeroizing::new(read(ROOT_KEY_FILE)?);
    let mut last = CaError::MissingRoot;
    for der in certs_from_pem(&bundle, "trust bundle")? {
        match Ca::from_issuer(&cert_to_pem(&der), &key, &bundle, trust_domain) {
            Ok(root) => return Ok((root, bundle)),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Makes the next issuer under the root in `root_dir` (see [`load_root_dir`]) in the
/// new directory `out` (0700): `tls.crt`, `tls.key` (0600) and a copy of `ca.crt`,
/// the three files of the Secret to update. Refuses an `out` that holds any of them.
pub fn next_issuer_dir(
    root_dir: &Path,
    out: &Path,
    trust_domain: &str,
    issuer_lifetime: Duration,
) -> Result<Ca, CaError> {
    let (root, bundle) = read_root_dir(root_dir, trust_domain)?;
    refuse_existing(out, &[TRUST_BUNDLE_FILE, ISSUER_CERT_FILE, ISSUER_KEY_FILE])?;
    let (issuer_pem, issuer_key) = root.issue_intermediate(issuer_lifetime)?;
    write_new(&out.join(ISSUER_KEY_FILE), issuer_key.as_bytes(), 0o600)?;
    write_new(&out.join(ISSUER_CERT_FILE), issuer_pem.as_bytes(), 0o644)?;
    write_new(&out.join(TRUST_BUNDLE_FILE), bundle.as_bytes(), 0o644)?;
    Ca::from_issuer(&issuer_pem, &issuer_key, &bundle, trust_domain)
}

/// Creates `dir` (0700) unless it holds any of `names`: an issuer directory is
/// never overwritten.
fn refuse_existing(dir: &Path, names: &[&str]) -> Result<(), CaError> {
    if let Some(found) = names.iter().map(|n| dir.join(n)).find(|p| p.exists()) {
        return Err(CaError::Io {
            op: "refusing to overwrite",
            path: found,
            source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
        });
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err("creating directory", dir))
}

/// Creates a new root and an issuer under it in the new directory `dir` (made
/// 0700): `ca.crt`, `tls.crt`, `tls.key` and `root.key` (keys 0600). Refuses a
/// directory that already holds any of them. Returns the issuer.
pub fn init_issuer_dir(
    dir: &Path,
    trust_domain: &str,
    issuer_lifetime: Duration,
) -> Result<Ca, CaError> {
    refuse_existing(
        dir,
        &[
            TRUST_BUNDLE_FILE,
            ISSUER_CERT_FILE,
            ISSUER_KEY_FILE,
            ROOT_KEY_FILE,
        ],
    )?;
    let root = Ca::generate(trust_domain)?;
    let (issuer_pem, issuer_key) = root.issue_intermediate(issuer_lifetime)?;
    let bundle = root.trust_bundle_pem();
    write_new(&dir.join(ROOT_KEY_FILE), root.key_pem().as_bytes(), 0o600)?;
    write_new(&dir.join(ISSUER_KEY_FILE), issuer_key.as_bytes(), 0o600)?;
    write_new(&dir.join(ISSUER_CERT_FILE), issuer_pem.as_bytes(), 0o644)?;
    write_new(&dir.join(TRUST_BUNDLE_FILE), bundle.as_bytes(), 0o644)?;
    Ca::from_issuer(&issuer_pem, &issuer_key, &bundle, trust_domain)
}
