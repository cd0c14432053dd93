//! TLS for the agent's HTTPS API (`/v1/certificates`, `/v1/watch`): server-only
//! authentication, the agent proving its SPIFFE id to proxies.

use std::sync::Arc;

use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use super::error::TlsError;
use super::resumption::ClientSessions;
use super::verify_server::{Expected, Roots, SpiffeServerVerifier};
use crate::pem_blocks::{certs_from_pem, private_key_from_pem};
use crate::spiffe::SpiffeId;
use crate::store::CertStore;

/// ALPN ids the agent offers: HTTP/2 first, HTTP/1.1 for clients such as the
/// Kubernetes API server calling the admission webhook.
pub const AGENT_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The agent's server side: TLS 1.3, ALPN h2 (then http/1.1), the given chain and
/// key (PKCS#8, SEC1 or PKCS#1 PEM), no client certificate asked for.
pub fn agent_server_config(chain_pem: &str, key_pem: &str) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = certs_from_pem(chain_pem, "agent certificate chain")?;
    let key = private_key_from_pem(key_pem, "agent private key")?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = AGENT_ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A proxy's client side toward the agent: TLS 1.3, ALPN h2, the agent's chain
/// verified against `trust_anchor_pem` and its URI SAN required to be `agent_id`
/// (the DNS name dialled plays no part). No client certificate is sent.
pub fn agent_client_config(
    trust_anchor_pem: &str,
    agent_id: &SpiffeId,
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    for (index, cert) in certs_from_pem(trust_anchor_pem, "agent trust anchor")?
        .into_iter()
        .enumerate()
    {
        roots.add(cert).map_err(|e| TlsError::BadAnchor {
            index,
            reason: e.to_string(),
        })?;
    }
    agent_client(
        Roots::Fixed(Arc::new(roots)),
        agent_id,
        Resumption::default(),
    )
}

/// [`agent_client_config`] whose trust follows `store`: the agent is verified
/// against the store's current bundle on every handshake, as mesh peers are, so a
/// proxy reaches an agent under a new root once its bundle carries that root; its
/// sessions with the agent are forgotten when the bundle changes.
pub fn agent_client_config_following(
    store: Arc<CertStore>,
    agent_id: &SpiffeId,
) -> Result<Arc<ClientConfig>, TlsError> {
    let sessions = Resumption::store(Arc::new(ClientSessions::new(store.clone())));
    agent_client(Roots::Store(store), agent_id, sessions)
}

fn agent_client(
    roots: Roots,
    agent_id: &SpiffeId,
    resumption: Resumption,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let verifier = SpiffeServerVerifier::new(
        roots,
        Expected::Fixed(agent_id.clone()),
        provider.signature_verification_algorithms,
    );
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![AGENT_ALPN[0].to_vec()];
    config.resumption = resumption;
    Ok(Arc::new(config))
}
