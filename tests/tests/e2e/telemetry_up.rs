//! The "see your traces" path: `pillion up --otlp-endpoint` with a collector
//! outside the local mesh's world (here the test OTLP receiver on this process's loopback,
//! where Jaeger would listen) receives its traces through the bridge: each
//! HTTP request a CLIENT span from the client's proxy and a SERVER span from the
//! server's proxy, under the client app's own trace id.

use std::time::Duration;

use pillion::local::up::{self, UpOpts};
use pillion_tests::otlp::OtlpReceiver;

#[test]
fn pillion_up_exports_its_traces_to_a_collector_outside_the_world() {
    let receiver = OtlpReceiver::start_loopback().unwrap();
    let report = up::run(&UpOpts {
        binary: crate::common::testbin(),
        duration: Some(Duration::from_secs(5)),
        otlp_endpoint: Some(receiver.grpc_endpoint()),
        otlp_protocol: Some("grpc".into()),
    })
    .unwrap();
    assert!(report.ok > 0 && report.failed == 0, "{report:?}");
    // The visitor outside the mesh got through the gateway (public 200, private 200
    // with its token, 401 without) every round.
    assert!(report.edge_ok > 0 && report.edge_failed == 0, "{report:?}");
    // The proxies flush on shutdown, so every span is in by now.
    let spans = receiver.collected().spans();
    let client = spans
        .iter()
        .find(|s| s.is_client() && s.resource_attr("service.name") == Some("client"))
        .unwrap_or_else(|| panic!("no CLIENT span from the client's proxy in {spans:#?}"));
    let server = spans
        .iter()
        .find(|s| s.is_server() && s.parent_span_id() == Some(client.span_id()))
        .expect("the SERVER span under it");
    assert_eq!(server.resource_attr("service.name"), Some("server"));
    assert_eq!(server.trace_id(), client.trace_id());
    assert!(
        client.parent_span_id().is_some(),
        "the client app's trace is continued"
    );
    assert_eq!(client.str_attr("http.request.method"), Some("GET"));
}
