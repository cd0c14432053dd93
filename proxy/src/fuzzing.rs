//! Entry points of the proxy's fuzz targets (`fuzz/fuzz_targets/`), not an API.
//!
//! Each function takes arbitrary bytes and runs them through the real code, in
//! memory, without a network: protocol detection ([`detect_http`], [`detect_tls`]),
//! an HTTP/1 request head served by hyper the way the proxy serves it, then routed,
//! edited and rewritten by a compiled state ([`http_head`]), a view from the agent
//! read and compiled ([`view_json`]), end users' tokens and key sets ([`jwt`]), and
//! the response cache's reading of request and answer heads ([`cache_head`]), and a
//! request at the gateway: its host, redirect and API key ([`gateway_request`]), and a
//! body through a route's transforms ([`transform_body`]). They
//! panic only when an invariant breaks; the replay test below runs every committed
//! corpus file through them on stable.

use std::cell::Cell;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response};
use http_body_util::Empty;
use hyper::body::Incoming;
use pillion_api::policy::OWN_HEADER_PREFIX;
use pillion_api::view::View;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use crate::app::settings::Settings;
use crate::detect::http::{classify, detect_peeked, detect_strict, Verdict};
use crate::detect::{tls, Peek, MAX_DETECT_BYTES};
use crate::http::hop;
use crate::http::server::MAX_REQUEST_HEAD;
use crate::policy::authz::set_peer_identity;
use crate::state::resolved::{Resolved, Usage};
use crate::state::State;
use crate::telemetry::metrics::http::HttpMetrics;

/// A connection whose peer sends `data` in reads of at most `chunk` bytes, then
/// closes; whatever is written to it is dropped.
struct Trickle {
    data: Bytes,
    chunk: usize,
    /// Bytes read so far.
    read: Rc<Cell<usize>>,
}

impl Trickle {
    fn new(data: &[u8], chunk: usize) -> Trickle {
        Trickle {
            data: Bytes::copy_from_slice(data),
            chunk,
            read: Rc::default(),
        }
    }
}

impl AsyncRead for Trickle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.chunk.min(self.data.len()).min(buf.remaining());
        let head = self.data.split_to(n);
        buf.put_slice(&head);
        self.read.set(self.read.get() + n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Trickle {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The chunk size a case's first byte asks for: byte by byte up to whole reads. Long
/// inputs arrive in at most 64 reads, so a case costs the same however it is split.
fn chunk_for(seed: u8, len: usize) -> usize {
    let asked = match seed % 4 {
        0 => usize::MAX,
        1 => 1,
        _ => 1 + usize::from(seed / 4),
    };
    asked.max(len / 64).max(1)
}

thread_local! {
    /// One runtime per thread (the replay tests run on several), reused by every case.
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime builds");
}

/// Runs `f` on this thread's runtime.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    RUNTIME.with(|rt| rt.block_on(f))
}

/// Long enough never to fire: a [`Trickle`] is always ready.
const NEVER: Duration = Duration::from_secs(3600);

/// HTTP detection. Input: one byte choosing how the peer splits its bytes, then the
/// bytes. Checks that the verdict (auto and strict) is the same whole and trickled,
/// and that detection hands on every byte it read.
pub fn detect_http(data: &[u8]) {
    let Some((&seed, bytes)) = data.split_first() else {
        return;
    };
    let bytes = &bytes[..bytes.len().min(MAX_DETECT_BYTES + 1024)];
    let whole = classify(bytes);
    block_on(async {
        let mut protocols = Vec::new();
        for chunk in [usize::MAX, chunk_for(seed, bytes.len())] {
            let io = Trickle::new(bytes, chunk);
            let read = Rc::clone(&io.read);
            let (protocol, _, mut rewind) = detect_peeked(Peek::new(io, NEVER)).await;
            protocols.push(protocol);
            let seen = read.get();
            let at = &bytes[..seen];
            if let Verdict::Is(p) = classify(at) {
                assert_eq!(p, protocol, "chunk {chunk}: verdict at {seen} bytes");
                if let Verdict::Is(w) = whole {
                    assert_eq!(w, protocol, "chunk {chunk}: the whole buffer disagrees");
                }
            }
            let mut all = Vec::new();
            rewind.read_to_end(&mut all).await.expect("memory reads");
            assert_eq!(all, bytes, "chunk {chunk}: detection lost or added bytes");
        }
        assert_eq!(
            protocols[0], protocols[1],
            "the verdict depends on the split"
        );
        let mut strict = Vec::new();
        for chunk in [usize::MAX, chunk_for(seed, bytes.len())] {
            let io = Trickle::new(bytes, chunk);
            let (verdict, mut rewind) = detect_strict(Peek::new(io, NEVER), NEVER).await;
            strict.push(verdict);
            let mut all = Vec::new();
            rewind.read_to_end(&mut all).await.expect("memory reads");
            assert_eq!(all, bytes, "strict, chunk {chunk}: lost or added bytes");
        }
        assert_eq!(strict[0], strict[1], "strict verdict depends on the split");
    });
}

/// Mesh TLS detection (a ClientHello offering `pillion/1`, or plain). Input: one byte
/// choosing the split, then the bytes. Checks that plain connections hand on every
/// byte, and that the verdict does not depend on how the bytes arrive.
pub fn detect_tls(data: &[u8]) {
    let Some((&seed, bytes)) = data.split_first() else {
        return;
    };
    let bytes = &bytes[..bytes.len().min(MAX_DETECT_BYTES + 1024)];
    block_on(async {
        let mut verdicts = Vec::new();
        for chunk in [usize::MAX, chunk_for(seed, bytes.len())] {
            let io = Trickle::new(bytes, chunk);
            match tls::detect(Peek::new(io, NEVER)).await {
                tls::Detected::Mesh(_) => verdicts.push(None),
                tls::Detected::Plain(reason, peek) => {
                    verdicts.push(Some(reason));
                    let mut rewind = peek.into_rewind();
                    let mut all = Vec::new();
                    rewind.read_to_end(&mut all).await.expect("memory reads");
                    assert_eq!(all, bytes, "chunk {chunk}: detection lost or added bytes");
                }
            }
        }
        assert_eq!(
            verdicts[0], verdicts[1],
            "the TLS verdict depends on the split (None: mesh)"
        );
    });
}

/// The state the HTTP target routes with: one service port with routes of every
/// kind (exact, prefix with rewrite and edits, regex, headers, method) and one
/// inbound port with server routes.
const HTTP_VIEW: &str = r#"{"version": 1, "identity": "spiffe://cluster.local/ns/demo/sa/client",
  "services": [{"name": "web", "namespace": "demo", "addresses": ["198.18.0.100"],
    "ports": [{"port": 80, "routes": [
      {"name": "health", "matches": [{"path": {"exact": "/health"}, "method": "GET"}]},
      {"name": "api", "matches": [{"path": {"prefix": "/api/"}}],
       "rewrite": {"prefix": "/v2"},
       "request_headers": {"set": {"x-set": "1"}, "add": {"x-add": "2"}, "remove": ["x-drop"]}},
      {"name": "root", "matches": [{"path": {"prefix": "/static"}}], "rewrite": {"prefix": "/"}},
      {"name": "items", "matches": [{"path": {"regex": "/items/[0-9]+"},
        "headers": [{"name": "x-version", "value": {"regex": "v[12]"}}]}]},
      {"name": "canary", "matches": [{"headers": [{"name": "x-canary", "value": {"exact": "yes"}}]}],
       "rewrite": {"prefix": "/canary/"}}]}],
    "endpoints": [{"address": "198.18.0.3", "port": 80}]}],
  "inbound": {"default_mode": "permissive", "ports": {
    "8080": {"mode": "permissive", "server": {"routes": [
      {"name": "admin", "matches": [{"path": {"prefix": "/admin"}}],
       "allow": ["spiffe://cluster.local/ns/ops/*"]},
      {"name": "open", "matches": [{"path": {"regex": "/o.*"}, "method": "POST"}]}]}}}}}"#;

/// Where the HTTP target's requests were sent: the service's address.
const SERVICE: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(198, 18, 0, 100)),
    80,
);

struct HttpWorld {
    state: State,
    metrics: HttpMetrics,
    peer: HeaderValue,
}

fn http_world() -> &'static HttpWorld {
    static WORLD: OnceLock<HttpWorld> = OnceLock::new();
    WORLD.get_or_init(|| {
        let view: View = serde_json::from_str(HTTP_VIEW).expect("the fuzz view parses");
        let metrics = HttpMetrics::default();
        let state = State::compile(
            &view,
            &Default::default(),
            &State::default(),
            &Settings::default(),
            &metrics,
            Instant::now(),
        );
        HttpWorld {
            state,
            metrics,
            peer: HeaderValue::from_static("spiffe://cluster.local/ns/ops/sa/x"),
        }
    })
}

/// What both directions decide about one request head, as their handlers do: the
/// outbound route, edits and rewrite into the upstream URI; the inbound route and
/// its authorization.
fn route_head(parts: &http::request::Parts) {
    let world = http_world();
    let _ = hop::upgrade_requested(&parts.method, parts.version, &parts.headers);

    // Outbound, as `outbound::http` builds the template every try sends.
    let mut out = clone_parts(parts);
    if let Some(target) = world.state.outbound().target(SERVICE) {
        let (route, matched_prefix) = target.port.select(&out);
        if hop::check_head(&out).is_ok() {
            hop::strip_hop_by_hop(&mut out.headers);
            hop::strip_own_headers(&mut out.headers);
            route.request_edits.apply(&mut out.headers);
            let path_and_query = match (&route.rewrite, matched_prefix) {
                (Some(rewriter), Some(prefix)) => {
                    let rewritten = rewriter.rewrite_path_and_query(&out.uri, prefix);
                    let parsed = PathAndQuery::try_from(rewritten.as_str());
                    assert!(
                        parsed.is_ok(),
                        "rewrite made an invalid path: {rewritten:?}"
                    );
                    parsed.ok()
                }
                _ => Some(hop::path_and_query(&out)),
            };
            if let Some(pq) = path_and_query {
                if let Ok(uri) = hop::upstream_uri(&out, SERVICE, pq.clone()) {
                    assert_eq!(uri.path_and_query(), Some(&pq));
                }
            }
            let own = out
                .headers
                .keys()
                .find(|n| n.as_str().starts_with(OWN_HEADER_PREFIX));
            assert!(own.is_none(), "{own:?} left in an outbound request");
        }
    }

    // Inbound, as `inbound::http` judges a request from a verified peer and from a
    // plaintext caller.
    let port = world.state.inbound().port(8080, &world.metrics);
    for peer in [Some(&world.peer), None] {
        let mut inb = clone_parts(parts);
        if peer.is_some() {
            let _ = hop::take_orig_proto(&mut inb.headers);
        }
        hop::strip_own_headers(&mut inb.headers);
        set_peer_identity(&mut inb.headers, peer);
        let route = port.select(&inb);
        let identity = peer.map(|_| "spiffe://cluster.local/ns/ops/sa/x");
        let _ = route.authz.check(identity);
        if hop::check_head(&inb).is_ok() {
            hop::strip_hop_by_hop(&mut inb.headers);
            let pq = hop::path_and_query(&inb);
            let _ = hop::upstream_uri(&inb, SocketAddr::from(([198, 18, 0, 3], 8080)), pq);
        }
    }
}

fn clone_parts(parts: &http::request::Parts) -> http::request::Parts {
    let mut req = Request::new(());
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    req.into_parts().0
}

/// HTTP/1 request heads: `data` is what a client sends on a connection detected as
/// HTTP/1. hyper parses it with the proxy's limits (as `http::server` does), and each
/// request it accepts goes through `route_head`. Input: one byte choosing the
/// split, then the bytes.
pub fn http_head(data: &[u8]) {
    let Some((&seed, bytes)) = data.split_first() else {
        return;
    };
    let io = Trickle::new(bytes, chunk_for(seed, bytes.len()));
    let service = hyper::service::service_fn(|req: Request<Incoming>| {
        let (parts, _body) = req.into_parts();
        route_head(&parts);
        async { Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new())) }
    });
    block_on(async {
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(NEVER)
            .max_header_size(MAX_REQUEST_HEAD)
            .serve_connection(hyper_util::rt::TokioIo::new(io), service);
        let _ = conn.await;
    });
}

/// A view as the agent's watch stream carries it (one JSON document), read and
/// compiled into the data path's state, then compiled again on top of itself (what
/// carries over between views).
pub fn view_json(data: &[u8]) {
    let Ok(view) = serde_json::from_slice::<View>(data) else {
        return;
    };
    let settings = Settings::default();
    let metrics = HttpMetrics::default();
    let now = Instant::now();
    RUNTIME.with(|rt| {
        let _inside = rt.enter();
        let none = Resolved::default();
        let first = State::compile(&view, &none, &State::default(), &settings, &metrics, now);
        let second = State::compile(&view, &none, &first, &settings, &metrics, now);
        assert_eq!(second.version(), Some(view.version));
        // The same services learned on demand reach the same destinations.
        let learned = Resolved {
            services: (view.services.iter().cloned())
                .map(|s| (Arc::new(s), Arc::new(Usage::new())))
                .collect(),
            outside: Vec::new(),
        };
        let bare = View {
            services: Vec::new(),
            ..view.clone()
        };
        let third = State::compile(&bare, &learned, &second, &settings, &metrics, now);
        assert_eq!(third.outbound().len(), first.outbound().len());
    });
}

/// The JWK Set of the [`jwt`] target: RFC 7517 §A.1's P-256 key and RFC 8037
/// §A.2's Ed25519 key.
const FUZZ_JWKS: &str = r#"{"keys":[
  {"kty":"EC","crv":"P-256","kid":"1","x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4","y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"},
  {"kty":"OKP","crv":"Ed25519","kid":"ed","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;

/// End-user tokens. With the first byte even, the rest is a token sent as
/// `Authorization: Bearer` and as a cookie to a port whose providers trust
/// [`FUZZ_JWKS`], and must be refused (the fuzzer holds no signing key: a token it
/// makes that passes is a bypass); with it odd, the rest is a JWK Set that must be
/// read or refused. Never a panic either way.
pub fn jwt(data: &[u8]) {
    use crate::policy::jwt::{unix_now, Authenticator, ClaimRules};
    use pillion_api::jwt::{JwtPolicy, JwtProvider, TokenSource, DEFAULT_CLOCK_SKEW};

    let Some((first, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    if first & 1 == 1 {
        let _ = pillion_api::jwt::parse_jwks(&text);
        return;
    }
    static AUTH: OnceLock<Option<Authenticator>> = OnceLock::new();
    let auth = AUTH.get_or_init(|| {
        let provider = JwtProvider {
            issuer: "https://issuer.fuzz".into(),
            audiences: vec!["fuzz".into()],
            jwks: FUZZ_JWKS.into(),
            jwks_uri: None,
            from: vec![
                TokenSource::Header {
                    name: "authorization".into(),
                    prefix: Some("Bearer ".into()),
                },
                TokenSource::Cookie("session".into()),
            ],
            clock_skew: DEFAULT_CLOCK_SKEW,
            claim_headers: [("sub".to_string(), "x-user".to_string())].into(),
            forward_token: false,
        };
        Authenticator::new(&JwtPolicy {
            providers: vec![provider],
            introspection: None,
            required: true,
        })
        .ok()
    });
    let Some(auth) = auth else {
        panic!("the fuzz target's own policy must compile");
    };
    let places = [
        ("authorization", format!("Bearer {text}")),
        ("cookie", format!("theme=x; session={text}")),
    ];
    for (name, value) in places {
        let Ok(value) = HeaderValue::from_str(&value) else {
            continue;
        };
        let mut headers = http::HeaderMap::new();
        headers.insert(name, value);
        let result = auth.authenticate(true, &ClaimRules::default(), &mut headers, unix_now());
        assert!(
            result.is_err(),
            "a token nobody signed was accepted: {text:?}"
        );
        assert!(headers.get("x-user").is_none());
    }
}

/// An introspection endpoint's answer (the network's bytes) about an opaque token,
/// judged for a route that needs scope `fuzz.read`: never a panic, and a request
/// passes only when the answer is a JSON object whose `active` is `true`; the
/// claim header comes from the answer or is absent, never from the caller.
pub fn introspection_answer(data: &[u8]) {
    use crate::policy::jwt::{unix_now, Authenticator, Checked, ClaimRules};
    use pillion_api::jwt::JwtPolicy;

    static AUTH: OnceLock<Option<Authenticator>> = OnceLock::new();
    let auth = AUTH.get_or_init(|| {
        // cache_ttl 0: every run asks, none is answered from an earlier one.
        let policy: JwtPolicy = serde_json::from_value(serde_json::json!({
            "introspection": {"service": "idp/oauth", "port": 9000, "issuer": "https://idp.fuzz",
                "audiences": ["fuzz"], "cache_ttl": "0s", "claim_headers": {"sub": "x-user"}}
        }))
        .ok()?;
        Authenticator::new(&policy).ok()
    });
    let Some(auth) = auth else {
        return;
    };
    let rules = ClaimRules::new(&std::collections::BTreeMap::from([(
        "scope".to_string(),
        vec!["fuzz.read".to_string()],
    )]));
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_static("Bearer opaque-fuzz-token"),
    );
    headers.insert("x-user", HeaderValue::from_static("mallory"));
    let now = unix_now();
    let Ok(Checked::Ask(ask)) = auth.authenticate(true, &rules, &mut headers, now) else {
        panic!("an opaque token must be asked about");
    };
    let settled = auth.settle(ask, data, &rules, &mut headers, now);
    assert_ne!(
        headers.get("x-user").map(|v| v.as_bytes()),
        Some(&b"mallory"[..]),
        "the caller's claim header survived"
    );
    if settled.is_ok() {
        let answer: serde_json::Value = serde_json::from_slice(data).unwrap_or_default();
        assert_eq!(
            answer.get("active"),
            Some(&serde_json::Value::Bool(true)),
            "an answer that is not active let a request through: {answer}"
        );
    }
}

/// A body for a route's transforms: read as XML and, if that works, written back
/// and read again, which must give the same JSON; read as JSON and run through
/// edits of every kind and written as XML. Nothing may panic.
pub fn transform_body(data: &[u8]) {
    use crate::policy::transform::{json::Edits, xml};
    use pillion_api::transform::JsonEdit;
    use serde_json::{json, Value};

    static EDITS: OnceLock<Option<Edits>> = OnceLock::new();
    let edits = EDITS.get_or_init(|| {
        let list: Vec<JsonEdit> = serde_json::from_value(json!([
            {"set": {"path": "/a/b/-", "value": [1, {"c": null}]}},
            {"remove": {"path": "/x/0/y"}},
            {"rename": {"path": "/order/id", "to": "@id"}},
            {"move": {"from": "/0", "to": "/moved/1"}},
            {"set": {"path": "/0/~1/~0", "value": "z"}},
        ]))
        .ok()?;
        Edits::compile(&list)
    });
    if let Ok(doc) = xml::to_json(data) {
        if let Ok(written) = xml::from_json(&doc, None) {
            let again = xml::to_json(&written);
            assert!(
                matches!(&again, Ok(again) if *again == doc),
                "XML read, written and read again changed: {doc} -> {again:?}"
            );
        }
    }
    if let Ok(mut doc) = serde_json::from_slice::<Value>(data) {
        let _ = xml::from_json(&doc, Some("root"));
        if let Some(edits) = edits {
            let _ = edits.apply(&mut doc);
        }
        let _ = xml::from_json(&doc, None);
    }
}

/// A request head and an answer head for the response cache: the bytes up to the
/// first blank line are the request's `name: value` lines, the rest the answer's
/// (its first line, if it is a number, the status). Invariants: what is kept never
/// carries `no-store`, `private` or `Set-Cookie`, is never fresh past the route's
/// bound, and callers with different credentials never share a key.
pub fn cache_head(data: &[u8]) {
    use crate::policy::cache::control::Directives;
    use crate::policy::cache::freshness::{storable, Limits};
    use crate::policy::cache::key::KeyRules;
    use crate::policy::cache::store::{Store, Stored};
    use crate::policy::cache::{self, Ask, RouteCache};
    use http::header::{HeaderMap, HeaderName};
    use http::StatusCode;

    fn head(text: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for line in text.lines() {
            if let Some((name, value)) = line.split_once(':') {
                if let (Ok(n), Ok(v)) = (
                    HeaderName::from_bytes(name.trim().as_bytes()),
                    HeaderValue::from_bytes(value.trim().as_bytes()),
                ) {
                    headers.append(n, v);
                }
            }
        }
        headers
    }

    let text = String::from_utf8_lossy(data);
    let (asked, answered) = text.split_once("\n\n").unwrap_or((&text, ""));
    let (status, answered) = match answered.split_once('\n') {
        Some((first, rest)) => match first.trim().parse::<u16>() {
            Ok(code) => (StatusCode::from_u16(code).unwrap_or(StatusCode::OK), rest),
            Err(_) => (StatusCode::OK, answered),
        },
        None => (StatusCode::OK, answered),
    };
    let request_head = head(asked);
    let answer_head = head(answered);
    let limits = Limits {
        default_ttl: Some(Duration::from_secs(10)),
        max_ttl: Duration::from_secs(3600),
    };
    let _ = Directives::of(&request_head);
    let policy = pillion_api::cache::ResponseCache::default();
    let store = Arc::new(Store::new(1 << 20));
    let Ok(route) = RouteCache::new(&policy, "fuzz/web", 80, "r", store) else {
        panic!("the fuzz target's own cache must compile");
    };
    let mut builder = Request::get("http://web/a?b=c");
    for (name, value) in &request_head {
        builder = builder.header(name, value);
    }
    let Ok(request) = builder.body(()) else {
        return;
    };
    let (parts, ()) = request.into_parts();
    let lookup = match route.ask(&parts, false) {
        Ask::Lookup(lookup) => lookup,
        Ask::Bypass => return,
    };
    let Ok(freshness) = storable(
        status,
        &answer_head,
        false,
        &limits,
        std::time::SystemTime::now(),
    ) else {
        return;
    };
    let cc = Directives::of(&answer_head);
    assert!(
        !cc.no_store && !cc.private && !cc.malformed,
        "{answer_head:?}"
    );
    assert!(!answer_head.contains_key(http::header::SET_COOKIE));
    assert!(freshness.lifetime <= limits.max_ttl);
    let stored = Stored {
        status,
        headers: cache::detached(&answer_head),
        body: Bytes::new(),
        stored_at: Instant::now(),
        freshness,
    };
    let now = Instant::now();
    let _ = lookup.reuses(&stored, now);
    let _ = cache::not_modified(&request_head, &stored);
    let _ = cache::answer(&stored, now, true);
    let _ = cache::refresh(&stored.headers, &request_head);
    let variant = KeyRules::variant(&lookup.primary, &stored.freshness.vary, &request_head);
    // Another caller's credentials never meet this key.
    let mut other = request_head.clone();
    other.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_static("Bearer someone-else"),
    );
    if other
        .get_all(http::header::AUTHORIZATION)
        .iter()
        .ne(request_head.get_all(http::header::AUTHORIZATION).iter())
    {
        let theirs = route
            .rules
            .primary(&parts.method, b"web", b"/a?b=c", &other);
        assert_ne!(theirs, lookup.primary);
        assert_ne!(
            KeyRules::variant(&theirs, &stored.freshness.vary, &other),
            variant
        );
    }
}

/// A request at the gateway: the first line its target (`/path`, or an absolute
/// `https://host/…`), the first byte of the second its version (`2`: HTTP/2), the
/// rest `name: value` header lines. Through the host read, the redirect, the API key
/// check and the version towards the application. Invariants: a host read is
/// lowercase, portless and holds only what a DNS name or a bracketed IPv6 literal
/// can; a redirect points at that host over HTTPS; the key never survives the check,
/// a client's `id_header` never survives unless a known key set it, and a key that
/// passes is the one entry whose hash it has.
pub fn gateway_request(data: &[u8]) {
    use crate::gateway::host::request_host;
    use crate::gateway::redirect;
    use crate::policy::api_key::{KeyMetrics, KeyTable};
    use http::header::{HeaderName, LOCATION};
    use http::Version;

    const KEY: &str = "fuzz-key-0001";
    static TABLE: OnceLock<KeyTable> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let hash: String = ring::digest::digest(&ring::digest::SHA256, KEY.as_bytes())
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let policy: pillion_api::api_keys::ApiKeys = serde_json::from_value(serde_json::json!({
            "id_header": "x-key-id",
            "plans": [{"name": "p", "quota": {"requests": 1_000_000_000u64, "per": "day"}}],
            "keys": [{"id": "fuzz", "sha256": hash, "plan": "p"}]
        }))
        .unwrap_or_else(|e| panic!("the fuzz target's own keys must parse: {e}"));
        let built = KeyTable::new(
            &policy,
            None,
            |_, _| KeyMetrics::default(),
            Default::default(),
            Instant::now(),
        );
        built.unwrap_or_else(|e| panic!("the fuzz target's own keys must compile: {e}"))
    });

    let text = String::from_utf8_lossy(data);
    let mut lines = text.lines();
    let target = lines.next().unwrap_or("/");
    let version = match lines.next().and_then(|l| l.bytes().next()) {
        Some(b'2') => Version::HTTP_2,
        _ => Version::HTTP_11,
    };
    let mut builder = Request::get(target).version(version);
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.trim().as_bytes()),
                HeaderValue::from_bytes(value.trim().as_bytes()),
            ) {
                builder = builder.header(n, v);
            }
        }
    }
    let Ok(request) = builder.body(()) else {
        return;
    };
    let (mut parts, ()) = request.into_parts();

    let host = request_host(&parts).ok().map(|h| h.into_owned());
    if let Some(host) = &host {
        let literal = host.starts_with('[') && host.ends_with(']');
        let allowed = |b: u8| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(b, b'-' | b'.')
                || (literal && matches!(b, b':' | b'[' | b']'))
        };
        assert!(
            !host.is_empty() && host.bytes().all(allowed),
            "host {host:?}"
        );
        assert!(
            !host.ends_with('.') && !host.contains(".."),
            "host {host:?}"
        );
    }
    let answer = redirect::answer(&parts, 8443);
    if answer.status() == http::StatusCode::PERMANENT_REDIRECT {
        let Some(host) = &host else {
            panic!("a redirect for a request whose host cannot be read");
        };
        let location = answer
            .headers()
            .get(LOCATION)
            .map(|v| v.as_bytes().to_vec());
        let location = location.unwrap_or_default();
        let expected = format!("https://{host}:8443/");
        assert!(
            location.starts_with(expected.as_bytes()),
            "{:?} for host {host:?}",
            String::from_utf8_lossy(&location)
        );
    }

    let presented: Vec<Vec<u8>> = (parts.headers.get_all("x-api-key").iter())
        .map(|v| v.as_bytes().to_vec())
        .collect();
    let admitted = table
        .admit(
            &mut parts.headers,
            Instant::now(),
            std::time::SystemTime::now(),
        )
        .map(|k| k.map(|k| k.id.to_string()));
    assert!(parts.headers.get("x-api-key").is_none(), "the key went on");
    match admitted {
        Ok(Some(id)) => {
            assert_eq!(presented, [KEY.as_bytes().to_vec()]);
            assert_eq!(id, "fuzz");
            assert_eq!(parts.headers.get_all("x-key-id").iter().count(), 1);
        }
        _ => assert!(
            parts.headers.get("x-key-id").is_none(),
            "a forged id went on"
        ),
    }
}

#[cfg(test)]
mod tests {
    //! Replays every committed corpus file (`fuzz/corpus/<target>/`), so a crash the
    //! fuzzers once found stays fixed on stable `cargo test`.

    #[test]
    fn replay_detect_http() {
        pillion_api::fuzzing::replay_corpus("detect_http", super::detect_http);
    }

    #[test]
    fn replay_detect_tls() {
        pillion_api::fuzzing::replay_corpus("detect_tls", super::detect_tls);
    }

    #[test]
    fn replay_http_head() {
        pillion_api::fuzzing::replay_corpus("http_head", super::http_head);
    }

    #[test]
    fn replay_transform_body() {
        pillion_api::fuzzing::replay_corpus("transform_body", super::transform_body);
    }

    #[test]
    fn replay_introspection_answer() {
        pillion_api::fuzzing::replay_corpus("introspection_answer", super::introspection_answer);
    }

    #[test]
    fn replay_jwt() {
        pillion_api::fuzzing::replay_corpus("jwt", super::jwt);
    }

    #[test]
    fn replay_cache_head() {
        pillion_api::fuzzing::replay_corpus("cache_head", super::cache_head);
    }

    #[test]
    fn replay_gateway_request() {
        pillion_api::fuzzing::replay_corpus("gateway_request", super::gateway_request);
    }

    #[test]
    fn replay_view_json() {
        pillion_api::fuzzing::replay_corpus("view_json", super::view_json);
    }
}
