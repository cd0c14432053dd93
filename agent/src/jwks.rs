//! The key sets the agent fetches for token providers that name a `jwks_uri`, so
//! proxies never reach an identity provider themselves.
//!
//! A URI is fetched first when a view that needs it is built (the view goes out
//! without keys, so its port refuses every request until the fetch lands: fail
//! closed), then
//! again every [`pillion_api::jwt::JWKS_REFRESH`] (`--jwks-refresh`). A fetch that fails, times out, answers anything but
//! 200, or brings a set [`parse_jwks`] refuses keeps the last good set in force and
//! counts in `pillion_agent_jwks_fetch_failures_total`. A set that changed wakes
//! every watch stream, whose proxy gets the new keys if its view uses them.
//!
//! Fetches go over HTTPS only, verified against the system's roots (and
//! `SSL_CERT_FILE` when set), at most [`MAX_JWKS_BYTES`] per answer.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use pillion_api::jwt::{parse_jwks, MAX_JWKS_BYTES};
use pillion_api::view::View;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

/// Longest a fetch may take, connection and answer together.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a fetch brought no usable key set.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No HTTPS client could be built (no usable root certificates).
    #[error("no TLS roots to verify the key set's server: {0}")]
    Roots(String),
    /// The request failed or timed out.
    #[error("fetching {uri}: {reason}")]
    Request {
        /// What was fetched.
        uri: String,
        /// Why it failed.
        reason: String,
    },
    /// The answer was not 200.
    #[error("fetching {uri}: answered {status}")]
    Status {
        /// What was fetched.
        uri: String,
        /// The answer's status.
        status: http::StatusCode,
    },
    /// The answer was not a usable key set.
    #[error("the key set at {uri} is unusable: {reason}")]
    Unusable {
        /// What was fetched.
        uri: String,
        /// Why.
        reason: String,
    },
}

/// The fetched key sets, by URI, and the URIs views have asked for.
#[derive(Debug)]
pub struct JwksStore {
    sets: ArcSwap<BTreeMap<String, Arc<str>>>,
    wanted: Mutex<BTreeSet<String>>,
    /// Wakes the fetch loop for a URI seen the first time.
    new_uri: Notify,
    /// Grows by one whenever a set changes.
    changes: watch::Sender<u64>,
}

impl Default for JwksStore {
    fn default() -> Self {
        JwksStore {
            sets: ArcSwap::default(),
            wanted: Mutex::default(),
            new_uri: Notify::new(),
            changes: watch::Sender::new(0),
        }
    }
}

impl JwksStore {
    /// Fills every `jwks_uri` provider of `view` with its fetched key set; a URI not
    /// fetched yet is asked for and stays empty (its tokens are refused meanwhile).
    pub fn fill(&self, view: &mut View) {
        let sets = self.sets.load();
        let gateway_hosts = view.gateway.iter_mut().flat_map(|g| g.hosts.iter_mut());
        let providers = (view.inbound.ports.values_mut())
            .filter_map(|p| p.jwt.as_mut())
            .chain(gateway_hosts.filter_map(|h| h.jwt.as_mut()))
            .flat_map(|j| j.providers.iter_mut());
        for provider in providers {
            let Some(uri) = &provider.jwks_uri else {
                continue;
            };
            match sets.get(uri) {
                Some(set) => provider.jwks = set.to_string(),
                None => self.want(uri),
            }
        }
    }

    /// Changes to any key set; a watch stream re-renders its view on each.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn want(&self, uri: &str) {
        let mut wanted = self.wanted.lock().unwrap_or_else(PoisonError::into_inner);
        if !wanted.contains(uri) {
            wanted.insert(uri.to_string());
            self.new_uri.notify_one();
        }
    }

    /// Keeps `set` for `uri`; true when it differs from the one kept before.
    fn store(&self, uri: &str, set: String) -> bool {
        let current = self.sets.load();
        if current.get(uri).is_some_and(|old| **old == *set) {
            return false;
        }
        let mut next = BTreeMap::clone(&current);
        next.insert(uri.to_string(), Arc::from(set));
        self.sets.store(Arc::new(next));
        self.changes.send_modify(|v| *v += 1);
        true
    }

    /// Fetches every wanted URI now and every `interval` (and at once when a new one
    /// is wanted), until `shutdown`.
    pub async fn keep_fetched(
        self: Arc<Self>,
        roots: Option<rustls::RootCertStore>,
        interval: Duration,
        failures: prometheus_client::metrics::counter::Counter,
        shutdown: CancellationToken,
    ) {
        let client = match https_client(roots) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot fetch key sets; providers with a jwks_uri refuse every token");
                return;
            }
        };
        loop {
            let wanted: Vec<String> = self
                .wanted
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .cloned()
                .collect();
            for uri in wanted {
                match fetch(&client, &uri).await {
                    Ok(set) => {
                        if self.store(&uri, set) {
                            tracing::info!(%uri, "key set fetched; views that use it are pushed");
                        }
                    }
                    Err(e) => {
                        failures.inc();
                        tracing::warn!(%uri, error = %e, "key set fetch failed; the last good set stays in force");
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = self.new_uri.notified() => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }
}

/// The CA certificates of a PEM file, for `--jwks-ca-file`.
pub fn roots_from_pem(path: &std::path::Path) -> Result<rustls::RootCertStore, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: a certificate cannot be a root: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "{} holds no PEM certificate; give the CA certificates of your identity provider's HTTPS server",
            path.display()
        ));
    }
    Ok(roots)
}

type HttpsClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Empty<Bytes>,
>;

/// An HTTPS-only client verifying against `roots`, or the system's roots (and
/// `SSL_CERT_FILE`) when `None`.
fn https_client(roots: Option<rustls::RootCertStore>) -> Result<HttpsClient, FetchError> {
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match roots {
        None => builder
            .with_native_roots()
            .map_err(|e| FetchError::Roots(e.to_string()))?,
        Some(roots) => {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| FetchError::Roots(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            builder.with_tls_config(config)
        }
    };
    let connector = builder.https_only().enable_http1().build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// One fetch: GET, 200, at most [`MAX_JWKS_BYTES`], a key set the proxy can use.
async fn fetch(client: &HttpsClient, uri: &str) -> Result<String, FetchError> {
    let request_failed = |reason: String| FetchError::Request {
        uri: uri.to_string(),
        reason,
    };
    let parsed: http::Uri = uri
        .parse()
        .map_err(|e: http::uri::InvalidUri| request_failed(e.to_string()))?;
    let work = async {
        let response = client
            .get(parsed)
            .await
            .map_err(|e| request_failed(pillion_api::error::chain(&e)))?;
        if response.status() != http::StatusCode::OK {
            return Err(FetchError::Status {
                uri: uri.to_string(),
                status: response.status(),
            });
        }
        let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| request_failed(e.to_string()))?
            .to_bytes();
        let text = String::from_utf8(body.to_vec()).map_err(|_| FetchError::Unusable {
            uri: uri.to_string(),
            reason: "not UTF-8".into(),
        })?;
        parse_jwks(&text).map_err(|e| FetchError::Unusable {
            uri: uri.to_string(),
            reason: e.to_string(),
        })?;
        Ok(text)
    };
    tokio::time::timeout(FETCH_TIMEOUT, work)
        .await
        .map_err(|_| request_failed(format!("no answer within {FETCH_TIMEOUT:?}")))?
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use jsonwebtoken::Algorithm;
    use pillion_api::jwt::{JwtPolicy, JwtProvider, DEFAULT_CLOCK_SKEW};
    use pillion_api::view::PortPolicy;
    use pillion_testkit::jwt::{Issuer, JwksServer, JwksTls};
    use pillion_testkit::wait::eventually;

    use super::*;

    fn view_with(uri: &str) -> View {
        let mut view: View = serde_json::from_str(
            r#"{"version": 1, "identity": "spiffe://cluster.local/ns/a/sa/b"}"#,
        )
        .unwrap();
        let provider = JwtProvider {
            issuer: "https://issuer.test".into(),
            audiences: vec![],
            jwks: String::new(),
            jwks_uri: Some(uri.to_string()),
            from: vec![],
            clock_skew: DEFAULT_CLOCK_SKEW,
            claim_headers: Default::default(),
            forward_token: true,
        };
        view.inbound.ports.insert(
            8080,
            PortPolicy {
                jwt: Some(JwtPolicy {
                    providers: vec![provider],
                    introspection: None,
                    required: true,
                }),
                ..PortPolicy::default()
            },
        );
        view
    }

    fn jwks_of(view: &View) -> &str {
        &view.inbound.ports[&8080].jwt.as_ref().unwrap().providers[0].jwks
    }

    #[test]
    fn views_get_what_was_fetched_and_ask_for_the_rest() {
        let store = JwksStore::default();
        let mut changes = store.subscribe();
        let mut view = view_with("https://a.test/keys");
        store.fill(&mut view);
        assert_eq!(
            jwks_of(&view),
            "",
            "not fetched yet: no keys, tokens refused"
        );
        assert!(store.wanted.lock().unwrap().contains("https://a.test/keys"));
        assert!(store.store("https://a.test/keys", "SET".into()));
        assert!(changes.has_changed().unwrap());
        changes.borrow_and_update();
        assert!(
            !store.store("https://a.test/keys", "SET".into()),
            "unchanged"
        );
        assert!(!changes.has_changed().unwrap());
        store.fill(&mut view);
        assert_eq!(jwks_of(&view), "SET");
    }

    /// A real HTTPS server on loopback: the first set, a failing server (the set
    /// stays), an unusable set (it stays), then a rotated set.
    #[tokio::test]
    async fn sets_are_fetched_refreshed_and_kept_through_failures() {
        let old = Issuer::new("https://issuer.test", "old", &[Algorithm::ES256]).unwrap();
        let new = Issuer::new("https://issuer.test", "new", &[Algorithm::EdDSA]).unwrap();
        let tls = JwksTls::new(&["localhost"]).unwrap();
        let running = JwksServer::start(SocketAddr::from(([127, 0, 0, 1], 0)), &tls, old.jwks())
            .await
            .unwrap();
        let server = &running.control;
        let dir = std::env::temp_dir().join(format!("pillion-jwks-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, &tls.ca_pem).unwrap();
        let roots = roots_from_pem(&ca).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();

        let store = Arc::new(JwksStore::default());
        let failures = prometheus_client::metrics::counter::Counter::<u64>::default();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(Arc::clone(&store).keep_fetched(
            Some(roots),
            Duration::from_millis(100),
            failures.clone(),
            shutdown.clone(),
        ));
        let uri = server.uri("localhost");
        let mut view = view_with(&uri);
        store.fill(&mut view);
        let current = |store: &JwksStore| {
            let mut v = view_with(&uri);
            store.fill(&mut v);
            jwks_of(&v).to_string()
        };
        eventually("the first set", Duration::from_secs(5), || {
            current(&store) == old.jwks()
        })
        .await;

        server.answer(503, "down".into());
        let seen = failures.get();
        eventually("failed fetches", Duration::from_secs(5), || {
            failures.get() >= seen + 2
        })
        .await;
        assert_eq!(
            current(&store),
            old.jwks(),
            "a failing server keeps the last good set"
        );
        server.answer(200, r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#.into());
        let seen = failures.get();
        eventually("refused sets", Duration::from_secs(5), || {
            failures.get() >= seen + 2
        })
        .await;
        assert_eq!(
            current(&store),
            old.jwks(),
            "an unusable set keeps the last good set"
        );

        server.answer(200, new.jwks());
        eventually("the rotated set", Duration::from_secs(5), || {
            current(&store) == new.jwks()
        })
        .await;
        assert!(server.fetched() >= 5);
        shutdown.cancel();
        task.await.unwrap();
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let path = std::env::temp_dir().join(format!("pillion-jwks-empty-{}", std::process::id()));
        std::fs::write(&path, "not pem").unwrap();
        let e = roots_from_pem(&path).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(e.contains("holds no PEM certificate"), "{e}");
    }
}
