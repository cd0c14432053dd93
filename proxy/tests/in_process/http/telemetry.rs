//! Tracing through the real HTTP layer on loopback: an outbound proxy, mesh TLS and
//! an inbound proxy in front of an application, each proxy with its own tracer. One
//! request yields the outbound proxy's CLIENT span and the inbound proxy's SERVER
//! span in one trace, parent-linked, with the mesh identities; the application gets
//! the SERVER span as its parent; an incoming `traceparent` is continued; the access
//! log line carries the span's trace id.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use http::Request;
use pillion_identity::CertStore;
use pillion_proxy::telemetry::{span_queue, SpanQueue};
use pillion_proxy::telemetry::{
    AccessLog, AccessLogTarget, Recorders, Sampler, TelemetryMetrics, Tracer,
};
use pillion_proxy::telemetry::{SpanKind, SpanRecord};
use pillion_proxy::Settings;
use serde_json::json;

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// A tracer whose spans land in a queue the test reads.
fn recorders(access_log: AccessLog) -> (Recorders, SpanQueue) {
    let (sink, queue) = span_queue(64, TelemetryMetrics::default());
    let tracer = Tracer::new(Sampler::new(1.0).unwrap(), sink);
    (Recorders { tracer, access_log }, queue)
}

/// An inbound proxy (mesh TLS, then the HTTP layer) whose settings carry `recorders`.
async fn traced_inbound(
    listen: SocketAddr,
    app: SocketAddr,
    store: Arc<CertStore>,
    view: &pillion_api::view::View,
    recorders: Recorders,
) -> Inbound {
    let settings = Settings {
        recorders,
        ..Settings::default()
    };
    inbound_with(listen, app, Some(store), view, settings).await
}

struct Traced {
    outbound: Outbound,
    _inbound: Inbound,
    _app: App,
    client_spans: SpanQueue,
    server_spans: SpanQueue,
    seen: Arc<Mutex<Vec<Option<String>>>>,
}

async fn traced(server_log: AccessLog) -> Traced {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    let app = app(
        lo(1, 0),
        handler(move |req: Request<hyper::body::Incoming>| {
            let tp = req
                .headers()
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            s.lock().unwrap().push(tp);
            async move { text(200, "hello") }
        }),
    )
    .await;
    let pki = Pki::new();
    let port = common_port().await;
    let endpoint = lo(31, port);
    let v = view(1, &[(endpoint, "v1")], true, json!([]), json!({}));
    let (server_rec, server_spans) = recorders(server_log);
    let inbound = traced_inbound(endpoint, app.addr, pki.store(SERVER_ID), &v, server_rec).await;
    let (client_rec, client_spans) = recorders(AccessLog::disabled());
    let settings = Settings {
        recorders: client_rec,
        ..Settings::default()
    };
    let client_store = pki.store(CLIENT_ID);
    let outbound = outbound(client(Some(&client_store), &v, settings)).await;
    Traced {
        outbound,
        _inbound: inbound,
        _app: app,
        client_spans,
        server_spans,
        seen,
    }
}

async fn next_span(queue: &mut SpanQueue) -> SpanRecord {
    tokio::time::timeout(Duration::from_secs(5), queue.recv())
        .await
        .expect("a span within 5s")
        .expect("the queue is open")
}

#[tokio::test]
async fn client_and_server_spans_form_one_trace() {
    let mut t = traced(AccessLog::disabled()).await;
    let (status, body) = read(
        h1_client()
            .request(get(t.outbound.addr, "/orders/7?token=x"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, &body[..]), (200, &b"hello"[..]));
    let client = next_span(&mut t.client_spans).await;
    let server = next_span(&mut t.server_spans).await;
    assert_eq!(client.kind, SpanKind::Client);
    assert_eq!(server.kind, SpanKind::Server);
    assert_eq!(client.trace_id, server.trace_id);
    assert_eq!(client.parent_span_id, None);
    assert_eq!(server.parent_span_id, Some(client.span_id));
    assert_eq!(client.peer_identity.as_deref(), Some(SERVER_ID));
    assert_eq!(server.peer_identity.as_deref(), Some(CLIENT_ID));
    assert_eq!(client.peer_addr.map(|a| a.ip()), Some(lo(31, 0).ip()));
    assert!(server.peer_addr.is_some());
    assert_eq!((client.status, server.status), (Some(200), Some(200)));
    assert_eq!(client.route.as_deref(), Some("default"));
    assert!(server.route.is_some());
    assert_eq!(client.path.as_ref().map(|p| p.path()), Some("/orders/7"));
    // The app's parent is the SERVER span.
    let seen = t.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![Some(format!(
            "00-{}-{}-01",
            server.trace_id, server.span_id
        ))]
    );
}

#[tokio::test]
async fn an_incoming_traceparent_is_continued() {
    let mut t = traced(AccessLog::disabled()).await;
    let mut req = get(t.outbound.addr, "/x");
    req.headers_mut().insert("traceparent", TP.parse().unwrap());
    let (status, _) = read(h1_client().request(req).await.unwrap()).await;
    assert_eq!(status, 200);
    let client = next_span(&mut t.client_spans).await;
    let server = next_span(&mut t.server_spans).await;
    assert_eq!(
        client.trace_id.to_string(),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(
        client.parent_span_id.map(|p| p.to_string()).as_deref(),
        Some("00f067aa0ba902b7")
    );
    assert_eq!(server.parent_span_id, Some(client.span_id));

    // An unsampled parent: no spans, and the app sees the header as sent.
    let unsampled = TP.replace("-01", "-00");
    let mut req = get(t.outbound.addr, "/y");
    req.headers_mut()
        .insert("traceparent", unsampled.parse().unwrap());
    read(h1_client().request(req).await.unwrap()).await;
    assert!(t.client_spans.try_recv().is_err());
    assert!(t.server_spans.try_recv().is_err());
    let seen = t.seen.lock().unwrap().last().cloned().flatten();
    assert_eq!(seen.as_deref(), Some(unsampled.as_str()));
}

#[tokio::test]
async fn the_access_log_line_matches_the_span() {
    let dir = std::env::temp_dir().join(format!("pillion-telemetry-http-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("access.json");
    let log = AccessLog::start(
        &AccessLogTarget::File(path.clone()),
        64,
        TelemetryMetrics::default(),
    )
    .unwrap();
    let mut t = traced(log).await;
    let req = Request::post(format!("http://{}/submit", t.outbound.addr))
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"12345",
        )))
        .unwrap();
    let (status, _) = read(h1_client().request(req).await.unwrap()).await;
    assert_eq!(status, 200);
    let server = next_span(&mut t.server_spans).await;
    let mut line = None;
    for _ in 0..250 {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        line = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .next();
        if line.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let line = line.expect("an access log line");
    assert_eq!(line["trace_id"], server.trace_id.to_string());
    assert_eq!(line["direction"], "inbound");
    assert_eq!(line["method"], "POST");
    assert_eq!(line["path"], "/submit");
    assert_eq!(line["status"], 200);
    assert_eq!(line["request_bytes"], 5);
    assert_eq!(line["response_bytes"], 5);
    assert_eq!(line["peer_identity"], CLIENT_ID);
    assert_eq!(line["route"], "default");
    assert!(line["upstream"].is_string());
    assert!(line["duration_ms"].as_f64().unwrap() >= 0.0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Requests per second through outbound proxy → mesh TLS → inbound proxy → app, with
/// every request traced (spans exported over OTLP HTTP/protobuf to a local sink) vs
/// tracing off, in one run: both meshes side by side, rounds alternated, best round
/// of each kept (the machine is shared, so the best is the least disturbed). Prints
/// both; asserts that every request is served and only the traced mesh exports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cost_of_tracing_on_requests_per_second() {
    use pillion_proxy::telemetry::{OtlpConfig, OtlpProtocol, Telemetry, TelemetryConfig};
    let sink = app(lo(1, 0), handler(|_req| async move { text(200, "") })).await;
    let app = app(lo(1, 0), handler(|_req| async move { text(200, "hello") })).await;
    let pki = Pki::new();
    let mut meshes = Vec::new();
    for (k, sampling) in [(41u8, 1.0), (42, 0.0)] {
        let mut registry = prometheus_client::registry::Registry::default();
        let endpoint = format!("http://{}", sink.addr).parse().unwrap();
        let telemetry = Telemetry::start(
            &TelemetryConfig {
                otlp: Some(OtlpConfig::new(endpoint, OtlpProtocol::Http)),
                sampling,
                ..TelemetryConfig::default()
            },
            &mut registry,
        )
        .unwrap();
        let port = common_port().await;
        let ep = lo(k, port);
        let v = view(1, &[(ep, "v1")], true, json!([]), json!({}));
        let inbound = traced_inbound(
            ep,
            app.addr,
            pki.store(SERVER_ID),
            &v,
            telemetry.recorders(),
        )
        .await;
        let settings = Settings {
            recorders: telemetry.recorders(),
            ..Settings::default()
        };
        let outbound = outbound(client(Some(&pki.store(CLIENT_ID)), &v, settings)).await;
        meshes.push((telemetry, inbound, outbound));
    }
    let client = h1_client();
    // Debug builds (plain `cargo test`) run a shorter, still meaningful round.
    let (workers, per_worker) = (8u32, if cfg!(debug_assertions) { 100u32 } else { 500 });
    let mut best = [0f64; 2];
    for round in 0..4 {
        for (i, (_, _, outbound)) in meshes.iter().enumerate() {
            let addr = outbound.addr;
            for _ in 0..50 {
                read(client.request(get(addr, "/warm")).await.unwrap()).await;
            }
            let start = std::time::Instant::now();
            let tasks: Vec<_> = (0..workers)
                .map(|_| {
                    let client = client.clone();
                    tokio::spawn(async move {
                        for _ in 0..per_worker {
                            let resp = client.request(get(addr, "/rps")).await.unwrap();
                            assert_eq!(read(resp).await.0, 200);
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            let rps = f64::from(workers * per_worker) / start.elapsed().as_secs_f64();
            if round > 0 {
                best[i] = best[i].max(rps);
            }
        }
    }
    for (i, (telemetry, inbound, _)) in meshes.into_iter().enumerate() {
        let exported = telemetry.metrics().spans_exported.clone();
        telemetry.shutdown(Duration::from_secs(5)).await;
        drop(inbound);
        if i == 0 {
            assert!(exported.get() > 0, "no spans exported");
        } else {
            assert_eq!(exported.get(), 0);
        }
    }
    println!(
        "8 concurrent keep-alive HTTP/1.1 clients through two proxies with mesh TLS \
         (best of 3 alternating rounds of {} requests): tracing 100% (exported): {:.0} req/s, \
         tracing off: {:.0} req/s ({:+.1}%)",
        workers * per_worker,
        best[0],
        best[1],
        (best[0] / best[1] - 1.0) * 100.0
    );
    // No bound on the ratio here: a timed assertion on a shared 2-core machine
    // fails on noise (it did in CI: 701 against 1,555 req/s in a debug build). What
    // this asserts is that both meshes serve every request and only the traced one
    // exports; the cost is a figure to read, not a pass mark.
    assert!(best.iter().all(|rps| *rps > 0.0), "{best:?}");
}
