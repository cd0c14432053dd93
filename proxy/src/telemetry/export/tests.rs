//! The proxy's OTLP exporter against a real receiver (tonic's generated gRPC
//! `TraceService` and an HTTP/protobuf endpoint) on loopback: spans arrive decoded
//! with their attributes over both transports; with the collector down, ending spans
//! stays instant and the drops are counted; when it returns, spans flow again; a
//! shutdown flushes what is queued. No namespaces needed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::telemetry::fixtures::{self, TP};
use crate::telemetry::metrics::DropReason;
use crate::telemetry::span::Inbound;
use crate::telemetry::{OtlpConfig, OtlpProtocol, Resource, Telemetry, TelemetryConfig};
use pillion_testkit::otlp::{OtlpReceiver, Transport};
use prometheus_client::registry::Registry;

fn config(endpoint: &str, protocol: OtlpProtocol) -> TelemetryConfig {
    let mut otlp = OtlpConfig::new(endpoint.parse().unwrap(), protocol);
    otlp.batch_delay = Duration::from_millis(50);
    otlp.backoff_min = Duration::from_millis(20);
    otlp.backoff_max = Duration::from_millis(100);
    otlp.timeout = Duration::from_secs(2);
    TelemetryConfig {
        otlp: Some(otlp),
        resource: Resource::for_workload(Some("web"), Some("web-0"), Some("demo")),
        ..TelemetryConfig::default()
    }
}

fn request(traceparent: Option<&str>) -> http::Request<()> {
    fixtures::request("GET", "/orders/7?x=1", "web.demo:8080", traceparent)
}

fn inbound() -> Inbound<'static> {
    fixtures::caller()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn exports_over(protocol: OtlpProtocol) {
    let receiver = OtlpReceiver::start_loopback().unwrap();
    let endpoint = match protocol {
        OtlpProtocol::Grpc => receiver.grpc_endpoint(),
        OtlpProtocol::Http => receiver.http_endpoint(),
    };
    let rt = runtime();
    let mut registry = Registry::default();
    let telemetry = rt
        .block_on(async { Telemetry::start(&config(&endpoint, protocol), &mut registry) })
        .unwrap();
    let span = telemetry
        .tracer()
        .start_server(&request(Some(TP)), inbound())
        .unwrap();
    let (trace, id) = (span.trace_id().to_string(), span.span_id().to_string());
    span.end(Some(http::StatusCode::OK), Some("orders"));
    let mut out = request(None);
    let mut client = telemetry
        .tracer()
        .start_client(&out, "198.18.0.3:7000".parse::<SocketAddr>().unwrap())
        .unwrap();
    client.inject(out.headers_mut());
    client.set_peer(
        "198.18.0.3:7000".parse().unwrap(),
        Some("spiffe://cluster.local/ns/demo/sa/web"),
    );
    client.end(Some(http::StatusCode::BAD_GATEWAY), Some("orders"));

    let spans = receiver
        .collected()
        .wait_for("two spans", Duration::from_secs(10), |s| s.len() >= 2)
        .unwrap();
    let server = spans.iter().find(|s| s.is_server()).expect("a SERVER span");
    assert_eq!((server.trace_id(), server.span_id()), (trace, id));
    assert_eq!(server.parent_span_id().as_deref(), Some("00f067aa0ba902b7"));
    assert_eq!(server.span.name, "GET orders");
    assert_eq!(server.str_attr("http.request.method"), Some("GET"));
    assert_eq!(server.str_attr("url.path"), Some("/orders/7"));
    assert_eq!(server.str_attr("http.route"), Some("orders"));
    assert_eq!(server.str_attr("pillion.route"), Some("orders"));
    assert_eq!(server.int_attr("http.response.status_code"), Some(200));
    assert_eq!(server.str_attr("server.address"), Some("web.demo"));
    assert_eq!(server.int_attr("server.port"), Some(8080));
    assert_eq!(server.str_attr("network.peer.address"), Some("198.18.0.2"));
    assert_eq!(server.str_attr("network.protocol.version"), Some("1.1"));
    assert_eq!(
        server.str_attr("pillion.peer.identity"),
        Some("spiffe://cluster.local/ns/demo/sa/client")
    );
    assert_eq!(server.resource_attr("service.name"), Some("web"));
    assert_eq!(server.resource_attr("k8s.pod.name"), Some("web-0"));
    assert_eq!(server.resource_attr("k8s.namespace.name"), Some("demo"));
    assert!(!server.is_error());
    let client = spans.iter().find(|s| s.is_client()).expect("a CLIENT span");
    assert!(client.parent_span_id().is_none());
    assert!(client.is_error());
    assert_eq!(client.str_attr("error.type"), Some("502"));
    assert_eq!(client.str_attr("network.peer.address"), Some("198.18.0.3"));
    let want = match protocol {
        OtlpProtocol::Grpc => Transport::Grpc,
        OtlpProtocol::Http => Transport::Http,
    };
    assert!(spans.iter().all(|s| s.transport == want));
    assert!(receiver.collected().requests(want) >= 1);
    let metrics = telemetry.metrics().clone();
    assert!(
        pillion_testkit::wait::eventually_blocking(Duration::from_secs(5), || metrics
            .spans_exported
            .get()
            == 2),
        "exported counter: {}",
        metrics.spans_exported.get()
    );
    rt.block_on(telemetry.shutdown(Duration::from_secs(2)));
}

#[test]
fn exports_over_grpc() {
    exports_over(OtlpProtocol::Grpc);
}

#[test]
fn exports_over_http_protobuf() {
    exports_over(OtlpProtocol::Http);
}

/// The collector goes down: ending 20,000 spans stays a matter of microseconds each,
/// spans are dropped and counted, memory stays bounded by the queue. It comes back:
/// new spans arrive without a restart of anything.
#[test]
fn collector_down_drops_and_counts_then_recovers() {
    let mut receiver = OtlpReceiver::start_loopback().unwrap();
    let rt = runtime();
    let mut cfg = config(&receiver.grpc_endpoint(), OtlpProtocol::Grpc);
    if let Some(otlp) = cfg.otlp.as_mut() {
        otlp.queue = 256;
        otlp.batch = 64;
    }
    let mut registry = Registry::default();
    let telemetry = rt
        .block_on(async { Telemetry::start(&cfg, &mut registry) })
        .unwrap();
    let tracer = telemetry.tracer().clone();
    let metrics = telemetry.metrics().clone();

    // Up: a first span arrives.
    tracer
        .start_server(&request(None), inbound())
        .unwrap()
        .end(Some(http::StatusCode::OK), None);
    receiver
        .collected()
        .wait_for("the first span", Duration::from_secs(10), |s| !s.is_empty())
        .unwrap();

    receiver.stop();
    let n = 20_000u32;
    let req = request(Some(TP));
    let start = Instant::now();
    for _ in 0..n {
        let span = tracer.start_server(&req, inbound()).unwrap();
        span.end(Some(http::StatusCode::OK), Some("orders"));
    }
    let per_span = start.elapsed() / n;
    println!(
        "collector down: {n} spans started and ended in {:?} ({per_span:?} each)",
        start.elapsed()
    );
    assert!(
        per_span < Duration::from_micros(200),
        "ending a span took {per_span:?} with the collector down"
    );
    let dropped = |r| metrics.dropped(r).get();
    // The queue holds 256 and the worker keeps taking failing batches of 64 while
    // the loop runs, so most (not all but ~320) of the 20,000 are dropped at once.
    assert!(
        dropped(DropReason::QueueFull) >= u64::from(n) / 2,
        "queue_full drops: {}",
        dropped(DropReason::QueueFull)
    );
    assert!(
        pillion_testkit::wait::eventually_blocking(Duration::from_secs(10), || dropped(
            DropReason::ExportFailed
        ) > 0),
        "no export_failed drops"
    );
    assert!(metrics.export_error.get() > 0);

    receiver.start_again().unwrap();
    receiver.collected().clear();
    let mut sent = 0;
    let arrived = pillion_testkit::wait::eventually_blocking(Duration::from_secs(20), || {
        tracer
            .start_server(&request(None), inbound())
            .unwrap()
            .end(Some(http::StatusCode::OK), Some("after"));
        sent += 1;
        receiver
            .collected()
            .spans()
            .iter()
            .any(|s| s.str_attr("http.route") == Some("after"))
    });
    assert!(
        arrived,
        "no span arrived after the collector came back ({sent} sent)"
    );
    rt.block_on(telemetry.shutdown(Duration::from_secs(2)));
}

#[test]
fn shutdown_flushes_queued_spans() {
    let receiver = OtlpReceiver::start_loopback().unwrap();
    let rt = runtime();
    let mut cfg = config(&receiver.http_endpoint(), OtlpProtocol::Http);
    if let Some(otlp) = cfg.otlp.as_mut() {
        otlp.batch_delay = Duration::from_secs(60);
    }
    let mut registry = Registry::default();
    let telemetry = rt
        .block_on(async { Telemetry::start(&cfg, &mut registry) })
        .unwrap();
    for _ in 0..10 {
        telemetry
            .tracer()
            .start_server(&request(None), inbound())
            .unwrap()
            .end(Some(http::StatusCode::OK), None);
    }
    let metrics = telemetry.metrics().clone();
    rt.block_on(telemetry.shutdown(Duration::from_secs(5)));
    assert_eq!(receiver.collected().len(), 10);
    assert_eq!(metrics.spans_exported.get(), 10);
}

#[test]
fn sampling_zero_means_no_spans_and_no_exporter() {
    let receiver = OtlpReceiver::start_loopback().unwrap();
    let rt = runtime();
    let cfg = TelemetryConfig {
        sampling: 0.0,
        ..config(&receiver.grpc_endpoint(), OtlpProtocol::Grpc)
    };
    let mut registry = Registry::default();
    let telemetry = rt
        .block_on(async { Telemetry::start(&cfg, &mut registry) })
        .unwrap();
    assert!(!telemetry.tracer().is_enabled());
    assert!(telemetry
        .tracer()
        .start_server(&request(Some(TP)), inbound())
        .is_none());
    rt.block_on(telemetry.shutdown(Duration::from_secs(1)));
    assert_eq!(receiver.collected().len(), 0);
}
