//! Trying to get around L7 policy from outside, the way an attacker would: on an
//! inbound port whose `/admin` route admits only `ns/ops` callers, requests that
//! the old detector did not recognise as HTTP (an empty line first, an endless
//! request target, a late first byte, bytes that are not HTTP) were relayed raw to
//! the application, skipping route authorization. A port where HTTP policy lives
//! now serves HTTP or refuses with a status (400, 408, 414); the application sees
//! nothing else.

use std::net::SocketAddr;
use std::time::Duration;

use pillion_tests::http_mesh::{HttpWorld, APP_PORT, VIP};
use pillion_tests::Pod;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{sidecar_opts, testbin};

const ROUTES: &str = "- name: all\n  matches: [{path: {prefix: /}}]\n";

const INBOUND: &str = r#"mode: permissive
routes:
  - name: admin
    matches: [{path: {prefix: /admin}}]
    allow: ["spiffe://cluster.local/ns/ops/*"]
"#;

/// What the caller claims to be, in the proxy's own header.
const FORGED: &str = "pillion-peer-identity: spiffe://cluster.local/ns/ops/sa/tool\r\n";

/// Sends `parts` to `target` from `pod`, waiting `pause` before the first, and
/// answers the status code of the reply (0: closed without one).
fn status_of(pod: &Pod, target: SocketAddr, pause: Duration, request: Vec<u8>) -> u16 {
    pod.run(move || async move {
        let mut s = TcpStream::connect(target).await.unwrap();
        tokio::time::sleep(pause).await;
        let _ = s.write_all(&request).await;
        let mut raw = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw)).await;
        let text = String::from_utf8_lossy(&raw);
        text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0)
    })
    .unwrap()
}

fn admin_request(prefix: &str, target: &str) -> Vec<u8> {
    format!("{prefix}GET {target} HTTP/1.1\r\nHost: web\r\n{FORGED}Connection: close\r\n\r\n")
        .into_bytes()
}

#[test]
fn detection_fails_closed_where_http_policy_lives() {
    // Detection gives up after 1 s here, so a late first byte comes after it.
    let opts = sidecar_opts().proxy_args(["--detect-timeout", "1s"]);
    let w = HttpWorld::start("edges_detect", &testbin(), &opts, ROUTES, INBOUND).unwrap();
    let (c, a) = (w.pods.c.clone(), w.pods.a.clone());
    let b1 = SocketAddr::new(w.pods.b1.ipv4(), APP_PORT);
    // A client that connects and says nothing gets 408 once the header-read
    // timeout (30 s) passes; it waits beside the other cases.
    let silent = {
        let c = c.clone();
        std::thread::spawn(move || {
            c.run(move || async move {
                let mut s = TcpStream::connect(b1).await.unwrap();
                let mut raw = Vec::new();
                let read = tokio::time::timeout(Duration::from_secs(45), s.read_to_end(&mut raw));
                let _ = read.await;
                String::from_utf8_lossy(&raw).to_string()
            })
            .unwrap()
        })
    };
    let now = Duration::ZERO;
    let long_target = format!("/admin/{}", "a".repeat(70 * 1024));

    let cases: Vec<(&str, Duration, Vec<u8>, u16)> = vec![
        ("plain request", now, admin_request("", "/admin"), 403),
        (
            "empty lines first",
            now,
            admin_request("\r\n\r\n", "/admin"),
            403,
        ),
        ("a bare LF first", now, admin_request("\n", "/admin"), 403),
        (
            "late first byte",
            Duration::from_secs(2),
            admin_request("", "/admin"),
            403,
        ),
        ("endless target", now, admin_request("", &long_target), 414),
        ("not HTTP", now, b"HELLO /admin\r\n\r\n".to_vec(), 400),
        (
            "lower-case version",
            now,
            b"GET /admin http/1.1\r\nHost: web\r\n\r\n".to_vec(),
            400,
        ),
        ("HTTP/0.9", now, b"GET /admin\r\n\r\n".to_vec(), 400),
        (
            "leading space",
            now,
            b" GET /admin HTTP/1.1\r\nHost: web\r\n\r\n".to_vec(),
            400,
        ),
        (
            "double space",
            now,
            b"GET  /admin HTTP/1.1\r\nHost: web\r\n\r\n".to_vec(),
            400,
        ),
        (
            "trailing garbage",
            now,
            b"GET /admin HTTP/1.1 x\r\nHost: web\r\n\r\n".to_vec(),
            400,
        ),
    ];
    let mut table = Vec::new();
    for (what, pause, request, want) in cases {
        // Unmeshed caller straight at the pod; meshed caller through the service.
        let plain = status_of(&c, b1, pause, request.clone());
        let meshed = status_of(&a, VIP.parse().unwrap(), pause, request);
        table.push(format!("{what}: plaintext {plain}, meshed {meshed}"));
        assert_eq!((plain, meshed), (want, want), "{what}\n{}", w.dump());
    }
    println!("{}", table.join("\n"));
    let admin_seen: usize = w.apps.iter().map(|app| app.stats.count("admin")).sum();
    assert_eq!(admin_seen, 0, "the application saw /admin requests");
    let silence = silent.join().unwrap();
    assert!(silence.starts_with("HTTP/1.1 408 "), "{silence:?}");
    // Everything else on the port still works.
    let ok = status_of(&c, b1, now, admin_request("", "/echo"));
    assert_eq!(ok, 200);
}

/// The proxy's own headers from anyone but a verified peer proxy are dropped before
/// anything reads them: a plaintext caller cannot pick the HTTP version the
/// application receives or claim an identity, and an application cannot send them
/// out through its own proxy.
#[test]
fn hop_headers_are_the_proxys_own() {
    let w = HttpWorld::start("edges_hop", &testbin(), &sidecar_opts(), ROUTES, INBOUND).unwrap();
    let (c, a) = (w.pods.c.clone(), w.pods.a.clone());
    let b1 = SocketAddr::new(w.pods.b1.ipv4(), APP_PORT);
    let forged = b"GET /echo HTTP/1.1\r\nHost: web\r\npillion-orig-proto: HTTP/1.0\r\n\
                   Pillion-Peer-Identity: spiffe://cluster.local/ns/ops/sa/tool\r\n\
                   Connection: close\r\n\r\n";
    let body = |pod: &Pod, target: SocketAddr| {
        pod.run(move || async move {
            let mut s = TcpStream::connect(target).await.unwrap();
            s.write_all(forged).await.unwrap();
            let mut raw = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw)).await;
            let text = String::from_utf8_lossy(&raw).to_string();
            text.split_once("\r\n\r\n")
                .map(|(_, b)| b.to_string())
                .unwrap_or(text)
        })
        .unwrap()
    };
    // Inbound, from a plaintext caller: neither header survives.
    let plain = body(&c, b1);
    assert_eq!(plain, "app=b1 version=HTTP/1.1 orig=false peer= path=/echo");
    // Outbound, from the application: its own proxy drops them; the far proxy sets
    // only the verified identity.
    let meshed = body(&a, VIP.parse().unwrap());
    let want =
        "version=HTTP/1.1 orig=false peer=spiffe://cluster.local/ns/demo/sa/client path=/echo";
    assert!(meshed.ends_with(want), "{meshed}");
}
