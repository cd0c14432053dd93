//! Streams through the mesh on loopback: gRPC-style unary and bidirectional
//! streaming calls with trailers (HTTP/2 end to end, through a route with retries
//! so the replayable body must stream), and a WebSocket echo (an HTTP/1.1 upgrade
//! that turns the connection opaque end to end through mesh TLS).

use std::time::Duration;

use super::*;
use bytes::{BufMut, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Channel};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use pillion_proxy::Settings;
use serde_json::json;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// One gRPC message: flag, length, payload.
fn grpc_frame(payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + payload.len());
    b.put_u8(0);
    b.put_u32(payload.len() as u32);
    b.put_slice(payload);
    b.freeze()
}

/// An app that echoes every request data frame back as it arrives, then ends with
/// `grpc-status: 0` trailers; WebSocket upgrades get an echo socket.
fn grpc_and_ws() -> Handler {
    handler(|req: Request<Incoming>| async move {
        if req.headers().contains_key("sec-websocket-key") {
            return websocket(req);
        }
        if req.method() == http::Method::CONNECT {
            return tunnel(req);
        }
        let (mut tx, body) = Channel::<Bytes>::new(16);
        let mut incoming = req.into_body();
        tokio::spawn(async move {
            while let Some(Ok(frame)) = incoming.frame().await {
                if let Ok(data) = frame.into_data() {
                    if tx.send_data(data).await.is_err() {
                        return;
                    }
                }
            }
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            trailers.insert("grpc-message", HeaderValue::from_static("done"));
            let _ = tx.send_trailers(trailers).await;
        });
        let mut r = Response::new(body.boxed());
        r.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/grpc"));
        r
    })
}

fn websocket(mut req: Request<Incoming>) -> Response<AppBody> {
    let key = req.headers()["sec-websocket-key"].clone();
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_text() || msg.is_binary() {
                if ws.send(msg).await.is_err() {
                    return;
                }
            } else if msg.is_close() {
                return;
            }
        }
    });
    let mut r = text(101, "");
    let h = r.headers_mut();
    h.insert("connection", HeaderValue::from_static("upgrade"));
    h.insert("upgrade", HeaderValue::from_static("websocket"));
    h.insert(
        "sec-websocket-accept",
        HeaderValue::from_str(&derive_accept_key(key.as_bytes())).unwrap(),
    );
    r
}

/// Accepts a `CONNECT` and echoes the tunnel's bytes.
fn tunnel(mut req: Request<Incoming>) -> Response<AppBody> {
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
        let _ = tokio::io::copy(&mut r, &mut w).await;
    });
    text(200, "")
}

async fn fleet() -> Fleet {
    let routes = json!([{"name": "grpc", "retry": {"attempts": 3, "conditions": ["reset", "gateway-error"]}}]);
    Fleet::start(
        vec![(grpc_and_ws(), "v1")],
        routes,
        json!({}),
        Settings::default(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_and_streaming_calls_keep_their_trailers() {
    let f = fleet().await;
    let client: Client<_, Channel<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();

    // Unary.
    let (mut tx, body) = Channel::<Bytes>::new(4);
    let req = Request::post(format!("http://{}/echo.Echo/Unary", f.outbound.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap();
    let call = tokio::spawn(client.request(req));
    tx.send_data(grpc_frame(b"hello")).await.unwrap();
    drop(tx);
    let resp = call.await.unwrap().unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(collected.to_bytes(), grpc_frame(b"hello"));

    // Bidirectional streaming: each message is answered before the next is sent.
    let (mut tx, body) = Channel::<Bytes>::new(4);
    let req = Request::post(format!("http://{}/echo.Echo/Stream", f.outbound.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap();
    let call = tokio::spawn(client.request(req));
    tx.send_data(grpc_frame(b"m0")).await.unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("response headers before the request body ended")
        .unwrap()
        .unwrap();
    let mut body = resp.into_body();
    for i in 0..5 {
        let want = grpc_frame(format!("m{i}").as_bytes());
        let mut got = BytesMut::new();
        while got.len() < want.len() {
            let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
                .await
                .expect("an echo within 5 s")
                .expect("a frame")
                .unwrap();
            got.extend_from_slice(&frame.into_data().unwrap());
        }
        assert_eq!(got.freeze(), want);
        if i < 4 {
            tx.send_data(grpc_frame(format!("m{}", i + 1).as_bytes()))
                .await
                .unwrap();
        }
    }
    drop(tx);
    let rest = body.collect().await.unwrap();
    assert_eq!(rest.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(rest.trailers().unwrap()["grpc-message"], "done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_echo_crosses_the_mesh() {
    let f = fleet().await;
    let tcp = TcpStream::connect(f.outbound.addr).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("ws://198.18.0.100/chat", tcp)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..10 {
        let text = format!("hello {i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        let echo = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echo.into_text().unwrap().as_str(), text);
    }
    let big = vec![7u8; 256 * 1024];
    ws.send(Message::binary(big.clone())).await.unwrap();
    let echo = ws.next().await.unwrap().unwrap();
    assert_eq!(echo.into_data().as_ref(), &big[..]);
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_tunnel_crosses_the_mesh() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let f = fleet().await;
    let mut s = TcpStream::connect(f.outbound.addr).await.unwrap();
    s.write_all(b"CONNECT db.example:5432 HTTP/1.1\r\nHost: db.example:5432\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    for msg in [&b"ping"[..], b"through the tunnel"] {
        s.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, msg);
    }
}
