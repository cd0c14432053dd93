//! Aggregation routes through sidecars in namespaces with the real agent, asked
//! with curl: one `GET` answered from two services' JSON (one of them another
//! service, reached over mesh TLS as the caller), the caller's query and edited
//! headers passed to each part but never its preconditions; a failed or slow part
//! failing the whole (`502`, `504`) or, on a partial route, leaving `null` and its
//! reason; every part failing; methods an aggregation does not serve; and the
//! trace: one SERVER span with a CLIENT child per part.

use std::time::{Duration, Instant};

use pillion_tests::curl::{to_service as curl, Seen};
use pillion_tests::http_mesh::{source_yaml, HttpWorld, APP_PORT, ORDER_JSON};
use pillion_tests::otlp::{self, OtlpReceiver};
use serde_json::{json, Value};

use crate::common::{sidecar_opts, testbin};

const AGGREGATE_ROUTES: &str = r#"- name: page
  matches: [{path: {exact: /page}}]
  request_headers: {set: {x-user: alice}}
  aggregate:
    parts:
      - {name: order, backend: {subset: {version: v1}}, path: /doc/json}
      - name: stock
        backend: {service: stock}
        path: /request?from=page
        retry: {attempts: 2, conditions: [gateway-error]}
- name: strict
  matches: [{path: {exact: /strict}}]
  aggregate:
    parts:
      - {name: order, backend: {subset: {version: v1}}, path: /doc/json}
      - {name: broken, backend: {service: stock}, path: /fail}
- name: slow
  matches: [{path: {exact: /slow-part}}]
  aggregate:
    parts:
      - {name: order, backend: {subset: {version: v1}}, path: /doc/json}
      - {name: slow, backend: {service: stock}, path: /slow, timeout: 300ms}
- name: partial
  matches: [{path: {exact: /partial}}]
  timeout: 600ms
  aggregate:
    on_partial: partial
    parts:
      - {name: order, backend: {subset: {version: v1}}, path: /doc/json}
      - {name: broken, backend: {service: stock}, path: /fail}
      - {name: text, backend: {service: stock}, path: /doc/text}
      - {name: late, backend: {service: stock}, path: /slow}
- name: all-fail
  matches: [{path: {exact: /all-fail}}]
  aggregate:
    on_partial: partial
    parts:
      - {name: a, backend: {service: stock}, path: /fail}
      - {name: b, backend: {subset: {version: v1}}, path: /fail}
"#;

/// A second service, `stock`, served by the `v2` server only.
fn stock_service(b2: std::net::IpAddr) -> String {
    format!(
        "  - name: stock
    namespace: demo
    addresses: [198.18.1.101]
    ports:
      - port: 80
        target_port: {APP_PORT}
    endpoints:
      - workload: server
        addresses: [{b2}]
"
    )
}

fn json_of(seen: &Seen) -> Value {
    serde_json::from_str(&seen.body).unwrap_or_else(|e| panic!("{e}: {seen:?}"))
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[test]
fn aggregation_routes_merge_their_parts_and_fail_as_declared() {
    let mut collector: Option<OtlpReceiver> = None;
    let w = HttpWorld::start_custom(
        "http_aggregate",
        &testbin(),
        |pods| {
            let receiver = otlp::start_in(&pods.c)?;
            let opts = sidecar_opts().proxy_args(["--otlp-endpoint", &receiver.grpc_endpoint()]);
            collector = Some(receiver);
            Ok(opts)
        },
        |pods| {
            source_yaml(pods, AGGREGATE_ROUTES, "mode: permissive") + &stock_service(pods.b2.ipv4())
        },
        &[],
    )
    .unwrap();
    let collector = collector.expect("the collector started");
    let a = w.pods.a.clone();
    let get = |path: &str, flags: &[&str]| curl(&a, path, flags);

    // Two services' JSON in one answer; the parts asked as the route says.
    let traceparent = format!("traceparent: 00-{TRACE}-{CALLER_SPAN}-01");
    // The caller forges the proxy's identity header: the part still sees only the
    // identity mesh TLS proved.
    let page = get(
        "/page?id=7",
        &[
            "-H",
            "If-None-Match: \"x\"",
            "-H",
            &traceparent,
            "-H",
            "pillion-peer-identity: spiffe://cluster.local/ns/ops/sa/admin",
        ],
    );
    assert_eq!(page.status, 200, "{page:?}\n{}", w.dump());
    assert_eq!(page.header("content-type"), "application/json");
    assert_eq!(page.header("pillion-aggregate"), "complete");
    let body = json_of(&page);
    let order: Value = serde_json::from_str(ORDER_JSON).unwrap();
    assert_eq!(body["order"], order);
    assert_eq!(
        body["stock"],
        json!({
            "app": "b2",
            "query": "from=page&id=7",
            "host": "stock.demo",
            "accept": "application/json",
            "accept_encoding": "identity",
            "peer": "spiffe://cluster.local/ns/demo/sa/client",
            "user": "alice",
            "if_none_match": "",
        }),
        "the stock part: another service, over mesh TLS as the caller"
    );
    assert_eq!(w.apps[1].stats.count("request"), 1);
    let h2 = get("/page", &["--http2-prior-knowledge"]);
    assert_eq!((h2.version.as_str(), h2.status), ("HTTP/2", 200), "{h2:?}");
    assert_eq!(json_of(&h2)["order"], order);

    // Only GET and HEAD.
    let post = get("/page", &["-X", "POST", "--data-binary", "{}"]);
    assert_eq!(
        (
            post.status,
            post.header("pillion-error"),
            post.header("allow")
        ),
        (405, "method-not-allowed", "GET, HEAD"),
        "{post:?}"
    );
    assert_eq!(get("/page", &["-I"]).status, 200);

    // A failed part fails the whole; a slow one at its own timeout.
    let strict = get("/strict", &[]);
    assert_eq!(
        (strict.status, strict.header("pillion-error")),
        (502, "part-failed"),
        "{strict:?}"
    );
    assert!(
        strict.body.contains("broken: answered 503"),
        "{}",
        strict.body
    );
    let started = Instant::now();
    let slow = get("/slow-part", &[]);
    assert_eq!(
        (slow.status, slow.header("pillion-error")),
        (504, "part-timeout"),
        "{slow:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );

    // A partial route: what arrived, null and a reason for the rest, within the
    // route's timeout.
    let started = Instant::now();
    let partial = get("/partial", &[]);
    let took = started.elapsed();
    assert_eq!(partial.status, 200, "{partial:?}");
    assert_eq!(partial.header("pillion-aggregate"), "partial");
    let body = json_of(&partial);
    assert_eq!(body["order"], order);
    for missing in ["broken", "text", "late"] {
        assert_eq!(body[missing], Value::Null, "{missing}: {body}");
    }
    let errors = &body["_errors"];
    assert!(
        errors["broken"].as_str().unwrap().contains("503"),
        "{errors}"
    );
    assert!(
        errors["text"].as_str().unwrap().contains("JSON"),
        "{errors}"
    );
    assert!(
        errors["late"].as_str().unwrap().contains("timeout"),
        "{errors}"
    );
    assert!(errors.get("order").is_none(), "{errors}");
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_millis(1800),
        "{took:?}"
    );
    // Nothing arrived: 502, even on a partial route.
    let none = get("/all-fail", &[]);
    assert_eq!(
        (none.status, none.header("pillion-error")),
        (502, "part-failed"),
        "{none:?}"
    );

    // The trace: the caller's span → the client proxy's SERVER span for the
    // route → a CLIENT span per part → each part's server.
    let spans = collector
        .collected()
        .wait_for(
            "the aggregation's spans",
            Duration::from_secs(15),
            |spans| {
                let ours = spans.iter().filter(|s| s.trace_id() == TRACE);
                ours.filter(|s| s.is_client()).count() >= 2
                    && spans
                        .iter()
                        .filter(|s| s.trace_id() == TRACE && s.is_server())
                        .count()
                        >= 3
            },
        )
        .unwrap();
    let ours: Vec<_> = spans.iter().filter(|s| s.trace_id() == TRACE).collect();
    // The trace as a tree, for the record (`--nocapture`).
    for s in &ours {
        println!(
            "span {} parent {} {} {} route={} status={}",
            s.span_id(),
            s.parent_span_id().unwrap_or_default(),
            if s.is_server() { "SERVER" } else { "CLIENT" },
            s.resource_attr("service.name").unwrap_or(""),
            s.str_attr("pillion.route").unwrap_or(""),
            s.int_attr("http.response.status_code").unwrap_or(0),
        );
    }
    let root = ours
        .iter()
        .find(|s| s.parent_span_id().as_deref() == Some(CALLER_SPAN))
        .expect("a span whose parent is the caller's");
    assert!(
        root.is_server(),
        "the aggregation is answered, not sent: {root:?}"
    );
    assert_eq!(root.str_attr("pillion.route"), Some("page"));
    let children: Vec<_> = ours
        .iter()
        .filter(|s| s.parent_span_id() == Some(root.span_id()))
        .collect();
    let mut routes: Vec<_> = children
        .iter()
        .map(|s| (s.is_client(), s.str_attr("pillion.route").unwrap_or("")))
        .collect();
    routes.sort();
    assert_eq!(routes, [(true, "page/order"), (true, "page/stock")]);
    for child in children {
        assert!(
            ours.iter()
                .any(|s| s.is_server() && s.parent_span_id() == Some(child.span_id())),
            "each part's server continues the part's span"
        );
    }
}
