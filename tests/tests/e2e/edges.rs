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
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::common::{
    raw_exchange, sidecar_opts, status_code, testbin, ADMIN_ONLY_FOR_OPS as INBOUND,
    ALL_ROUTES as ROUTES,
};

/// What the caller claims to be, in the proxy's own header.
const FORGED: &str = "pillion-peer-identity: spiffe://cluster.local/ns/ops/sa/tool\r\n";

/// Sends `request` to `target` from `pod` after `pause`; the reply's status code
/// (0: closed without one).
fn status_of(pod: &Pod, target: SocketAddr, pause: Duration, request: Vec<u8>) -> u16 {
    status_code(&raw_exchange(pod, target, pause, request).unwrap())
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
        let reply = raw_exchange(pod, target, Duration::ZERO, forged.to_vec()).unwrap();
        reply
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or(reply)
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

/// Malformed and smuggling request heads, each as `(what, bytes, status)`: the
/// status both a plaintext and a meshed caller get. Every request aims at
/// `/smuggle`, which the policy lets anyone call, so any that got through would
/// show in the application's count.
fn malformed() -> Vec<(String, Vec<u8>, u16)> {
    let line = |l: &str| format!("{l}\r\nHost: web\r\nConnection: close\r\n\r\n");
    let head =
        |h: &str| format!("GET /smuggle HTTP/1.1\r\nHost: web\r\n{h}\r\nConnection: close\r\n\r\n");
    let post = |h: &str| {
        format!("POST /smuggle HTTP/1.1\r\nHost: web\r\n{h}\r\nConnection: close\r\n\r\nhello")
    };
    let mut cases: Vec<(String, String, u16)> = Vec::new();
    // The request line.
    for (what, l) in [
        ("trailing garbage", "GET /smuggle HTTP/1.1 x"),
        ("trailing space", "GET /smuggle HTTP/1.1 "),
        ("lower-case version", "GET /smuggle http/1.1"),
        ("HTTP/0.9", "GET /smuggle"),
        ("HTTP/2.0 on HTTP/1", "GET /smuggle HTTP/2.0"),
        ("HTTP/1.2", "GET /smuggle HTTP/1.2"),
        ("HTTP/1", "GET /smuggle HTTP/1"),
        ("HTTP/11", "GET /smuggle HTTP/11"),
        ("HTTP/1.10", "GET /smuggle HTTP/1.10"),
        ("HTTP/01.1", "GET /smuggle HTTP/01.1"),
        ("HTTPS/1.1", "GET /smuggle HTTPS/1.1"),
        ("leading space", " GET /smuggle HTTP/1.1"),
        ("leading tab", "\tGET /smuggle HTTP/1.1"),
        ("double space before target", "GET  /smuggle HTTP/1.1"),
        ("double space before version", "GET /smuggle  HTTP/1.1"),
        ("tab separator", "GET\t/smuggle HTTP/1.1"),
        ("no version", "GET /smuggle "),
        ("no target", "GET HTTP/1.1"),
        ("method with @", "G@T /smuggle HTTP/1.1"),
        ("method with NUL", "G\0ET /smuggle HTTP/1.1"),
        ("method with (", "GE(T /smuggle HTTP/1.1"),
        ("NUL in target", "GET /smu\0ggle HTTP/1.1"),
        ("BEL in target", "GET /smu\x07ggle HTTP/1.1"),
        ("ESC in target", "GET /smu\x1bggle HTTP/1.1"),
        ("DEL in target", "GET /smu\x7fggle HTTP/1.1"),
        ("bare CR in target", "GET /smu\rggle HTTP/1.1"),
        ("NUL after version", "GET /smuggle HTTP/1.1\0"),
        ("bad absolute target", "GET http://[::1/smuggle HTTP/1.1"),
        ("asterisk target on GET", "GET * HTTP/1.1"),
        (
            "userinfo in an absolute target",
            "GET http://ops@web/smuggle HTTP/1.1",
        ),
    ] {
        cases.push((what.into(), line(l), 400));
    }
    // Header fields.
    for (what, h) in [
        ("no colon", "X-A 1"),
        ("space before colon", "X-A : 1"),
        ("tab before colon", "X-A\t: 1"),
        ("obs-fold", "X-A: 1\r\n 2"),
        ("obs-fold with tab", "X-A: 1\r\n\t2"),
        ("space in name", "X A: 1"),
        ("empty name", ": 1"),
        ("( in name", "X(A): 1"),
        ("quote in name", "X\"A: 1"),
        ("slash in name", "X/A: 1"),
        ("DEL in name", "X\x7fA: 1"),
        ("NUL in name", "X\0A: 1"),
        ("NUL in value", "X-A: 1\x002"),
        ("bare CR in value", "X-A: 1\r2"),
        ("BEL in value", "X-A: 1\x072"),
        ("DEL in value", "X-A: 1\x7f2"),
        ("a second Host", "Host: evil"),
        ("a second Host, same value", "Host: web"),
        ("bare CR line end", "X-A: 1\rX-B: 2"),
    ] {
        cases.push((what.into(), head(h), 400));
    }
    for (what, l) in [
        (
            "no Host in HTTP/1.1",
            "GET /smuggle HTTP/1.1\r\nConnection: close\r\n\r\n",
        ),
        (
            "Host not an authority",
            "GET /smuggle HTTP/1.1\r\nHost: a b\r\nConnection: close\r\n\r\n",
        ),
        (
            "Host list",
            "GET /smuggle HTTP/1.1\r\nHost: web, evil\r\nConnection: close\r\n\r\n",
        ),
        (
            "userinfo in Host",
            "GET /smuggle HTTP/1.1\r\nHost: ops@web\r\nConnection: close\r\n\r\n",
        ),
        (
            "Host with path",
            "GET /smuggle HTTP/1.1\r\nHost: web/x\r\nConnection: close\r\n\r\n",
        ),
        ("CR-only line ends", "GET /smuggle HTTP/1.1\rHost: web\r\r"),
        (
            "LF CR line ends",
            "GET /smuggle HTTP/1.1\n\rHost: web\n\r\n\r",
        ),
        (
            "pipelined garbage first",
            "XYZ\r\n\r\nGET /smuggle HTTP/1.1\r\nHost: web\r\n\r\n",
        ),
    ] {
        cases.push((what.into(), l.into(), 400));
    }
    // Message framing.
    for (what, h) in [
        (
            "two different Content-Lengths",
            "Content-Length: 5\r\nContent-Length: 6",
        ),
        ("Content-Length list that disagrees", "Content-Length: 5, 6"),
        ("negative Content-Length", "Content-Length: -5"),
        ("signed Content-Length", "Content-Length: +5"),
        ("hex Content-Length", "Content-Length: 0x5"),
        ("Content-Length with space inside", "Content-Length: 5 5"),
        ("fractional Content-Length", "Content-Length: 5.0"),
        ("non-numeric Content-Length", "Content-Length: five"),
        ("empty Content-Length", "Content-Length: "),
        (
            "overflowing Content-Length",
            "Content-Length: 99999999999999999999999",
        ),
        (
            "Transfer-Encoding not ending in chunked",
            "Transfer-Encoding: chunked, identity",
        ),
        ("unknown Transfer-Encoding", "Transfer-Encoding: xchunked"),
        ("Transfer-Encoding identity", "Transfer-Encoding: identity"),
        ("Transfer-Encoding with NUL", "Transfer-Encoding: chunked\0"),
    ] {
        cases.push((what.into(), post(h), 400));
    }
    // Size limits: more headers than the parser takes, a head past 64 KiB.
    let many: String = (0..120).map(|i| format!("X-{i}: 1\r\n")).collect();
    cases.push(("120 headers".into(), head(many.trim_end()), 431));
    let huge = format!("X-Big: {}", "a".repeat(70 * 1024));
    cases.push(("a 70 KiB header".into(), head(&huge), 431));
    cases
        .into_iter()
        .map(|(w, b, s)| (w, b.into_bytes(), s))
        .collect()
}

/// Every malformed or smuggling head in [`malformed`] gets its status, from a
/// plaintext caller straight at the pod and from a meshed caller through the
/// service, and none reaches the application.
#[test]
fn malformed_and_smuggling_heads_are_refused() {
    let w = HttpWorld::start(
        "edges_malformed",
        &testbin(),
        &sidecar_opts(),
        ROUTES,
        INBOUND,
    )
    .unwrap();
    let (c, a) = (w.pods.c.clone(), w.pods.a.clone());
    let b1 = SocketAddr::new(w.pods.b1.ipv4(), APP_PORT);
    let cases = malformed();
    assert!(cases.len() >= 70, "{} cases", cases.len());
    let mut wrong = Vec::new();
    for (what, request, want) in &cases {
        let plain = status_of(&c, b1, Duration::ZERO, request.clone());
        let meshed = status_of(&a, VIP.parse().unwrap(), Duration::ZERO, request.clone());
        println!("{what:40} plaintext {plain}  meshed {meshed}");
        if (plain, meshed) != (*want, *want) {
            wrong.push(format!(
                "{what}: want {want}, got plaintext {plain} meshed {meshed}"
            ));
        }
    }
    let seen: usize = w.apps.iter().map(|app| app.stats.count("smuggle")).sum();
    assert!(wrong.is_empty(), "{}\n{}", wrong.join("\n"), w.dump());
    assert_eq!(seen, 0, "the application saw {seen} of them");
    // A well-formed request still goes through, and an h2c upgrade is served as
    // plain HTTP/1.1 instead of becoming a tunnel no route judges.
    let ok = status_of(&c, b1, Duration::ZERO, line_to("GET /echo HTTP/1.1"));
    assert_eq!(ok, 200);
    // Visible bytes outside RFC 3986 (`"`, `{`) pass as sent, as hyper and nginx
    // take them: routes and the application see the same target.
    for odd in ["GET /echo/\"x\" HTTP/1.1", "GET /echo?q={} HTTP/1.1"] {
        assert_eq!(
            status_of(&c, b1, Duration::ZERO, line_to(odd)),
            200,
            "{odd}"
        );
    }
    let h2c = "GET /echo HTTP/1.1\r\nHost: web\r\nConnection: Upgrade, HTTP2-Settings, close\r\n\
               Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n";
    for (pod, target) in [(&c, b1), (&a, VIP.parse().unwrap())] {
        let status = status_of(pod, target, Duration::ZERO, h2c.as_bytes().to_vec());
        assert_eq!(status, 200, "h2c upgrade to {target}");
    }
}

fn line_to(l: &str) -> Vec<u8> {
    format!("{l}\r\nHost: web\r\nConnection: close\r\n\r\n").into_bytes()
}

/// Mesh TLS counters move on the HTTP path too: the client's proxy counts the
/// pooled mesh connections it opens to the server's, with the server's identity.
#[test]
fn http_mesh_connections_are_counted_outbound() {
    let w = HttpWorld::start(
        "edges_counted",
        &testbin(),
        &sidecar_opts(),
        ROUTES,
        INBOUND,
    )
    .unwrap();
    let a = w.pods.a.clone();
    let server = "spiffe://cluster.local/ns/demo/sa/server";
    let outbound = [("direction", "outbound"), ("peer_identity", server)];
    let tls = "pillion_tls_connections_total";
    let before = w.sidecars[0].metrics().unwrap().value(tls, &outbound);
    assert_eq!(
        status_of(
            &a,
            VIP.parse().unwrap(),
            Duration::ZERO,
            line_to("GET /echo HTTP/1.1")
        ),
        200
    );
    let m = w.sidecars[0].metrics().unwrap();
    assert!(m.value(tls, &outbound) >= before + 1.0, "{m}");
}

/// HTTP traffic moves the byte counters in both directions, on both proxies: the
/// client's outbound proxy and the server's inbound one count what the client sent
/// and what it was answered (they counted only relayed, opaque bytes before).
#[test]
fn http_traffic_moves_the_byte_counters() {
    let w = HttpWorld::start("edges_bytes", &testbin(), &sidecar_opts(), ROUTES, INBOUND).unwrap();
    let (sent, received) = (
        "pillion_tcp_sent_bytes_total",
        "pillion_tcp_received_bytes_total",
    );
    let read = |i: usize, direction: &str| {
        let m = w.sidecars[i].metrics().unwrap();
        let labels = [("direction", direction)];
        (m.value(sent, &labels), m.value(received, &labels))
    };
    // Sidecars 0 and 2: the client a and the server b1 (b2 may serve instead; add both).
    let server = |read_one: &dyn Fn(usize) -> (f64, f64)| {
        let (s1, r1) = read_one(2);
        let (s2, r2) = read_one(3);
        (s1 + s2, r1 + r2)
    };
    let out_before = read(0, "outbound");
    let in_before = server(&|i| read(i, "inbound"));
    let body = "x".repeat(3000);
    let request = format!(
        "POST /big HTTP/1.1\r\nHost: web\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    for _ in 0..5 {
        let reply = raw_exchange(
            &w.pods.a,
            VIP.parse().unwrap(),
            Duration::ZERO,
            request.clone().into_bytes(),
        )
        .unwrap();
        assert_eq!(status_code(&reply), 200, "{reply}");
    }
    let out = read(0, "outbound");
    let inb = server(&|i| read(i, "inbound"));
    let grew = |after: (f64, f64), before: (f64, f64)| (after.0 - before.0, after.1 - before.1);
    let (out_sent, out_received) = grew(out, out_before);
    let (in_sent, in_received) = grew(inb, in_before);
    // Five requests of over 3,000 bytes, each echoed back.
    assert!(
        out_sent >= 15_000.0 && in_sent >= 15_000.0,
        "sent: outbound {out_sent}, inbound {in_sent}\n{}",
        w.dump()
    );
    assert!(
        out_received >= 15_000.0 && in_received >= 15_000.0,
        "received: outbound {out_received}, inbound {in_received}"
    );
}
