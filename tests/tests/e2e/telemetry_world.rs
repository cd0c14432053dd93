//! The test collector inside a world: a receiver in a pod takes real OTLP exports
//! from another pod and can go down and come back; the collector bridge carries
//! exports from a pod to a collector outside the world (the demo's Jaeger path).

use std::time::Duration;

use pillion_proxy::telemetry::{encode, Transport as Exporter};
use pillion_proxy::telemetry::{OtlpConfig, OtlpProtocol, Resource};
use pillion_proxy::telemetry::{SpanId, TraceId};
use pillion_proxy::telemetry::{SpanKind, SpanRecord};
use pillion_tests::otlp::{CollectorBridge, OtlpReceiver, Transport};
use pillion_tests::{Pod, World};

fn record(route: &str) -> SpanRecord {
    SpanRecord {
        trace_id: TraceId::random(),
        span_id: SpanId::random(),
        parent_span_id: None,
        kind: SpanKind::Server,
        start_unix_nanos: 1,
        end_unix_nanos: 2,
        method: http::Method::GET,
        path: Some("/".parse().unwrap()),
        authority: None,
        server_port: Some(80),
        version: http::Version::HTTP_11,
        peer_addr: None,
        peer_identity: None,
        route: Some(route.into()),
        status: Some(200),
        error: None,
    }
}

/// Sends one export request from `pod` to `endpoint`.
fn export_from(
    pod: &Pod,
    endpoint: String,
    protocol: OtlpProtocol,
    route: &'static str,
) -> Result<i64, String> {
    pod.run(move || async move {
        let mut config = OtlpConfig::new(endpoint.parse().unwrap(), protocol);
        config.timeout = Duration::from_secs(2);
        let exporter = Exporter::new(&config);
        let req = encode::request(
            &encode::resource(&Resource::default()),
            vec![encode::span(&record(route))],
        );
        exporter.export(&req).await.map_err(|e| e.to_string())
    })
    .unwrap()
}

#[test]
fn receiver_in_a_pod_goes_down_and_comes_back() {
    let world = World::new("otlp_pod").unwrap();
    let collector = world.pod("collector").unwrap();
    let app = world.pod("app").unwrap();
    let mut receiver = pillion_tests::otlp::start_in(&collector).unwrap();
    assert_eq!(
        receiver.grpc_endpoint(),
        format!("http://{}:4317", collector.ipv4())
    );
    export_from(&app, receiver.grpc_endpoint(), OtlpProtocol::Grpc, "grpc").unwrap();
    export_from(&app, receiver.http_endpoint(), OtlpProtocol::Http, "http").unwrap();
    let spans = receiver.collected().spans();
    assert_eq!(spans.len(), 2);
    assert_eq!(spans[0].transport, Transport::Grpc);
    assert_eq!(spans[0].str_attr("http.route"), Some("grpc"));
    assert_eq!(spans[1].transport, Transport::Http);

    receiver.stop();
    let err = export_from(&app, receiver.grpc_endpoint(), OtlpProtocol::Grpc, "down").unwrap_err();
    assert!(err.contains("cannot reach the collector"), "{err}");
    receiver.start_again().unwrap();
    export_from(&app, receiver.grpc_endpoint(), OtlpProtocol::Grpc, "back").unwrap();
    assert_eq!(
        receiver
            .collected()
            .spans()
            .last()
            .unwrap()
            .str_attr("http.route"),
        Some("back")
    );
}

#[test]
fn bridge_reaches_a_collector_outside_the_world() {
    let outside = OtlpReceiver::start_loopback().unwrap();
    let world = World::new("otlp_bridge").unwrap();
    let app = world.pod("app").unwrap();
    let bridge = CollectorBridge::start(&world, 4318, outside.http_addr().to_string()).unwrap();
    assert_eq!(bridge.inside().to_string(), "198.18.0.1:4318");
    export_from(
        &app,
        format!("http://{}", bridge.inside()),
        OtlpProtocol::Http,
        "bridged",
    )
    .unwrap();
    let spans = outside.collected().spans();
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].str_attr("http.route"), Some("bridged"));
}
