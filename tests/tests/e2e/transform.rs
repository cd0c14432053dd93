//! Body transforms on client-side routes, through sidecars in namespaces with the
//! real agent, asked with curl as a user would: an XML service answering a JSON
//! client, a JSON answer with a member taken out and one renamed, a JSON client
//! writing to an XML service, a request body edited on its way; and each way
//! around them an attacker would try — the member hidden behind a duplicate key or
//! a `\u` escape, another content type, a compressed body, a body too large (with
//! and without a length), a body that does not parse, an answer of another type,
//! compressed or too large — refused with its status, never passed on as it came.

use pillion_tests::curl::{to_service as curl, Seen};
use pillion_tests::http_mesh::{HttpWorld, ORDER_XML};
use serde_json::{json, Value};

use crate::common::{sidecar_opts, testbin};

const TRANSFORM_ROUTES: &str = r#"- name: to-json
  matches: [{path: {prefix: /doc/xml}}]
  transform:
    response: {convert: xml_to_json, json: [{remove: {path: /order/secret}}]}
- name: redact
  matches: [{path: {prefix: /doc/json}}, {path: {prefix: /doc/text}},
            {path: {prefix: /doc/gzip}}, {path: {prefix: /doc/huge}}]
  transform:
    response:
      json: [{remove: {path: /order/secret}}, {rename: {path: /order/id, to: orderId}}]
- name: to-xml
  matches: [{path: {prefix: /doc/echo/xml}}]
  transform:
    request: {convert: json_to_xml, json: [{remove: {path: /order/admin}}]}
- name: edit
  matches: [{path: {prefix: /doc/echo}}]
  retry: {attempts: 2, conditions: [5xx]}
  transform:
    max_body_bytes: 1024
    request: {json: [{set: {path: /source, value: mesh}}, {remove: {path: /admin}}]}
"#;

fn json_of(seen: &Seen) -> Value {
    serde_json::from_str(&seen.body).unwrap_or_else(|e| panic!("{e}: {seen:?}"))
}

#[test]
fn routes_rewrite_bodies_and_refuse_what_they_cannot_read() {
    let w = HttpWorld::start(
        "http_transform",
        &testbin(),
        &sidecar_opts(),
        TRANSFORM_ROUTES,
        "mode: permissive",
    )
    .unwrap();
    let a = w.pods.a.clone();
    let get = |path: &str, flags: &[&str]| curl(&a, path, flags);
    let echoed = || w.apps[0].stats.count("doc") + w.apps[1].stats.count("doc");

    // An XML service, a JSON client: converted, the secret taken out, typed JSON,
    // the ETag weak (the bytes are no longer the service's).
    let xml = get("/doc/xml", &[]);
    assert_eq!(xml.status, 200, "{xml:?}\n{}", w.dump());
    assert_eq!(xml.header("content-type"), "application/json");
    assert_eq!(xml.header("etag"), "W/\"v1\"");
    assert_eq!(
        json_of(&xml),
        json!({"order": {"@id": "7", "item": [{"@sku": "a1", "#text": "2"},
                                              {"@sku": "b2", "#text": "1"}]}})
    );
    assert_eq!(xml.header("content-length"), xml.body.len().to_string());

    // A JSON answer edited; asked compressed, the service was asked for identity.
    let redacted = get("/doc/json", &["--compressed"]);
    assert_eq!(redacted.status, 200, "{redacted:?}");
    assert_eq!(
        json_of(&redacted),
        json!({"order": {"orderId": "7", "item": [{"sku": "a1", "qty": "2"},
                                                  {"sku": "b2", "qty": "1"}]}})
    );
    assert_eq!(redacted.header("x-seen-accept-encoding"), "identity");
    assert!(!redacted.body.contains("s3cret"));
    // HTTP/2 from the client: the same rewrite.
    let h2 = get("/doc/json", &["--http2-prior-knowledge"]);
    assert_eq!((h2.version.as_str(), h2.status), ("HTTP/2", 200), "{h2:?}");
    assert_eq!(json_of(&h2), json_of(&redacted));
    // HEAD has no body to rewrite, but its fields describe the GET's answer.
    let head = get("/doc/json", &["-I"]);
    assert_eq!(head.status, 200, "{head:?}");
    let head = get("/doc/xml", &["-I"]);
    assert_eq!(
        (
            head.status,
            head.header("content-type"),
            head.header("etag")
        ),
        (200, "application/json", "W/\"v1\""),
        "{head:?}"
    );
    assert_ne!(head.header("content-length"), ORDER_XML.len().to_string());

    // Answers the route cannot read: 502 with the reason, the secret never out.
    for (path, why) in [
        ("/doc/text", "must be JSON"),
        ("/doc/gzip", "must be JSON"),
        ("/doc/huge", "larger than"),
    ] {
        let refused = get(path, &[]);
        assert_eq!(
            (refused.status, refused.header("pillion-error")),
            (502, "bad-upstream-body"),
            "{path}: {refused:?}"
        );
        assert!(refused.body.contains(why), "{path}: {}", refused.body);
        assert!(!refused.body.contains("s3cret"), "{path}");
    }

    // A JSON client writing to an XML service.
    let to_xml = get(
        "/doc/echo/xml",
        &[
            "-H",
            "content-type: application/json",
            "--data-binary",
            r#"{"order": {"@id": "9", "admin": "yes", "item": ["a", "b"]}}"#,
        ],
    );
    assert_eq!(to_xml.status, 200, "{to_xml:?}");
    assert_eq!(
        to_xml.header("content-type"),
        "application/xml; charset=utf-8"
    );
    assert_eq!(
        to_xml.body,
        r#"<?xml version="1.0" encoding="UTF-8"?><order id="9"><item>a</item><item>b</item></order>"#
    );

    // A request body edited on its way, over HTTP/1.1 and HTTP/2.
    let post = |body: &str, extra: &[&str]| {
        let mut flags = vec!["--data-binary", body];
        flags.extend_from_slice(extra);
        get("/doc/echo", &flags)
    };
    for version in ["--http1.1", "--http2-prior-knowledge"] {
        let edited = post(
            r#"{"admin": true, "name": "x"}"#,
            &["-H", "content-type: application/json", version],
        );
        assert_eq!(edited.status, 200, "{version}: {edited:?}");
        assert_eq!(json_of(&edited), json!({"name": "x", "source": "mesh"}));
    }
    // The member hidden behind a duplicate key or an escape is still taken out:
    // the body is parsed and written again, never patched as text.
    for hidden in [
        r#"{"admin": false, "admin": true}"#,
        r#"{"\u0061dmin": true}"#,
    ] {
        let edited = post(hidden, &["-H", "content-type: application/json"]);
        assert_eq!(edited.status, 200, "{hidden}: {edited:?}");
        assert_eq!(json_of(&edited), json!({"source": "mesh"}), "{hidden}");
    }
    // An upgrade's bytes could not be rewritten: refused, not relayed.
    let upgrade = post(
        r#"{"admin": true}"#,
        &[
            "-H",
            "content-type: application/json",
            "-H",
            "connection: upgrade",
            "-H",
            "upgrade: websocket",
        ],
    );
    assert_eq!(
        (upgrade.status, upgrade.header("pillion-error")),
        (501, "unsupported"),
        "{upgrade:?}"
    );
    // No body: nothing to rewrite, passed on.
    assert_eq!(get("/doc/echo", &[]).status, 200);

    // Bodies the route cannot read never reach the service.
    let before = echoed();
    let big = format!(r#"{{"admin": true, "pad": "{}"}}"#, "x".repeat(2000));
    let cases: [(&str, Vec<&str>, u16, &str); 6] = [
        (
            r#"{"admin": true}"#,
            vec!["-H", "content-type: text/plain"],
            415,
            "unsupported-media-type",
        ),
        (r#"{"admin": true}"#, vec![], 415, "unsupported-media-type"),
        (
            r#"{"admin": true}"#,
            vec![
                "-H",
                "content-type: application/json",
                "-H",
                "content-encoding: gzip",
            ],
            415,
            "unsupported-media-type",
        ),
        (
            r#"{"admin": tru"#,
            vec!["-H", "content-type: application/json"],
            400,
            "bad-body",
        ),
        (
            &big,
            vec!["-H", "content-type: application/json"],
            413,
            "body-too-large",
        ),
        (
            &big,
            vec![
                "-H",
                "content-type: application/json",
                "-H",
                "transfer-encoding: chunked",
            ],
            413,
            "body-too-large",
        ),
    ];
    for (body, flags, status, code) in cases {
        let refused = post(body, &flags);
        assert_eq!(
            (refused.status, refused.header("pillion-error")),
            (status, code),
            "{flags:?}: {refused:?}"
        );
    }
    assert_eq!(echoed(), before, "a refused body reached the service");
}
