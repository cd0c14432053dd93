//! The HTTP/2 half of strict parsing: requests written frame by frame, the way an
//! attacker would (h2c with prior knowledge, header blocks in plain HPACK literals
//! so any byte fits), from an unmeshed pod straight at a server pod's permissive
//! port and from a meshed pod through the service (the client's proxy, then mesh
//! TLS to the server's). RFC 9113 §8.1.1: a malformed request is a stream error
//! (`RST_STREAM` with `PROTOCOL_ERROR`), a connection error (`GOAWAY`), or an answer
//! (400, 431, 403); whichever it is, each case pins it, and the application sees
//! none of them. The meshed caller meets the same HTTP/2 server in its own proxy
//! first, so most of its cases end there; the plaintext caller tests the inbound.
//!
//! Each case goes out in one write, so a body that breaks its `content-length` is
//! seen before the request is handed on. A client that sends a good head, waits,
//! then breaks the body gets the same reset, but the application has seen the head
//! by then: a streaming proxy can only abort what it has begun to forward.

use std::net::SocketAddr;
use std::time::Duration;

use pillion_testkit::h2frames::{
    connection, exchange, flag, header_block, kind, Frame, DEFAULT_MAX_FRAME,
};
use pillion_tests::http_mesh::{HttpWorld, APP_PORT, VIP};
use pillion_tests::Pod;

use crate::common::{sidecar_opts, testbin, ADMIN_ONLY_FOR_OPS as INBOUND, ALL_ROUTES as ROUTES};

/// A header list: `(name, value)` pairs in wire order, any bytes.
type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// One case: what it tries, the frames after the preface and `SETTINGS`, the
/// stream whose fate is read, and the outcome both a plaintext and a meshed caller
/// get (see [`pillion_testkit::h2frames::summary`]).
struct Case {
    what: String,
    frames: Vec<Frame>,
    stream: u32,
    want: &'static str,
}

fn case(what: &str, frames: Vec<Frame>, want: &'static str) -> Case {
    Case {
        what: what.to_string(),
        frames,
        stream: 1,
        want,
    }
}

const RESET: &str = "RST_STREAM(PROTOCOL_ERROR)";
const GOAWAY: &str = "GOAWAY(PROTOCOL_ERROR)";

/// A well-formed request head for `path`.
fn head_for(path: &str) -> Fields {
    fields(&[
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "web"),
        (":path", path),
    ])
}

/// The well-formed head every malformed case starts from: `GET /smuggle`, a path
/// anyone may call, so any case that got through would show in the application.
fn base() -> Fields {
    head_for("/smuggle")
}

fn fields(pairs: &[(&str, &str)]) -> Fields {
    pairs
        .iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

/// [`base`] and then `extra`.
fn with(extra: &[(&str, &str)]) -> Fields {
    let mut f = base();
    f.extend(fields(extra));
    f
}

/// [`base`] and one more field of any bytes.
fn with_raw(name: &[u8], value: &[u8]) -> Fields {
    let mut f = base();
    f.push((name.to_vec(), value.to_vec()));
    f
}

/// [`base`] without `name`.
fn without(name: &str) -> Fields {
    let mut f = base();
    f.retain(|(n, _)| n != name.as_bytes());
    f
}

/// [`base`] with `name`'s value replaced.
fn set(name: &str, value: &[u8]) -> Fields {
    let mut f = base();
    for (n, v) in &mut f {
        if n == name.as_bytes() {
            *v = value.to_vec();
        }
    }
    f
}

/// A request without a body on stream 1: one `HEADERS` that ends the stream.
fn one(f: &Fields) -> Vec<Frame> {
    vec![headers_on(1, f)]
}

/// A request with `body` on stream 1: `HEADERS`, then one `DATA` that ends it.
fn with_body(f: &Fields, body: &[u8]) -> Vec<Frame> {
    vec![
        Frame::headers(1, flag::END_HEADERS, header_block(f)),
        Frame::data(1, flag::END_STREAM, body.to_vec()),
    ]
}

/// A request without a body on `stream`: `HEADERS` of `f` that ends it.
fn headers_on(stream: u32, f: &Fields) -> Frame {
    Frame::headers(
        stream,
        flag::END_STREAM | flag::END_HEADERS,
        header_block(f),
    )
}

fn pseudo_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for name in [":method", ":scheme", ":path"] {
        cases.push(case(&format!("no {name}"), one(&without(name)), RESET));
    }
    cases.push(case(
        "no :authority and no host",
        one(&without(":authority")),
        "400",
    ));
    for name in [":method", ":scheme", ":path", ":authority"] {
        let want = match name {
            // The method is checked as the header block is decoded: a connection
            // error; an empty :scheme is the proxy's to refuse.
            ":method" => GOAWAY,
            ":scheme" => "400",
            _ => RESET,
        };
        cases.push(case(&format!("empty {name}"), one(&set(name, b"")), want));
    }
    for (name, second) in [
        (":method", "POST"),
        (":scheme", "https"),
        (":path", "/admin"),
        (":authority", "evil"),
    ] {
        cases.push(case(
            &format!("two {name}"),
            one(&with(&[(name, second)])),
            RESET,
        ));
    }
    cases.push(case(
        "unknown pseudo-header :foo",
        one(&with(&[(":foo", "1")])),
        GOAWAY,
    ));
    cases.push(case(
        "upper-case pseudo-header :PATH",
        one(&with(&[(":PATH", "/admin")])),
        GOAWAY,
    ));
    cases.push(case(
        "response pseudo-header :status",
        one(&with(&[(":status", "200")])),
        RESET,
    ));
    cases.push(case(
        ":protocol without extended CONNECT",
        one(&with(&[(":protocol", "websocket")])),
        RESET,
    ));
    let mut late = without(":path");
    late.extend(fields(&[("x-a", "1"), (":path", "/smuggle")]));
    cases.push(case("pseudo-header after a regular one", one(&late), RESET));
    cases.push(case(
        ":path without a leading /",
        one(&set(":path", b"smuggle")),
        RESET,
    ));
    cases.push(case(
        ":path an absolute URI",
        one(&set(":path", b"http://evil/smuggle")),
        RESET,
    ));
    cases.push(case(":path * on GET", one(&set(":path", b"*")), "400"));
    cases.push(case(
        "space in :path",
        one(&set(":path", b"/smu ggle")),
        RESET,
    ));
    cases.push(case(
        "NUL in :path",
        one(&set(":path", b"/smu\0ggle")),
        RESET,
    ));
    cases.push(case(
        "non-UTF-8 :path",
        one(&set(":path", b"/smu\xffggle")),
        GOAWAY,
    ));
    cases.push(case(
        "invalid :method token",
        one(&set(":method", b"G ET")),
        GOAWAY,
    ));
    cases.push(case(
        "invalid :scheme",
        one(&set(":scheme", b"ht tp")),
        RESET,
    ));
    cases.push(case(
        "space in :authority",
        one(&set(":authority", b"we b")),
        RESET,
    ));
    cases.push(case(
        "userinfo in :authority",
        one(&set(":authority", b"user@web")),
        "400",
    ));
    let connect =
        |extra: (&str, &str)| fields(&[(":method", "CONNECT"), (":authority", "web:80"), extra]);
    cases.push(case(
        "CONNECT with :path",
        one(&connect((":path", "/smuggle"))),
        RESET,
    ));
    cases.push(case(
        "CONNECT with :scheme",
        one(&connect((":scheme", "http"))),
        RESET,
    ));
    cases.push(case(
        "host disagrees with :authority",
        one(&with(&[("host", "evil")])),
        "400",
    ));
    cases.push(case(
        "two host headers",
        one(&with(&[("host", "web"), ("host", "evil")])),
        "400",
    ));
    cases
}

fn field_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for (name, value) in [
        ("connection", "keep-alive"),
        ("keep-alive", "timeout=5"),
        ("proxy-connection", "keep-alive"),
        ("transfer-encoding", "chunked"),
        ("upgrade", "websocket"),
        ("te", "gzip"),
        ("te", "trailers, gzip"),
    ] {
        cases.push(case(
            &format!("{name}: {value}"),
            one(&with(&[(name, value)])),
            RESET,
        ));
    }
    for (what, name, value) in [
        ("upper-case name", &b"X-Upper"[..], &b"1"[..]),
        ("space in a name", b"x a", b"1"),
        ("colon in a name", b"x:a", b"1"),
        ("NUL in a name", b"x\0a", b"1"),
        ("CR in a name", b"x\ra", b"1"),
        ("LF in a name", b"x\na", b"1"),
        ("CR in a value", b"x-a", b"1\r2"),
        ("LF in a value", b"x-a", b"1\n2"),
        ("NUL in a value", b"x-a", b"1\x002"),
        ("CRLF header injection", b"x-a", b"1\r\nhost: evil"),
        ("DEL in a value", b"x-a", b"1\x7f2"),
    ] {
        // Names and values are checked as the block is decoded: connection errors.
        cases.push(case(what, one(&with_raw(name, value)), GOAWAY));
    }
    cases.push(case("empty name", one(&with_raw(b"", b"1")), GOAWAY));
    for (what, value) in [
        ("leading space in a value", &b" 1"[..]),
        ("trailing tab in a value", b"1\t"),
    ] {
        cases.push(case(what, one(&with_raw(b"x-a", value)), "400"));
    }
    cases
}

fn body_cases() -> Vec<Case> {
    let post = |cl: &[&str]| {
        let mut f = set(":method", b"POST");
        for v in cl {
            f.extend(fields(&[("content-length", v)]));
        }
        f
    };
    vec![
        case("content-length 5, no DATA", one(&post(&["5"])), RESET),
        case(
            "DATA longer than content-length",
            with_body(&post(&["5"]), b"0123456789"),
            RESET,
        ),
        case(
            "DATA shorter than content-length",
            with_body(&post(&["10"]), b"01234"),
            RESET,
        ),
        case(
            "content-length list",
            with_body(&post(&["5, 5"]), b"01234"),
            RESET,
        ),
        case(
            "two different content-lengths",
            with_body(&post(&["5", "6"]), b"01234"),
            RESET,
        ),
        case(
            "negative content-length",
            with_body(&post(&["-5"]), b"01234"),
            RESET,
        ),
    ]
}

fn frame_cases() -> Vec<Case> {
    let block = header_block(&base());
    let (first, rest) = block.split_at(block.len() / 2);
    let mut cases = vec![
        Case {
            stream: 0,
            ..case("HEADERS on stream 0", vec![headers_on(0, &base())], GOAWAY)
        },
        Case {
            stream: 2,
            ..case(
                "HEADERS on an even stream",
                vec![headers_on(2, &base())],
                GOAWAY,
            )
        },
        case(
            "a stream id below one already used",
            vec![headers_on(3, &head_for("/admin")), headers_on(1, &base())],
            GOAWAY,
        ),
        case(
            "DATA on an idle stream",
            vec![Frame::data(1, flag::END_STREAM, b"x".to_vec())],
            GOAWAY,
        ),
        case(
            "DATA after END_STREAM",
            vec![
                headers_on(1, &head_for("/admin")),
                Frame::data(1, flag::END_STREAM, b"x".to_vec()),
            ],
            GOAWAY,
        ),
        case(
            "DATA between HEADERS and CONTINUATION",
            vec![
                Frame::headers(1, 0, first.to_vec()),
                Frame::data(1, 0, b"x".to_vec()),
                Frame::continuation(1, flag::END_HEADERS, rest.to_vec()),
            ],
            GOAWAY,
        ),
        case(
            "another stream's HEADERS before CONTINUATION",
            vec![
                Frame::headers(1, 0, first.to_vec()),
                headers_on(3, &base()),
                Frame::continuation(1, flag::END_HEADERS, rest.to_vec()),
            ],
            GOAWAY,
        ),
        case(
            "CONTINUATION on another stream",
            vec![
                Frame::headers(1, 0, first.to_vec()),
                Frame::continuation(3, flag::END_HEADERS, rest.to_vec()),
            ],
            GOAWAY,
        ),
        case(
            "CONTINUATION without HEADERS",
            vec![Frame::continuation(1, flag::END_HEADERS, block.clone())],
            GOAWAY,
        ),
        case(
            "padding longer than the frame",
            vec![Frame::new(
                kind::HEADERS,
                flag::PADDED | flag::END_HEADERS | flag::END_STREAM,
                1,
                [&[200u8][..], &block].concat(),
            )],
            GOAWAY,
        ),
        case(
            "stream depends on itself",
            vec![Frame::new(
                kind::HEADERS,
                flag::PRIORITY | flag::END_HEADERS | flag::END_STREAM,
                1,
                [&[0u8, 0, 0, 1, 16][..], &block].concat(),
            )],
            RESET,
        ),
    ];
    // A CONTINUATION flood: a header block that never ends, a field a frame.
    let mut flood = vec![Frame::headers(1, 0, block.clone())];
    for i in 0..200 {
        let field = header_block(&fields(&[(&format!("x-{i}"), "1")]));
        flood.push(Frame::continuation(1, 0, field));
    }
    cases.push(case(
        "CONTINUATION flood",
        flood,
        "GOAWAY(ENHANCE_YOUR_CALM)",
    ));
    cases
}

fn size_cases() -> Vec<Case> {
    let big =
        |f: &Fields| Frame::header_frames(1, flag::END_STREAM, &header_block(f), DEFAULT_MAX_FRAME);
    let one_big = with(&[("x-big", &"a".repeat(70 * 1024))]);
    let many: Vec<(String, String)> = (0..2000)
        .map(|i| (format!("x-{i:04}"), "v".repeat(32)))
        .collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let huge = with(&[("x-huge", &"a".repeat(1024 * 1024))]);
    vec![
        case("a 70 KiB header", big(&one_big), "431"),
        case("2000 headers, 140 KiB listed", big(&with(&many)), "431"),
        case("a 1 MiB header", big(&huge), "GOAWAY(ENHANCE_YOUR_CALM)"),
    ]
}

/// What the proxy's own headers cannot buy: a forged identity on the ops-only route.
fn identity_cases() -> Vec<Case> {
    let mut forged = head_for("/admin");
    forged.extend(fields(&[(
        "pillion-peer-identity",
        "spiffe://cluster.local/ns/ops/sa/tool",
    )]));
    vec![case("forged pillion-peer-identity", one(&forged), "403")]
}

/// Sends `frames` on a fresh h2c connection from `pod` to `target`; what the
/// server did to `stream`.
fn outcome(pod: &Pod, target: SocketAddr, frames: &[Frame], stream: u32) -> String {
    let bytes = connection(frames);
    pod.run(move || async move {
        exchange(
            target,
            bytes,
            stream,
            Duration::from_millis(300),
            Duration::from_secs(10),
        )
        .await
        .unwrap_or_else(|e| format!("error: {e}"))
    })
    .unwrap()
}

/// Requests every application has handled so far.
fn app_requests(w: &HttpWorld) -> usize {
    w.apps
        .iter()
        .map(|a| {
            a.stats
                .counters
                .requests
                .load(std::sync::atomic::Ordering::SeqCst)
        })
        .sum()
}

#[test]
fn malformed_h2_requests_are_refused_before_the_app() {
    let w = HttpWorld::start("h2_edges", &testbin(), &sidecar_opts(), ROUTES, INBOUND).unwrap();
    let (c, a) = (w.pods.c.clone(), w.pods.a.clone());
    let b1 = SocketAddr::new(w.pods.b1.ipv4(), APP_PORT);
    let vip: SocketAddr = VIP.parse().unwrap();

    // The harness can pass: a well-formed request is answered by the application.
    let control = one(&head_for("/echo"));
    assert_eq!(outcome(&c, b1, &control, 1), "200", "{}", w.dump());
    assert_eq!(outcome(&a, vip, &control, 1), "200", "{}", w.dump());

    let cases: Vec<Case> = [
        pseudo_cases(),
        field_cases(),
        body_cases(),
        frame_cases(),
        size_cases(),
        identity_cases(),
    ]
    .into_iter()
    .flatten()
    .collect();
    assert!(cases.len() >= 30, "{} cases", cases.len());
    let before = app_requests(&w);
    let mut wrong = Vec::new();
    for case in &cases {
        let plain = outcome(&c, b1, &case.frames, case.stream);
        let meshed = outcome(&a, vip, &case.frames, case.stream);
        println!("{:45} plaintext {plain:32} meshed {meshed}", case.what);
        if plain != case.want || meshed != case.want {
            wrong.push(format!(
                "{}: want {}, got plaintext {plain} meshed {meshed}",
                case.what, case.want
            ));
        }
    }
    let seen = app_requests(&w) - before;
    let smuggled: usize = w.apps.iter().map(|a| a.stats.count("smuggle")).sum();
    let admin: usize = w.apps.iter().map(|a| a.stats.count("admin")).sum();
    assert!(wrong.is_empty(), "{}\n{}", wrong.join("\n"), w.dump());
    assert_eq!(
        (seen, smuggled, admin),
        (0, 0, 0),
        "the application saw requests"
    );

    // A gap left to h2: RFC 9113 §8.1 makes a pseudo-header in trailers malformed,
    // but h2 drops it and delivers the rest, so the request (a well-formed head
    // and body) reaches the application and the trailer's `:path` goes nowhere.
    // Pinned so that a stricter h2 shows up here.
    let mut post = base();
    post[0].1 = b"POST".to_vec();
    post.extend(fields(&[("content-length", "5")]));
    let trailers = vec![
        Frame::headers(1, flag::END_HEADERS, header_block(&post)),
        Frame::data(1, 0, b"01234".to_vec()),
        Frame::headers(
            1,
            flag::END_STREAM | flag::END_HEADERS,
            header_block(&fields(&[(":path", "/admin")])),
        ),
    ];
    assert_eq!(outcome(&c, b1, &trailers, 1), "200");
    assert_eq!(outcome(&a, vip, &trailers, 1), "200");
    let admin: usize = w.apps.iter().map(|a| a.stats.count("admin")).sum();
    assert_eq!(admin, 0, "a trailer's :path was routed");
}

/// Well-formed requests that look unusual still reach the application: the
/// strictness above refuses only what RFC 9113 calls malformed.
#[test]
fn well_formed_h2_requests_pass() {
    let w = HttpWorld::start("h2_edges_ok", &testbin(), &sidecar_opts(), ROUTES, INBOUND).unwrap();
    let (c, a) = (w.pods.c.clone(), w.pods.a.clone());
    let b1 = SocketAddr::new(w.pods.b1.ipv4(), APP_PORT);
    let vip: SocketAddr = VIP.parse().unwrap();
    let mut host_only = head_for("/echo");
    host_only.retain(|(n, _)| n != b":authority");
    host_only.extend(fields(&[("host", "web")]));
    let mut post = head_for("/big");
    post[0].1 = b"POST".to_vec();
    post.extend(fields(&[("content-length", "5")]));
    let mut options = head_for("*");
    options[0].1 = b"OPTIONS".to_vec();
    let cases: Vec<(&str, Vec<Frame>)> = vec![
        ("GET /echo", one(&head_for("/echo"))),
        (
            "te: trailers",
            one(&{
                let mut f = head_for("/echo");
                f.extend(fields(&[("te", "trailers")]));
                f
            }),
        ),
        ("host instead of :authority", one(&host_only)),
        (
            "host equal to :authority",
            one(&{
                let mut f = head_for("/echo");
                f.extend(fields(&[("host", "web")]));
                f
            }),
        ),
        ("POST with its content-length", with_body(&post, b"01234")),
        ("OPTIONS *", one(&options)),
    ];
    let mut wrong = Vec::new();
    for (what, frames) in &cases {
        let plain = outcome(&c, b1, frames, 1);
        let meshed = outcome(&a, vip, frames, 1);
        println!("{what:45} plaintext {plain:32} meshed {meshed}");
        if (plain.as_str(), meshed.as_str()) != ("200", "200") {
            wrong.push(format!("{what}: plaintext {plain} meshed {meshed}"));
        }
    }
    assert!(wrong.is_empty(), "{}\n{}", wrong.join("\n"), w.dump());
}
