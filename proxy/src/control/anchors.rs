//! Follows the `--trust-anchors` file while the proxy runs. In Kubernetes it is the
//! trust-anchors ConfigMap, which the kubelet rewrites in place (a `..data` symlink
//! swap) when the mesh's roots change; reading it by path once a second sees that.
//! A changed file is offered to the store, which installs it unless it would cut
//! the proxy off from the agent it is connected to; such a file waits, offered again
//! each second, until that connection is gone.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pillion_identity::bundle::MAX_BUNDLE_BYTES;
use pillion_identity::{BundleOutcome, BundleSource, CertStore};
use tokio::io::AsyncReadExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::client::AgentClient;
use super::metrics::ControlMetrics;

/// How often the file is read.
pub(crate) const ANCHORS_POLL: Duration = Duration::from_secs(1);

/// The anchors file loop's state.
pub(crate) struct AnchorsFile {
    /// The file, followed by path (never by an open descriptor).
    pub path: PathBuf,
    /// Where bundles go.
    pub store: Arc<CertStore>,
    /// The agent link whose chain a new bundle must keep trusting.
    pub client: Arc<AgentClient>,
    /// Bundle update counters.
    pub metrics: ControlMetrics,
    /// Wakes the renewal loop: our leaf is no longer trusted, or an agent that was
    /// out of reach may be trusted now.
    pub renew_now: Arc<Notify>,
    /// The text offered last (the one read at start, to begin with).
    pub last: String,
}

impl AnchorsFile {
    /// Reads the file every [`ANCHORS_POLL`] until `shutdown` fires.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        let mut held = false;
        let mut failing: Option<String> = None;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(ANCHORS_POLL) => {}
            }
            let text = match read_capped(&self.path).await {
                Ok(text) => text,
                Err(error) => {
                    if failing.as_ref() != Some(&error) {
                        tracing::warn!(path = %self.path.display(), %error,
                            "cannot read the trust anchors; keeping the trust bundle in use");
                        failing = Some(error);
                    }
                    continue;
                }
            };
            failing = None;
            if text == self.last && !held {
                continue;
            }
            let first_offer = text != self.last;
            self.last = text;
            held = self.offer(first_offer).await;
        }
    }

    /// Offers the last text read; true while it waits to be offered again.
    async fn offer(&self, first_offer: bool) -> bool {
        let chain = self.client.agent_chain().await;
        let offered =
            self.store
                .offer_trust_bundle(&self.last, BundleSource::File, chain.as_deref());
        // A held file is offered again every tick; it is counted once.
        if first_offer || !matches!(offered, Ok(BundleOutcome::Held(_))) {
            self.metrics
                .bundle_offered(BundleSource::File, &offered, &self.store);
        }
        let path = self.path.display();
        match offered {
            Ok(BundleOutcome::Installed { roots, renew }) => {
                tracing::info!(path = %path, roots, renew,
                    "trust anchors changed; new handshakes use them");
                if renew || chain.is_none() {
                    self.renew_now.notify_one();
                }
                false
            }
            Ok(BundleOutcome::Held(because)) => {
                if first_offer {
                    tracing::warn!(path = %path, ?because,
                        "trust anchors changed but do not trust the connected agent; \
                         they apply once that connection ends");
                }
                true
            }
            Ok(BundleOutcome::Unchanged) => false,
            Err(error) => {
                tracing::warn!(path = %path, %error,
                    "trust anchors refused; keeping the trust bundle in use");
                false
            }
        }
    }
}

/// The file's text, read through at most [`MAX_BUNDLE_BYTES`] + 1 bytes (so a
/// larger one is refused by the bundle check, not read whole).
async fn read_capped(path: &std::path::Path) -> Result<String, String> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    file.take(MAX_BUNDLE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| e.to_string())?;
    String::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_through_a_swapped_symlink_and_caps_the_size() {
        let dir = std::env::temp_dir().join(format!("pillion-anchors-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("..v1")).unwrap();
        std::fs::create_dir_all(dir.join("..v2")).unwrap();
        std::fs::write(dir.join("..v1/ca.pem"), "one").unwrap();
        std::fs::write(dir.join("..v2/ca.pem"), "two").unwrap();
        std::os::unix::fs::symlink("..v1", dir.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/ca.pem", dir.join("ca.pem")).unwrap();
        let path = dir.join("ca.pem");
        assert_eq!(read_capped(&path).await.unwrap(), "one");
        // The kubelet's swap: a new symlink renamed over `..data`.
        std::os::unix::fs::symlink("..v2", dir.join("..tmp")).unwrap();
        std::fs::rename(dir.join("..tmp"), dir.join("..data")).unwrap();
        assert_eq!(read_capped(&path).await.unwrap(), "two");
        std::fs::write(dir.join("..v2/ca.pem"), "x".repeat(MAX_BUNDLE_BYTES * 2)).unwrap();
        assert_eq!(
            read_capped(&path).await.unwrap().len(),
            MAX_BUNDLE_BYTES + 1
        );
        std::fs::remove_dir_all(dir.join("..v2")).unwrap();
        assert!(read_capped(&path).await.is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
