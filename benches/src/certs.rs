//! Certificates for the peer proxies, from Pillion's own CA: one CA for every row (the
//! agent loads the same CA directory), and a leaf per pod identity issued with
//! [`Ca::issue`], written as PEM files nginx and HAProxy can load.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use pillion_api::defaults::TRUST_DOMAIN;
use pillion_identity::{Ca, SpiffeId};

use crate::workdir::WorkDir;

/// Namespace of the benchmark's workload identities.
pub const NAMESPACE: &str = "bench";
/// Lifetime of the leaves: longer than any run.
const LEAF_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// One identity's files.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// `spiffe://cluster.local/ns/bench/sa/<name>`.
    pub id: SpiffeId,
    /// The chain (leaf first), PEM.
    pub cert: PathBuf,
    /// The private key, PKCS#8 PEM.
    pub key: PathBuf,
    /// Chain and key in one file (HAProxy's `crt`).
    pub combined: PathBuf,
}

/// The CA directory, its trust bundle and the leaves.
#[derive(Debug, Clone)]
pub struct Certs {
    /// Directory with `ca.pem` and `ca-key.pem`, as the agent's `--ca-dir` wants it.
    pub ca_dir: PathBuf,
    /// The root, PEM, world-readable.
    pub bundle: PathBuf,
    /// Leaf of the client pod.
    pub client: Leaf,
    /// Leaf of the server pod.
    pub server: Leaf,
}

impl Certs {
    /// Generates the CA in `work/ca` and issues the client and server leaves.
    pub fn create(work: &WorkDir) -> Result<Certs> {
        let ca_dir = work.path().join("ca");
        let ca = Ca::load_or_generate(&ca_dir, TRUST_DOMAIN).context("creating the bench CA")?;
        let bundle = work.write("ca-bundle.pem", &ca.trust_bundle_pem())?;
        Ok(Certs {
            client: issue(work, &ca, "client")?,
            server: issue(work, &ca, "server")?,
            ca_dir,
            bundle,
        })
    }
}

fn issue(work: &WorkDir, ca: &Ca, name: &str) -> Result<Leaf> {
    let id = SpiffeId::new(TRUST_DOMAIN, NAMESPACE, name)?;
    let (issued, key) = ca
        .issue(&id, LEAF_LIFETIME)
        .with_context(|| format!("issuing {id}"))?;
    let mut combined = issued.chain_pem.clone();
    if !combined.ends_with('\n') {
        combined.push('\n');
    }
    combined.push_str(&key);
    Ok(Leaf {
        cert: work.write(&format!("{name}.pem"), &issued.chain_pem)?,
        key: work.write(&format!("{name}-key.pem"), &key)?,
        combined: work.write(&format!("{name}.haproxy.pem"), &combined)?,
        id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_loadable_pems() {
        let work = WorkDir::create().unwrap();
        let certs = Certs::create(&work).unwrap();
        let chain = std::fs::read_to_string(&certs.client.cert).unwrap();
        assert!(chain.starts_with("-----BEGIN CERTIFICATE-----"));
        let both = std::fs::read_to_string(&certs.server.combined).unwrap();
        assert!(both.contains("CERTIFICATE") && both.contains("PRIVATE KEY"));
        assert!(certs.ca_dir.join("ca-key.pem").exists());
        assert_eq!(
            certs.server.id.as_str(),
            "spiffe://cluster.local/ns/bench/sa/server"
        );
        // The same CA loads again (as the agent will).
        Ca::load_or_generate(&certs.ca_dir, TRUST_DOMAIN).unwrap();
    }
}
