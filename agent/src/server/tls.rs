//! The agent's own serving certificate: issued by its CA for
//! `spiffe://<td>/ns/pillion/sa/agent` and renewed before it expires, so a
//! long-running agent never serves an expired certificate.

use crate::ca::AgentCa;
use arc_swap::ArcSwap;
use pillion_api::defaults::RENEW_AT_FRACTION;
use pillion_identity::TlsError;
use rustls::ServerConfig;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// How long to wait before trying again when renewal fails.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// Why the serving certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ServingCertError {
    /// The CA refused to issue it.
    #[error("cannot issue the agent's serving certificate: {0}")]
    Issue(pillion_identity::CaError),
    /// rustls refused the certificate or key.
    #[error("cannot build the agent's TLS configuration: {0}")]
    Tls(TlsError),
}

/// The current TLS configuration, swapped whole on renewal.
#[derive(Debug)]
pub struct ServingCert {
    config: ArcSwap<ServerConfig>,
    lifetime: Duration,
}

impl ServingCert {
    /// Issues a first certificate valid for `lifetime`.
    pub fn issue(ca: &AgentCa, lifetime: Duration) -> Result<(Self, SystemTime), ServingCertError> {
        let (config, expires_at) = build(ca, lifetime)?;
        Ok((
            Self {
                config: ArcSwap::new(config),
                lifetime,
            },
            expires_at,
        ))
    }

    /// An acceptor with the current certificate, for one new connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.load_full())
    }

    /// Renews the certificate at [`RENEW_AT_FRACTION`] of its life until `shutdown`.
    pub async fn keep_renewed(
        self: Arc<Self>,
        ca: Arc<AgentCa>,
        mut expires_at: SystemTime,
        shutdown: CancellationToken,
    ) {
        let mut changes = ca.subscribe();
        loop {
            let wait = renew_delay(self.lifetime, expires_at);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
                // A new issuer: serve a chain under it at once, so proxies that
                // trust only the new root can reach the agent.
                changed = changes.changed() => if changed.is_err() { return },
            }
            match build(&ca, self.lifetime) {
                Ok((config, new_expiry)) => {
                    self.config.store(config);
                    expires_at = new_expiry;
                    tracing::info!(identity = %ca.agent_identity(), "agent serving certificate renewed");
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot renew the agent's serving certificate; retrying");
                    expires_at =
                        SystemTime::now() + RETRY_AFTER_FAILURE.mul_f64(1.0 / RENEW_AT_FRACTION);
                }
            }
        }
    }
}

fn build(
    ca: &AgentCa,
    lifetime: Duration,
) -> Result<(Arc<ServerConfig>, SystemTime), ServingCertError> {
    let (issued, key) = ca
        .issue_agent_cert(lifetime)
        .map_err(ServingCertError::Issue)?;
    let config = pillion_identity::tls::agent_server_config(&issued.chain_pem, &key)
        .map_err(ServingCertError::Tls)?;
    Ok((config, issued.expires_at))
}

/// Time until renewal: the remaining life minus the last `1 - RENEW_AT_FRACTION` of
/// the full lifetime, never negative.
fn renew_delay(lifetime: Duration, expires_at: SystemTime) -> Duration {
    let margin = lifetime.mul_f64(1.0 - RENEW_AT_FRACTION);
    expires_at
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        .saturating_sub(margin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_at_seventy_percent() {
        let life = Duration::from_secs(100);
        let d = renew_delay(life, SystemTime::now() + life);
        assert!(
            d <= Duration::from_secs(70) && d >= Duration::from_secs(69),
            "{d:?}"
        );
        assert_eq!(renew_delay(life, SystemTime::now()), Duration::ZERO);
    }
}
