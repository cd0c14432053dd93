//! The rustls configurations for mutual TLS between Pillion proxies.

use std::sync::Arc;

use pillion_api::defaults::{MESH_ALPN, MESH_ALPN_OPAQUE};
use rustls::client::Resumption;
use rustls::{ClientConfig, ServerConfig};

use super::error::TlsError;
use super::resolve::StoreResolver;
use super::resumption::{ClientSessions, ServerSessions};
use super::verify_client::MeshClientVerifier;
use super::verify_server::{Expected, Roots, SpiffeServerVerifier};
use crate::store::CertStore;

/// Inbound mesh TLS: TLS 1.3, ALPN `pillion/1.opaque` (preferred, when the client
/// offers it) or `pillion/1`, the store's newest leaf, and a required client
/// certificate that chains to the store's current bundle and names a SPIFFE id of
/// our trust domain. Build once; it follows the store's changes.
pub fn server_config(store: Arc<CertStore>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(store.provider().clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(MeshClientVerifier::new(store.clone())))
        .with_cert_resolver(Arc::new(StoreResolver(store.clone())));
    config.alpn_protocols = vec![MESH_ALPN_OPAQUE.to_vec(), MESH_ALPN.to_vec()];
    config.session_storage = Arc::new(ServerSessions::new(store));
    Ok(Arc::new(config))
}

/// Outbound mesh TLS: TLS 1.3, ALPN `pillion/1`, the store's newest leaf as client
/// certificate, and a server check by SPIFFE id instead of DNS name.
///
/// One config serves every connection: connect with the `ServerName` from
/// [`server_name_for`](super::server_name_for) of the identity the endpoint must
/// prove; the verifier decodes it and compares it with the server's URI SAN. SNI is
/// not sent, so the expected identity stays off the wire.
pub fn client_config(store: Arc<CertStore>) -> Result<Arc<ClientConfig>, TlsError> {
    client_config_offering(store, &[MESH_ALPN])
}

/// [`client_config`] for connections whose bytes the client side already knows to
/// be opaque: it offers `pillion/1.opaque` first, so the server side relays without
/// detecting, and `pillion/1` after it for servers that predate it.
pub fn opaque_client_config(store: Arc<CertStore>) -> Result<Arc<ClientConfig>, TlsError> {
    client_config_offering(store, &[MESH_ALPN_OPAQUE, MESH_ALPN])
}

fn client_config_offering(
    store: Arc<CertStore>,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, TlsError> {
    let algs = store.provider().signature_verification_algorithms;
    let verifier =
        SpiffeServerVerifier::new(Roots::Store(store.clone()), Expected::FromServerName, algs);
    let mut config = ClientConfig::builder_with_provider(store.provider().clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(StoreResolver(store.clone())));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.enable_sni = false;
    config.resumption = Resumption::store(Arc::new(ClientSessions::new(store)));
    Ok(Arc::new(config))
}
