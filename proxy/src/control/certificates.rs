//! Keeps the proxy's certificate fresh: a new key and CSR for every request (the
//! key never leaves the process), renewal at 70 % of the lifetime with jitter, and
//! retries with capped exponential backoff that never wait past shortly before
//! expiry. The old certificate keeps serving until a new one is installed.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pillion_api::defaults::RENEW_AT_FRACTION;
use pillion_identity::{BundleSource, CertStore, CsrError, StoreError};
use rand::Rng;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::client::{AgentClient, AgentError};
use super::metrics::ControlMetrics;
use crate::admin::readiness::Condition;
use crate::policy::backoff::Backoff;

/// First retry delay after a failed request.
pub(crate) const RETRY_BASE: Duration = Duration::from_secs(1);
/// Longest retry delay.
pub(crate) const RETRY_CAP: Duration = Duration::from_secs(30);
/// Share of the renewal point moved at random, either way.
const RENEW_JITTER: f64 = 0.1;
/// Shortest wait between two attempts, whatever the schedule says.
const MIN_WAIT: Duration = Duration::from_millis(100);

/// Why one certificate request failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RenewError {
    /// The key or CSR could not be made.
    #[error("cannot make a key and CSR: {0}")]
    Csr(#[from] CsrError),
    /// The agent could not be asked or said no.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The answer could not be installed.
    #[error("cannot install the agent's answer: {0}")]
    Store(#[from] StoreError),
}

/// The renewal loop's state.
pub(crate) struct Renewer {
    /// Where requests go.
    pub client: Arc<AgentClient>,
    /// Where certificates go.
    pub store: Arc<CertStore>,
    /// Expiry and renewal counters.
    pub metrics: ControlMetrics,
    /// Met once the first certificate is installed.
    pub ready: Condition,
    /// Renew at once (a trust bundle change asks for it), whatever the schedule.
    pub renew_now: Arc<Notify>,
}

impl Renewer {
    /// Requests, installs and renews certificates until `shutdown` fires.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(RETRY_BASE, RETRY_CAP);
        loop {
            let wait = match self.renew_once().await {
                Ok((issued_at, expires_at)) => {
                    backoff.reset();
                    let jitter = rand::thread_rng().gen_range(-RENEW_JITTER..=RENEW_JITTER);
                    renew_delay(issued_at, expires_at, SystemTime::now(), jitter)
                }
                Err(err) => {
                    self.metrics.renewals_error.inc();
                    let wait = retry_delay(
                        backoff.next_delay(),
                        self.store.expires_at(),
                        SystemTime::now(),
                    );
                    tracing::warn!(agent = %self.client.addr(), error = %err,
                        retry_in_ms = wait.as_millis() as u64,
                        has_certificate = self.store.has_leaf(),
                        "certificate request failed; the current certificate keeps serving");
                    wait
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
                () = self.renew_now.notified() => backoff.reset(),
            }
        }
    }

    /// One request: fresh key and CSR, ask, install bundle and leaf together. Returns when
    /// it was received and when it expires.
    async fn renew_once(&self) -> Result<(SystemTime, SystemTime), RenewError> {
        let (key, csr) = pillion_identity::csr::generate(self.store.local_id())?;
        let answer = self.client.request_certificate(csr).await?;
        let received = SystemTime::now();
        let agent = self.client.agent_chain().await;
        let installed = self.store.set_leaf_and_bundle(
            &answer.chain_pem,
            &key,
            &answer.trust_bundle_pem,
            agent.as_deref(),
        );
        self.metrics
            .bundle_offered(BundleSource::Agent, &installed, &self.store);
        installed?;
        let expires_at = self
            .store
            .expires_at()
            .unwrap_or(UNIX_EPOCH + Duration::from_secs(answer.expires_at_unix));
        let unix = expires_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.metrics
            .cert_expiry
            .set(i64::try_from(unix).unwrap_or(i64::MAX));
        self.metrics.renewals_ok.inc();
        self.ready.set(true);
        tracing::info!(identity = %self.store.local_id(),
            serial = %self.store.current_serial().unwrap_or_default(),
            expires_at_unix = unix, "certificate renewed");
        Ok((received, expires_at))
    }
}

/// How long to wait before renewing a certificate received at `issued_at` that
/// expires at `expires_at`: `RENEW_AT_FRACTION` of its life, moved by `jitter`
/// (a share of that point, e.g. ±0.1).
pub(crate) fn renew_delay(
    issued_at: SystemTime,
    expires_at: SystemTime,
    now: SystemTime,
    jitter: f64,
) -> Duration {
    let lifetime = expires_at
        .duration_since(issued_at)
        .unwrap_or(Duration::ZERO);
    let at = issued_at + lifetime.mul_f64((RENEW_AT_FRACTION * (1.0 + jitter)).clamp(0.0, 1.0));
    at.duration_since(now)
        .unwrap_or(Duration::ZERO)
        .max(MIN_WAIT)
}

/// The wait before retrying a failed request: the backoff's delay, but never past
/// shortly before the current certificate expires (a twentieth of the time left,
/// at most 5 s, before it).
pub(crate) fn retry_delay(
    backoff: Duration,
    expires_at: Option<SystemTime>,
    now: SystemTime,
) -> Duration {
    let Some(left) = expires_at.and_then(|e| e.duration_since(now).ok()) else {
        return backoff.max(MIN_WAIT);
    };
    let margin = (left / 20).min(Duration::from_secs(5));
    backoff.min(left.saturating_sub(margin)).max(MIN_WAIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_at_seventy_percent_with_jitter() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let exp = t0 + Duration::from_secs(100);
        assert_eq!(renew_delay(t0, exp, t0, 0.0), Duration::from_secs(70));
        assert_eq!(renew_delay(t0, exp, t0, 0.1), Duration::from_secs(77));
        assert_eq!(renew_delay(t0, exp, t0, -0.1), Duration::from_secs(63));
        // Time already spent counts.
        assert_eq!(
            renew_delay(t0, exp, t0 + Duration::from_secs(10), 0.0),
            Duration::from_secs(60)
        );
        // Past the point: renew at once (after the minimum pause).
        assert_eq!(
            renew_delay(t0, exp, t0 + Duration::from_secs(90), 0.0),
            MIN_WAIT
        );
    }

    #[test]
    fn retries_never_wait_past_expiry() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let b = Duration::from_secs(30);
        // No certificate: plain backoff.
        assert_eq!(retry_delay(b, None, now), b);
        // Far from expiry: plain backoff.
        assert_eq!(
            retry_delay(b, Some(now + Duration::from_secs(3600)), now),
            b
        );
        // Ten seconds left: retry before the last half second.
        assert_eq!(
            retry_delay(b, Some(now + Duration::from_secs(10)), now),
            Duration::from_millis(9500)
        );
        // Expired: plain backoff again.
        assert_eq!(retry_delay(b, Some(now - Duration::from_secs(1)), now), b);
    }
}
