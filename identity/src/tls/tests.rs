//! Real TLS handshakes over loopback sockets between configs built by this module.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::ServerName;
use rustls::{CertificateError, ClientConfig, HandshakeKind, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_rustls::{client, TlsAcceptor, TlsConnector};

use super::*;
use crate::ca::{Ca, Validity};
use crate::csr;
use crate::spiffe::SpiffeId;
use crate::store::CertStore;

const HOUR: Duration = Duration::from_secs(3600);
const LIMIT: Duration = Duration::from_secs(10);

fn id(s: &str) -> SpiffeId {
    s.parse().unwrap()
}

fn server_id() -> SpiffeId {
    id("spiffe://cluster.local/ns/demo/sa/server")
}

fn client_id() -> SpiffeId {
    id("spiffe://cluster.local/ns/demo/sa/client")
}

/// A store holding no leaf yet that trusts `ca`'s bundle.
fn trusting(ca: &Ca, me: &SpiffeId) -> Arc<CertStore> {
    let store = Arc::new(CertStore::new(me.clone()));
    store.set_trust_bundle(&ca.trust_bundle_pem()).unwrap();
    store
}

/// A proxy's store, filled the way a proxy does it: own key, CSR, signed chain.
fn store_from(ca: &Ca, me: &SpiffeId) -> Arc<CertStore> {
    let store = trusting(ca, me);
    renew(&store, ca);
    store
}

fn renew(store: &CertStore, ca: &Ca) {
    let (key, csr_pem) = csr::generate(store.local_id()).unwrap();
    let issued = ca.sign_csr(&csr_pem, store.local_id(), HOUR).unwrap();
    store.set_leaf(&issued.chain_pem, &key).unwrap();
}

/// What the server saw of one connection.
type Seen = Result<Option<SpiffeId>, io::Error>;

/// An echo server over mesh TLS on loopback; reports each handshake.
struct Server {
    addr: SocketAddr,
    seen: mpsc::UnboundedReceiver<Seen>,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    async fn start(config: Arc<ServerConfig>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, seen) = mpsc::unbounded_channel();
        let acceptor = TlsAcceptor::from(config);
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let mut tls = match acceptor.accept(tcp).await {
                        Ok(tls) => tls,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = tx.send(Ok(peer_identity(tls.get_ref().1)));
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = tls.read(&mut buf).await {
                        if n == 0 || tls.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Server { addr, seen, task }
    }

    async fn next(&mut self) -> Seen {
        timeout(LIMIT, self.seen.recv()).await.unwrap().unwrap()
    }
}

async fn dial(
    config: Arc<ClientConfig>,
    addr: SocketAddr,
    name: ServerName<'static>,
) -> io::Result<client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    timeout(LIMIT, TlsConnector::from(config).connect(name, tcp))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "handshake timed out"))?
}

/// One round trip through the echo server; fails if the server dropped us.
async fn ping(tls: &mut client::TlsStream<TcpStream>) -> io::Result<()> {
    tls.write_all(b"ping").await?;
    let mut buf = [0u8; 4];
    timeout(LIMIT, tls.read_exact(&mut buf))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "echo timed out"))??;
    assert_eq!(&buf, b"ping");
    Ok(())
}

/// Dials and pings once: the error of whichever step failed. A server refusing the
/// client's certificate may let the client finish its TLS 1.3 handshake first.
async fn dial_and_ping(
    config: Arc<ClientConfig>,
    addr: SocketAddr,
    name: ServerName<'static>,
) -> io::Result<()> {
    let mut tls = dial(config, addr, name).await?;
    ping(&mut tls).await
}

/// A mesh server from `server_store` refusing a mesh client from `client_store`: the
/// client must be cut off; what the server saw of the refused handshake.
async fn refused_client(server_store: Arc<CertStore>, client_store: Arc<CertStore>) -> io::Error {
    let mut server = Server::start(server_config(server_store).unwrap()).await;
    let name = server_name_for(&server_id()).unwrap();
    let outcome = dial_and_ping(client_config(client_store).unwrap(), server.addr, name).await;
    assert!(outcome.is_err(), "the client must be cut off");
    server.next().await.unwrap_err()
}

fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

fn peer_rejected(e: &io::Error) -> Option<&PeerRejected> {
    match rustls_error(e)? {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
            other.0.downcast_ref::<PeerRejected>()
        }
        _ => None,
    }
}

fn peer_serial(tls: &client::TlsStream<TcpStream>) -> String {
    let leaf = &tls.get_ref().1.peer_certificates().unwrap()[0];
    crate::cert_info::LeafInfo::parse(leaf).unwrap().serial_hex
}

#[tokio::test]
async fn mutual_tls_both_sides_see_each_others_id() {
    let ca = Ca::generate("cluster.local").unwrap();
    let server_store = store_from(&ca, &server_id());
    let client_store = store_from(&ca, &client_id());
    let mut server = Server::start(server_config(server_store).unwrap()).await;
    let client_cfg = client_config(client_store).unwrap();

    let name = server_name_for(&server_id()).unwrap();
    let mut tls = dial(client_cfg, server.addr, name).await.unwrap();
    ping(&mut tls).await.unwrap();
    let conn = tls.get_ref().1;
    assert_eq!(peer_identity(conn), Some(server_id()));
    assert_eq!(conn.alpn_protocol(), Some(pillion_api::defaults::MESH_ALPN));
    assert_eq!(
        conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(server.next().await.unwrap(), Some(client_id()));
}

#[tokio::test]
async fn an_opaque_client_says_so_and_still_reaches_an_older_server() {
    use pillion_api::defaults::{MESH_ALPN, MESH_ALPN_OPAQUE};
    let ca = Ca::generate("cluster.local").unwrap();
    let server_store = store_from(&ca, &server_id());
    let client_store = store_from(&ca, &client_id());
    let name = server_name_for(&server_id()).unwrap();
    let opaque = opaque_client_config(client_store.clone()).unwrap();

    let server = Server::start(server_config(server_store.clone()).unwrap()).await;
    let tls = dial(Arc::clone(&opaque), server.addr, name.clone())
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(MESH_ALPN_OPAQUE));
    // A detecting client is never taken for an opaque one.
    let detecting = client_config(client_store).unwrap();
    let tls = dial(detecting, server.addr, name.clone()).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(MESH_ALPN));

    // A server that only knows `pillion/1` picks it (and detects, as it always did).
    let mut older = (*server_config(server_store).unwrap()).clone();
    older.alpn_protocols = vec![MESH_ALPN.to_vec()];
    let older = Server::start(Arc::new(older)).await;
    let mut tls = dial(opaque, older.addr, name).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(MESH_ALPN));
    ping(&mut tls).await.unwrap();
}

#[tokio::test]
async fn client_cert_from_another_ca_is_refused() {
    let ca = Ca::generate("cluster.local").unwrap();
    let rogue = Ca::generate("cluster.local").unwrap();
    let server_store = store_from(&ca, &server_id());
    // The client trusts the real CA but holds a leaf from another one.
    let client_store = trusting(&ca, &client_id());
    renew(&client_store, &rogue);

    let err = refused_client(server_store, client_store).await;
    assert!(
        matches!(
            rustls_error(&err),
            Some(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer
            ))
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn expired_client_cert_is_refused() {
    let ca = Ca::generate("cluster.local").unwrap();
    let server_store = store_from(&ca, &server_id());
    let client_store = trusting(&ca, &client_id());
    let now = SystemTime::now();
    let expired = Validity {
        not_before: now - 2 * HOUR,
        not_after: now - HOUR,
    };
    let (issued, key_pem) = ca.issue_with_validity(&client_id(), expired).unwrap();
    client_store
        .set_leaf_pem(&issued.chain_pem, &key_pem)
        .unwrap();

    let err = refused_client(server_store, client_store).await;
    assert!(
        matches!(
            rustls_error(&err),
            Some(rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            ))
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let ca = Ca::generate("cluster.local").unwrap();
    let server_store = store_from(&ca, &server_id());
    let client_store = trusting(&ca, &client_id());
    refused_client(server_store, client_store).await;
}

#[tokio::test]
async fn server_with_another_identity_is_refused_by_the_client() {
    let ca = Ca::generate("cluster.local").unwrap();
    let server_store = store_from(&ca, &server_id());
    let client_store = store_from(&ca, &client_id());
    let server = Server::start(server_config(server_store).unwrap()).await;
    let wanted = id("spiffe://cluster.local/ns/demo/sa/payments");
    let name = server_name_for(&wanted).unwrap();
    let err = dial(
        client_config(client_store.clone()).unwrap(),
        server.addr,
        name,
    )
    .await
    .unwrap_err();
    match peer_rejected(&err) {
        Some(PeerRejected::WrongIdentity { expected, found }) => {
            assert_eq!(expected, &wanted);
            assert_eq!(found, &server_id());
        }
        other => panic!("expected WrongIdentity, got {other:?} from {err:?}"),
    }
    // A plain DNS name is not a mesh identity.
    let dns = ServerName::try_from("server.demo.svc.cluster.local").unwrap();
    let err = dial(client_config(client_store).unwrap(), server.addr, dns)
        .await
        .unwrap_err();
    assert!(matches!(
        peer_rejected(&err),
        Some(PeerRejected::BadServerName(_))
    ));
}

#[tokio::test]
async fn rotated_leaf_keeps_open_connections_and_serves_new_ones() {
    let ca = Ca::generate("cluster.local").unwrap();
    let server_store = store_from(&ca, &server_id());
    let client_store = store_from(&ca, &client_id());
    let server = Server::start(server_config(server_store.clone()).unwrap()).await;
    let client_cfg = client_config(client_store).unwrap();
    let name = server_name_for(&server_id()).unwrap();

    let old_serial = server_store.current_serial().unwrap();
    let mut first = dial(client_cfg.clone(), server.addr, name.clone())
        .await
        .unwrap();
    ping(&mut first).await.unwrap();
    assert_eq!(peer_serial(&first), old_serial);

    // Unchanged store: the next connection resumes the session.
    let mut second = dial(client_cfg.clone(), server.addr, name.clone())
        .await
        .unwrap();
    ping(&mut second).await.unwrap();
    assert_eq!(
        second.get_ref().1.handshake_kind(),
        Some(HandshakeKind::Resumed)
    );

    renew(&server_store, &ca);
    let new_serial = server_store.current_serial().unwrap();
    assert_ne!(new_serial, old_serial);

    ping(&mut first).await.unwrap();
    let mut third = dial(client_cfg, server.addr, name).await.unwrap();
    ping(&mut third).await.unwrap();
    assert_eq!(
        third.get_ref().1.handshake_kind(),
        Some(HandshakeKind::Full)
    );
    assert_eq!(peer_serial(&third), new_serial);
    ping(&mut first).await.unwrap();
}

#[tokio::test]
async fn new_trust_bundle_applies_to_new_handshakes() {
    let old_ca = Ca::generate("cluster.local").unwrap();
    let new_ca = Ca::generate("cluster.local").unwrap();
    let server_store = store_from(&old_ca, &server_id());
    let client_store = store_from(&old_ca, &client_id());
    let mut server = Server::start(server_config(server_store.clone()).unwrap()).await;
    let client_cfg = client_config(client_store.clone()).unwrap();
    let name = server_name_for(&server_id()).unwrap();

    let mut open = dial(client_cfg.clone(), server.addr, name.clone())
        .await
        .unwrap();
    ping(&mut open).await.unwrap();
    assert!(server.next().await.is_ok());

    // The server now trusts only the new CA: the client's old-CA leaf is refused,
    // even though a session to resume exists.
    server_store
        .set_trust_bundle(&new_ca.trust_bundle_pem())
        .unwrap();
    let outcome = dial_and_ping(client_cfg.clone(), server.addr, name.clone()).await;
    assert!(outcome.is_err());
    assert!(server.next().await.is_err());
    ping(&mut open).await.unwrap();

    // Both sides move to the new CA: handshakes work again.
    renew(&client_store, &new_ca);
    renew(&server_store, &new_ca);
    client_store
        .set_trust_bundle(&new_ca.trust_bundle_pem())
        .unwrap();
    let mut fresh = dial(client_cfg.clone(), server.addr, name.clone())
        .await
        .unwrap();
    ping(&mut fresh).await.unwrap();
    assert_eq!(server.next().await.unwrap(), Some(client_id()));

    // The client trusting only the old CA refuses the new-CA server.
    client_store
        .set_trust_bundle(&old_ca.trust_bundle_pem())
        .unwrap();
    let err = dial(client_cfg, server.addr, name).await.unwrap_err();
    assert!(matches!(
        rustls_error(&err),
        Some(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer
        ))
    ));
}

#[tokio::test]
async fn intermediate_ca_chains_handshake_to_the_root() {
    let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut root_params = CertificateParams::default();
    root_params
        .distinguished_name
        .push(DnType::CommonName, "offline root");
    root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let root = root_params.self_signed(&root_key).unwrap();
    let int_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut int_params = CertificateParams::default();
    int_params
        .distinguished_name
        .push(DnType::CommonName, "agent intermediate");
    int_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    int_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let int = int_params.signed_by(&int_key, &root, &root_key).unwrap();
    let ca = Ca::from_pem_with_chain(&int.pem(), &int_key.serialize_pem(), &root.pem()).unwrap();
    assert_eq!(ca.trust_bundle_pem(), root.pem());

    let server_store = store_from(&ca, &server_id());
    let client_store = store_from(&ca, &client_id());
    let mut server = Server::start(server_config(server_store).unwrap()).await;
    let name = server_name_for(&server_id()).unwrap();
    let mut tls = dial(client_config(client_store).unwrap(), server.addr, name)
        .await
        .unwrap();
    ping(&mut tls).await.unwrap();
    assert_eq!(tls.get_ref().1.peer_certificates().unwrap().len(), 2);
    assert_eq!(server.next().await.unwrap(), Some(client_id()));
}

#[tokio::test]
async fn client_from_another_trust_domain_is_refused() {
    // A CA not bound to a trust domain, trusted by the server, vouching for a
    // foreign identity.
    let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let root = params.self_signed(&root_key).unwrap();
    let ca = Ca::from_pem(&root.pem(), &root_key.serialize_pem()).unwrap();
    let server_store = store_from(&ca, &server_id());
    let foreign = id("spiffe://other.local/ns/demo/sa/client");
    let client_store = store_from(&ca, &foreign);

    let err = refused_client(server_store, client_store).await;
    assert!(matches!(
        peer_rejected(&err),
        Some(PeerRejected::ForeignTrustDomain { .. })
    ));
}

#[tokio::test]
async fn agent_api_tls_checks_the_agent_identity() {
    let ca = Ca::generate("cluster.local").unwrap();
    let agent_id = id("spiffe://cluster.local/ns/pillion/sa/agent");
    let (issued, key_pem) = ca.issue(&agent_id, HOUR).unwrap();
    let server_cfg = agent_server_config(&issued.chain_pem, &key_pem).unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(server_cfg);
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let mut buf = [0u8; 4];
                    if tls.read_exact(&mut buf).await.is_ok() {
                        let _ = tls.write_all(&buf).await;
                    }
                }
            });
        }
    });

    let dns = ServerName::try_from("pillion-agent.pillion.svc").unwrap();
    let good = agent_client_config(&ca.trust_bundle_pem(), &agent_id).unwrap();
    let mut tls = dial(good, addr, dns.clone()).await.unwrap();
    ping(&mut tls).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(peer_identity(tls.get_ref().1), Some(agent_id.clone()));

    let impostor = id("spiffe://cluster.local/ns/pillion/sa/not-agent");
    let wrong_id = agent_client_config(&ca.trust_bundle_pem(), &impostor).unwrap();
    let err = dial(wrong_id, addr, dns.clone()).await.unwrap_err();
    assert!(matches!(
        peer_rejected(&err),
        Some(PeerRejected::WrongIdentity { .. })
    ));

    let other_ca = Ca::generate("cluster.local").unwrap();
    let wrong_anchor = agent_client_config(&other_ca.trust_bundle_pem(), &agent_id).unwrap();
    assert!(dial(wrong_anchor, addr, dns.clone()).await.is_err());

    // Following a store: refused while its bundle lacks the agent's root, accepted
    // once the bundle gains it, with no new config.
    let store = Arc::new(CertStore::new(client_id()));
    store
        .set_trust_bundle(&other_ca.trust_bundle_pem())
        .unwrap();
    let following = agent_client_config_following(store.clone(), &agent_id).unwrap();
    assert!(dial(following.clone(), addr, dns.clone()).await.is_err());
    let both = format!("{}{}", other_ca.trust_bundle_pem(), ca.trust_bundle_pem());
    store.set_trust_bundle(&both).unwrap();
    let mut tls = dial(following, addr, dns).await.unwrap();
    ping(&mut tls).await.unwrap();
    task.abort();
}

#[test]
fn configs_refuse_bad_input() {
    assert!(matches!(
        agent_server_config("nope", "nope"),
        Err(TlsError::Pem(_))
    ));
    let agent_id = id("spiffe://cluster.local/ns/pillion/sa/agent");
    assert!(agent_client_config("", &agent_id).is_err());
}
