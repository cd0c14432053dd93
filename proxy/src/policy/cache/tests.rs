use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use pillion_api::cache::ResponseCache;

use super::freshness::Storable;
use super::store::{Store, Stored};
use super::*;

type Field = (&'static str, &'static str);

fn cache(policy: ResponseCache) -> RouteCache {
    RouteCache::new(&policy, "demo/web", 80, "r", Arc::new(Store::new(1 << 20))).unwrap()
}

fn parts(method: &str, fields: &[(&'static str, &str)]) -> Parts {
    let mut req = Request::builder().method(method).uri("http://web/a?x=1");
    for (n, v) in fields {
        req = req.header(*n, *v);
    }
    req.body(()).unwrap().into_parts().0
}

fn stored(fields: &[(&'static str, &str)], lifetime: u64, age: u64) -> Stored {
    let mut headers = HeaderMap::new();
    for (n, v) in fields {
        headers.append(*n, HeaderValue::from_str(v).unwrap());
    }
    Stored {
        status: StatusCode::OK,
        headers,
        body: Bytes::from_static(b"hello"),
        stored_at: Instant::now(),
        freshness: Storable {
            lifetime: Duration::from_secs(lifetime),
            initial_age: Duration::from_secs(age),
            vary: Default::default(),
        },
    }
}

#[test]
fn only_plain_gets_are_looked_up() {
    let c = cache(ResponseCache::default());
    assert!(matches!(c.ask(&parts("GET", &[]), false), Ask::Lookup(_)));
    let Ask::Lookup(head) = c.ask(&parts("HEAD", &[]), false) else {
        panic!("a HEAD looks for the GET's entry");
    };
    let Ask::Lookup(get) = c.ask(&parts("GET", &[]), false) else {
        panic!("lookup expected");
    };
    assert!(head.head && !get.head);
    assert_eq!(head.primary, get.primary);
    let bypassed: &[(&str, &[Field], bool)] = &[
        ("POST", &[], false),
        ("HEAD", &[("range", "bytes=0-1")], false),
        ("GET", &[], true),
        ("GET", &[("range", "bytes=0-1")], false),
        ("GET", &[("if-match", "\"a\"")], false),
        (
            "GET",
            &[("if-unmodified-since", "Mon, 07 Dec 2026 12:00:00 GMT")],
            false,
        ),
        ("GET", &[("if-range", "\"a\"")], false),
        ("GET", &[("cache-control", "no-store")], false),
        ("GET", &[("cache-control", "max-age=x")], false),
        ("GET", &[("transfer-encoding", "chunked")], false),
    ];
    for (method, fields, body) in bypassed {
        assert!(
            matches!(c.ask(&parts(method, fields), *body), Ask::Bypass),
            "{method} {fields:?} {body}"
        );
    }
    let off = RouteCache::new(
        &ResponseCache::default(),
        "demo/web",
        80,
        "r",
        Arc::new(Store::new(0)),
    )
    .unwrap();
    assert!(matches!(off.ask(&parts("GET", &[]), false), Ask::Bypass));
}

#[test]
fn a_shared_route_marks_requests_with_credentials() {
    let shared = cache(ResponseCache {
        shared: true,
        ..ResponseCache::default()
    });
    let Ask::Lookup(l) = shared.ask(&parts("GET", &[("authorization", "Bearer x")]), false) else {
        panic!("lookup expected");
    };
    assert!(l.authorized);
    let own = cache(ResponseCache::default());
    let Ask::Lookup(l) = own.ask(&parts("GET", &[("authorization", "Bearer x")]), false) else {
        panic!("lookup expected");
    };
    assert!(!l.authorized, "the key keeps them apart");
}

#[test]
fn what_the_request_asks_limits_reuse() {
    let c = cache(ResponseCache::default());
    let now = Instant::now();
    let lookup = |fields: &[(&'static str, &str)]| match c.ask(&parts("GET", fields), false) {
        Ask::Lookup(l) => l,
        Ask::Bypass => panic!("lookup expected"),
    };
    let entry = stored(&[], 60, 30);
    assert!(lookup(&[]).reuses(&entry, now));
    assert!(!lookup(&[("cache-control", "no-cache")]).reuses(&entry, now));
    assert!(!lookup(&[("pragma", "no-cache")]).reuses(&entry, now));
    assert!(!lookup(&[("cache-control", "max-age=10")]).reuses(&entry, now));
    assert!(lookup(&[("cache-control", "max-age=40")]).reuses(&entry, now));
    assert!(!lookup(&[("cache-control", "min-fresh=40")]).reuses(&entry, now));
    assert!(!lookup(&[]).reuses(&stored(&[], 60, 60), now), "stale");
}

#[test]
fn preconditions_are_answered_from_the_entry() {
    let req = |fields: &[(&'static str, &str)]| parts("GET", fields).headers;
    let tagged = stored(&[("etag", "W/\"v1\"")], 60, 0);
    assert!(not_modified(&req(&[("if-none-match", "\"v1\"")]), &tagged));
    assert!(not_modified(
        &req(&[("if-none-match", "\"x\", W/\"v1\"")]),
        &tagged
    ));
    assert!(not_modified(&req(&[("if-none-match", "*")]), &tagged));
    assert!(!not_modified(&req(&[("if-none-match", "\"v2\"")]), &tagged));
    assert!(!not_modified(&req(&[]), &tagged));
    let dated = stored(&[("last-modified", "Mon, 07 Dec 2026 12:00:00 GMT")], 60, 0);
    assert!(not_modified(
        &req(&[("if-modified-since", "Mon, 07 Dec 2026 12:00:00 GMT")]),
        &dated
    ));
    assert!(!not_modified(
        &req(&[("if-modified-since", "Mon, 07 Dec 2026 11:00:00 GMT")]),
        &dated
    ));
    // If-None-Match decides alone when present.
    assert!(!not_modified(
        &req(&[
            ("if-none-match", "\"v9\""),
            ("if-modified-since", "Mon, 07 Dec 2026 12:00:00 GMT")
        ]),
        &dated
    ));
}

#[test]
fn served_answers_carry_their_age_and_a_304_keeps_no_length() {
    let entry = stored(&[("content-length", "5"), ("age", "3")], 60, 7);
    let (status, headers) = answer(&entry, Instant::now(), false);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers.get("age").unwrap(), "7");
    let (status, headers) = answer(&entry, Instant::now(), true);
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert!(!headers.contains_key("content-length"));
}

#[test]
fn a_304_refreshes_every_field_but_the_body_ones() {
    let old = stored(
        &[
            ("cache-control", "max-age=1"),
            ("etag", "\"v1\""),
            ("content-length", "5"),
            ("x-kept", "1"),
        ],
        1,
        0,
    );
    let mut fresh = HeaderMap::new();
    fresh.insert("cache-control", HeaderValue::from_static("max-age=60"));
    fresh.insert("content-length", HeaderValue::from_static("0"));
    let merged = refresh(&old.headers, &fresh);
    assert_eq!(merged.get("cache-control").unwrap(), "max-age=60");
    assert_eq!(merged.get("content-length").unwrap(), "5");
    assert_eq!(merged.get("x-kept").unwrap(), "1");
    assert_eq!(merged.get("etag").unwrap(), "\"v1\"");
}
