//! The proxy library run in-process on loopback ports: forwarding, metrics,
//! loop refusal and drain, with a fixed original destination standing in for
//! the kernel's redirect record where needed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pillion_proxy::{Denied, ProxyConfig};
use pillion_testkit::tcp::{echo_server, echo_server_on};
use pillion_testkit::wait::eventually;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{start, Options};

/// A plain (meshless) proxy whose connections carry the redirect record `orig_dst`.
async fn plain(config: ProxyConfig, orig_dst: Option<SocketAddr>) -> crate::support::Running {
    let options = Options {
        orig_dst,
        ..Options::default()
    };
    start(config, options).await
}

/// One HTTP/1.1 request to the admin server; returns status and body.
async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    let status = raw[9..12].parse().unwrap();
    (status, raw.split_once("\r\n\r\n").unwrap().1.to_owned())
}

/// Sends `msg` and reads the same number of bytes back.
async fn round_trip(s: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
    s.write_all(msg).await.unwrap();
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got).await.unwrap();
    got
}

#[tokio::test]
async fn outbound_forwards_and_counts_bytes() {
    let echo = echo_server().await;
    let p = plain(ProxyConfig::loopback_ephemeral(), Some(echo)).await;
    assert_eq!(
        http(p.admin, "GET", "/ready").await,
        (200, "ready\n".into())
    );

    let mut c = TcpStream::connect(p.outbound).await.unwrap();
    assert_eq!(round_trip(&mut c, b"hello").await, b"hello");
    c.shutdown().await.unwrap();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());

    let out = p.proxy_metrics.0.clone();
    eventually("the connection to close", Duration::from_secs(5), || {
        out.closed.get() == 1
    })
    .await;
    assert_eq!((out.sent_bytes.get(), out.received_bytes.get()), (5, 5));
    let (status, text) = http(p.admin, "GET", "/metrics").await;
    assert_eq!(status, 200);
    for line in [
        "pillion_tcp_connections_opened_total{direction=\"outbound\"} 1",
        "pillion_tcp_connections_closed_total{direction=\"outbound\"} 1",
        "pillion_tcp_connections_open{direction=\"outbound\"} 0",
        "pillion_tcp_sent_bytes_total{direction=\"outbound\"} 5",
        "pillion_tcp_received_bytes_total{direction=\"outbound\"} 5",
        "pillion_tcp_connections_opened_total{direction=\"inbound\"} 0",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    drop(p.stop);
    assert_eq!(p.task.await.unwrap().forced, 0);
}

/// An echo server on `ip` at a free port.
async fn echo_on(ip: &str) -> SocketAddr {
    echo_server_on(ip.parse().unwrap()).await
}

/// A plain proxy whose connections aim at `aimed`, with `port` forwarded to loopback.
async fn loopback_port(aimed: SocketAddr, port: u16) -> crate::support::Running {
    let options = Options {
        orig_dst: Some(aimed),
        settings: pillion_proxy::Settings {
            loopback_ports: vec![port],
            ..Default::default()
        },
        ..Options::default()
    };
    start(ProxyConfig::loopback_ephemeral(), options).await
}

/// True when the inbound listener of `p` carried bytes to an application.
async fn carried(p: &crate::support::Running) -> bool {
    let mut c = TcpStream::connect(p.inbound).await.unwrap();
    let _ = c.write_all(b"inbound!").await;
    let mut buf = [0u8; 8];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut buf)).await,
        Ok(Ok(8)) if &buf == b"inbound!"
    )
}

#[tokio::test]
async fn inbound_reaches_the_application_where_the_caller_aimed() {
    // All of 127/8 is this host's: 127.0.0.2 stands in for the pod's own address,
    // distinct from 127.0.0.1, where the old inbound always went.
    let echo = echo_on("127.0.0.2").await;
    let p = plain(ProxyConfig::loopback_ephemeral(), Some(echo)).await;
    assert!(carried(&p).await);
    let inb = p.proxy_metrics.1.clone();
    eventually(
        "the inbound connection to close",
        Duration::from_secs(5),
        || inb.closed.get() == 1,
    )
    .await;
    assert_eq!(inb.sent_bytes.get(), 8);
    assert_eq!(inb.connect_failures.get(), 0);
}

#[tokio::test]
async fn a_server_on_loopback_stays_private_unless_its_port_is_named() {
    // The application listens on 127.0.0.1 only; callers aim at the pod's address.
    let echo = echo_on("127.0.0.1").await;
    let aimed: SocketAddr = format!("127.0.0.2:{}", echo.port()).parse().unwrap();
    let p = plain(ProxyConfig::loopback_ephemeral(), Some(aimed)).await;
    assert!(!carried(&p).await, "a loopback-only server was reached");
    let inb = p.proxy_metrics.1.clone();
    eventually("the refused connect", Duration::from_secs(5), || {
        inb.connect_failures.get() == 1
    })
    .await;

    let opted_in = loopback_port(aimed, echo.port()).await;
    assert!(carried(&opted_in).await, "the named port goes to loopback");
}

#[tokio::test]
async fn inbound_refuses_a_connection_not_aimed_at_this_host() {
    let echo = echo_on("127.0.0.1").await;
    // The redirect takes packets for any destination that reach the pod; one for an
    // address the pod does not own (TEST-NET-1) must not reach the application.
    for aimed in ["192.0.2.1", "[2001:db8::1]"] {
        let aimed: SocketAddr = format!("{aimed}:{}", echo.port()).parse().unwrap();
        let p = loopback_port(aimed, echo.port()).await;
        assert!(!carried(&p).await, "{aimed} reached the application");
        eventually("the refusal to be counted", Duration::from_secs(5), || {
            p.metrics.denials(Denied::NotThisPod) == 1
        })
        .await;
        assert_eq!(p.proxy_metrics.1.connect_failures.get(), 0, "never tried");
    }
}

#[tokio::test]
async fn a_direct_connection_is_refused_as_a_loop() {
    // The kernel lookup: nobody redirected this connection.
    let p = plain(ProxyConfig::loopback_ephemeral(), None).await;
    let mut c = TcpStream::connect(p.outbound).await.unwrap();
    let mut buf = Vec::new();
    let _ = c.read_to_end(&mut buf).await;
    assert!(buf.is_empty());
    let out = p.proxy_metrics.0.clone();
    eventually("the loop to be counted", Duration::from_secs(5), || {
        out.loops_refused.get() == 1
    })
    .await;
    assert_eq!(out.connect_failures.get(), 0);
    let (_, text) = http(p.admin, "GET", "/metrics").await;
    assert!(text.contains("pillion_tcp_loops_refused_total{direction=\"outbound\"} 1"));
}

/// An off-pod caller redirected to the admin port (as when a user's skip list
/// once replaced the default exclusion of 15020) must not reach the admin server
/// from loopback, where `/shutdown` obeys.
#[tokio::test]
async fn inbound_refuses_to_forward_to_the_admin_port() {
    let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin_addr = admin.local_addr().unwrap();
    drop(admin);
    let config = ProxyConfig {
        admin_addr,
        ..ProxyConfig::loopback_ephemeral()
    };
    // The pod's own address (127.0.0.2 here), not the one the admin server is on.
    let aimed: SocketAddr = format!("127.0.0.2:{}", admin_addr.port()).parse().unwrap();
    let p = plain(config, Some(aimed)).await;
    let mut c = TcpStream::connect(p.inbound).await.unwrap();
    let attack = "POST /shutdown HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n";
    let _ = c.write_all(attack.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = c.read_to_end(&mut answer).await;
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    let inb = p.proxy_metrics.1.clone();
    eventually("the loop to be counted", Duration::from_secs(5), || {
        inb.loops_refused.get() == 1
    })
    .await;
    // Still serving: the admin server answers its own loopback callers.
    assert_eq!(
        http(p.admin, "GET", "/ready").await,
        (200, "ready\n".into())
    );
}

#[tokio::test]
async fn an_unreachable_upstream_counts_a_connect_failure() {
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let p = plain(ProxyConfig::loopback_ephemeral(), Some(closed)).await;
    let mut c = TcpStream::connect(p.outbound).await.unwrap();
    let mut buf = Vec::new();
    let _ = c.read_to_end(&mut buf).await;
    let out = p.proxy_metrics.0.clone();
    eventually("the connect failure", Duration::from_secs(5), || {
        out.connect_failures.get() == 1
    })
    .await;
    eventually("the close", Duration::from_secs(5), || {
        out.closed.get() == 1
    })
    .await;
}

#[tokio::test]
async fn drain_refuses_new_connections_and_lets_open_ones_finish() {
    let echo = echo_server().await;
    let config = ProxyConfig {
        drain_timeout: Duration::from_secs(30),
        ..ProxyConfig::loopback_ephemeral()
    };
    let mut p = plain(config, Some(echo)).await;
    let mut open = TcpStream::connect(p.outbound).await.unwrap();
    assert_eq!(round_trip(&mut open, b"before").await, b"before");

    p.stop.take().unwrap().send(()).unwrap();
    // New connections are refused once the listeners are closed...
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpStream::connect(p.outbound).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            _ => {
                assert!(Instant::now() < deadline, "listener still accepting");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    assert!(TcpStream::connect(p.inbound).await.is_err());
    // ...the admin server still answers, and reports the drain...
    let (status, body) = http(p.admin, "GET", "/ready").await;
    assert_eq!(status, 503);
    assert!(body.contains("proxy not draining"), "{body}");
    // ...and the open connection keeps working until it ends.
    assert!(!p.task.is_finished());
    assert_eq!(
        round_trip(&mut open, b"during drain").await,
        b"during drain"
    );
    open.shutdown().await.unwrap();
    let mut rest = Vec::new();
    open.read_to_end(&mut rest).await.unwrap();

    let report = tokio::time::timeout(Duration::from_secs(5), p.task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.forced, 0);
    assert_eq!(p.proxy_metrics.0.sent_bytes.get(), 18);
}

#[tokio::test]
async fn admin_shutdown_drains_and_force_closes_after_the_timeout() {
    let echo = echo_server().await;
    let config = ProxyConfig {
        drain_timeout: Duration::from_millis(300),
        ..ProxyConfig::loopback_ephemeral()
    };
    let p = plain(config, Some(echo)).await;
    let mut idle = TcpStream::connect(p.outbound).await.unwrap();
    assert_eq!(round_trip(&mut idle, b"x").await, b"x");

    let started = Instant::now();
    assert_eq!(http(p.admin, "POST", "/shutdown").await.0, 200);
    let report = tokio::time::timeout(Duration::from_secs(5), p.task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.forced, 1);
    assert!(started.elapsed() >= Duration::from_millis(300));
    // The forced connection was closed under the client.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut rest))
        .await
        .unwrap();
    assert_eq!(p.proxy_metrics.0.open.get(), 0);
    // The admin server is gone with the proxy.
    assert!(TcpStream::connect(p.admin).await.is_err());
}
