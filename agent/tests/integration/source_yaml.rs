//! The YAML source: a good file gives the expected views; every kind of bad file is
//! refused as `<file>:<line>:<col>: <reason>` naming the offending entry.

use pillion_agent::source::{parse_source, SourceError, EMBEDDED_DEFAULT, EMBEDDED_NAME};
use pillion_agent::view::{view_for, Discovery};
use pillion_api::view::{Endpoint, Mode, Protocol};
use std::collections::BTreeMap;
use std::net::SocketAddr;

const GOOD: &str = r#"
workloads:
  - name: web
    namespace: shop
    token: web-token-123
    addresses: [198.18.1.2]
  - name: db
    namespace: shop
    service_account: postgres
    token: db-token-4567
    addresses: [198.18.1.3, "2001:2::1:3"]
    inbound:
      default_mode: strict
      ports:
        5432:
          allow: ["spiffe://cluster.local/ns/shop/sa/web"]
        9187: {mode: permissive}

services:
  - name: db
    namespace: shop
    addresses: [198.18.1.100]
    ports:
      - port: 5432
        protocol: opaque
  - name: api
    namespace: shop
    addresses: [198.18.1.101]
    ports:
      - port: 80
        target_port: 8080
        protocol: http1
    endpoints:
      - workload: web
        labels: {version: v2}
      - addresses: [198.18.1.50]
        identity: spiffe://cluster.local/ns/legacy/sa/api
      - addresses: [198.18.1.51]
"#;

fn refuse(text: &str) -> SourceError {
    match parse_source("src.yaml", text, "cluster.local") {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e,
    }
}

/// Asserts the message is `src.yaml:<line>:<col>: ...` with the given line and that
/// it contains every fragment.
fn assert_refused(text: &str, line: usize, fragments: &[&str]) -> SourceError {
    let e = refuse(text);
    let msg = e.to_string();
    assert_eq!(e.line(), Some(line), "wrong line in: {msg}");
    let (l, c) = e.position.unwrap();
    assert!(msg.starts_with(&format!("src.yaml:{l}:{c}: ")), "{msg}");
    for f in fragments {
        assert!(msg.contains(f), "{msg:?} lacks {f:?}");
    }
    e
}

#[test]
fn a_good_file_gives_the_expected_views() {
    let catalog = parse_source("src.yaml", GOOD, "cluster.local").unwrap();
    let db = catalog.workload_for_token("db-token-4567").unwrap();
    let view = view_for(&catalog, db, 7, "", Discovery::Full);
    assert_eq!(view.version, 7);
    assert_eq!(view.identity, "spiffe://cluster.local/ns/shop/sa/postgres");
    assert_eq!(view.inbound.default_mode, Mode::Strict);
    let (mode, allow) = view.inbound.for_port(5432);
    assert_eq!(mode, Mode::Strict, "a port's mode defaults to default_mode");
    assert_eq!(allow, ["spiffe://cluster.local/ns/shop/sa/web"]);
    assert_eq!(view.inbound.for_port(9187), (Mode::Permissive, &[][..]));

    assert_eq!(view.services.len(), 2);
    let db_svc = &view.services[0];
    assert_eq!(db_svc.ports[0].protocol, Protocol::Opaque);
    assert!(db_svc.endpoints.is_empty());

    let api = &view.services[1];
    assert_eq!(api.ports[0].target_port(), 8080);
    let web_ep = view
        .endpoint_for("198.18.1.2:8080".parse().unwrap())
        .unwrap();
    assert_eq!(
        web_ep,
        &Endpoint {
            address: "198.18.1.2".parse().unwrap(),
            port: 8080,
            identity: Some("spiffe://cluster.local/ns/shop/sa/web".into()),
            labels: BTreeMap::from([("version".into(), "v2".into())]),
        }
    );
    let legacy = view
        .endpoint_for("198.18.1.50:8080".parse().unwrap())
        .unwrap();
    assert_eq!(
        legacy.identity.as_deref(),
        Some("spiffe://cluster.local/ns/legacy/sa/api")
    );
    let plain = view
        .endpoint_for("198.18.1.51:8080".parse().unwrap())
        .unwrap();
    assert_eq!(plain.identity, None, "no workload, no identity: plain TCP");
    let (svc, port) = view
        .service_for("198.18.1.101:80".parse::<SocketAddr>().unwrap())
        .unwrap();
    assert_eq!(svc.endpoints_for(port).count(), 3);

    let web = catalog.workload_for_token("web-token-123").unwrap();
    assert_eq!(
        view_for(&catalog, web, 7, "", Discovery::Full).identity,
        "spiffe://cluster.local/ns/shop/sa/web"
    );
    assert!(catalog.workload_for_token("nope-nope-nope").is_none());
}

#[test]
fn the_embedded_default_parses_and_validates() {
    let catalog = parse_source(EMBEDDED_NAME, EMBEDDED_DEFAULT, "cluster.local").unwrap();
    let server = catalog.workload_for_token("demo-server-token").unwrap();
    assert_eq!(
        server.identity.as_str(),
        "spiffe://cluster.local/ns/demo/sa/server"
    );
    assert_eq!(server.addresses.len(), 2);
    let client = catalog.workload_for_token("demo-client-token").unwrap();
    assert_eq!(
        client.identity.as_str(),
        "spiffe://cluster.local/ns/demo/sa/client"
    );
}

#[test]
fn syntax_errors_point_at_the_line() {
    let text = "workloads:\n  - name: a\n    namespace: demo\n   token: [oops\n";
    let e = refuse(text);
    assert!(e.position.is_some(), "{e}");
    assert!(e.to_string().starts_with("src.yaml:"), "{e}");

    let text = "services:\n  - name: s\n    namespace: demo\n    ports: [ {port: 80 ]\n";
    assert_refused(text, 4, &[]);
}

#[test]
fn unknown_fields_are_refused() {
    let text = "workloads:\n  - name: a\n    namespace: demo\n    tokn: abcdefghij\n";
    assert_refused(text, 4, &["workloads[0]", "unknown field `tokn`"]);
    let text = "servics: []\n";
    assert_refused(text, 1, &["unknown field `servics`"]);
}

#[test]
fn bad_values_are_refused_where_they_stand() {
    let svc = |extra: &str| {
        format!(
            "services:\n  - name: s\n    namespace: demo\n    ports:\n      - port: 80\n{extra}"
        )
    };
    assert_refused(
        &svc("    addresses: [198.18.0.1, 1.2.3]\n"),
        6,
        &["services[0].addresses[1]", "`1.2.3` is not an IP address"],
    );
    assert_refused(
        "services:\n  - name: s\n    namespace: demo\n    ports:\n      - port: 0\n",
        5,
        &["services[0].ports[0].port", "port 0"],
    );
    assert_refused(
        &svc("    endpoints:\n      - addresses: [198.18.0.9]\n        identity: spiffe://cluster.local/oops\n"),
        8,
        &["services[0].endpoints[0].identity", "not a valid SPIFFE id"],
    );
    assert_refused(
        "workloads:\n  - name: a\n    namespace: demo\n    inbound:\n      ports:\n        80:\n          allow: [\"http://x/*\"]\n",
        7,
        &["allow[0]", "not a valid SPIFFE id pattern"],
    );
    assert_refused(
        "workloads:\n  - name: a\n    namespace: demo\n    inbound:\n      ports:\n        0: {mode: strict}\n",
        6,
        &["port 0"],
    );
    assert_refused(
        &svc("        protocol: grpc\n"),
        6,
        &["unknown variant `grpc`"],
    );
    assert_refused(
        "workloads:\n  - name: Bad_Name\n    namespace: demo\n",
        2,
        &["workloads[0].name", "not a valid name"],
    );
    assert_refused(
        "workloads:\n  - name: a\n    namespace: demo\n    token: short\n",
        4,
        &["token too short"],
    );
}

#[test]
fn duplicate_tokens_name_both_entries() {
    let text = "\
workloads:
  - name: a
    namespace: demo
    token: same-token-1
  - name: b
    namespace: demo
    token: same-token-1
";
    let e = assert_refused(
        text,
        7,
        &["workloads[1].token", "workloads[0] already uses this token"],
    );
    assert!(
        !e.to_string().contains("same-token-1"),
        "a token must never be echoed: {e}"
    );
}

#[test]
fn references_to_unknown_workloads_are_refused() {
    let text = "\
workloads:
  - name: server
    namespace: demo
    addresses: [198.18.0.3]
services:
  - name: echo
    namespace: demo
    ports: [{port: 7000}]
    endpoints:
      - workload: server
      - workload: sever
";
    assert_refused(
        text,
        11,
        &[
            "services[0].endpoints[1].workload",
            "no workload named `sever`",
            "demo/server",
        ],
    );
}

#[test]
fn other_semantic_errors_name_the_entry() {
    // Duplicate workloads.
    assert_refused(
        "workloads:\n  - {name: a, namespace: demo}\n  - {name: a, namespace: demo}\n",
        3,
        &["workloads[1].name", "duplicate workload demo/a"],
    );
    // A service without ports.
    assert_refused(
        "services:\n  - name: s\n    namespace: demo\n    ports: []\n",
        4,
        &["services[0].ports", "at least one port"],
    );
    // Duplicate service ports.
    assert_refused(
        "services:\n  - name: s\n    namespace: demo\n    ports:\n      - port: 80\n      - port: 80\n",
        6,
        &["services[0].ports[1].port", "listed twice"],
    );
    // The same VIP on two services.
    assert_refused(
        "services:\n  - {name: a, namespace: d, addresses: [198.18.0.100], ports: [{port: 1}]}\n  - {name: b, namespace: d, addresses: [198.18.0.100], ports: [{port: 1}]}\n",
        3,
        &["services[1].addresses[0]", "already an address of services[0]"],
    );
    // An endpoint without addresses.
    assert_refused(
        "workloads:\n  - {name: w, namespace: d}\nservices:\n  - name: s\n    namespace: d\n    ports: [{port: 1}]\n    endpoints:\n      - workload: w\n",
        8,
        &["services[0].endpoints[0]", "no addresses"],
    );
    // An endpoint port the service doesn't have.
    assert_refused(
        "services:\n  - name: s\n    namespace: d\n    ports: [{port: 80}]\n    endpoints:\n      - addresses: [198.18.0.5]\n        ports: [81]\n",
        7,
        &["services[0].endpoints[0].ports[0]", "not a target port"],
    );
    // Both workload and identity.
    assert_refused(
        "workloads:\n  - {name: w, namespace: d, addresses: [198.18.0.5]}\nservices:\n  - name: s\n    namespace: d\n    ports: [{port: 1}]\n    endpoints:\n      - workload: w\n        identity: spiffe://cluster.local/ns/d/sa/w\n",
        9,
        &["services[0].endpoints[0].identity", "not both"],
    );
    // Cross-namespace references work, and are checked.
    assert_refused(
        "workloads:\n  - {name: w, namespace: d, addresses: [198.18.0.5]}\nservices:\n  - name: s\n    namespace: e\n    ports: [{port: 1}]\n    endpoints:\n      - workload: w\n",
        8,
        &["no workload named `w` in namespace `e`"],
    );
    let ok = "workloads:\n  - {name: w, namespace: d, addresses: [198.18.0.5]}\nservices:\n  - name: s\n    namespace: e\n    ports: [{port: 1}]\n    endpoints:\n      - workload: d/w\n";
    assert!(parse_source("src.yaml", ok, "cluster.local").is_ok());
}

#[test]
fn empty_files_are_refused() {
    let e = refuse("# nothing yet\n");
    assert!(e.to_string().starts_with("src.yaml: "), "{e}");
    assert!(e.reason.contains("empty"), "{e}");
}
