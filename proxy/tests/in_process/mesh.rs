//! Two proxies with mesh TLS, in-process on loopback: mutual TLS between them,
//! inbound policy (strict, permissive, allow lists), outbound identity checks.
//! A fixed original destination stands in for the kernel's redirect record.

use std::net::SocketAddr;
use std::time::Duration;

use pillion_api::view::View;
use pillion_identity::SpiffeId;
use pillion_proxy::{Denied, Direction, HandshakeFailure};
use pillion_testkit::pki::Pki;
use pillion_testkit::tcp::{echo_server, exchange};
use pillion_testkit::wait::eventually;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{meshed as start, Running as Meshed};

fn id(sa: &str) -> SpiffeId {
    pillion_testkit::pki::id("demo", sa)
}

fn store(pki: &Pki, sa: &str) -> std::sync::Arc<pillion_identity::CertStore> {
    pki.store(id(sa).as_str())
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
async fn pair(ca: &Pki, app: SocketAddr) -> (Meshed, Meshed) {
    let b = start(store(ca, "server"), app).await;
    let a = start(store(ca, "client"), b.inbound).await;
    (a, b)
}

#[tokio::test]
async fn mutual_tls_between_two_proxies_carries_the_client_identity() {
    let ca = Pki::new();
    let app = echo_server().await;
    let (a, b) = pair(&ca, app).await;
    a.install(view(1, "client", b.inbound, id("server").as_str(), "{}"))
        .await;

    let data = vec![7u8; 256 * 1024];
    assert_eq!(exchange(a.outbound, &data).await.unwrap(), data);
    eventually("the inbound TLS count", Duration::from_secs(5), || {
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
    let ca = Pki::new();
    let app = echo_server().await;
    let (a, b) = pair(&ca, app).await;
    a.install(view(1, "client", b.inbound, id("billing").as_str(), "{}"))
        .await;
    let got = exchange(a.outbound, b"secret").await.unwrap_or_default();
    assert!(got.is_empty(), "data flowed to the wrong identity");
    eventually("the outbound failure count", Duration::from_secs(5), || {
        a.metrics
            .handshake_failures(Direction::Outbound, HandshakeFailure::IdentityMismatch)
            == 1
    })
    .await;
    a.stop().await;
    b.stop().await;
}

/// The same refusal on the HTTP path (pooled mesh connections): 502 for the client,
/// and counted as an identity mismatch like an opaque connection's.
#[tokio::test]
async fn an_http_request_to_a_server_proving_another_identity_is_refused() {
    let ca = Pki::new();
    let app = echo_server().await;
    let (a, b) = pair(&ca, app).await;
    a.install(view(1, "client", b.inbound, id("billing").as_str(), "{}"))
        .await;
    let mut c = TcpStream::connect(a.outbound).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    let _ = c.read_to_string(&mut answer).await;
    assert!(answer.starts_with("HTTP/1.1 502 "), "{answer}");
    eventually("the outbound failure count", Duration::from_secs(5), || {
        a.metrics
            .handshake_failures(Direction::Outbound, HandshakeFailure::IdentityMismatch)
            >= 1
    })
    .await;
    assert_eq!(
        a.metrics
            .tls_connections(Direction::Outbound, id("billing").as_str()),
        0
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn strict_ports_refuse_plaintext_and_permissive_ports_take_it() {
    let ca = Pki::new();
    let app = echo_server().await;
    let b = start(store(&ca, "server"), app).await;
    // No view yet: permissive.
    assert_eq!(exchange(b.inbound, b"plain").await.unwrap(), b"plain");
    assert_eq!(b.metrics.passthroughs(Direction::Inbound), 1);

    let strict = format!(r#"{{"ports": {{"{}": {{"mode": "strict"}}}}}}"#, app.port());
    b.install(view(1, "server", app, "", &strict)).await;
    let got = exchange(b.inbound, b"plain").await.unwrap_or_default();
    assert!(got.is_empty(), "plaintext got through a strict port");
    eventually("the plaintext denial", Duration::from_secs(5), || {
        b.metrics.denials(Denied::Plaintext) == 1
    })
    .await;

    // The default mode strict, the port permissive: plaintext in again.
    let permissive = format!(
        r#"{{"default_mode": "strict", "ports": {{"{}": {{"mode": "permissive"}}}}}}"#,
        app.port()
    );
    b.install(view(2, "server", app, "", &permissive)).await;
    assert_eq!(exchange(b.inbound, b"again").await.unwrap(), b"again");
    b.stop().await;
}

#[tokio::test]
async fn allow_lists_admit_only_matching_identities() {
    let ca = Pki::new();
    let app = echo_server().await;
    let (a, b) = pair(&ca, app).await;
    a.install(view(1, "client", b.inbound, id("server").as_str(), "{}"))
        .await;
    let allow = |pattern: &str| {
        format!(
            r#"{{"ports": {{"{}": {{"mode": "strict", "allow": ["{pattern}"]}}}}}}"#,
            app.port()
        )
    };
    b.install(view(
        1,
        "server",
        app,
        "",
        &allow("spiffe://cluster.local/ns/other/*"),
    ))
    .await;
    let got = exchange(a.outbound, b"hello").await.unwrap_or_default();
    assert!(got.is_empty(), "an identity outside the allow list got in");
    eventually("the identity denial", Duration::from_secs(5), || {
        b.metrics.denials(Denied::Identity) == 1
    })
    .await;

    b.install(view(
        2,
        "server",
        app,
        "",
        &allow("spiffe://cluster.local/ns/demo/*"),
    ))
    .await;
    assert_eq!(exchange(a.outbound, b"hello").await.unwrap(), b"hello");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn half_close_works_through_mutual_tls() {
    let ca = Pki::new();
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
    a.install(view(1, "client", b.inbound, id("server").as_str(), "{}"))
        .await;
    let got = exchange(a.outbound, &vec![1u8; 100_000]).await.unwrap();
    assert_eq!(got, b"100000");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn endpoints_without_identity_pass_through_in_plaintext() {
    let ca = Pki::new();
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
    a.install(plain).await;
    assert_eq!(exchange(a.outbound, b"two").await.unwrap(), b"two");
    assert_eq!(a.metrics.passthroughs(Direction::Outbound), 2);
    a.stop().await;
}

/// New connections one after another (resumed TLS sessions after the first),
/// each sending one byte that no protocol detection waits on.
#[tokio::test]
async fn many_short_connections_in_a_row() {
    let ca = Pki::new();
    let app = echo_server().await;
    let (a, b) = pair(&ca, app).await;
    a.install(view(1, "client", b.inbound, id("server").as_str(), "{}"))
        .await;
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

/// A connection refused before any request (plaintext on a strict port the view does
/// not list) leaves no per-route series behind: scanning ports costs no metrics.
#[tokio::test]
async fn refused_connections_create_no_route_series() {
    let ca = Pki::new();
    let app = echo_server().await;
    let b = start(store(&ca, "server"), app).await;
    b.install(view(1, "server", app, "", r#"{"default_mode": "strict"}"#))
        .await;
    for _ in 0..3 {
        let got = exchange(b.inbound, b"GET / HTTP/1.1\r\n\r\n")
            .await
            .unwrap_or_default();
        assert!(got.is_empty(), "plaintext got through a strict port");
    }
    eventually("the plaintext denials", Duration::from_secs(5), || {
        b.metrics.denials(Denied::Plaintext) == 3
    })
    .await;
    let text = pillion_proxy::encode(&b.registry).unwrap();
    let port = format!("service=\"{}\"", app.port());
    assert!(
        !text.lines().any(|l| l.contains(&port)),
        "route series for a refused port:\n{text}"
    );
    b.stop().await;
}
