//! The HTTP layer inside whole proxies, in-process on loopback with mesh TLS and
//! fixed original destinations: HTTP to a service VIP is routed per request and
//! counted per route; opaque bytes to a VIP go to an endpoint over mesh TLS; an
//! idle keep-alive connection does not hold up the drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use pillion_api::view::View;
use pillion_identity::{CertStore, SpiffeId};
use pillion_proxy::ProxyConfig;
use pillion_testkit::pki::Pki;
use pillion_testkit::tcp::echo_server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{Options, Running};

fn id(sa: &str) -> SpiffeId {
    pillion_testkit::pki::id("demo", sa)
}

fn store(pki: &Pki, sa: &str) -> Arc<CertStore> {
    pki.store(id(sa).as_str())
}

/// A meshed proxy (drain timeout 10 s) whose connections are all aimed at `orig_dst`.
async fn start(store: Arc<CertStore>, orig_dst: SocketAddr) -> Running {
    let config = ProxyConfig {
        drain_timeout: Duration::from_secs(10),
        ..ProxyConfig::loopback_ephemeral()
    };
    let options = Options {
        orig_dst: Some(orig_dst),
        store: Some(store),
        ..Options::default()
    };
    crate::support::start(config, options).await
}

async fn http_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let peer = req
                            .headers()
                            .get("pillion-peer-identity")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-")
                            .to_string();
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(Bytes::from(peer)),
                        ))
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

/// Service `web` (VIP port 80, auto) in front of `http_server`'s inbound, and
/// service `db` (VIP port 7000, opaque) in front of `echo_server`'s inbound.
fn view(version: u64, me: &str, http_server: SocketAddr, echo_server: SocketAddr) -> View {
    serde_json::from_value(serde_json::json!({
        "version": version,
        "identity": id(me).to_string(),
        "services": [
            {"name": "web", "namespace": "demo", "addresses": ["198.18.0.100"],
             "ports": [{"port": 80, "target_port": http_server.port(),
                        "routes": [{"name": "all", "timeout": "5s"}]}],
             "endpoints": [{"address": "127.0.0.1", "port": http_server.port(),
                            "identity": id("server").to_string()}]},
            {"name": "db", "namespace": "demo", "addresses": ["198.18.0.101"],
             "ports": [{"port": 7000, "target_port": echo_server.port(), "protocol": "opaque"}],
             "endpoints": [{"address": "127.0.0.1", "port": echo_server.port(),
                            "identity": id("server").to_string()}]}
        ]
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_proxies_route_http_relay_opaque_to_a_vip_and_drain_keep_alive() {
    let ca = Pki::new();
    let (http, echo) = (http_app().await, echo_server().await);
    // Server side: one proxy per application (a fixed redirect record each).
    let web = start(store(&ca, "server"), http).await;
    let db = start(store(&ca, "server"), echo).await;
    // Client side: one proxy per VIP.
    let to_web = start(store(&ca, "client"), "198.18.0.100:80".parse().unwrap()).await;
    let to_db = start(store(&ca, "client"), "198.18.0.101:7000".parse().unwrap()).await;
    let v = view(1, "client", web.inbound, db.inbound);
    to_web.install(v.clone()).await;
    to_db.install(v.clone()).await;

    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = hyper::Request::get(format!("http://{}/x", to_web.outbound))
        .header("host", "web.demo")
        .body(Empty::new())
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, id("client").to_string());
    let text = pillion_proxy::encode(&to_web.registry).unwrap();
    assert!(
        text.contains("pillion_http_requests_total{direction=\"outbound\",service=\"demo/web\",route=\"all\",peer=\"\"} 1"),
        "{text}"
    );
    let text = pillion_proxy::encode(&web.registry).unwrap();
    assert!(
        text.contains(&format!(
            "route=\"default\",peer=\"{}\",status_code=\"200\"",
            id("client")
        )),
        "{text}"
    );

    // Opaque bytes to the db VIP reach the echo app through mesh TLS.
    let mut s = TcpStream::connect(to_db.outbound).await.unwrap();
    s.write_all(b"\x00\x01binary protocol").await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, b"\x00\x01binary protocol");

    // The client's keep-alive connection is idle in the pool: the drain closes it
    // gracefully instead of waiting for the drain timeout.
    let report = to_web.stop().await;
    assert_eq!(report.forced, 0);
    assert!(report.elapsed < Duration::from_secs(5), "{report:?}");
    for p in [web, db, to_db] {
        p.stop().await;
    }
}
