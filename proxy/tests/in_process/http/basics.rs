//! The HTTP layer on loopback, end to end through an outbound proxy, mesh TLS and an
//! inbound proxy: versions kept, identity header set only from mTLS, big bodies,
//! keep-alive reuse, and the proxy's own answers (400, 431, 502, 503).

use std::time::Duration;

use super::*;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use pillion_proxy::Settings;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An app that reports what it saw: version, orig-proto, peer identity, body size.
fn reporter() -> Handler {
    handler(|req: Request<hyper::body::Incoming>| async move {
        let version = format!("{:?}", req.version());
        let orig = req.headers().contains_key("pillion-orig-proto");
        let peer = req
            .headers()
            .get_all("pillion-peer-identity")
            .iter()
            .map(|v| v.to_str().unwrap_or("?").to_string())
            .collect::<Vec<_>>()
            .join(",");
        let path = req.uri().path().to_string();
        let body = req.into_body().collect().await.unwrap().to_bytes();
        text(
            200,
            format!(
                "{version} orig={orig} peer={peer} path={path} len={}",
                body.len()
            ),
        )
    })
}

struct Mesh {
    app: App,
    _inbound: Inbound,
    outbound: Outbound,
}

async fn mesh(app_handler: Handler) -> Mesh {
    let pki = Pki::new();
    let port = common_port().await;
    let app = app(lo(1, 0), app_handler).await;
    let endpoint = lo(21, port);
    let v = view(1, &[(endpoint, "v1")], true, json!([]), json!({}));
    let inbound = inbound(endpoint, app.addr, Some(pki.store(SERVER_ID)), &v).await;
    let client_store = pki.store(CLIENT_ID);
    let outbound = outbound(client(Some(&client_store), &v, Settings::default())).await;
    Mesh {
        app,
        _inbound: inbound,
        outbound,
    }
}

#[tokio::test]
async fn http1_crosses_the_mesh_and_arrives_as_http1_with_the_verified_identity() {
    let m = mesh(reporter()).await;
    let req = Request::post(format!("http://{}/hello", m.outbound.addr))
        .header(
            "pillion-peer-identity",
            "spiffe://cluster.local/ns/evil/sa/forger",
        )
        .header("pillion-orig-proto", "HTTP/9")
        .body(Full::new(Bytes::from_static(b"abc")))
        .unwrap();
    let (status, body) = read(h1_client().request(req).await.unwrap()).await;
    assert_eq!(status, 200, "{body:?}");
    assert_eq!(
        std::str::from_utf8(&body).unwrap(),
        format!("HTTP/1.1 orig=false peer={CLIENT_ID} path=/hello len=3")
    );
}

#[tokio::test]
async fn http2_stays_http2() {
    let m = mesh(reporter()).await;
    let (status, body) = read(
        h2_client()
            .request(get(m.outbound.addr, "/x"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        std::str::from_utf8(&body).unwrap(),
        format!("HTTP/2.0 orig=false peer={CLIENT_ID} path=/x len=0")
    );
}

#[tokio::test]
async fn one_mebibyte_bodies_both_ways_on_both_versions() {
    let echo = handler(|req: Request<hyper::body::Incoming>| async move {
        let body = req.into_body().collect().await.unwrap().to_bytes();
        text(200, body)
    });
    let m = mesh(echo).await;
    let data: Bytes = (0..1024 * 1024)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    for client in [h1_client(), h2_client()] {
        let req = Request::post(format!("http://{}/echo", m.outbound.addr))
            .body(Full::new(data.clone()))
            .unwrap();
        let (status, body) = read(client.request(req).await.unwrap()).await;
        assert_eq!(status, 200);
        assert_eq!(body.len(), data.len());
        assert!(body == data, "body changed on the way");
    }
}

#[tokio::test]
async fn keep_alive_reuses_upstream_connections() {
    let m = mesh(reporter()).await;
    let client = h1_client();
    for _ in 0..50 {
        let (status, _) = read(client.request(get(m.outbound.addr, "/")).await.unwrap()).await;
        assert_eq!(status, 200);
    }
    assert_eq!(m.app.requests(), 50);
    assert_eq!(
        m.app.connections(),
        1,
        "the inbound pool should reuse one connection"
    );
}

async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).to_string()
}

#[tokio::test]
async fn malformed_and_oversize_requests_get_400_and_431_and_the_proxy_keeps_serving() {
    let m = mesh(reporter()).await;
    let bad = raw(
        m.outbound.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    )
    .await;
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
    let mut big = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 100 * 1024));
    big.extend_from_slice(b"\r\n\r\n");
    let too_large = raw(m.outbound.addr, &big).await;
    assert!(too_large.starts_with("HTTP/1.1 431"), "{too_large}");
    let (status, _) = read(
        h1_client()
            .request(get(m.outbound.addr, "/"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn no_endpoints_is_503_and_a_dead_endpoint_is_502() {
    let pki = Pki::new();
    let store = pki.store(CLIENT_ID);
    let empty = view(1, &[], true, json!([]), json!({}));
    let out = outbound(client(Some(&store), &empty, Settings::default())).await;
    let resp = h1_client().request(get(out.addr, "/")).await.unwrap();
    assert_eq!(resp.headers()["pillion-error"], "no-endpoints");
    let (status, body) = read(resp).await;
    assert_eq!(status, 503);
    assert!(String::from_utf8_lossy(&body).contains("no endpoints available for demo/echo:80"));

    let port = common_port().await;
    let dead = view(1, &[(lo(22, port), "v1")], false, json!([]), json!({}));
    let settings = Settings {
        connect_timeout: Duration::from_secs(1),
        ..Settings::default()
    };
    let out = outbound(client(Some(&store), &dead, settings)).await;
    let resp = h1_client().request(get(out.addr, "/")).await.unwrap();
    assert_eq!(resp.headers()["pillion-error"], "connect-failed");
    assert_eq!(resp.status(), 502);
}
