//! What the telemetry tests trace: requests with or without a parent and the caller
//! of an inbound request, written once.

use http::Request;

use super::span::Inbound;

/// A sampled W3C parent.
pub(crate) const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// A request of `method` to `uri` at `host`, with `traceparent` if given.
pub(crate) fn request(
    method: &str,
    uri: &str,
    host: &str,
    traceparent: Option<&str>,
) -> Request<()> {
    let mut b = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", host);
    if let Some(tp) = traceparent {
        b = b.header("traceparent", tp);
    }
    b.body(()).expect("a valid test request")
}

/// A meshed caller of an inbound request to port 8080.
pub(crate) fn caller() -> Inbound<'static> {
    Inbound {
        peer_addr: "198.18.0.2:40000".parse().ok(),
        peer_identity: Some("spiffe://cluster.local/ns/demo/sa/client"),
        server_port: 8080,
    }
}
