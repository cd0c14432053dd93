//! `pillion ca init`: the mesh's long-lived root and the issuer agents sign with,
//! made once, outside the cluster, so the root's key never has to enter it.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use pillion_identity::ca::{
    init_issuer_dir, next_issuer_dir, ISSUER_CERT_FILE, ISSUER_KEY_FILE, ROOT_KEY_FILE,
    TRUST_BUNDLE_FILE,
};

/// The Secret the agent's manifest mounts as `--issuer-dir`.
pub const ISSUER_SECRET: &str = "pillion-identity";

/// Writes a new root and issuer into the new directory `out` and returns what to
/// do next (the `kubectl` line that makes the Secret, and where the root key goes).
pub fn init(out: &Path, trust_domain: &str, issuer_lifetime: Duration) -> Result<String> {
    let issuer = init_issuer_dir(out, trust_domain, issuer_lifetime)
        .with_context(|| format!("cannot create the mesh CA in {}", out.display()))?;
    let days = days_left(&issuer);
    let dir = out.display();
    Ok(format!(
        "wrote {dir}/{TRUST_BUNDLE_FILE} (the trust bundle), {dir}/{ISSUER_CERT_FILE} and \
         {dir}/{ISSUER_KEY_FILE} (the issuer, valid {days} days), {dir}/{ROOT_KEY_FILE} (the \
         root's key)\n\
         \n\
         give the agents the issuer:\n  \
         kubectl create namespace pillion\n  \
         kubectl -n pillion create secret generic {ISSUER_SECRET} --type=kubernetes.io/tls \
         --from-file={dir}/{TRUST_BUNDLE_FILE} --from-file={dir}/{ISSUER_CERT_FILE} \
         --from-file={dir}/{ISSUER_KEY_FILE}\n\
         \n\
         then keep {dir}/{ROOT_KEY_FILE} offline: it is needed only to make the next issuer \
         (`pillion ca issuer --root-dir {dir} --out DIR`; docs/kubernetes.md, \"Rotating \
         the issuer\"), and never in the cluster.\n\
         for local use: pillion-agent --issuer-dir {dir}"
    ))
}

/// Writes the next issuer under the root in `root_dir` into the new directory `out`
/// and returns what to do next (the `kubectl` line that updates the Secret).
pub fn next_issuer(
    root_dir: &Path,
    out: &Path,
    trust_domain: &str,
    issuer_lifetime: Duration,
) -> Result<String> {
    let issuer =
        next_issuer_dir(root_dir, out, trust_domain, issuer_lifetime).with_context(|| {
            format!(
                "cannot make the next issuer under the root in {} into {}",
                root_dir.display(),
                out.display()
            )
        })?;
    let days = days_left(&issuer);
    let dir = out.display();
    Ok(format!(
        "wrote {dir}/{ISSUER_CERT_FILE} and {dir}/{ISSUER_KEY_FILE} (the next issuer, valid \
         {days} days, under the same root) and {dir}/{TRUST_BUNDLE_FILE}\n\
         \n\
         switch the agents to it (proxies renew onto it; the root does not change):\n  \
         kubectl -n pillion create secret generic {ISSUER_SECRET} --type=kubernetes.io/tls \
         --from-file={dir}/{TRUST_BUNDLE_FILE} --from-file={dir}/{ISSUER_CERT_FILE} \
         --from-file={dir}/{ISSUER_KEY_FILE} --dry-run=client -o yaml | kubectl apply -f -"
    ))
}

fn days_left(issuer: &pillion_identity::Ca) -> u64 {
    issuer
        .expires_at()
        .duration_since(std::time::SystemTime::now())
        .map_or(0, |d| d.as_secs() / 86_400)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_an_issuer_the_agent_loads_and_says_what_next() {
        let dir = std::env::temp_dir().join(format!("pillion-ca-init-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let out = dir.join("ca");
        let next = init(&out, "cluster.local", Duration::from_secs(30 * 86_400)).unwrap();
        assert!(next.contains("--type=kubernetes.io/tls"), "{next}");
        assert!(
            next.contains("valid 30 days") || next.contains("valid 29 days"),
            "{next}"
        );
        let ca = pillion_identity::Ca::load_issuer_dir(&out, "cluster.local").unwrap();
        assert_eq!(
            ca.trust_bundle_pem(),
            std::fs::read_to_string(out.join(TRUST_BUNDLE_FILE)).unwrap()
        );
        // Never over an existing one.
        let again = init(&out, "cluster.local", Duration::from_secs(86_400)).unwrap_err();
        assert!(
            format!("{again:#}").contains("refusing to overwrite"),
            "{again:#}"
        );
        // The next issuer: same root, a new issuer the agent loads, the Secret update.
        let next_dir = dir.join("next");
        let said = next_issuer(
            &out,
            &next_dir,
            "cluster.local",
            Duration::from_secs(86_400),
        )
        .unwrap();
        assert!(said.contains("kubectl apply -f -"), "{said}");
        let next = pillion_identity::Ca::load_issuer_dir(&next_dir, "cluster.local").unwrap();
        assert_eq!(next.trust_bundle_pem(), ca.trust_bundle_pem());
        assert_ne!(next.cert_pem(), ca.cert_pem());
        let wrong = next_issuer(
            &next_dir,
            &dir.join("x"),
            "cluster.local",
            Duration::from_secs(60),
        )
        .unwrap_err();
        assert!(format!("{wrong:#}").contains("root.key"), "{wrong:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
