//! Loopback stays private: a server bound only to 127.0.0.1 or ::1 in a pod is
//! unreachable from other pods without the mesh, and stays so with it, because the
//! inbound proxy reaches the application at the address the caller aimed at (the
//! pod's own), not at loopback. The one way in is a port the pod names in
//! `--inbound-loopback-ports`. And the redirect takes packets for any destination
//! that reach the pod: one aimed at an address the pod does not own is refused,
//! never handed to the application.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use pillion_tests::apps::{serve, App};
use pillion_tests::http_mesh::{HttpWorld, APP_PORT};
use pillion_tests::{Pod, Task};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{raw_exchange, sidecar_opts, status_code, testbin};

const ROUTES: &str = "- name: all\n  matches: [{path: {prefix: /}}]\n";
const INBOUND: &str = "mode: permissive\n";

/// A loopback-only server's port, and one the sidecars name as loopback-reachable.
const PRIVATE: u16 = 9090;
const OPTED_IN: u16 = 9091;

/// An echo server in `pod` bound to `addr` only (bound before this returns).
fn echo_bound_to(pod: &Pod, addr: SocketAddr) -> Task<()> {
    let listener = pod
        .run(move || async move { std::net::TcpListener::bind(addr) })
        .unwrap()
        .unwrap();
    listener.set_nonblocking(true).unwrap();
    pod.background(move || async move {
        serve(
            tokio::net::TcpListener::from_std(listener).unwrap(),
            App::Echo,
        )
        .await
    })
    .unwrap()
}

/// Bytes no detector can take for HTTP or TLS, so they are relayed at once.
const PING: &[u8; 6] = b"\0ping\n";

/// True when `target`, from `pod`, echoes what it is sent.
fn echoes(pod: &Pod, target: SocketAddr) -> bool {
    pod.run(move || async move {
        let talk = async {
            let mut s = TcpStream::connect(target).await?;
            s.write_all(PING).await?;
            let mut back = [0u8; PING.len()];
            s.read_exact(&mut back).await?;
            std::io::Result::Ok(&back == PING)
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(5), talk).await,
            Ok(Ok(true))
        )
    })
    .unwrap()
}

#[test]
fn a_server_bound_to_loopback_stays_private() {
    let opts = sidecar_opts().proxy_args(["--inbound-loopback-ports", &OPTED_IN.to_string()]);
    let w = HttpWorld::start("loopback_private", &testbin(), &opts, ROUTES, INBOUND).unwrap();
    let (a, c, b1, d) = (&w.pods.a, &w.pods.c, &w.pods.b1, &w.pods.d);
    let v4 = IpAddr::from([127, 0, 0, 1]);
    let v6: IpAddr = "::1".parse().unwrap();
    let mut servers = Vec::new();
    for pod in [b1, d] {
        for port in [PRIVATE, OPTED_IN] {
            servers.push(echo_bound_to(pod, SocketAddr::new(v4, port)));
            servers.push(echo_bound_to(pod, SocketAddr::new(v6, port)));
        }
    }
    // The servers answer on loopback inside their pods.
    for pod in [b1, d] {
        assert!(echoes(pod, SocketAddr::new(v4, PRIVATE)));
        assert!(echoes(pod, SocketAddr::new(v6, PRIVATE)));
    }
    // Without the mesh (pod d) no other pod reaches them.
    assert!(!echoes(c, d.addr_v4(PRIVATE)));
    assert!(!echoes(c, d.addr_v6(PRIVATE)));
    // With it (pod b1), neither a plaintext caller nor a meshed one does, on either
    // family: the inbound proxy aims at the pod's address, where nothing listens.
    for (who, caller) in [("unmeshed c", c), ("meshed a", a)] {
        assert!(!echoes(caller, b1.addr_v4(PRIVATE)), "{who} over IPv4");
        assert!(!echoes(caller, b1.addr_v6(PRIVATE)), "{who} over IPv6");
    }
    // The port b1's sidecar names is forwarded to loopback, on both families.
    for (who, caller) in [("unmeshed c", c), ("meshed a", a)] {
        assert!(echoes(caller, b1.addr_v4(OPTED_IN)), "{who} over IPv4");
        assert!(echoes(caller, b1.addr_v6(OPTED_IN)), "{who} over IPv6");
    }
    drop(servers);
}

#[test]
fn a_connection_aimed_past_the_pod_is_refused() {
    let w = HttpWorld::start(
        "loopback_aimed",
        &testbin(),
        &sidecar_opts(),
        ROUTES,
        INBOUND,
    )
    .unwrap();
    let (c, b1) = (&w.pods.c, &w.pods.b1);
    // Addresses no pod owns (inside the test ranges), routed from c through b1, as
    // an attacker on the pod network can: the packets reach b1, whose redirect hands
    // them to the inbound proxy with their original destination.
    let foreign_v4: IpAddr = "198.19.200.1".parse().unwrap();
    let foreign_v6: IpAddr = "2001:2:0:ff00::1".parse().unwrap();
    c.exec_ok([
        "ip",
        "route",
        "add",
        &format!("{foreign_v4}/32"),
        "via",
        &b1.ipv4().to_string(),
    ])
    .unwrap();
    c.exec_ok([
        "ip",
        "-6",
        "route",
        "add",
        &format!("{foreign_v6}/128"),
        "via",
        &b1.ipv6().to_string(),
    ])
    .unwrap();
    let get = b"GET /echo HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n".to_vec();
    let answer = |target| raw_exchange(c, target, Duration::ZERO, get.clone()).unwrap();
    // The application answers where c aims at b1 itself.
    assert_eq!(status_code(&answer(b1.addr_v4(APP_PORT))), 200);
    assert_eq!(status_code(&answer(b1.addr_v6(APP_PORT))), 200);
    let denied = |m: &pillion_tests::metrics::Samples| {
        m.value(
            "pillion_inbound_denied_total",
            &[("reason", "not_this_pod")],
        )
    };
    let before = denied(&w.sidecars[2].metrics().unwrap());
    for foreign in [foreign_v4, foreign_v6] {
        let reply = answer(SocketAddr::new(foreign, APP_PORT));
        assert_eq!(reply, "", "{foreign} reached b1's application");
    }
    let m = w.sidecars[2].metrics().unwrap();
    assert_eq!(denied(&m), before + 2.0, "{m}");
}
