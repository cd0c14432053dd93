//! HTTP through the mesh in a world: a client pod and an intruder pod (another
//! namespace), two server pods (`version: v1` and `v2`) running an HTTP application
//! with per-path behaviours, every pod with a sidecar, and the real agent serving a
//! YAML source with routes that a test can rewrite.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

use crate::apps::spawn_listener;
use crate::mesh::{mesh_sidecar_opts, MeshAgent, MeshDir};
use pillion::local::sidecar::{Sidecar, SidecarOpts};
use pillion::local::Pod;
use pillion::local::Task;
use pillion::local::World;
use pillion_testkit::http::{handler, serve, Counters};

/// Port the server applications listen on (the service's target port).
pub const APP_PORT: u16 = 8080;
/// The service VIP clients call.
pub const VIP: &str = "198.18.1.100:80";

/// What one application has seen, shared with the test.
#[derive(Debug, Default)]
pub struct AppStats {
    /// Connections accepted and requests handled.
    pub counters: Arc<Counters>,
    /// Requests by first path segment (`/fail/x` counts under `fail`).
    pub requests: Mutex<HashMap<String, usize>>,
    /// While set, `/sick` answers 500.
    pub sick: AtomicBool,
    /// Extra delay of `/lb`, in milliseconds.
    pub lb_delay_ms: AtomicU64,
}

impl AppStats {
    /// Requests seen under `segment`.
    pub fn count(&self, segment: &str) -> usize {
        self.requests
            .lock()
            .map(|m| m.get(segment).copied().unwrap_or(0))
            .unwrap_or(0)
    }
}

/// A running HTTP application in a pod.
#[derive(Debug)]
pub struct HttpApp {
    /// What it has seen.
    pub stats: Arc<AppStats>,
    _task: Task<()>,
}

/// Starts the test application in `pod` on `port`; `name` comes back in `x-app`.
///
/// Paths: `/echo` reports version, `pillion-orig-proto` and `pillion-peer-identity`;
/// `/headers` lists every request header as `name=value` lines;
/// `/whoami` reports `x-user`, `x-groups`, whether `authorization` came and the
/// `cookie`; `/cache` and `/shared` answer with caching headers ([`cacheable`]); `/flaky` fails 30 % with 503; `/fail` always 503; `/slow` waits 2 s; `/lb` waits
/// the configured delay; `/sick` is 500 while sick; `/big` echoes the body; `/doc`
/// answers JSON and XML documents for body transforms ([`document`]); `/request`
/// answers JSON saying what the request carried (query, host, accept, peer…); a
/// WebSocket upgrade gets an echo socket; anything else is 200.
pub fn spawn_http_app(pod: &Pod, port: u16, name: &'static str) -> Result<HttpApp> {
    let stats = Arc::new(AppStats::default());
    let s = Arc::clone(&stats);
    let handler = handler(move |req| {
        let s = Arc::clone(&s);
        async move { answer(req, name, &s).await.map(BodyExt::boxed) }
    });
    let counters = Arc::clone(&stats.counters);
    let task = spawn_listener(pod, port, "the HTTP app", move |listener| {
        serve(listener, handler, counters)
    })?;
    Ok(HttpApp { stats, _task: task })
}

fn reply(status: u16, name: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    r.headers_mut()
        .insert("x-app", hyper::header::HeaderValue::from_static(name));
    r
}

async fn answer(req: Request<Incoming>, name: &'static str, s: &AppStats) -> Response<Full<Bytes>> {
    let segment = req
        .uri()
        .path()
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or("")
        .to_string();
    if let Ok(mut m) = s.requests.lock() {
        *m.entry(segment.clone()).or_default() += 1;
        if segment == "cache" || segment == "shared" {
            *m.entry(req.uri().path().to_string()).or_default() += 1;
        }
    }
    if req.headers().contains_key("sec-websocket-key") {
        return websocket(req, name);
    }
    match segment.as_str() {
        "echo" => {
            let peer = req
                .headers()
                .get_all("pillion-peer-identity")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect::<Vec<_>>()
                .join(",");
            let text = format!(
                "app={name} version={:?} orig={} peer={peer} path={}",
                req.version(),
                req.headers().contains_key("pillion-orig-proto"),
                req.uri().path()
            );
            reply(200, name, text)
        }
        "headers" => {
            let lines: Vec<String> = (req.headers().iter())
                .map(|(n, v)| format!("{n}={}", String::from_utf8_lossy(v.as_bytes())))
                .collect();
            reply(200, name, lines.join("\n"))
        }
        "whoami" => {
            let all = |name: &str| {
                req.headers()
                    .get_all(name)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect::<Vec<_>>()
                    .join("|")
            };
            let text = format!(
                "user={} groups={} authorization={} cookie={}",
                all("x-user"),
                all("x-groups"),
                !all("authorization").is_empty(),
                all("cookie")
            );
            reply(200, name, text)
        }
        "flaky" if rand_percent() < 30 => reply(503, name, "flaky"),
        "fail" => reply(503, name, "failing"),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            reply(200, name, "slow")
        }
        "lb" => {
            let ms = s.lb_delay_ms.load(Ordering::SeqCst);
            if ms > 0 {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            reply(200, name, "lb")
        }
        "sick" if s.sick.load(Ordering::SeqCst) => reply(500, name, "sick"),
        "cache" | "shared" => cacheable(&req, name, s).await,
        "doc" => document(req, name).await,
        "request" => {
            let header = |n: &str| {
                (req.headers().get(n))
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string()
            };
            let seen = serde_json::json!({
                "app": name,
                "query": req.uri().query().unwrap_or(""),
                "host": header("host"),
                "accept": header("accept"),
                "accept_encoding": header("accept-encoding"),
                "peer": header("pillion-peer-identity"),
                "user": header("x-user"),
                "if_none_match": header("if-none-match"),
            });
            let mut r = reply(200, name, seen.to_string());
            r.headers_mut().insert(
                "content-type",
                hyper::header::HeaderValue::from_static("application/json"),
            );
            r
        }
        "big" => match req.into_body().collect().await {
            Ok(body) => reply(200, name, body.to_bytes()),
            Err(_) => reply(400, name, "body"),
        },
        _ => reply(200, name, "ok"),
    }
}

/// An order as JSON, with a member callers must not see.
pub const ORDER_JSON: &str = r#"{"order":{"id":"7","secret":"s3cret","item":[{"sku":"a1","qty":"2"},{"sku":"b2","qty":"1"}]}}"#;
/// The same order as XML.
pub const ORDER_XML: &str = r#"<?xml version="1.0"?><order id="7"><secret>s3cret</secret><item sku="a1">2</item><item sku="b2">1</item></order>"#;

/// `/doc/<kind>`: `json` and `xml` answer [`ORDER_JSON`] and [`ORDER_XML`] with
/// `ETag: "v1"` and the `accept-encoding` asked with in `x-seen-accept-encoding`;
/// `text` answers the JSON as `text/plain`, `gzip` claims to be gzipped, `huge` is
/// 2 MiB of JSON; `echo/…` answers the request's body with its content type.
async fn document(req: Request<Incoming>, name: &'static str) -> Response<Full<Bytes>> {
    let kind = req.uri().path().split('/').nth(2).unwrap_or("").to_string();
    let seen = req
        .headers()
        .get("accept-encoding")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let typed = |body: Bytes, content_type: &'static str| {
        let mut r = reply(200, name, body);
        let h = r.headers_mut();
        h.insert(
            "content-type",
            hyper::header::HeaderValue::from_static(content_type),
        );
        h.insert("etag", hyper::header::HeaderValue::from_static("\"v1\""));
        if let Ok(v) = hyper::header::HeaderValue::from_str(&seen) {
            h.insert("x-seen-accept-encoding", v);
        }
        r
    };
    match kind.as_str() {
        "json" => typed(
            Bytes::from_static(ORDER_JSON.as_bytes()),
            "application/json",
        ),
        "xml" => typed(Bytes::from_static(ORDER_XML.as_bytes()), "application/xml"),
        "text" => typed(Bytes::from_static(ORDER_JSON.as_bytes()), "text/plain"),
        "gzip" => {
            let mut r = typed(
                Bytes::from_static(ORDER_JSON.as_bytes()),
                "application/json",
            );
            r.headers_mut().insert(
                "content-encoding",
                hyper::header::HeaderValue::from_static("gzip"),
            );
            r
        }
        "huge" => {
            let filler = "x".repeat(2 << 20);
            typed(
                Bytes::from(format!(
                    r#"{{"order":{{"secret":"s3cret","filler":"{filler}"}}}}"#
                )),
                "application/json",
            )
        }
        "echo" => {
            let content_type = req.headers().get("content-type").cloned();
            let body = match req.into_body().collect().await {
                Ok(body) => body.to_bytes(),
                Err(_) => return reply(400, name, "body"),
            };
            let mut r = reply(200, name, body);
            if let Some(t) = content_type {
                r.headers_mut().insert("content-type", t);
            }
            r
        }
        _ => reply(404, name, "no such document"),
    }
}

/// `/cache/<kind>/…` and `/shared/<kind>/…`: answers with caching headers by kind,
/// the body naming how many requests reached this path, the request's
/// `accept-language` and `authorization`. Kinds: `fresh` (max-age=60, ETag "v1"),
/// `short` (max-age=1, ETag "v1"; 304 with max-age=60 to a matching If-None-Match), `vary` (by
/// accept-language), `nostore`, `private`, `cookie` (sets one), `public`
/// (public, max-age=60), `slow` (max-age=60 after 500 ms), `slowpass` (no-store
/// after 500 ms), anything else max-age=60.
async fn cacheable(
    req: &Request<Incoming>,
    name: &'static str,
    s: &AppStats,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let kind = path.split('/').nth(2).unwrap_or("").to_string();
    let n = s.count(&path);
    let field = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    if kind == "short" && field("if-none-match") == "\"v1\"" {
        let mut r = reply(304, name, Bytes::new());
        r.headers_mut()
            .insert("etag", hyper::header::HeaderValue::from_static("\"v1\""));
        r.headers_mut().insert(
            "cache-control",
            hyper::header::HeaderValue::from_static("max-age=60"),
        );
        return r;
    }
    if kind == "slow" || kind == "slowpass" {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let body = format!(
        "{kind} n={n} lang={} auth={}",
        field("accept-language"),
        field("authorization")
    );
    let mut r = reply(200, name, body);
    let (control, extra): (&'static str, Option<(&'static str, &'static str)>) = match kind.as_str()
    {
        "short" => ("max-age=1", Some(("etag", "\"v1\""))),
        "vary" => ("max-age=60", Some(("vary", "accept-language"))),
        "nostore" | "slowpass" => ("no-store", None),
        "private" => ("private, max-age=60", None),
        "cookie" => ("max-age=60", Some(("set-cookie", "session=1"))),
        "public" => ("public, max-age=60", None),
        _ => ("max-age=60", Some(("etag", "\"v1\""))),
    };
    let h = r.headers_mut();
    h.insert(
        "cache-control",
        hyper::header::HeaderValue::from_static(control),
    );
    if let Some((n, v)) = extra {
        h.insert(n, hyper::header::HeaderValue::from_static(v));
    }
    r
}

/// Answers a WebSocket upgrade with 101 and echoes every message on the socket.
fn websocket(mut req: Request<Incoming>, name: &'static str) -> Response<Full<Bytes>> {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::Role;
    let accept = req
        .headers()
        .get("sec-websocket-key")
        .map(|k| derive_accept_key(k.as_bytes()))
        .unwrap_or_default();
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() || ((msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err())
            {
                return;
            }
        }
    });
    let mut r = reply(101, name, Bytes::new());
    let h = r.headers_mut();
    h.insert(
        "connection",
        hyper::header::HeaderValue::from_static("upgrade"),
    );
    h.insert(
        "upgrade",
        hyper::header::HeaderValue::from_static("websocket"),
    );
    if let Ok(v) = hyper::header::HeaderValue::from_str(&accept) {
        h.insert("sec-websocket-accept", v);
    }
    r
}

/// A uniformly random number below 100.
fn rand_percent() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish() % 100
}

/// The agent's source: workloads `client` (demo), `intruder` (other), `server`
/// (demo, pods `b1` and `b2`), the service `demo/web` at [`VIP`] with endpoints
/// `b1` (`version: v1`) and `b2` (`version: v2`). `routes` is the YAML list of the
/// service port's routes; `inbound` the YAML body of the server's port policy.
pub fn source_yaml(pods: &HttpPods, routes: &str, inbound: &str) -> String {
    let indent = |text: &str, n: usize| {
        text.lines()
            .map(|l| format!("{}{l}", " ".repeat(n)))
            .collect::<Vec<_>>()
            .join("\n")
    };
    format!(
        "workloads:
  - name: client
    namespace: demo
    token: client-token-http
    addresses: [{a}]
  - name: intruder
    namespace: other
    token: intruder-token-http
    addresses: [{x}]
  - name: server
    namespace: demo
    token: server-token-http
    addresses: [{b1}, {b2}]
    inbound:
      default_mode: permissive
      ports:
        {APP_PORT}:
{inbound}
services:
  - name: web
    namespace: demo
    addresses: [198.18.1.100]
    ports:
      - port: 80
        target_port: {APP_PORT}
        routes:
{routes}
    endpoints:
      - workload: server
        addresses: [{b1}]
        labels: {{version: v1}}
      - workload: server
        addresses: [{b2}]
        labels: {{version: v2}}
",
        a = pods.a.ipv4(),
        x = pods.x.ipv4(),
        b1 = pods.b1.ipv4(),
        b2 = pods.b2.ipv4(),
        inbound = indent(inbound, 10),
        routes = indent(routes, 10),
    )
}

/// The pods of an [`HttpWorld`].
#[derive(Debug, Clone)]
pub struct HttpPods {
    /// The client (`spiffe://cluster.local/ns/demo/sa/client`).
    pub a: Pod,
    /// Another client (`spiffe://cluster.local/ns/other/sa/intruder`).
    pub x: Pod,
    /// Server `v1`.
    pub b1: Pod,
    /// Server `v2`.
    pub b2: Pod,
    /// A client without a sidecar, for direct (unmeshed) comparisons.
    pub c: Pod,
    /// A server without a sidecar (runs the app at [`APP_PORT`]), reached from `c`.
    pub d: Pod,
}

/// The world; dropping it tears everything down.
#[derive(Debug)]
pub struct HttpWorld {
    /// The pods.
    pub pods: HttpPods,
    /// Sidecars of a, x, b1, b2.
    pub sidecars: Vec<Sidecar>,
    /// The apps of b1, b2 and d.
    pub apps: Vec<HttpApp>,
    /// The agent.
    pub agent: MeshAgent,
    /// The source file.
    pub source: PathBuf,
    /// The mesh files.
    pub dir: MeshDir,
    /// The world, last so it goes after everything in it.
    pub world: World,
}

impl HttpWorld {
    /// Builds the world for `test` with the given routes and inbound policy (YAML,
    /// see [`source_yaml`]); `base` are the sidecar options (extra proxy flags).
    pub fn start(
        test: &str,
        binary: &Path,
        base: &SidecarOpts,
        routes: &str,
        inbound: &str,
    ) -> Result<HttpWorld> {
        HttpWorld::start_with_agent(test, binary, base, routes, inbound, &[])
    }

    /// [`HttpWorld::start`] with extra agent flags.
    pub fn start_with_agent(
        test: &str,
        binary: &Path,
        base: &SidecarOpts,
        routes: &str,
        inbound: &str,
        agent_flags: &[&str],
    ) -> Result<HttpWorld> {
        let source = |pods: &HttpPods| source_yaml(pods, routes, inbound);
        HttpWorld::start_with_source(test, binary, base, source, agent_flags)
    }

    /// [`HttpWorld::start`] with the agent's whole source written by `source` for
    /// the world's pods (e.g. [`source_yaml`] with a change of its own).
    pub fn start_with_source(
        test: &str,
        binary: &Path,
        base: &SidecarOpts,
        source: impl FnOnce(&HttpPods) -> String,
        agent_flags: &[&str],
    ) -> Result<HttpWorld> {
        let base = |_: &HttpPods| Ok(base.clone());
        HttpWorld::start_custom(test, binary, base, source, agent_flags)
    }

    /// [`HttpWorld::start_with_source`] with the sidecars' options made for the
    /// world's pods (e.g. a collector started in `c` to export to).
    pub fn start_custom(
        test: &str,
        binary: &Path,
        base: impl FnOnce(&HttpPods) -> Result<SidecarOpts>,
        source: impl FnOnce(&HttpPods) -> String,
        agent_flags: &[&str],
    ) -> Result<HttpWorld> {
        let world = World::new(test)?;
        let pods = HttpPods {
            a: world.pod("a")?,
            x: world.pod("x")?,
            b1: world.pod("b1")?,
            b2: world.pod("b2")?,
            c: world.pod("c")?,
            d: world.pod("d")?,
        };
        let agent_pod = world.pod("agent")?;
        let base = base(&pods)?;
        let dir = MeshDir::new(test)?;
        let source = dir.write("source.yaml", &source(&pods))?;
        let agent = MeshAgent::start(&agent_pod, binary, &dir, &source, agent_flags)?;
        let apps = vec![
            spawn_http_app(&pods.b1, APP_PORT, "b1")?,
            spawn_http_app(&pods.b2, APP_PORT, "b2")?,
            spawn_http_app(&pods.d, APP_PORT, "d")?,
        ];
        let mut sidecars = Vec::new();
        for (pod, ns, sa, token) in [
            (&pods.a, "demo", "client", "client-token-http"),
            (&pods.x, "other", "intruder", "intruder-token-http"),
            (&pods.b1, "demo", "server", "server-token-http"),
            (&pods.b2, "demo", "server", "server-token-http"),
        ] {
            let token_file = dir.write(&format!("{}.token", pod.name()), token)?;
            let opts = mesh_sidecar_opts(
                base.clone(),
                agent.addr(),
                agent.anchors(),
                &token_file,
                ns,
                sa,
            );
            let sidecar = pod
                .install_sidecar(&opts)
                .with_context(|| format!("sidecar of {}\n{}", pod.name(), agent.logs()))?;
            sidecars.push(sidecar);
        }
        Ok(HttpWorld {
            pods,
            sidecars,
            apps,
            agent,
            source,
            dir,
            world,
        })
    }

    /// Rewrites the source with new routes and inbound policy.
    pub fn write_source(&self, routes: &str, inbound: &str) -> Result<()> {
        self.dir
            .write("source.yaml", &source_yaml(&self.pods, routes, inbound))
            .map(drop)
    }

    /// Every proxy's and the agent's logs, for failure messages.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        for s in &self.sidecars {
            out.push_str(&format!("--- {}\n{}", s.pod().name(), s.proxy().logs()));
        }
        out.push_str(&format!("--- agent\n{}", self.agent.logs()));
        out
    }
}

pub use pillion_testkit::http::{get, h1_client, load, one, rate, Answer};

/// How often a route's policy did `action` (`pillion_http_policy_actions_total`), by
/// a proxy's `metrics`: `direction`, `service` and `route` as the metric labels them.
pub fn policy_actions(
    metrics: &pillion::local::metrics::Samples,
    direction: &str,
    service: &str,
    route: &str,
    action: &str,
) -> f64 {
    metrics.value(
        "pillion_http_policy_actions_total",
        &[
            ("direction", direction),
            ("service", service),
            ("route", route),
            ("action", action),
        ],
    )
}
