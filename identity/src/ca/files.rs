//! Keeping the CA on disk: `ca.pem` (certificate, then chain) and `ca-key.pem` (0600).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use super::authority::Ca;
use super::error::CaError;
use crate::spiffe::validate_trust_domain;

/// File name of the CA certificate (and any chain above it).
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key, PKCS#8 PEM, mode 0600.
pub const CA_KEY_FILE: &str = "ca-key.pem";

impl Ca {
    /// Loads the CA from `dir/ca.pem` + `dir/ca-key.pem`, or, when neither exists,
    /// generates a root for `trust_domain` and writes both (the key with mode 0600).
    pub fn load_or_generate(dir: &Path, trust_domain: &str) -> Result<Ca, CaError> {
        validate_trust_domain(trust_domain).map_err(CaError::TrustDomain)?;
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => load(&cert_path, &key_path, trust_domain),
            (false, false) => generate_into(dir, &cert_path, &key_path, trust_domain),
            (true, false) => Err(CaError::PartialFiles {
                present: cert_path,
                missing: key_path,
            }),
            (false, true) => Err(CaError::PartialFiles {
                present: key_path,
                missing: cert_path,
            }),
        }
    }
}

pub(super) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CaError {
    let path = path.to_path_buf();
    move |source| CaError::Io { op, path, source }
}

fn load(cert_path: &Path, key_path: &Path, trust_domain: &str) -> Result<Ca, CaError> {
    let mode = fs::metadata(key_path)
        .map_err(io_err("reading metadata of", key_path))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        warn!(path = %key_path.display(), mode = format!("{:o}", mode & 0o777), "the CA key file is accessible to group or others; chmod 600 it");
    }
    let cert_pem = fs::read_to_string(cert_path).map_err(io_err("reading", cert_path))?;
    let key_pem =
        zeroize::Zeroizing::new(fs::read_to_string(key_path).map_err(io_err("reading", key_path))?);
    let ca = Ca::from_pem(&cert_pem, &key_pem)?;
    if let Some(td) = ca.trust_domain() {
        if td != trust_domain {
            return Err(CaError::TrustDomainMismatch {
                ca: td.to_string(),
                requested: trust_domain.to_string(),
            });
        }
    }
    info!(path = %cert_path.display(), trust_domain, "loaded the mesh CA");
    Ok(ca)
}

fn generate_into(
    dir: &Path,
    cert_path: &Path,
    key_path: &Path,
    trust_domain: &str,
) -> Result<Ca, CaError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err("creating directory", dir))?;
    let ca = Ca::generate(trust_domain)?;
    // Write both to temporary names first, then rename: a crash never leaves a
    // half-written file under the real name.
    let key_tmp = tmp_path(key_path);
    let cert_tmp = tmp_path(cert_path);
    write_new(&key_tmp, ca.key_pem().as_bytes(), 0o600)?;
    write_new(&cert_tmp, ca.cert_pem().as_bytes(), 0o644)?;
    fs::rename(&key_tmp, key_path).map_err(io_err("renaming", &key_tmp))?;
    fs::rename(&cert_tmp, cert_path).map_err(io_err("renaming", &cert_tmp))?;
    info!(path = %cert_path.display(), trust_domain, "wrote a new mesh CA");
    Ok(ca)
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Creates `path` with `mode` from the first byte on (never wider), writes and syncs.
pub(super) fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CaError> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("removing stale", path)(e)),
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_err("creating", path))?;
    file.write_all(bytes).map_err(io_err("writing", path))?;
    file.sync_all().map_err(io_err("syncing", path))?;
    Ok(())
}
