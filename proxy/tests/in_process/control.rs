//! The proxy's control plane against a small in-test agent that speaks the real
//! wire format (HTTPS, HTTP/2, JSON certificates, NDJSON views): first
//! certificate and view, readiness, token re-reads, renewal, retries with the old
//! certificate still installed, and watch reconnects with backoff.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use pillion_api::certs::{CertificateRequest, CertificateResponse, ErrorBody};
use pillion_identity::{Ca, SpiffeId};
use pillion_proxy::control::{ControlConfig, Discovery};
use pillion_proxy::control::{ControlPlane, READY_CERTIFICATE, READY_VIEW};
use pillion_proxy::Readiness;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const TD: &str = "cluster.local";

fn id(sa: &str) -> SpiffeId {
    SpiffeId::new(TD, "demo", sa).unwrap()
}

fn agent_id() -> SpiffeId {
    SpiffeId::new(TD, "pillion", "agent").unwrap()
}

type Body = BoxBody<Bytes, Infallible>;

/// What the test agent knows and records.
struct AgentState {
    ca: Ca,
    tokens: HashMap<String, SpiffeId>,
    lifetime: Duration,
    fail_certificates: AtomicBool,
    refuse_watch: AtomicBool,
    certificate_requests: AtomicUsize,
    watch_requests: AtomicUsize,
    tokens_seen: Mutex<Vec<String>>,
    /// The open watch stream's sender; dropping it ends the stream.
    watcher: Mutex<Option<mpsc::Sender<Bytes>>>,
}

struct TestAgent {
    addr: SocketAddr,
    state: Arc<AgentState>,
    /// Ends the listener and every connection: the agent process going away.
    gone: CancellationToken,
}

impl TestAgent {
    async fn start(lifetime: Duration) -> TestAgent {
        TestAgent::start_with(Ca::generate(TD).unwrap(), lifetime, "127.0.0.1:0").await
    }

    /// An agent signing with `ca`, listening on `bind`.
    async fn start_with(ca: Ca, lifetime: Duration, bind: &str) -> TestAgent {
        let (issued, key) = ca.issue(&agent_id(), Duration::from_secs(3600)).unwrap();
        let tls = pillion_identity::tls::agent_server_config(&issued.chain_pem, &key).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let state = Arc::new(AgentState {
            ca,
            tokens: HashMap::from([
                ("client-token-1".to_string(), id("client")),
                ("client-token-2".to_string(), id("client")),
            ]),
            lifetime,
            fail_certificates: AtomicBool::new(false),
            refuse_watch: AtomicBool::new(false),
            certificate_requests: AtomicUsize::new(0),
            watch_requests: AtomicUsize::new(0),
            tokens_seen: Mutex::new(Vec::new()),
            watcher: Mutex::new(None),
        });
        let listener = TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let s = Arc::clone(&state);
        let gone = CancellationToken::new();
        let stop = gone.clone();
        tokio::spawn(async move {
            while let Some(Ok((tcp, _))) = stop.run_until_cancelled(listener.accept()).await {
                let acceptor = acceptor.clone();
                let s = Arc::clone(&s);
                let stop = stop.clone();
                tokio::spawn(stop.clone().run_until_cancelled_owned(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |req| {
                        let s = Arc::clone(&s);
                        async move { Ok::<_, Infallible>(handle(req, &s).await) }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                }));
            }
        });
        TestAgent { addr, state, gone }
    }

    /// Stops this agent and starts another on the same address, signing with `ca`:
    /// an agent restarted with a new root.
    async fn restart_with(self, ca: Ca) -> TestAgent {
        self.gone.cancel();
        self.state.watcher.lock().unwrap().take();
        tokio::time::sleep(Duration::from_millis(50)).await;
        TestAgent::start_with(ca, self.state.lifetime, &self.addr.to_string()).await
    }

    fn anchors(&self) -> String {
        self.state.ca.trust_bundle_pem()
    }

    /// Sends one view line on the open watch stream; false if none is open.
    async fn send_view(&self, version: u64) -> bool {
        let tx = self.state.watcher.lock().unwrap().clone();
        let Some(tx) = tx else { return false };
        let line = format!(
            "{{\"version\":{version},\"identity\":\"{}\",\"inbound\":{{\"default_mode\":\"strict\"}}}}\n",
            id("client")
        );
        tx.send(Bytes::from(line)).await.is_ok()
    }

    /// Sends one view line, as given.
    async fn send_view_json(&self, view: &serde_json::Value) -> bool {
        let tx = self.state.watcher.lock().unwrap().clone();
        let Some(tx) = tx else { return false };
        tx.send(Bytes::from(format!("{view}\n"))).await.is_ok()
    }

    /// Sends one view line carrying `bundle` as its trust bundle.
    async fn send_view_with_bundle(&self, version: u64, bundle: &str) -> bool {
        self.send_view_json(&serde_json::json!({
            "version": version,
            "identity": id("client").to_string(),
            "inbound": {"default_mode": "strict"},
            "trust_bundle_pem": bundle,
        }))
        .await
    }

    /// Waits (up to 10 s) for a proxy's watch stream to be open.
    async fn watched(&self) {
        eventually("the watch", Duration::from_secs(10), || {
            self.state.watcher.lock().unwrap().is_some()
        })
        .await;
    }

    /// Ends the open watch stream.
    fn end_watch(&self) {
        self.state.watcher.lock().unwrap().take();
    }
}

async fn handle(req: Request<Incoming>, s: &AgentState) -> Response<Body> {
    let token = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_string();
    s.tokens_seen.lock().unwrap().push(token.clone());
    let Some(identity) = s.tokens.get(&token).cloned() else {
        return error(StatusCode::UNAUTHORIZED, "unauthenticated");
    };
    match req.uri().path() {
        "/v1/certificates" => {
            s.certificate_requests.fetch_add(1, Ordering::SeqCst);
            if s.fail_certificates.load(Ordering::SeqCst) {
                return error(StatusCode::INTERNAL_SERVER_ERROR, "internal");
            }
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let request: CertificateRequest = serde_json::from_slice(&body).unwrap();
            match s.ca.sign_csr(&request.csr_pem, &identity, s.lifetime) {
                Ok(issued) => json(
                    StatusCode::OK,
                    serde_json::to_vec(&CertificateResponse {
                        chain_pem: issued.chain_pem,
                        trust_bundle_pem: s.ca.trust_bundle_pem(),
                        expires_at_unix: issued
                            .expires_at
                            .duration_since(UNIX_EPOCH)
                            .unwrap()
                            .as_secs(),
                    })
                    .unwrap(),
                ),
                Err(e) => error(StatusCode::FORBIDDEN, &e.to_string()),
            }
        }
        "/v1/watch" => {
            s.watch_requests.fetch_add(1, Ordering::SeqCst);
            if s.refuse_watch.load(Ordering::SeqCst) {
                return error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
            }
            let (tx, rx) = mpsc::channel(4);
            *s.watcher.lock().unwrap() = Some(tx);
            Response::new(lines(rx))
        }
        _ => error(StatusCode::NOT_FOUND, "not_found"),
    }
}

fn json(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
    *r.status_mut() = status;
    r
}

fn error(status: StatusCode, code: &str) -> Response<Body> {
    let body = ErrorBody {
        error: code.into(),
        reason: format!("test agent says {code}"),
    };
    json(status, serde_json::to_vec(&body).unwrap())
}

/// A body of the lines `rx` gives; it ends when the sender drops.
fn lines(rx: mpsc::Receiver<Bytes>) -> Body {
    let frames = futures::stream::unfold(rx, |mut rx| async move {
        let line = rx.recv().await?;
        Some((Ok::<_, Infallible>(Frame::data(line)), rx))
    });
    http_body_util::StreamBody::new(frames).boxed()
}

/// A token file in a fresh temporary directory.
fn token_file(token: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "pillion-proxy-control-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("token");
    std::fs::write(&path, format!("{token}\n")).unwrap();
    path
}

fn rand_suffix() -> u64 {
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::SeqCst) as u64
}

fn config(agent: &TestAgent, token: &Path) -> ControlConfig {
    ControlConfig {
        agent_addr: agent.addr.to_string(),
        agent_identity: agent_id(),
        trust_anchors_pem: agent.anchors(),
        trust_anchors_path: None,
        token_file: token.to_path_buf(),
        workload: id("client"),
        pod_name: Some("client-0".into()),
        // These tests follow the view stream itself; on-demand has its own below.
        discovery: Discovery::Full,
    }
}

/// The control plane against `agent` with the token in `token`, and its readiness.
fn start_plane(agent: &TestAgent, token: &Path) -> (ControlPlane, Readiness) {
    let readiness = Readiness::new();
    let plane =
        ControlPlane::start(&config(agent, token), &mut Registry::default(), &readiness).unwrap();
    (plane, readiness)
}

/// Waits (up to 5 s) for `plane` to hold view `version`.
async fn view_installed(plane: &ControlPlane, version: u64) {
    eventually("the view", Duration::from_secs(5), || {
        plane.views().latest().map(|v| v.version) == Some(version)
    })
    .await;
}

async fn eventually(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn first_certificate_and_view_make_the_proxy_ready() {
    let agent = TestAgent::start(Duration::from_secs(3600)).await;
    let token = token_file("client-token-1");
    let (plane, readiness) = start_plane(&agent, &token);
    eventually("the certificate", Duration::from_secs(10), || {
        plane.store().has_leaf()
    })
    .await;
    // A certificate alone is not enough.
    assert_eq!(
        readiness.missing().iter().map(|n| &**n).collect::<Vec<_>>(),
        [READY_VIEW]
    );
    agent.watched().await;
    assert!(agent.send_view(3).await);
    eventually("the first view", Duration::from_secs(5), || {
        readiness.is_ready()
    })
    .await;
    assert_eq!(plane.views().latest().map(|v| v.version), Some(3));
    assert_eq!(plane.metrics().agent_connected.get(), 1);
    assert_eq!(plane.metrics().renewals_ok.get(), 1);
    let expiry = plane.metrics().cert_expiry.get();
    let store_expiry = plane
        .store()
        .expires_at()
        .unwrap()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert_eq!(expiry, store_expiry);
    assert!(!READY_CERTIFICATE.is_empty());
    // Every request carried the token, read from the file.
    assert!(agent
        .state
        .tokens_seen
        .lock()
        .unwrap()
        .iter()
        .all(|t| t == "client-token-1"));
    plane.stop().await;
}

#[tokio::test]
async fn the_watch_reconnects_with_backoff_and_keeps_the_last_view() {
    let agent = TestAgent::start(Duration::from_secs(3600)).await;
    let token = token_file("client-token-1");
    let (plane, readiness) = start_plane(&agent, &token);
    agent.watched().await;
    assert!(agent.send_view(5).await);
    view_installed(&plane, 5).await;

    // The token rotates: the next request reads the new one.
    std::fs::write(&token, "client-token-2\n").unwrap();
    // The agent refuses new streams and ends the open one.
    agent.state.refuse_watch.store(true, Ordering::SeqCst);
    let before = agent.state.watch_requests.load(Ordering::SeqCst);
    agent.end_watch();
    eventually("the disconnect", Duration::from_secs(5), || {
        plane.metrics().agent_connected.get() == 0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let attempts = agent.state.watch_requests.load(Ordering::SeqCst) - before;
    // 200 ms doubling with ±20 % jitter: about 3 tries in 2 s, never a tight loop.
    assert!(
        (2..=6).contains(&attempts),
        "{attempts} reconnect attempts in 2 s"
    );
    // The last good view stays in force.
    assert_eq!(plane.views().latest().map(|v| v.version), Some(5));
    assert!(readiness.is_ready());

    // The agent is back (it restarted, so its versions start low again).
    agent.state.refuse_watch.store(false, Ordering::SeqCst);
    eventually("the reconnect", Duration::from_secs(10), || {
        agent.state.watcher.lock().unwrap().is_some()
    })
    .await;
    assert!(agent.send_view(1).await);
    eventually(
        "view 1 from the restarted agent",
        Duration::from_secs(5),
        || plane.views().latest().map(|v| v.version) == Some(1),
    )
    .await;
    assert_eq!(plane.metrics().agent_connected.get(), 1);
    assert_eq!(
        agent
            .state
            .tokens_seen
            .lock()
            .unwrap()
            .last()
            .map(String::as_str),
        Some("client-token-2")
    );
    plane.stop().await;
}

#[tokio::test]
async fn certificates_renew_and_failures_keep_the_old_one() {
    // 2 s leaves: renewal every ~1.4 s.
    let agent = TestAgent::start(Duration::from_secs(2)).await;
    let token = token_file("client-token-1");
    let (plane, _readiness) = start_plane(&agent, &token);
    let mut serials = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while serials.len() < 4 {
        assert!(Instant::now() < deadline, "only {serials:?} in 15 s");
        if let Some(serial) = plane.store().current_serial() {
            if serials.last() != Some(&serial) {
                serials.push(serial);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(plane.metrics().renewals_error.get(), 0);
    assert!(plane.metrics().renewals_ok.get() >= 4);

    // The agent fails: the current certificate stays installed while retries run.
    agent.state.fail_certificates.store(true, Ordering::SeqCst);
    let held = plane.store().current_serial();
    eventually("a failed renewal", Duration::from_secs(5), || {
        plane.metrics().renewals_error.get() >= 1
    })
    .await;
    assert_eq!(plane.store().current_serial(), held);
    // Retries come before the certificate expires, not after a 30 s backoff.
    let errors = plane.metrics().renewals_error.get();
    eventually("a retry before expiry", Duration::from_secs(3), || {
        plane.metrics().renewals_error.get() > errors
    })
    .await;

    agent.state.fail_certificates.store(false, Ordering::SeqCst);
    eventually(
        "a new certificate after the outage",
        Duration::from_secs(35),
        || plane.store().current_serial() != held,
    )
    .await;
    plane.stop().await;
}

#[tokio::test]
async fn an_unknown_token_is_an_error_not_a_crash() {
    let agent = TestAgent::start(Duration::from_secs(3600)).await;
    let token = token_file("nobody-knows-me");
    let (plane, readiness) = start_plane(&agent, &token);
    eventually("a refused request", Duration::from_secs(5), || {
        plane.metrics().renewals_error.get() >= 1
    })
    .await;
    assert!(!plane.store().has_leaf());
    assert!(!readiness.is_ready());
    plane.stop().await;
}

/// Writes `text` to `path` the way a config map update lands: whole, by rename.
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The control plane following an anchors file at `anchors`.
fn start_plane_following(agent: &TestAgent, token: &Path, anchors: &Path) -> ControlPlane {
    let config = ControlConfig {
        trust_anchors_path: Some(anchors.to_path_buf()),
        trust_anchors_pem: std::fs::read_to_string(anchors).unwrap(),
        ..config(agent, token)
    };
    ControlPlane::start(&config, &mut Registry::default(), &Readiness::new()).unwrap()
}

async fn connected_with_a_leaf(agent: &TestAgent, plane: &ControlPlane) {
    eventually("the certificate", Duration::from_secs(10), || {
        plane.store().has_leaf()
    })
    .await;
    agent.watched().await;
}

/// A plane following its anchors file, connected to an agent under one root, with
/// a second root at hand.
struct Following {
    agent: TestAgent,
    r2: Ca,
    anchors: PathBuf,
    plane: ControlPlane,
    /// The serial of the plane's first leaf.
    first: Option<String>,
}

impl Following {
    async fn start() -> Following {
        let (r1, r2) = (Ca::generate(TD).unwrap(), Ca::generate(TD).unwrap());
        let agent = TestAgent::start_with(r1, Duration::from_secs(3600), "127.0.0.1:0").await;
        let token = token_file("client-token-1");
        let anchors = token.with_file_name("ca.pem");
        replace_file(&anchors, &agent.anchors());
        let plane = start_plane_following(&agent, &token, &anchors);
        connected_with_a_leaf(&agent, &plane).await;
        let first = plane.store().current_serial();
        Following {
            agent,
            r2,
            anchors,
            plane,
            first,
        }
    }
}

#[tokio::test]
async fn a_new_root_in_the_anchors_file_reaches_a_running_proxy() {
    let Following {
        agent,
        r2,
        anchors,
        plane,
        first,
    } = Following::start().await;
    let r2_pem = r2.trust_bundle_pem();

    // The agent comes back with a new root (its CA was in an emptyDir): the proxy
    // cannot trust it, and keeps its leaf.
    let r1_pem = agent.anchors();
    let agent = agent.restart_with(r2).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(agent.state.certificate_requests.load(Ordering::SeqCst), 0);
    assert_eq!(plane.metrics().agent_connected.get(), 0);
    assert_eq!(plane.store().current_serial(), first);

    // The operator adds the new root to the anchors: no restart, the proxy trusts
    // the new agent, renews under it at once and follows its views.
    replace_file(&anchors, &format!("{r1_pem}{r2_pem}"));
    eventually("a leaf from the new agent", Duration::from_secs(10), || {
        agent.state.certificate_requests.load(Ordering::SeqCst) > 0
            && plane.store().current_serial() != first
    })
    .await;
    agent.watched().await;
    assert!(agent.send_view(1).await);
    view_installed(&plane, 1).await;
    plane.stop().await;
}

#[tokio::test]
async fn anchors_that_untrust_the_connected_agent_wait_until_it_is_gone() {
    let Following {
        agent,
        r2,
        anchors,
        plane,
        first,
    } = Following::start().await;
    let r2_pem = r2.trust_bundle_pem();
    let r1_bundle = plane.store().trust_bundle().unwrap();

    // Garbage, and a file of only the new root while the old agent is connected:
    // neither is installed, and the link stays up.
    replace_file(&anchors, "not a bundle");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    replace_file(&anchors, &r2_pem);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(plane.store().trust_bundle().unwrap().same_roots(&r1_bundle));
    assert_eq!(plane.metrics().agent_connected.get(), 1);

    // The hard cut completes: the old agent goes, the new one is under r2 only.
    // The waiting file is installed, the proxy renews under r2.
    let agent = agent.restart_with(r2).await;
    eventually("a leaf under the new root", Duration::from_secs(10), || {
        agent.state.certificate_requests.load(Ordering::SeqCst) > 0
            && plane.store().current_serial() != first
    })
    .await;
    let bundle = plane.store().trust_bundle().unwrap();
    assert_eq!(bundle.len(), 1);
    assert!(!bundle.same_roots(&r1_bundle));
    plane.stop().await;
}

#[tokio::test]
async fn a_bundle_pushed_in_the_view_is_checked_like_any_other() {
    let agent = TestAgent::start(Duration::from_secs(3600)).await;
    let token = token_file("client-token-1");
    let (plane, _readiness) = start_plane(&agent, &token);
    connected_with_a_leaf(&agent, &plane).await;
    let ours = agent.anchors();
    let r3 = Ca::generate(TD).unwrap().trust_bundle_pem();
    let roots = || plane.store().trust_bundle().map(|b| b.len());
    let version = || plane.views().latest().map(|v| v.version);

    // A new root beside ours: trusted from the next handshake on.
    assert!(agent.send_view_with_bundle(1, &format!("{ours}{r3}")).await);
    eventually("two roots", Duration::from_secs(5), || roots() == Some(2)).await;

    // Only the new root: it would cut the proxy off from the agent it talks to, so it
    // waits; garbage is refused. Either way the view's policy is installed.
    assert!(agent.send_view_with_bundle(2, &r3).await);
    eventually("view 2", Duration::from_secs(5), || version() == Some(2)).await;
    assert!(agent.send_view_with_bundle(3, "not a bundle").await);
    eventually("view 3", Duration::from_secs(5), || version() == Some(3)).await;
    assert_eq!(roots(), Some(2));
    assert_eq!(plane.metrics().agent_connected.get(), 1);
    plane.stop().await;
}

#[tokio::test]
async fn a_view_naming_another_issuer_than_our_leafs_brings_a_renewal_soon() {
    let root = Ca::generate(TD).unwrap();
    let (issuer, key) = root.issue_intermediate(Duration::from_secs(3600)).unwrap();
    let ca = Ca::from_issuer(&issuer, &key, &root.trust_bundle_pem(), TD).unwrap();
    let ours = ca.issuer_sha256().to_string();
    let agent = TestAgent::start_with(ca, Duration::from_secs(3600), "127.0.0.1:0").await;
    let token = token_file("client-token-1");
    let (plane, _readiness) = start_plane(&agent, &token);
    connected_with_a_leaf(&agent, &plane).await;
    assert_eq!(
        plane.store().leaf_issuer_sha256().as_deref(),
        Some(ours.as_str())
    );
    let requests = || agent.state.certificate_requests.load(Ordering::SeqCst);
    let view = |version: u64, issuer: &str| {
        serde_json::json!({
            "version": version,
            "identity": id("client").to_string(),
            "inbound": {"default_mode": "strict"},
            "issuer_sha256": issuer,
        })
    };

    // Our own issuer: nothing to do.
    assert!(agent.send_view_json(&view(1, &ours)).await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(requests(), 1);

    // Another one (a rotation switched issuers): a renewal within the spread, not
    // at 70 % of an hour.
    assert!(agent.send_view_json(&view(2, &"00".repeat(32))).await);
    let limit = pillion_proxy::control::ISSUER_SWITCH_SPREAD + Duration::from_secs(2);
    eventually("a renewal", limit, || requests() == 2).await;
    plane.stop().await;
}
