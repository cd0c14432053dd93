//! What tracing costs one request on the proxy's side: starting, injecting and ending
//! a sampled span (handed to the export queue) against an unsampled request, which
//! must cost next to nothing. Prints ns per request; run with `--release` for the
//! numbers that matter (`cargo test --release -p pillion-proxy --test
//! telemetry_overhead -- --nocapture`).

use std::hint::black_box;
use std::time::{Duration, Instant};

use pillion_proxy::telemetry::export::span_queue;
use pillion_proxy::telemetry::span::Inbound;
use pillion_proxy::telemetry::{Sampler, TelemetryMetrics, Tracer};

const N: u32 = 50_000;

fn per_request(tracer: &Tracer, traceparent: Option<&str>) -> Duration {
    let mut req = http::Request::get("/api/orders/7?x=1")
        .header("host", "orders.shop:8080")
        .header("user-agent", "bench")
        .body(())
        .unwrap();
    if let Some(tp) = traceparent {
        req.headers_mut().insert("traceparent", tp.parse().unwrap());
    }
    let conn = Inbound {
        peer_addr: Some("198.18.0.2:40000".parse().unwrap()),
        peer_identity: Some("spiffe://cluster.local/ns/demo/sa/client"),
        server_port: 8080,
    };
    let start = Instant::now();
    for _ in 0..N {
        let mut headers = req.headers().clone();
        if let Some(span) = tracer.start_server(&req, conn) {
            span.inject(&mut headers);
            span.end(Some(http::StatusCode::OK), Some("orders"));
        }
        black_box(headers);
    }
    start.elapsed() / N
}

#[test]
fn unsampled_requests_cost_almost_nothing() {
    // A queue that is never drained: after it fills, every span is dropped and
    // counted, which is exactly the collector-down path.
    let metrics = TelemetryMetrics::default();
    let (sink, _queue) = span_queue(2048, metrics.clone());
    let on = Tracer::new(Sampler::new(1.0).unwrap(), sink.clone());
    let off = Tracer::new(Sampler::new(0.0).unwrap(), sink);
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";

    let baseline = per_request(&Tracer::disabled(), None);
    let off_ns = per_request(&off, Some(tp));
    let not_sampled = per_request(&on, Some(unsampled));
    let sampled = per_request(&on, Some(tp));
    let new_trace = per_request(&on, None);
    println!(
        "per request (incl. a header-map clone of {baseline:?}): tracing off {off_ns:?}, \
         unsampled parent {not_sampled:?}, sampled parent {sampled:?}, new trace {new_trace:?}"
    );
    assert!(
        metrics
            .dropped(pillion_proxy::telemetry::metrics::DropReason::QueueFull)
            .get()
            > 0
    );
    // Loose bounds that hold in debug builds too: the point is the order of magnitude.
    assert!(
        off_ns < baseline + Duration::from_micros(5),
        "tracing off costs {off_ns:?}"
    );
    assert!(
        not_sampled < baseline + Duration::from_micros(20),
        "unsampled costs {not_sampled:?}"
    );
    assert!(
        sampled < Duration::from_micros(200),
        "a sampled span costs {sampled:?}"
    );
}
