//! Tracing, access logs and metrics end to end: two meshed pods (`client` →
//! `server`, the agent's embedded demo view: service `echo` at 198.18.0.100:8080),
//! an in-process agent and the test OTLP collector in a third pod. Real proxies, real
//! mesh TLS, real HTTP, real OTLP protobuf.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use pillion_agent::{Agent, AgentConfig, SourceSpec};
use pillion_api::defaults::AGENT_PORT;
use pillion_tests::apps;
use pillion_tests::metrics::Samples;
use pillion_tests::otlp::{OtlpReceiver, ReceivedSpan};
use pillion_tests::{Pod, Sidecar, Task, World};

use crate::common::sidecar_opts;

const CLIENT_ID: &str = "spiffe://cluster.local/ns/demo/sa/client";
const SERVER_ID: &str = "spiffe://cluster.local/ns/demo/sa/server";
const APP_PORT: u16 = 8080;
const VIP: &str = "198.18.0.100:8080";
const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// A world with the mesh, the collector and the app.
struct Mesh {
    _dir: TempDir,
    client: Pod,
    sc: Sidecar,
    ss: Sidecar,
    receiver: OtlpReceiver,
    /// `traceparent` values the server app received, in order.
    app_seen: Arc<Mutex<Vec<Option<String>>>>,
    _app: Task<()>,
    _agent: Task<()>,
    server_log: PathBuf,
    // Last: the world goes after everything in it.
    _world: World,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write(path: &PathBuf, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mesh(name: &str, sampling: &str) -> Mesh {
    let world = World::new(name).unwrap();
    let client = world.pod("client").unwrap();
    let server = world.pod("server").unwrap();
    let infra = world.pod("infra").unwrap();

    let dir = TempDir(
        std::env::temp_dir().join(format!("pillion-telemetry-{}-{name}", std::process::id())),
    );
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).unwrap();
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o777)).unwrap();

    // The agent serves its embedded demo view from the infra pod.
    let (pem_tx, pem_rx) = std::sync::mpsc::channel();
    let agent = infra
        .background(move || async move {
            let mut config = AgentConfig::new(SourceSpec::Embedded);
            config.listen = SocketAddr::from(([0, 0, 0, 0], AGENT_PORT));
            match Agent::start(config).await {
                Ok(running) => {
                    let _ = pem_tx.send(Ok(running.trust_anchor_pem().to_owned()));
                    std::future::pending::<()>().await;
                    drop(running);
                }
                Err(e) => {
                    let _ = pem_tx.send(Err(e.to_string()));
                }
            }
        })
        .unwrap();
    let pem = pem_rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap()
        .unwrap();
    let anchors = dir.0.join("anchors.pem");
    write(&anchors, &pem, 0o644);
    let receiver = pillion_tests::otlp::start_in(&infra).unwrap();

    let app_seen = Arc::new(Mutex::new(Vec::new()));
    let app = spawn_app(&server, Arc::clone(&app_seen));

    let sidecar = |pod: &Pod, sa: &str, token: &str| {
        let token_file = dir.0.join(format!("{sa}.token"));
        write(&token_file, token, 0o644);
        let log = dir.0.join(format!("{sa}-access.json"));
        write(&log, "", 0o666);
        let opts = sidecar_opts().proxy_args([
            "--agent-addr".to_string(),
            format!("{}", infra.addr_v4(AGENT_PORT)),
            "--trust-anchors".into(),
            anchors.display().to_string(),
            "--token-file".into(),
            token_file.display().to_string(),
            "--namespace".into(),
            "demo".into(),
            "--service-account".into(),
            sa.into(),
            "--pod-name".into(),
            format!("{sa}-pod"),
            "--otlp-endpoint".into(),
            receiver.grpc_endpoint(),
            "--trace-sampling".into(),
            sampling.into(),
            "--access-log".into(),
            log.display().to_string(),
        ]);
        pod.install_sidecar(&opts).unwrap()
    };
    let ss = sidecar(&server, "server", "demo-server-token");
    let sc = sidecar(&client, "client", "demo-client-token");
    let server_log = dir.0.join("server-access.json");
    Mesh {
        _dir: dir,
        client,
        sc,
        ss,
        receiver,
        app_seen,
        _app: app,
        _agent: agent,
        server_log,
        _world: world,
    }
}

/// The server app: HTTP/1.1 on 8080; answers `/status/<code>` with that code and
/// everything else with 200 `ok`; records each request's `traceparent`.
fn spawn_app(pod: &Pod, seen: Arc<Mutex<Vec<Option<String>>>>) -> Task<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let task = pod
        .background(move || async move {
            let listener = apps::bind_dual_stack(APP_PORT).unwrap();
            let _ = tx.send(());
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let tp = req
                            .headers()
                            .get("traceparent")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned);
                        seen.lock().unwrap().push(tp);
                        let code = req
                            .uri()
                            .path()
                            .strip_prefix("/status/")
                            .and_then(|c| c.parse::<u16>().ok())
                            .unwrap_or(200);
                        async move {
                            let mut resp =
                                http::Response::new(Full::new(Bytes::from_static(b"ok\n")));
                            *resp.status_mut() = http::StatusCode::from_u16(code).unwrap();
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        })
        .unwrap();
    rx.recv_timeout(Duration::from_secs(10)).unwrap();
    task
}

/// Sends `paths` one after another on one keep-alive HTTP/1.1 connection from the
/// client pod to the service VIP; answers each status and latency.
fn send(
    mesh: &Mesh,
    paths: Vec<String>,
    traceparent: Option<&'static str>,
) -> Vec<(u16, Duration)> {
    mesh.client
        .run(move || async move {
            let stream = tokio::net::TcpStream::connect(VIP).await.unwrap();
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            let driver = tokio::spawn(conn);
            let mut out = Vec::with_capacity(paths.len());
            for path in paths {
                let mut req = http::Request::get(path)
                    .header("host", "echo.demo:8080")
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                if let Some(tp) = traceparent {
                    req.headers_mut().insert("traceparent", tp.parse().unwrap());
                }
                let start = Instant::now();
                let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
                    .await
                    .expect("request timed out")
                    .expect("request failed");
                let status = resp.status().as_u16();
                resp.into_body().collect().await.unwrap();
                out.push((status, start.elapsed()));
            }
            driver.abort();
            out
        })
        .unwrap()
}

fn paths(n: usize, path: &str) -> Vec<String> {
    vec![path.to_owned(); n]
}

fn pair(spans: &[ReceivedSpan]) -> Option<(ReceivedSpan, ReceivedSpan)> {
    let client = spans.iter().find(|s| s.is_client())?;
    let server = spans
        .iter()
        .find(|s| s.is_server() && s.parent_span_id().as_deref() == Some(&client.span_id()))?;
    Some((client.clone(), server.clone()))
}

fn dump(mesh: &Mesh) -> String {
    format!("{}{}", mesh.sc.proxy().logs(), mesh.ss.proxy().logs())
}

#[test]
fn one_trace_client_and_server_span_with_attributes_and_propagation() {
    let mesh = mesh("trace_pair", "1.0");
    let got = send(&mesh, paths(1, "/orders/7?secret=1"), None);
    assert_eq!(got[0].0, 200, "{}", dump(&mesh));
    let spans = mesh
        .receiver
        .collected()
        .wait_for(
            "a CLIENT and its SERVER span",
            Duration::from_secs(15),
            |s| pair(s).is_some(),
        )
        .unwrap_or_else(|e| panic!("{e:#}\n{}", dump(&mesh)));
    let (client, server) = pair(&spans).unwrap();
    assert_eq!(client.trace_id(), server.trace_id());
    assert!(
        client.parent_span_id().is_none(),
        "a new trace starts at the client proxy"
    );
    assert_eq!(client.resource_attr("service.name"), Some("client"));
    assert_eq!(server.resource_attr("service.name"), Some("server"));
    assert_eq!(client.resource_attr("k8s.pod.name"), Some("client-pod"));
    assert_eq!(server.resource_attr("k8s.namespace.name"), Some("demo"));
    for s in [&client, &server] {
        assert_eq!(s.str_attr("http.request.method"), Some("GET"));
        assert_eq!(s.str_attr("url.path"), Some("/orders/7"));
        assert_eq!(s.int_attr("http.response.status_code"), Some(200));
        assert!(s.str_attr("http.route").is_some());
        assert!(s.str_attr("pillion.route").is_some());
        assert!(s.str_attr("network.peer.address").is_some());
        assert!(s.str_attr("network.protocol.version").is_some());
        assert!(!s.is_error());
    }
    assert_eq!(client.str_attr("pillion.peer.identity"), Some(SERVER_ID));
    assert_eq!(server.str_attr("pillion.peer.identity"), Some(CLIENT_ID));
    // Endpoints have both families; the proxies may pick either.
    let one_of = |got: Option<&str>, want: [&str; 2]| got.is_some_and(|g| want.contains(&g));
    assert!(
        one_of(
            server.str_attr("network.peer.address"),
            ["198.18.0.2", "2001:2::2"]
        ),
        "{:?}",
        server.str_attr("network.peer.address")
    );
    assert!(
        one_of(
            client.str_attr("network.peer.address"),
            ["198.18.0.3", "2001:2::3"]
        ),
        "{:?}",
        client.str_attr("network.peer.address")
    );
    // The app got the SERVER span as its parent, so its own spans join the trace.
    let seen = mesh.app_seen.lock().unwrap().clone();
    let tp = seen
        .last()
        .cloned()
        .flatten()
        .expect("the app got a traceparent");
    assert_eq!(
        tp,
        format!("00-{}-{}-01", server.trace_id(), server.span_id())
    );

    // The access log line of that request: every field, the same trace.
    let line = wait_for_line(&mesh.server_log, &server.trace_id());
    for field in [
        "time",
        "direction",
        "method",
        "path",
        "status",
        "duration_ms",
        "request_bytes",
        "response_bytes",
        "peer_identity",
        "upstream",
        "route",
        "trace_id",
    ] {
        assert!(line.get(field).is_some(), "{field} missing in {line}");
    }
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/orders/7");
    assert_eq!(line["status"], 200);
    assert_eq!(line["peer_identity"], CLIENT_ID);
    assert_eq!(line["response_bytes"], 3);
    assert!(line["time"].as_str().unwrap().ends_with('Z'));

    // An error answer: SERVER span Error on 5xx.
    send(&mesh, paths(1, "/status/503"), None);
    let spans = mesh
        .receiver
        .collected()
        .wait_for("a 503 SERVER span", Duration::from_secs(15), |s| {
            s.iter()
                .any(|s| s.is_server() && s.int_attr("http.response.status_code") == Some(503))
        })
        .unwrap();
    let failed = spans
        .iter()
        .find(|s| s.is_server() && s.int_attr("http.response.status_code") == Some(503))
        .unwrap();
    assert!(failed.is_error());
}

fn wait_for_line(path: &PathBuf, trace_id: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(line) = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["trace_id"] == trace_id)
        {
            return line;
        }
        assert!(
            Instant::now() < deadline,
            "no access log line with trace {trace_id} in\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_incoming_traceparent_is_continued_not_replaced() {
    let mesh = mesh("trace_continue", "1.0");
    send(&mesh, paths(1, "/continued"), Some(TP));
    let spans = mesh
        .receiver
        .collected()
        .wait_for("the continued pair", Duration::from_secs(15), |s| {
            pair(s).is_some()
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{}", dump(&mesh)));
    let (client, server) = pair(&spans).unwrap();
    assert_eq!(client.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(client.parent_span_id().as_deref(), Some("00f067aa0ba902b7"));
    assert_eq!(server.trace_id(), client.trace_id());
    // An unsampled parent is respected: no spans, the header passes through as sent.
    let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    let before = mesh.receiver.collected().len();
    send(&mesh, paths(1, "/unsampled"), Some(unsampled));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(mesh.receiver.collected().len(), before);
    assert_eq!(
        mesh.app_seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .flatten()
            .as_deref(),
        Some(unsampled)
    );
}

/// Requests per route, status and identity on `/metrics` equal what was sent.
#[test]
fn metrics_count_the_requests_by_route_status_and_identity() {
    let mesh = mesh("metrics_count", "1.0");
    let ok = send(&mesh, paths(7, "/a"), None);
    let bad = send(&mesh, paths(3, "/status/503"), None);
    assert!(ok.iter().all(|(s, _)| *s == 200) && bad.iter().all(|(s, _)| *s == 503));
    let scrape = |side: &Sidecar| -> Samples { side.metrics().unwrap() };
    let c = scrape(&mesh.sc);
    let s = scrape(&mesh.ss);
    let out = [("direction", "outbound")];
    let inb = [("direction", "inbound")];
    assert_eq!(c.value("pillion_http_requests_total", &out), 10.0, "{c}");
    assert_eq!(s.value("pillion_http_requests_total", &inb), 10.0, "{s}");
    assert_eq!(
        c.value(
            "pillion_http_requests_total",
            &[
                ("direction", "outbound"),
                ("route", "default"),
                ("peer", "")
            ]
        ),
        10.0,
        "{c}"
    );
    assert_eq!(
        s.value(
            "pillion_http_requests_total",
            &[("direction", "inbound"), ("peer", CLIENT_ID)]
        ),
        10.0,
        "{s}"
    );
    assert_eq!(
        c.value(
            "pillion_http_responses_total",
            &[
                ("direction", "outbound"),
                ("route", "default"),
                ("peer", SERVER_ID),
                ("status_code", "200")
            ]
        ),
        7.0,
        "{c}"
    );
    assert_eq!(
        s.value(
            "pillion_http_responses_total",
            &[
                ("direction", "inbound"),
                ("peer", CLIENT_ID),
                ("status_code", "503")
            ]
        ),
        3.0,
        "{s}"
    );
    // Every request sampled: 10 CLIENT and 10 SERVER spans, counted as exported.
    mesh.receiver
        .collected()
        .wait_for("20 spans", Duration::from_secs(15), |s| s.len() >= 20)
        .unwrap();
    for side in [&mesh.sc, &mesh.ss] {
        assert!(crate::common::eventually(Duration::from_secs(5), || {
            scrape(side).value("pillion_trace_spans_exported_total", &[]) == 10.0
        }));
    }
    assert_eq!(c.value("pillion_trace_spans_dropped_total", &[]), 0.0);
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "pillion_build_info",
    ] {
        assert!(c.get(name, &[]).is_some(), "{name} missing");
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The collector goes down: 1,000 requests are not slower (within noise), spans are
/// dropped and counted. It comes back: spans arrive again.
#[test]
fn collector_down_costs_no_latency_and_export_resumes() {
    let mut mesh = mesh("collector_down", "1.0");
    send(&mesh, paths(100, "/warmup"), None);
    let up: Vec<Duration> = send(&mesh, paths(1000, "/up"), None)
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    mesh.receiver.stop();
    let down: Vec<Duration> = send(&mesh, paths(1000, "/down"), None)
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    let (up_med, down_med) = (median(up), median(down));
    println!("median latency, collector up: {up_med:?}, collector down: {down_med:?}");
    assert!(
        down_med < up_med * 2 + Duration::from_millis(1),
        "requests got slower with the collector down: {up_med:?} → {down_med:?}"
    );
    // 2,000 spans per proxy for a queue of 2,048 and a batch in retry: some must drop.
    let dropped = |side: &Sidecar| {
        side.metrics()
            .unwrap()
            .value("pillion_trace_spans_dropped_total", &[])
    };
    send(&mesh, paths(2000, "/more"), None);
    assert!(
        crate::common::eventually(Duration::from_secs(20), || dropped(&mesh.sc) > 0.0),
        "the client proxy dropped nothing\n{}",
        mesh.sc.metrics().unwrap()
    );
    mesh.receiver.start_again().unwrap();
    mesh.receiver.collected().clear();
    let mut tries = 0;
    let back = crate::common::eventually(Duration::from_secs(30), || {
        tries += 1;
        send(&mesh, paths(1, "/back"), None);
        mesh.receiver
            .collected()
            .spans()
            .iter()
            .any(|s| s.str_attr("url.path") == Some("/back"))
    });
    assert!(
        back,
        "no span arrived after the collector came back ({tries} tries)\n{}",
        dump(&mesh)
    );
}

/// Requests per second through the mesh with every request traced vs none.
#[test]
fn cost_of_tracing_on_requests_per_second() {
    let n = 2000;
    let mut rates = Vec::new();
    for sampling in ["1.0", "0"] {
        let mesh = mesh(&format!("rps_{}", sampling.replace('.', "_")), sampling);
        send(&mesh, paths(200, "/warmup"), None);
        let start = Instant::now();
        let got = send(&mesh, paths(n, "/rps"), None);
        let rps = n as f64 / start.elapsed().as_secs_f64();
        assert!(got.iter().all(|(s, _)| *s == 200));
        if sampling == "0" {
            assert_eq!(
                mesh.receiver.collected().len(),
                0,
                "sampling 0 must export nothing"
            );
        }
        rates.push(rps);
    }
    println!(
        "sequential keep-alive HTTP/1.1 through two proxies: sampling 100%: {:.0} req/s, 0%: {:.0} req/s ({:+.1}%)",
        rates[0],
        rates[1],
        (rates[0] / rates[1] - 1.0) * 100.0
    );
}
