//! Response caching through sidecars in namespaces with the real agent, asked with
//! curl as a user would: misses then hits (the app sees one request), `Age`,
//! revalidation answered `304` by the app, the caller's own `If-None-Match`
//! answered by the proxy, variants by `Vary`, answers that must not be kept, one
//! caller's credentials never answering another's, a shared route that keeps only
//! answers marked shareable for callers with credentials, requests the cache does
//! not answer, a `HEAD` answered from a `GET`'s entry, a burst of misses that sends one request upstream, a burst for an
//! answer that cannot be kept that does not queue, and the counts.

use std::time::Duration;

use pillion_tests::curl::{to_service as curl, Seen};
use pillion_tests::http_mesh::{load, policy_actions, HttpWorld, VIP};

use crate::common::{sidecar_opts, testbin};

const CACHE_ROUTES: &str = r#"- name: cached
  matches: [{path: {prefix: /cache}}]
  backends: [{subset: {version: v1}}]
  cache: {}
- name: shared
  matches: [{path: {prefix: /shared}}]
  backends: [{subset: {version: v1}}]
  cache: {shared: true}
"#;

/// What the proxy's cache did, as `pillion-cache` says.
trait Cached {
    fn cache(&self) -> &str;
}

impl Cached for Seen {
    fn cache(&self) -> &str {
        self.header("pillion-cache")
    }
}

#[test]
fn cached_routes_answer_repeats_from_the_callers_proxy() {
    let w = HttpWorld::start(
        "http_cache",
        &testbin(),
        &sidecar_opts(),
        CACHE_ROUTES,
        "mode: permissive",
    )
    .unwrap();
    let a = w.pods.a.clone();
    let app = &w.apps[0].stats;
    let get = |path: &str, flags: &[&str]| curl(&a, path, flags);

    // A miss, then hits: the app sees one request, the hit says how old it is.
    let first = get("/cache/fresh/1", &[]);
    assert_eq!(
        (first.status, first.cache()),
        (200, "miss"),
        "{first:?}\n{}",
        w.dump()
    );
    assert_eq!(first.body, "fresh n=1 lang= auth=");
    std::thread::sleep(Duration::from_millis(1100));
    let again = get("/cache/fresh/1", &[]);
    assert_eq!((again.status, again.cache()), (200, "hit"), "{again:?}");
    assert_eq!(again.body, first.body);
    assert!(
        again.header("age").parse::<u64>().unwrap() >= 1,
        "{again:?}"
    );
    assert_eq!(again.header("etag"), "\"v1\"");
    assert_eq!(app.count("/cache/fresh/1"), 1);
    // Another path, and another query, are other entries.
    assert_eq!(get("/cache/fresh/q?x=1", &[]).cache(), "miss");
    assert_eq!(get("/cache/fresh/q?x=2", &[]).cache(), "miss");
    assert_eq!(get("/cache/fresh/2", &[]).cache(), "miss");

    // The caller's own precondition is answered by the proxy from the entry.
    let cond = get("/cache/fresh/1", &["-H", "If-None-Match: \"v1\""]);
    assert_eq!((cond.status, cond.cache()), (304, "hit"), "{cond:?}");
    assert_eq!(cond.body, "");
    let other = get("/cache/fresh/1", &["-H", "If-None-Match: \"v0\""]);
    assert_eq!((other.status, other.cache()), (200, "hit"));
    assert_eq!(app.count("/cache/fresh/1"), 1);
    // A caller that asks for a fresh answer gets one from the app.
    let forced = get("/cache/fresh/1", &["-H", "Cache-Control: no-cache"]);
    assert_eq!(
        (forced.status, forced.cache()),
        (200, "stale"),
        "{forced:?}"
    );
    assert_eq!(app.count("/cache/fresh/1"), 2);

    // Stale after a second: sent with the entry's ETag; the app answers 304 and
    // the kept body comes back, fresh for the minute the 304 gives it.
    let first = get("/cache/short/1", &[]);
    assert_eq!(first.cache(), "miss");
    std::thread::sleep(Duration::from_millis(1500));
    let revalidated = get("/cache/short/1", &[]);
    assert_eq!(
        (revalidated.status, revalidated.cache()),
        (200, "revalidated"),
        "{revalidated:?}"
    );
    assert_eq!(revalidated.body, first.body);
    assert_eq!(app.count("/cache/short/1"), 2);
    assert_eq!(get("/cache/short/1", &[]).cache(), "hit");

    // Variants by Accept-Language: each language its own entry.
    let en = |lang: &str| {
        get(
            "/cache/vary/1",
            &["-H", &format!("Accept-Language: {lang}")],
        )
    };
    assert_eq!(en("en").cache(), "miss");
    assert_eq!(en("de").cache(), "miss");
    let (en2, de2) = (en("en"), en("de"));
    assert_eq!((en2.cache(), de2.cache()), ("hit", "hit"));
    assert!(
        en2.body.contains("lang=en") && de2.body.contains("lang=de"),
        "{en2:?} {de2:?}"
    );
    assert_eq!(app.count("/cache/vary/1"), 2);

    // Answers that must not be kept never are.
    for kind in ["nostore", "private", "cookie"] {
        let path = format!("/cache/{kind}/1");
        for _ in 0..2 {
            assert_eq!(get(&path, &[]).cache(), "miss", "{path}");
        }
        assert_eq!(app.count(&path), 2, "{path} was answered from the cache");
    }

    // One caller's credentials never answer another's: each token, each cookie
    // and no credentials at all are entries of their own.
    let alice = get("/cache/fresh/user", &["-H", "Authorization: Bearer alice"]);
    let bob = get("/cache/fresh/user", &["-H", "Authorization: Bearer bob"]);
    let anon = get("/cache/fresh/user", &[]);
    let cookie = get("/cache/fresh/user", &["-H", "Cookie: session=eve"]);
    for seen in [&alice, &bob, &anon, &cookie] {
        assert_eq!(seen.cache(), "miss", "{seen:?}");
    }
    assert!(bob.body.contains("auth=Bearer bob"), "{bob:?}");
    let alice2 = get("/cache/fresh/user", &["-H", "Authorization: Bearer alice"]);
    assert_eq!(alice2.cache(), "hit");
    assert!(alice2.body.contains("auth=Bearer alice"), "{alice2:?}");
    assert_eq!(app.count("/cache/fresh/user"), 4);

    // A shared route: a caller with credentials only gets what the app marked
    // shareable, and then shares it.
    let path = "/shared/fresh/1";
    assert_eq!(
        get(path, &["-H", "Authorization: Bearer alice"]).cache(),
        "miss"
    );
    assert_eq!(
        get(path, &["-H", "Authorization: Bearer alice"]).cache(),
        "miss"
    );
    assert_eq!(app.count(path), 2, "a private answer was shared");
    assert_eq!(get(path, &["-H", "Cookie: a=1"]).cache(), "miss");
    assert_eq!(
        get(path, &["-H", "Cookie: b=2"]).cache(),
        "hit",
        "shared without credentials"
    );
    let path = "/shared/public/1";
    assert_eq!(
        get(path, &["-H", "Authorization: Bearer alice"]).cache(),
        "miss"
    );
    let bob = get(path, &["-H", "Authorization: Bearer bob"]);
    assert_eq!(bob.cache(), "hit", "{bob:?}");
    assert!(
        bob.body.contains("auth=Bearer alice"),
        "public answers are shared: {bob:?}"
    );

    // Requests the cache does not answer go upstream untouched.
    let post = get("/cache/fresh/1", &["-X", "POST", "-d", "x"]);
    let range = get("/cache/fresh/1", &["-H", "Range: bytes=0-1"]);
    for seen in [&post, &range] {
        assert_eq!(seen.cache(), "bypass", "{seen:?}");
    }
    assert_eq!(app.count("/cache/fresh/1"), 4);
    // A HEAD is answered from the GET's fresh entry, its length included; one for
    // something not kept goes upstream and keeps nothing.
    let head = get("/cache/fresh/1", &["-I"]);
    assert_eq!((head.status, head.cache()), (200, "hit"), "{head:?}");
    assert_eq!(head.header("content-length"), "21", "{head:?}");
    assert_eq!(head.body, "");
    let unknown = get("/cache/fresh/head-only", &["-I"]);
    assert_eq!(
        (unknown.status, unknown.cache()),
        (200, "miss"),
        "{unknown:?}"
    );
    assert_eq!(get("/cache/fresh/head-only", &[]).cache(), "miss");
    assert_eq!(app.count("/cache/fresh/1"), 4);

    // A burst of misses for one slow answer: one request reaches the app.
    let vip = VIP.parse().unwrap();
    let answers = a
        .run(move || async move { load(vip, 30, 30, "/cache/slow/1", &[]).await })
        .unwrap();
    assert!(answers.iter().all(|r| r.status == 200), "{answers:?}");
    assert_eq!(
        app.count("/cache/slow/1"),
        1,
        "the misses were not coalesced"
    );
    // An answer that cannot be kept leaves a mark: the requests after it go
    // upstream together instead of one after another.
    let (took, answers) = a
        .run(move || async move {
            let start = std::time::Instant::now();
            let answers = load(vip, 20, 20, "/cache/slowpass/1", &[]).await;
            (start.elapsed(), answers)
        })
        .unwrap();
    assert!(answers.iter().all(|r| r.status == 200), "{answers:?}");
    assert_eq!(app.count("/cache/slowpass/1"), 20);
    assert!(
        took < Duration::from_secs(4),
        "requests waited for each other: {took:?}"
    );

    // Every outcome was counted on the route.
    let m = w.sidecars[0].metrics().unwrap();
    let count =
        |route: &str, action: &str| policy_actions(&m, "outbound", "demo/web", route, action);
    assert!(
        count("cached", "cache_hit") >= 30.0,
        "{}",
        count("cached", "cache_hit")
    );
    assert_eq!(count("cached", "cache_bypass"), 2.0);
    assert_eq!(count("cached", "cache_revalidated"), 1.0);
    assert_eq!(count("cached", "cache_stale"), 1.0);
    assert!(count("cached", "cache_miss") >= 32.0);
    assert_eq!(count("shared", "cache_hit"), 2.0);
    // The store says how full it is, against its bound.
    let held = m.value("pillion_http_cache_bytes", &[]);
    let bound = m.value("pillion_http_cache_capacity_bytes", &[]);
    assert_eq!(bound, (64 << 20) as f64);
    assert!(held > 0.0 && held < bound, "{held} of {bound}");
    assert!(m.value("pillion_http_cache_entries", &[]) >= 10.0);
}
