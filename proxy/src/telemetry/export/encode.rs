//! From [`SpanRecord`]s to the OTLP protobuf messages (`opentelemetry-proto`'s
//! generated types): attributes per the OpenTelemetry HTTP semantic conventions plus
//! Pillion's own, the resource once per request. Runs in the exporter task only.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};

use crate::telemetry::resource::Resource;
use crate::telemetry::span::{SpanKind, SpanRecord};

/// Instrumentation scope name of every span.
pub const SCOPE_NAME: &str = "pillion-proxy";

/// W3C "sampled" trace flag.
const FLAG_SAMPLED: u32 = 0x01;
/// OTLP `SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK`.
const FLAG_HAS_IS_REMOTE: u32 = 0x100;
/// OTLP `SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK`: the parent lives in another process.
const FLAG_IS_REMOTE: u32 = 0x200;

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

fn string(key: &str, value: impl Into<String>) -> KeyValue {
    kv(key, any_value::Value::StringValue(value.into()))
}

fn int(key: &str, value: i64) -> KeyValue {
    kv(key, any_value::Value::IntValue(value))
}

/// The resource message, built once per exporter.
pub fn resource(r: &Resource) -> ProtoResource {
    let mut attributes = vec![
        string("service.name", r.service_name.as_str()),
        string("telemetry.sdk.name", SCOPE_NAME),
        string("telemetry.sdk.language", "rust"),
    ];
    if let Some(pod) = &r.pod_name {
        attributes.push(string("k8s.pod.name", pod.as_str()));
    }
    if let Some(ns) = &r.namespace {
        attributes.push(string("k8s.namespace.name", ns.as_str()));
    }
    ProtoResource {
        attributes,
        ..ProtoResource::default()
    }
}

/// `network.protocol.version` for an HTTP version.
fn protocol_version(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// Methods the conventions know; any other is reported as `_OTHER`.
fn known_method(m: &http::Method) -> bool {
    use http::Method as M;
    [
        M::GET,
        M::HEAD,
        M::POST,
        M::PUT,
        M::DELETE,
        M::CONNECT,
        M::OPTIONS,
        M::TRACE,
        M::PATCH,
    ]
    .contains(m)
}

/// One span message.
pub fn span(rec: &SpanRecord) -> Span {
    let mut attributes = Vec::with_capacity(14);
    if known_method(&rec.method) {
        attributes.push(string("http.request.method", rec.method.as_str()));
    } else {
        attributes.push(string("http.request.method", "_OTHER"));
        attributes.push(string("http.request.method_original", rec.method.as_str()));
    }
    if let Some(pq) = &rec.path {
        attributes.push(string("url.path", pq.path()));
    }
    if let Some(route) = &rec.route {
        attributes.push(string("http.route", &**route));
        attributes.push(string("pillion.route", &**route));
    }
    if let Some(status) = rec.status {
        attributes.push(int("http.response.status_code", i64::from(status)));
    }
    if let Some(a) = &rec.authority {
        attributes.push(string("server.address", a.host()));
    }
    if let Some(port) = rec
        .authority
        .as_ref()
        .and_then(|a| a.port_u16())
        .or(rec.server_port)
    {
        attributes.push(int("server.port", i64::from(port)));
    }
    if let Some(peer) = rec.peer_addr {
        attributes.push(string("network.peer.address", peer.ip().to_string()));
        attributes.push(int("network.peer.port", i64::from(peer.port())));
    }
    attributes.push(string(
        "network.protocol.version",
        protocol_version(rec.version),
    ));
    if let Some(id) = &rec.peer_identity {
        attributes.push(string("pillion.peer.identity", &**id));
    }
    let status = if rec.is_error() {
        let error_type = match (rec.status, rec.error) {
            (Some(code), _) => code.to_string(),
            (None, Some(word)) => word.to_owned(),
            (None, None) => "_OTHER".to_owned(),
        };
        attributes.push(string("error.type", error_type));
        Some(Status {
            code: status::StatusCode::Error as i32,
            message: rec.error.unwrap_or_default().to_owned(),
        })
    } else {
        None
    };
    let remote = if rec.parent_span_id.is_some() {
        FLAG_IS_REMOTE
    } else {
        0
    };
    Span {
        trace_id: rec.trace_id.0.to_vec(),
        span_id: rec.span_id.0.to_vec(),
        parent_span_id: rec.parent_span_id.map(|p| p.0.to_vec()).unwrap_or_default(),
        flags: FLAG_SAMPLED | FLAG_HAS_IS_REMOTE | remote,
        name: rec.name(),
        kind: match rec.kind {
            SpanKind::Server => span::SpanKind::Server as i32,
            SpanKind::Client => span::SpanKind::Client as i32,
        },
        start_time_unix_nano: rec.start_unix_nanos,
        end_time_unix_nano: rec.end_unix_nanos,
        attributes,
        status,
        ..Span::default()
    }
}

/// One export request carrying `spans` under `resource`.
pub fn request(resource: &ProtoResource, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource.clone()),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: SCOPE_NAME.to_owned(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    ..InstrumentationScope::default()
                }),
                spans,
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::ids::{SpanId, TraceId};
    use prost::Message;

    fn record() -> SpanRecord {
        SpanRecord {
            trace_id: TraceId([1; 16]),
            span_id: SpanId([2; 8]),
            parent_span_id: Some(SpanId([3; 8])),
            kind: SpanKind::Client,
            start_unix_nanos: 10,
            end_unix_nanos: 25,
            method: http::Method::from_bytes(b"PURGE").unwrap(),
            path: Some("/a/b?secret=1".parse().unwrap()),
            authority: Some("svc.ns:9090".parse().unwrap()),
            server_port: Some(1234),
            version: http::Version::HTTP_2,
            peer_addr: Some("[2001:2::3]:7000".parse().unwrap()),
            peer_identity: Some("spiffe://cluster.local/ns/ns/sa/svc".into()),
            route: Some("purge".into()),
            status: Some(503),
            error: None,
        }
    }

    fn attr<'a>(s: &'a Span, key: &str) -> Option<&'a any_value::Value> {
        s.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.as_ref())
    }

    fn text(s: &Span, key: &str) -> String {
        match attr(s, key) {
            Some(any_value::Value::StringValue(v)) => v.clone(),
            other => panic!("{key}: {other:?}"),
        }
    }

    fn number(s: &Span, key: &str) -> i64 {
        match attr(s, key) {
            Some(any_value::Value::IntValue(v)) => *v,
            other => panic!("{key}: {other:?}"),
        }
    }

    #[test]
    fn attributes_follow_the_conventions() {
        let s = span(&record());
        assert_eq!(s.name, "PURGE purge");
        assert_eq!(s.kind, span::SpanKind::Client as i32);
        assert_eq!(
            (s.trace_id.len(), s.span_id.len(), s.parent_span_id.len()),
            (16, 8, 8)
        );
        assert_eq!(s.flags, 0x301);
        assert_eq!(text(&s, "http.request.method"), "_OTHER");
        assert_eq!(text(&s, "http.request.method_original"), "PURGE");
        assert_eq!(text(&s, "url.path"), "/a/b");
        assert_eq!(text(&s, "http.route"), "purge");
        assert_eq!(text(&s, "pillion.route"), "purge");
        assert_eq!(number(&s, "http.response.status_code"), 503);
        assert_eq!(text(&s, "server.address"), "svc.ns");
        assert_eq!(number(&s, "server.port"), 9090);
        assert_eq!(text(&s, "network.peer.address"), "2001:2::3");
        assert_eq!(number(&s, "network.peer.port"), 7000);
        assert_eq!(text(&s, "network.protocol.version"), "2");
        assert_eq!(
            text(&s, "pillion.peer.identity"),
            "spiffe://cluster.local/ns/ns/sa/svc"
        );
        assert_eq!(text(&s, "error.type"), "503");
        assert_eq!(
            s.status.as_ref().unwrap().code,
            status::StatusCode::Error as i32
        );
        assert_eq!((s.start_time_unix_nano, s.end_time_unix_nano), (10, 25));
    }

    #[test]
    fn success_has_no_status_and_root_is_not_remote() {
        let rec = SpanRecord {
            parent_span_id: None,
            status: Some(200),
            authority: None,
            method: http::Method::GET,
            ..record()
        };
        let s = span(&rec);
        assert!(s.status.is_none());
        assert!(s.parent_span_id.is_empty());
        assert_eq!(s.flags, 0x101);
        assert_eq!(number(&s, "server.port"), 1234);
        assert!(attr(&s, "error.type").is_none());
    }

    #[test]
    fn request_round_trips_through_protobuf() {
        let r = Resource::for_workload(Some("web"), Some("web-1"), Some("demo"));
        let req = request(&resource(&r), vec![span(&record())]);
        let bytes = req.encode_to_vec();
        let back = ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(back, req);
        let res = back.resource_spans[0].resource.as_ref().unwrap();
        let keys: Vec<_> = res.attributes.iter().map(|kv| kv.key.as_str()).collect();
        assert!(
            keys.contains(&"service.name")
                && keys.contains(&"k8s.pod.name")
                && keys.contains(&"k8s.namespace.name")
        );
    }
}
