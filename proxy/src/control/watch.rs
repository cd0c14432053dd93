//! Follows the agent's view stream (`GET /v1/watch`, NDJSON): each line is parsed
//! on a blocking thread (a large view must not pause traffic) and published to the
//! proxy's [`Views`], which the state compiler follows. When the stream ends or fails
//! the last good view stays in force and the stream is reopened with exponential
//! backoff and jitter.

use std::sync::Arc;
use std::time::Duration;

use pillion_api::view::View;
use pillion_identity::{BundleOutcome, BundleSource, CertStore, HeldBecause, SpiffeId};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::client::{AgentClient, AgentError};
use super::lines::{BodyLines, LineError, MAX_VIEW_LINE};
use super::metrics::ControlMetrics;
use crate::admin::readiness::Condition;
use crate::policy::backoff::Backoff;
use crate::state::Views;

/// First reconnect delay.
pub(crate) const RECONNECT_BASE: Duration = Duration::from_millis(200);
/// Longest reconnect delay.
pub(crate) const RECONNECT_CAP: Duration = Duration::from_secs(5);
/// A proxy whose leaf names another issuer than the agent's renews within this,
/// at a random moment, so a mesh's proxies do not all ask in the same instant.
pub const ISSUER_SWITCH_SPREAD: Duration = Duration::from_secs(5);

/// Why one view stream ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WatchError {
    /// The stream could not be opened.
    #[error(transparent)]
    Open(#[from] AgentError),
    /// The stream broke, or a line was too long.
    #[error("the view stream: {0}")]
    Lines(#[from] LineError),
    /// The agent sent a view for another workload.
    #[error("the agent sent a view for {got}, but this proxy is {want}; check --token-file and the workload's identity flags")]
    WrongIdentity {
        /// The identity in the view.
        got: String,
        /// Ours.
        want: SpiffeId,
    },
    /// The agent closed the stream.
    #[error("the agent closed the view stream")]
    Ended,
}

/// The watch loop's state.
pub(crate) struct Watcher {
    /// Where the stream comes from.
    pub client: Arc<AgentClient>,
    /// Asks for a view without services (they come by on-demand discovery).
    pub on_demand: bool,
    /// Where views go.
    pub views: Views,
    /// Our identity; views for others are refused.
    pub identity: SpiffeId,
    /// The connected gauge.
    pub metrics: ControlMetrics,
    /// Met once the first view is installed.
    pub ready: Condition,
    /// Where a bundle pushed in a view goes.
    pub store: Arc<CertStore>,
    /// Wakes the renewal loop when a pushed bundle waits for a leaf under it, or
    /// the agent signs with another issuer than our leaf's.
    pub renew_now: Arc<Notify>,
    /// The issuer a renewal was last asked for, so one switch asks once.
    pub renewing_for: std::sync::Mutex<Option<String>>,
}

impl Watcher {
    /// Follows the stream, reconnecting, until `shutdown` fires.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(RECONNECT_BASE, RECONNECT_CAP);
        loop {
            let ended = tokio::select! {
                () = shutdown.cancelled() => return,
                ended = self.follow(&mut backoff) => ended,
            };
            self.metrics.agent_connected.set(0);
            let wait = backoff.next_delay();
            let version = self.views.latest().map(|v| v.version);
            match &ended {
                WatchError::Ended => {
                    tracing::info!(agent = %self.client.addr(), reconnect_in_ms = wait.as_millis() as u64,
                    view_version = ?version, "view stream ended; keeping the last good view")
                }
                err => {
                    tracing::warn!(agent = %self.client.addr(), error = %err, reconnect_in_ms = wait.as_millis() as u64,
                    view_version = ?version, "view stream failed; keeping the last good view")
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Offers a bundle the agent pushed in a view. Never a reason to refuse the
    /// view: the policy in it is installed whatever becomes of the bundle.
    async fn offer_bundle(&self, pem: &str) {
        let chain = self.client.agent_chain().await;
        let offered = self
            .store
            .offer_trust_bundle(pem, BundleSource::Agent, chain.as_deref());
        self.metrics
            .bundle_offered(BundleSource::Agent, &offered, &self.store);
        match offered {
            Ok(BundleOutcome::Held(HeldBecause::WouldUntrustOwnLeaf)) => {
                // The renewal's answer brings the same bundle with a leaf under it.
                self.renew_now.notify_one();
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(agent = %self.client.addr(), %error,
                    "the agent pushed a trust bundle that cannot be used; keeping ours");
            }
        }
    }

    /// Asks for a renewal, at a random moment within [`ISSUER_SWITCH_SPREAD`], when
    /// the agent signs with another issuer than the one of our leaf (a rotation's
    /// switch): the leaf under the old root is replaced now, not at 70 % of its life.
    fn renew_if_issued_by_another(&self, issuer: String) {
        let Some(ours) = self.store.leaf_issuer_sha256() else {
            return;
        };
        if ours == issuer {
            return;
        }
        let mut asked = self
            .renewing_for
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if asked.as_deref() == Some(issuer.as_str()) {
            return;
        }
        *asked = Some(issuer);
        let wait = ISSUER_SWITCH_SPREAD.mul_f64(rand::random::<f64>());
        tracing::info!(
            renew_in_ms = wait.as_millis() as u64,
            "the agent signs with another issuer than our leaf's; renewing soon"
        );
        let renew_now = Arc::clone(&self.renew_now);
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            renew_now.notify_one();
        });
    }

    /// Opens one stream and installs its views until it ends; always returns why.
    async fn follow(&self, backoff: &mut Backoff) -> WatchError {
        let body = match self.client.watch(self.on_demand).await {
            Ok(body) => body,
            Err(err) => return err.into(),
        };
        self.metrics.agent_connected.set(1);
        tracing::info!(agent = %self.client.addr(), "view stream open");
        let mut lines = BodyLines::new(body, MAX_VIEW_LINE);
        // Versions only grow within one stream; a restarted agent counts anew.
        let mut last: Option<u64> = None;
        loop {
            let complete = match lines.next_batch().await {
                Ok(Some(complete)) => complete,
                Ok(None) => return WatchError::Ended,
                Err(err) => return err.into(),
            };
            for line in complete {
                let parsed =
                    tokio::task::spawn_blocking(move || serde_json::from_slice::<View>(&line))
                        .await;
                let view = match parsed {
                    Ok(Ok(view)) => view,
                    Ok(Err(err)) => {
                        tracing::warn!(agent = %self.client.addr(), error = %err, "ignoring a view line that does not parse");
                        continue;
                    }
                    Err(err) => {
                        tracing::error!(error = %err, "parsing a view line failed; ignoring it");
                        continue;
                    }
                };
                if view.identity != self.identity.as_str() {
                    return WatchError::WrongIdentity {
                        got: view.identity,
                        want: self.identity.clone(),
                    };
                }
                let mut view = view;
                if let Some(pem) = view.trust_bundle_pem.take() {
                    self.offer_bundle(&pem).await;
                }
                if let Some(issuer) = view.issuer_sha256.take() {
                    self.renew_if_issued_by_another(issuer);
                }
                if last.is_some_and(|v| view.version < v) {
                    tracing::debug!(version = view.version, "ignoring an older view");
                    continue;
                }
                last = Some(view.version);
                tracing::info!(
                    version = view.version,
                    services = view.services.len(),
                    inbound_ports = view.inbound.ports.len(),
                    "view received"
                );
                self.views.publish(view);
                self.ready.set(true);
                backoff.reset();
            }
        }
    }
}
