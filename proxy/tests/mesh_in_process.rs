//! Two proxies with mesh TLS, in-process on loopback: mutual TLS between them,
//! inbound policy (strict, permissive, allow lists), outbound identity checks.
//! A fixed original destination stands in for the kernel's redirect record.

mod echo;
use echo::echo_server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pillion_api::view::View;
use pillion_identity::{Ca, CertStore, SpiffeId};
use pillion_proxy::drain::DrainReport;
use pillion_proxy::mesh::Mesh;
use pillion_proxy::mesh_metrics::{Denied, HandshakeFailure, MeshMetrics};
use pillion_proxy::metrics::Direction;
use pillion_proxy::tls::MeshTls;
use pillion_proxy::transport::orig_dst::StaticOrigDst;
use pillion_proxy::view::Views;
use pillion_proxy::{Proxy, ProxyConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const TD: &str = "cluster.local";

fn id(sa: &str) -> SpiffeId {
    SpiffeId::new(TD, "demo", sa).unwrap()
}

/// A running proxy with a mesh.
struct Meshed {
    outbound: SocketAddr,
    inbound: SocketAddr,
    views: Views,
    metrics: MeshMetrics,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<DrainReport>,
}

impl Meshed {
    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = self.task.await;
    }
}

fn store(ca: &Ca, sa: &str) -> Arc<CertStore> {
    let store = Arc::new(CertStore::new(id(sa)));
    let (issued, key) = ca.issue(&id(sa), Duration::from_secs(3600)).unwrap();
    store.set_leaf_pem(&issued.chain_pem, &key).unwrap();
    store.set_trust_bundle(&ca.trust_bundle_pem()).unwrap();
    store
}

async fn start(store: Arc<CertStore>, orig_dst: SocketAddr) -> Meshed {
    let views = Views::new();
    let mesh = Mesh {
        tls: MeshTls::new(store).unwrap(),
        views: views.clone(),
    };
    let proxy = Proxy::builder(ProxyConfig::loopback_ephemeral())
        .orig_dst(StaticOrigDst(orig_dst))
        .mesh(mesh)
        .bind()
        .await
        .unwrap();
    let outbound = proxy.outbound_addrs()[0];
    let inbound = proxy.inbound_addrs()[0];
    let metrics = proxy.mesh_metrics().clone();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(proxy.run(async move {
        let _ = rx.await;
    }));
    Meshed {
        outbound,
        inbound,
        views,
        metrics,
        stop: Some(tx),
        task,
    }
}

/// A view for `me` listing `server_addr` as a meshed endpoint proving
/// `server_identity`, with `inbound` as its inbound policy JSON.
fn view(
    version: u64,
    me: &str,
    server_addr: SocketAddr,
    server_identity: &str,
    inbound: &str,
) -> View {
    serde_json::from_str(&format!(
        r#"{{"version": {version}, "identity": "{}",
            "services": [{{"name": "echo", "namespace": "demo", "ports": [{{"port": {port}}}],
              "endpoints": [{{"address": "{ip}", "port": {port}, "identity": "{server_identity}"}}]}}],
            "inbound": {inbound}}}"#,
        id(me),
        ip = server_addr.ip(),
        port = server_addr.port(),
    ))
    .unwrap()
}

/// A (client proxy, server proxy) pair: the client's outbound goes to the server's
/// inbound, whose redirect record points at `app`.
async fn pair(ca: &Ca, app: SocketAddr) -> (Meshed, Meshed) {
    let b = start(store(ca, "server"), app).await;
    let a = start(store(ca, "client"), b.inbound).await;
    (a, b)
}

/// Sends `msg` and reads the whole answer until EOF (bounded in time).
async fn exchange(addr: SocketAddr, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let fut = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(msg).await?;
        s.shutdown().await?;
        let mut got = Vec::new();
        s.read_to_end(&mut got).await?;
        Ok(got)
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn mutual_tls_between_two_proxies_carries_the_client_identity() {
    let ca = Ca::generate(TD).unwrap();
    let app = echo_server().await;
    let (a, b) = pair(&ca, app).await;
    a.views
        .install(&view(1, "client", b.inbound, id("server").as_str(), "{}"));

    let data = vec![7u8; 256 * 1024];
    assert_eq!(exchange(a.outbound, &data).await.unwrap(), data);
    eventually("the inbound TLS count", || {
        b.metrics
            .tls_connections(Direction::Inbound, id("client").as_str())
            == 1
    })
    .await;
    assert_eq!(
        a.metrics
            .tls_connections(Direction::Outbound, id("server").as_str()),
        1
    );
    assert_eq!(a.metrics.passthroughs(Direction::Outbound), 0);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_server_that_proves_another_identity_is_refused() {
    let ca = Ca::generate(TD).unwrap();
    let app = echo_server().await;
    let (a, b) = pair(&ca, app).await;
    a.views
        .install(&view(1, "client", b.inbound, id("billing").as_str(), "{}"));
    let got = exchange(a.outbound, b"secret").await.unwrap_or_default();
    assert!(got.is_empty(), "data flowed to the wrong identity");
    eventually("the outbound failure count", || {
        a.metrics
            .handshake_failures(Direction::Outbound, HandshakeFailure::IdentityMismatch)
            == 1
    })
    .await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn strict_ports_refuse_plaintext_and_permissive_ports_take_it() {
    let ca = Ca::generate(TD).unwrap();
    let app = echo_server().await;
    let b = start(store(&ca, "server"), app).await;
    // No view yet: permissive.
    assert_eq!(exchange(b.inbound, b"plain").await.unwrap(), b"plain");
    assert_eq!(b.metrics.passthroughs(Direction::Inbound), 1);

    let strict = format!(r#"{{"ports": {{"{}": {{"mode": "strict"}}}}}}"#, app.port());
    b.views.install(&view(1, "server", app, "", &strict));
    let got = exchange(b.inbound, b"plain").await.unwrap_or_default();
    assert!(got.is_empty(), "plaintext got through a strict port");
    eventually("the plaintext denial", || {
        b.metrics.denials(Denied::Plaintext) == 1
    })
    .await;

    // The default mode strict, the port permissive: plaintext in again.
    let permissive = format!(
        r#"{{"default_mode": "strict", "ports": {{"{}": {{"mode": "permissive"}}}}}}"#,
        app.port()
    );
    b.views.install(&view(2, "server", app, "", &permissive));
    assert_eq!(exchange(b.inbound, b"again").await.unwrap(), b"again");
    b.stop().await;
}

#[tokio::test]
async fn allow_lists_admit_only_matching_identities() {
    let ca = Ca::generate(TD).unwrap();
    let app = echo_server().await;
    let (a, b) = pair(&ca, app).await;
    a.views
        .install(&view(1, "client", b.inbound, id("server").as_str(), "{}"));
    let allow = |pattern: &str| {
        format!(
            r#"{{"ports": {{"{}": {{"mode": "strict", "allow": ["{pattern}"]}}}}}}"#,
            app.port()
        )
    };
    b.views.install(&view(
        1,
        "server",
        app,
        "",
        &allow("spiffe://cluster.local/ns/other/*"),
    ));
    let got = exchange(a.outbound, b"hello").await.unwrap_or_default();
    assert!(got.is_empty(), "an identity outside the allow list got in");
    eventually("the identity denial", || {
        b.metrics.denials(Denied::Identity) == 1
    })
    .await;

    b.views.install(&view(
        2,
        "server",
        app,
        "",
        &allow("spiffe://cluster.local/ns/demo/*"),
    ));
    assert_eq!(exchange(a.outbound, b"hello").await.unwrap(), b"hello");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn half_close_works_through_mutual_tls() {
    let ca = Ca::generate(TD).unwrap();
    // Replies with the byte count only after the client's EOF.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut all = Vec::new();
                let _ = s.read_to_end(&mut all).await;
                let _ = s.write_all(all.len().to_string().as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    let (a, b) = pair(&ca, app).await;
    a.views
        .install(&view(1, "client", b.inbound, id("server").as_str(), "{}"));
    let got = exchange(a.outbound, &vec![1u8; 100_000]).await.unwrap();
    assert_eq!(got, b"100000");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn endpoints_without_identity_pass_through_in_plaintext() {
    let ca = Ca::generate(TD).unwrap();
    let app = echo_server().await;
    let a = start(store(&ca, "client"), app).await;
    // Unknown destination, then one listed without an identity.
    assert_eq!(exchange(a.outbound, b"one").await.unwrap(), b"one");
    let plain: View = serde_json::from_str(&format!(
        r#"{{"version": 1, "identity": "{}", "services": [{{"name": "x", "namespace": "demo",
            "endpoints": [{{"address": "{}", "port": {}}}]}}]}}"#,
        id("client"),
        app.ip(),
        app.port()
    ))
    .unwrap();
    a.views.install(&plain);
    assert_eq!(exchange(a.outbound, b"two").await.unwrap(), b"two");
    assert_eq!(a.metrics.passthroughs(Direction::Outbound), 2);
    a.stop().await;
}

/// New connections one after another (resumed TLS sessions after the first),
/// each sending one byte that no protocol detection waits on.
#[tokio::test]
async fn many_short_connections_in_a_row() {
    let ca = Ca::generate(TD).unwrap();
    let app = echo_server().await;
    let (a, b) = pair(&ca, app).await;
    a.views
        .install(&view(1, "client", b.inbound, id("server").as_str(), "{}"));
    for i in 0..100 {
        let fut = async {
            let mut s = TcpStream::connect(a.outbound).await?;
            s.write_all(b"\0").await?;
            let mut got = [0u8; 1];
            s.read_exact(&mut got).await?;
            Ok::<_, std::io::Error>(())
        };
        tokio::time::timeout(Duration::from_secs(5), fut)
            .await
            .unwrap_or_else(|_| panic!("connection {i} hung"))
            .unwrap();
    }
    a.stop().await;
    b.stop().await;
}
