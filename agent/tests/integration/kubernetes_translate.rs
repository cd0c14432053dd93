//! The Kubernetes translation on realistic objects (`tests/fixtures/k8s/`): Services,
//! dual-stack EndpointSlices with a not-ready endpoint, meshed and unmeshed pods, a
//! headless Service, a Service without selector, named target ports, and the
//! `pillion.io` policy objects, including broken ones that must only be skipped.

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::core::DynamicObject;
use kube::runtime::watcher::Event;
use pillion_agent::kubernetes::cluster::Cluster;
use pillion_agent::kubernetes::translate::{translate, Objects, Translation};
use pillion_agent::kubernetes::watch::retranslate;
use pillion_agent::source::{Catalog, Workload};
use pillion_agent::view::{view_for, Discovery};
use pillion_api::policy::{PathMatch, RateLimitKey, RetryOn, StringMatch};
use pillion_api::view::{Mode, Protocol};
use serde::de::DeserializeOwned;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

const TD: &str = "cluster.local";

fn fixture<T: DeserializeOwned>(name: &str) -> Vec<Arc<T>> {
    let path = format!("{}/tests/fixtures/k8s/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let items: Vec<T> = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    items.into_iter().map(Arc::new).collect()
}

fn objects() -> Objects {
    let policies: Vec<Arc<DynamicObject>> = fixture("policies.json");
    let of_kind = |kind: &str| -> Vec<Arc<DynamicObject>> {
        policies
            .iter()
            .filter(|o| o.types.as_ref().is_some_and(|t| t.kind == kind))
            .cloned()
            .collect()
    };
    Objects {
        services: fixture::<Service>("services.json"),
        endpoint_slices: fixture::<EndpointSlice>("endpointslices.json"),
        pods: fixture::<Pod>("pods.json"),
        routes: of_kind("Route"),
        retry_policies: of_kind("RetryPolicy"),
        rate_limit_policies: of_kind("RateLimitPolicy"),
        authorization_policies: of_kind("AuthorizationPolicy"),
        authentication_policies: of_kind("AuthenticationPolicy"),
    }
}

fn translated() -> Translation {
    translate(&objects(), TD)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn id(sa: &str) -> String {
    format!("spiffe://cluster.local/ns/demo/sa/{sa}")
}

#[test]
fn services_are_sorted_and_udp_and_external_name_services_are_left_out() {
    let t = translated();
    let names: Vec<_> = t
        .catalog
        .services()
        .map(|s| format!("{}/{}", s.namespace, s.name))
        .collect();
    assert_eq!(names, ["demo/db", "demo/echo", "demo/legacy", "demo/web"]);
}

#[test]
fn a_service_with_named_target_ports_dual_stack_and_a_not_ready_endpoint() {
    let t = translated();
    let echo = &t.catalog.services().nth(1).unwrap();
    assert_eq!(echo.addresses, [ip("198.18.100.10"), ip("2001:2::100:10")]);
    let ports: Vec<_> = echo
        .ports
        .iter()
        .map(|p| (p.port, p.protocol, p.target_port))
        .collect();
    assert_eq!(
        ports,
        [
            // targetPort "http" resolves through the slices' port of the same name.
            (80, Protocol::Auto, Some(5678)),
            (9090, Protocol::Http2, None),
            // pillion.io/opaque-ports
            (7000, Protocol::Opaque, None),
        ]
    );
    // 2 ready pods × (v4 + v6) × 3 ports; the terminating, not-ready pod is left out.
    assert_eq!(echo.endpoints.len(), 12);
    assert!(echo
        .endpoints
        .iter()
        .all(|e| e.address != ip("198.18.1.13")));
    for e in &echo.endpoints {
        assert_eq!(e.identity.as_deref(), Some(id("echo").as_str()), "{e:?}");
        assert!([5678, 9090, 7000].contains(&e.port));
    }
    let v2 = echo
        .endpoints
        .iter()
        .find(|e| e.address == ip("2001:2::1:12") && e.port == 5678)
        .expect("v6 endpoint whose conditions are empty counts as ready");
    assert_eq!(v2.labels.get("version").map(String::as_str), Some("v2"));
    assert_eq!(echo.endpoints_for(&echo.ports[0]).count(), 4);
}

#[test]
fn headless_and_selectorless_services_and_unmeshed_endpoints() {
    let t = translated();
    let db = &t.catalog.services().next().unwrap();
    assert!(db.addresses.is_empty(), "headless: no VIP");
    assert_eq!(db.endpoints.len(), 1);
    let e = &db.endpoints[0];
    assert_eq!((e.address, e.port), (ip("198.18.1.31"), 5432));
    assert_eq!(e.identity, None, "db-0 is not injected: plain TCP");
    assert_eq!(e.labels.get("app").map(String::as_str), Some("db"));

    let legacy = &t.catalog.services().nth(2).unwrap();
    assert_eq!(legacy.addresses, [ip("198.18.100.30")]);
    assert_eq!(legacy.ports[0].target_port, Some(8443));
    assert_eq!(legacy.endpoints.len(), 1, "the FQDN slice is ignored");
    let e = &legacy.endpoints[0];
    assert_eq!((e.address, e.port), (ip("198.18.50.1"), 8443));
    assert!(e.identity.is_none() && e.labels.is_empty());

    let web = &t.catalog.services().nth(3).unwrap();
    assert_eq!(web.ports[0].protocol, Protocol::Http1, "appProtocol http");
    assert_eq!(web.ports[0].target_port, Some(8080));
}

#[test]
fn one_workload_per_meshed_service_account() {
    let t = translated();
    let ids: Vec<_> = t
        .catalog
        .workloads()
        .map(|w| w.identity.to_string())
        .collect();
    // loadgen has no serviceAccountName: the namespace's `default`.
    assert_eq!(ids, [id("default"), id("echo"), id("web")]);
    let echo = &t.catalog.workloads().nth(1).unwrap();
    assert_eq!(echo.namespace, "demo");
    assert!(echo.addresses.contains(&ip("198.18.1.11")));
    assert!(echo.addresses.contains(&ip("2001:2::1:12")));
    assert!(
        echo.token.is_none(),
        "Kubernetes identities have no static token"
    );
}

#[test]
fn routes_retries_and_rate_limits_land_on_the_parent_port() {
    let t = translated();
    let echo = &t.catalog.services().nth(1).unwrap();
    let routes = &echo.ports[0].routes;
    let names: Vec<_> = routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["echo.canary", "echo.1"], "the bad rule is skipped");

    let canary = &routes[0];
    assert_eq!(canary.matches[0].path, Some(PathMatch::Prefix("/".into())));
    assert_eq!(canary.backends.len(), 2);
    assert_eq!(canary.backends[0].weight, 90);
    assert_eq!(
        canary.backends[0].service, None,
        "the parent's own endpoints"
    );
    assert_eq!(
        canary.backends[1].subset.get("version").map(String::as_str),
        Some("v2")
    );
    assert_eq!(
        canary
            .request_headers
            .set
            .get("x-route")
            .map(String::as_str),
        Some("canary")
    );
    assert_eq!(canary.timeout, Some(Duration::from_secs(2)));
    assert_eq!(
        canary.per_try_timeout,
        Some(Duration::from_millis(500)),
        "the Route's backendRequest wins over the RetryPolicy's perTryTimeout"
    );
    let retry = canary.retry.as_ref().expect("RetryPolicy echo");
    assert_eq!(retry.attempts, 3);
    assert_eq!(
        retry.conditions,
        [
            RetryOn::GatewayError,
            RetryOn::ConnectFailure,
            RetryOn::Status(429)
        ]
    );
    assert_eq!(retry.budget.as_ref().map(|b| b.min_per_second), Some(10));
    let limit = canary
        .rate_limit
        .as_ref()
        .expect("RateLimitPolicy echo-route");
    assert_eq!(limit.key, RateLimitKey::Header("x-api-key".into()));
    assert_eq!(limit.burst, 1, "burst 0 still lets one request through");

    let old = &routes[1];
    assert_eq!(old.matches[0].path, Some(PathMatch::Exact("/old".into())));
    assert_eq!(old.matches[0].method.as_deref(), Some("GET"));
    assert_eq!(old.matches[0].headers[0].name, "x-debug");
    assert_eq!(
        old.matches[0].headers[0].value,
        StringMatch::Exact("1".into())
    );
    assert_eq!(
        old.rewrite.as_ref().map(|r| r.prefix.as_str()),
        Some("/new")
    );
    assert_eq!(old.per_try_timeout, Some(Duration::from_millis(250)));

    assert!(
        echo.ports[1].routes.is_empty(),
        "RetryPolicy echo names port 80 only"
    );
    pillion_api::policy::validate_routes(routes).unwrap();

    // RetryPolicy web targets every port: a catch-all route carries it.
    let web = &t.catalog.services().nth(3).unwrap();
    assert_eq!(web.ports[0].routes.len(), 1);
    assert_eq!(web.ports[0].routes[0].name, "default");
    assert_eq!(
        web.ports[0].routes[0].retry.as_ref().map(|r| r.attempts),
        Some(2)
    );
}

#[test]
fn authorization_and_service_rate_limits_become_inbound_policy() {
    let t = translated();
    let echo = &t.catalog.workloads().nth(1).unwrap();
    let (mode, allow) = echo.inbound.for_port(5678);
    assert_eq!(mode, Mode::Strict, "Strict wins over Permissive");
    assert_eq!(
        allow,
        [id("web"), "spiffe://cluster.local/ns/ops/*".to_string()]
    );
    assert_eq!(echo.inbound.for_port(9090).0, Mode::Permissive);

    let web = &t.catalog.workloads().nth(2).unwrap();
    let port = web.inbound.ports.get(&8080).expect("target port of web:80");
    assert_eq!(port.mode, Mode::Permissive);
    assert_eq!(port.server.routes.len(), 1);
    let limit = port.server.routes[0].rate_limit.as_ref().unwrap();
    assert_eq!(limit.requests_per_second, 50.0);
    assert_eq!(limit.burst, 20);
    assert_eq!(limit.key, RateLimitKey::ClientIdentity);
    port.server.validate().unwrap();
}

#[test]
fn authentication_policies_become_a_ports_tokens_and_claim_rules() {
    let t = translated();
    let echo = &t.catalog.workloads().nth(1).unwrap();
    assert_eq!(echo.identity.to_string(), id("echo"));
    let port = echo.inbound.ports.get(&5678).unwrap();
    let jwt = port.jwt.as_ref().expect("echo-tokens on echo:5678");
    assert!(jwt.required, "required by default");
    let p = &jwt.providers[0];
    assert_eq!(p.issuer, "https://idp.test");
    assert_eq!(p.jwks_uri.as_deref(), Some("https://idp.test/keys"));
    assert_eq!(p.from.len(), 2);
    assert_eq!(p.clock_skew, Duration::from_secs(30));
    assert_eq!(p.claim_headers["sub"], "x-user");
    // A bare Service name is the policy's namespace.
    let x = jwt.introspection.as_ref().unwrap();
    assert_eq!((x.service.as_str(), x.port), ("demo/web", 80));
    assert_eq!(x.path, "/oauth2/introspect");
    assert_eq!(x.cache_ttl, Duration::from_secs(10));
    assert!(!x.forward_token);
    // The rules are server routes next to the AuthorizationPolicy's allow list.
    let names: Vec<&str> = port.server.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["authn.echo-tokens.orders", "authn.echo-tokens.1"]);
    assert_eq!(port.server.routes[0].claims["scope"], ["orders.read"]);
    assert_eq!(port.server.routes[1].jwt_required, Some(false));
    assert_eq!(
        port.mode,
        Mode::Strict,
        "the AuthorizationPolicy still holds"
    );
    pillion_api::policy::validate_port_auth(port.jwt.as_ref(), &port.server).unwrap();
    // The proxy calls the endpoint itself: an on-demand view carries its Service.
    let view = view_for(&t.catalog, echo, 1, "", Discovery::OnDemand);
    assert!(
        view.services.iter().any(|s| s.name == "web"),
        "{:?}",
        view.services
    );
    // The second policy on the same port, and the broken ones, are skipped, each
    // with what is wrong.
    let all = t.warnings.join("\n");
    for want in [
        "AuthenticationPolicy demo/zz-echo-again skipped for spiffe://cluster.local/ns/demo/sa/echo: port 5678 already has an AuthenticationPolicy",
        "AuthenticationPolicy demo/no-idp skipped: no Service missing for introspection",
        "AuthenticationPolicy demo/two-places skipped: providers[0]: each `from` entry is exactly one of header and cookie",
        "AuthenticationPolicy demo/hmac skipped: jwt.providers[0].jwks: key 0 of the key set: a symmetric (oct) key",
    ] {
        assert!(all.contains(want), "{want}\n in\n{all}");
    }
    let web = &t.catalog.workloads().nth(2).unwrap();
    assert!(web.inbound.ports.values().all(|p| p.jwt.is_none()));
}

#[test]
fn broken_policies_are_skipped_with_warnings() {
    let t = translated();
    let all = t.warnings.join("\n");
    assert!(
        all.contains("Route demo/broken has an unusable spec"),
        "{all}"
    );
    assert!(
        all.contains("parent service demo/missing not found"),
        "{all}"
    );
    assert!(all.contains("rule bad skipped"), "{all}");
}

#[test]
fn views_for_kubernetes_workloads_look_like_yaml_ones() {
    let t = translated();
    let web = &t.catalog.workloads().nth(2).unwrap();
    let view = view_for(&t.catalog, web, 7, "", Discovery::Full);
    assert_eq!(view.identity, id("web"));
    let (svc, port) = view
        .service_for("198.18.100.10:80".parse().unwrap())
        .unwrap();
    assert_eq!(svc.name, "echo");
    assert_eq!(port.target_port(), 5678);
    let ep = view
        .endpoint_for("[2001:2::1:11]:5678".parse().unwrap())
        .unwrap();
    assert_eq!(ep.identity.as_deref(), Some(id("echo").as_str()));
    // The whole view survives the wire format.
    let line = serde_json::to_string(&view).unwrap();
    let back: pillion_api::view::View = serde_json::from_str(&line).unwrap();
    assert_eq!(back, view);
}

#[test]
fn odd_objects_never_panic() {
    let odd_services: Vec<Service> = serde_json::from_value(serde_json::json!([
        {"metadata": {}},
        {"metadata": {"name": "nospec", "namespace": "x"}},
        {"metadata": {"name": "p", "namespace": "x"},
         "spec": {"clusterIP": "not-an-ip", "ports": [{"port": 70000}, {"port": 0}, {"port": -1}]}},
        {"metadata": {"name": "q", "namespace": "x", "annotations": {"pillion.io/opaque-ports": "lots"}},
         "spec": {"clusterIPs": [], "ports": [{"port": 80, "targetPort": 0}]}}
    ]))
    .unwrap();
    let odd_slices: Vec<EndpointSlice> = serde_json::from_value(serde_json::json!([
        {"metadata": {"namespace": "x", "labels": {"kubernetes.io/service-name": "q"}},
         "addressType": "IPv4",
         "endpoints": [{"addresses": ["garbage", "198.18.9.9"],
                        "targetRef": {"kind": "Pod"}},
                       {"addresses": [], "targetRef": {"kind": "Node", "name": "n"}}],
         "ports": [{"port": 99999}, {}]},
        {"metadata": {}, "addressType": "IPv6", "endpoints": []}
    ]))
    .unwrap();
    let odd_pods: Vec<Pod> = serde_json::from_value(serde_json::json!([
        {"metadata": {"annotations": {"pillion.io/injected": "x"}}},
        {"metadata": {"name": "BAD_NAME", "namespace": "x", "annotations": {"pillion.io/injected": "x"}},
         "spec": {"serviceAccountName": "Not Valid", "containers": []},
         "status": {"podIPs": [{"ip": "nope"}]}}
    ]))
    .unwrap();
    let odd_policies: Vec<DynamicObject> = serde_json::from_value(serde_json::json!([
        {"apiVersion": "pillion.io/v1alpha1", "kind": "RetryPolicy", "metadata": {"name": "a", "namespace": "x"},
         "spec": {"targetRef": {"kind": "Service", "name": "q"}, "attempts": 99}},
        {"apiVersion": "pillion.io/v1alpha1", "kind": "RetryPolicy", "metadata": {"name": "b", "namespace": "x"},
         "spec": {"targetRef": {"kind": "Service", "name": "q"}, "conditions": ["sometimes"]}},
        {"apiVersion": "pillion.io/v1alpha1", "kind": "RateLimitPolicy", "metadata": {"name": "c", "namespace": "x"},
         "spec": {"targetRef": {"kind": "Service", "name": "q"}, "requestsPerSecond": -1}},
        {"apiVersion": "pillion.io/v1alpha1", "kind": "AuthorizationPolicy", "metadata": {"name": "d", "namespace": "x"},
         "spec": {"port": 80, "mode": "Sideways"}},
        {"apiVersion": "pillion.io/v1alpha1", "kind": "AuthorizationPolicy", "metadata": {"name": "e", "namespace": "x"},
         "spec": {"port": 80, "allow": ["http://not-spiffe"]}},
        {"apiVersion": "pillion.io/v1alpha1", "kind": "Route", "metadata": {"name": "f", "namespace": "x"},
         "spec": {"parentRefs": [{"name": "q"}], "rules": [
            {"matches": [{"path": {"type": "Glob", "value": "/*"}}]},
            {"matches": [{"path": {"type": "RegularExpression", "value": "(unclosed"}}]},
            {"filters": [{"type": "URLRewrite"}]},
            {"filters": [{"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplaceFullPath", "replaceFullPath": "/x"}}}]}]}},
        {"apiVersion": "pillion.io/v1alpha1", "kind": "Route", "metadata": {}}
    ]))
    .unwrap();
    let of_kind = |kind: &str| -> Vec<Arc<DynamicObject>> {
        odd_policies
            .iter()
            .filter(|o| o.types.as_ref().is_none_or(|t| t.kind == kind))
            .cloned()
            .map(Arc::new)
            .collect()
    };
    let objects = Objects {
        services: odd_services.into_iter().map(Arc::new).collect(),
        endpoint_slices: odd_slices.into_iter().map(Arc::new).collect(),
        pods: odd_pods.into_iter().map(Arc::new).collect(),
        routes: of_kind("Route"),
        retry_policies: of_kind("RetryPolicy"),
        rate_limit_policies: of_kind("RateLimitPolicy"),
        authorization_policies: of_kind("AuthorizationPolicy"),
        authentication_policies: of_kind("AuthenticationPolicy"),
    };
    let t = translate(&objects, TD);
    let names: Vec<_> = t.catalog.services().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["q"]);
    let q = &t.catalog.services().next().unwrap();
    assert!(q.addresses.is_empty());
    assert_eq!(
        q.ports[0].protocol,
        Protocol::Auto,
        "bad annotation ignored"
    );
    assert!(q.ports[0].routes.is_empty(), "{:?}", q.ports[0].routes);
    assert!(t.catalog.workloads().len() == 0, "no valid identity");
    assert!(!t.warnings.is_empty());

    let empty = translate(&Objects::default(), TD);
    assert!(empty.catalog.services().len() == 0 && empty.warnings.is_empty());
}

/// The fixtures' text with their namespace renamed, as objects of type `T`.
fn fixture_in<T: DeserializeOwned>(name: &str, ns: &str) -> Vec<T> {
    let path = format!("{}/tests/fixtures/k8s/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let text = text.replace(
        "\"namespace\": \"demo\"",
        &format!("\"namespace\": \"{ns}\""),
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The fixtures of `name` in namespaces `demo` and `shop`.
fn both<T: DeserializeOwned>(name: &str) -> Vec<T> {
    let mut all: Vec<T> = fixture_in(name, "demo");
    all.extend(fixture_in::<T>(name, "shop"));
    all
}

/// A catalog's workloads and services, in an order that does not depend on parts.
fn content(catalog: &Catalog) -> (Vec<Workload>, Vec<pillion_api::view::Service>) {
    let mut workloads: Vec<Workload> = catalog.workloads().cloned().collect();
    workloads.sort_by_key(|w| w.identity.to_string());
    let mut services: Vec<_> = catalog.services().cloned().collect();
    services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    (workloads, services)
}

/// Translates what changed into `catalog`; checks the namespaces touched and that
/// the result is what translating the whole cluster gives.
fn step(cluster: &Cluster, catalog: &mut Catalog, touched: &[&str]) -> bool {
    let dirty = cluster.take_dirty();
    let expected: BTreeSet<String> = touched.iter().map(|s| s.to_string()).collect();
    assert_eq!(dirty, expected, "the namespaces touched");
    let step = retranslate(cluster, catalog, &dirty, TD);
    let whole = translate(&cluster.objects(), TD);
    assert_eq!(content(&step.catalog), content(&whole.catalog));
    *catalog = step.catalog;
    step.changed
}

#[test]
fn translating_the_touched_namespaces_gives_what_translating_the_cluster_gives() {
    let cluster = Cluster::default();
    let policies = |ns: &str| -> Vec<DynamicObject> {
        let mut all: Vec<DynamicObject> = fixture_in("policies.json", "demo");
        all.extend(fixture_in::<DynamicObject>("policies.json", ns));
        all
    };
    let of_kind = |all: &[DynamicObject], kind: &str| -> Vec<DynamicObject> {
        (all.iter())
            .filter(|o| o.types.as_ref().is_some_and(|t| t.kind == kind))
            .cloned()
            .collect()
    };
    let all_policies = policies("shop");
    cluster.list(&cluster.services, both::<Service>("services.json"));
    cluster.list(
        &cluster.endpoint_slices,
        both::<EndpointSlice>("endpointslices.json"),
    );
    cluster.list(&cluster.pods, both::<Pod>("pods.json"));
    cluster.list(&cluster.routes, of_kind(&all_policies, "Route"));
    cluster.list(
        &cluster.retry_policies,
        of_kind(&all_policies, "RetryPolicy"),
    );
    cluster.list(
        &cluster.rate_limit_policies,
        of_kind(&all_policies, "RateLimitPolicy"),
    );
    cluster.list(
        &cluster.authorization_policies,
        of_kind(&all_policies, "AuthorizationPolicy"),
    );
    cluster.list(
        &cluster.authentication_policies,
        of_kind(&all_policies, "AuthenticationPolicy"),
    );
    assert!(cluster.listed());
    let mut catalog = Catalog::default();
    assert!(step(&cluster, &mut catalog, &["demo", "shop"]));
    assert!(catalog.services().len() > 4, "both namespaces translated");

    // A pod of one namespace goes: only that namespace is translated again.
    let pods: Vec<Pod> = fixture_in("pods.json", "shop");
    cluster.record(&cluster.pods, Event::Delete(pods[0].clone()));
    assert!(step(&cluster, &mut catalog, &["shop"]));
    // The same object again changes nothing a proxy sees.
    let slices: Vec<EndpointSlice> = fixture_in("endpointslices.json", "demo");
    cluster.record(&cluster.endpoint_slices, Event::Apply(slices[0].clone()));
    assert!(!step(&cluster, &mut catalog, &["demo"]));
    // An endpoint turns not ready.
    let mut slice = slices[0].clone();
    for e in &mut slice.endpoints {
        e.conditions.get_or_insert_with(Default::default).ready = Some(false);
    }
    cluster.record(&cluster.endpoint_slices, Event::Apply(slice));
    assert!(step(&cluster, &mut catalog, &["demo"]));

    // A Route of one namespace attaches to a Service of another: both are touched,
    // and again both when it leaves, and when it is gone.
    let route = |parent_ns: &str| -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "pillion.io/v1alpha1", "kind": "Route",
            "metadata": {"name": "across", "namespace": "shop"},
            "spec": {"parentRefs": [{"name": "echo", "namespace": parent_ns}],
                     "rules": [{"name": "all", "timeouts": {"request": "3s"}}]}
        }))
        .unwrap()
    };
    cluster.record(&cluster.routes, Event::Apply(route("demo")));
    assert!(step(&cluster, &mut catalog, &["demo", "shop"]));
    cluster.record(&cluster.routes, Event::Apply(route("shop")));
    assert!(step(&cluster, &mut catalog, &["demo", "shop"]));
    cluster.record(&cluster.routes, Event::Apply(route("demo")));
    assert!(step(&cluster, &mut catalog, &["demo", "shop"]));
    cluster.record(&cluster.routes, Event::Delete(route("demo")));
    assert!(step(&cluster, &mut catalog, &["demo", "shop"]));

    // A Service goes.
    let services: Vec<Service> = fixture_in("services.json", "demo");
    cluster.record(&cluster.services, Event::Delete(services[0].clone()));
    assert!(step(&cluster, &mut catalog, &["demo"]));

    // A relist that finds a namespace gone touches it, and empties its part.
    let only_demo: Vec<Pod> = fixture_in("pods.json", "demo");
    cluster.list(&cluster.pods, only_demo);
    assert!(step(&cluster, &mut catalog, &["demo", "shop"]));
}

#[test]
fn routes_with_a_gateway_parent_become_the_gateways_hosts() {
    let route = |name: &str, ns: &str, spec: serde_json::Value| -> Arc<DynamicObject> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "pillion.io/v1alpha1", "kind": "Route",
                "metadata": {"name": name, "namespace": ns}, "spec": spec}))
            .unwrap(),
        )
    };
    let mut objects = objects();
    objects.routes.push(route(
        "shop",
        "gateways",
        serde_json::json!({
        "parentRefs": [{"kind": "Gateway", "name": "edge"}],
        "hostnames": ["shop.example.com", "Www.Example.com"],
        "rules": [
            {"name": "api", "matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
             "backendRefs": [{"name": "echo", "namespace": "demo", "port": 80, "weight": 9},
                             {"name": "web", "namespace": "demo", "port": 8080, "weight": 1}]},
            {"name": "portless", "backendRefs": [{"name": "echo", "namespace": "demo"}]}
        ]}),
    ));
    objects.routes.push(route(
        "nameless",
        "gateways",
        serde_json::json!({"parentRefs": [{"kind": "Gateway", "name": "edge"}],
                           "rules": [{"backendRefs": [{"name": "echo", "namespace": "demo", "port": 80}]}]}),
    ));
    // Another namespace's Route may not take over the gateway's hostnames.
    objects.routes.push(route(
        "hijack",
        "demo",
        serde_json::json!({"parentRefs": [{"kind": "Gateway", "name": "edge", "namespace": "gateways"}],
                           "hostnames": ["shop.example.com"],
                           "rules": [{"backendRefs": [{"name": "db", "port": 5432}]}]}),
    ));
    // A mesh Route may not send to another namespace.
    objects.routes.push(route(
        "sideways",
        "demo",
        serde_json::json!({"parentRefs": [{"name": "web"}],
                           "rules": [{"name": "out", "backendRefs": [{"name": "x", "namespace": "other", "port": 80}]}]}),
    ));
    let t = translate(&objects, TD);
    let edge = (t.catalog.workloads())
        .find(|w| w.identity.to_string() == "spiffe://cluster.local/ns/gateways/sa/edge")
        .expect("a workload for the gateway, without pods of its own");
    let gateway = edge.gateway.as_ref().expect("its hosts");
    let names: Vec<&str> = (gateway.hosts.iter())
        .flat_map(|h| &h.hostnames)
        .map(String::as_str)
        .collect();
    assert_eq!(names, ["shop.example.com", "www.example.com"]);
    let routes = &gateway.hosts[0].routes;
    assert_eq!(
        routes.len(),
        1,
        "the rule without a backend port is left out"
    );
    assert_eq!(routes[0].name, "shop.api");
    let backends: Vec<_> = (routes[0].backends.iter())
        .map(|b| (b.service.as_deref().unwrap(), b.port.unwrap(), b.weight))
        .collect();
    assert_eq!(backends, [("demo/echo", 80, 9), ("demo/web", 8080, 1)]);
    for expected in [
        "needs hostnames",
        "need a Service name and a port",
        "from its own namespace only",
        "a backend in another namespace is for gateways only",
    ] {
        assert!(
            t.warnings.iter().any(|w| w.contains(expected)),
            "{expected}: {:?}",
            t.warnings
        );
    }
    // Its view carries the hosts.
    let view = view_for(&t.catalog, edge, 1, "", Discovery::OnDemand);
    assert_eq!(view.gateway.as_ref(), Some(gateway));
    let services: BTreeSet<&str> = view.services.iter().map(|s| s.name.as_str()).collect();
    assert!(
        services.contains("echo") && services.contains("web"),
        "{services:?}"
    );
}

#[test]
fn authentication_policies_reach_a_gateways_hosts() {
    let object = |kind: &str, name: &str, spec: serde_json::Value| -> Arc<DynamicObject> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "pillion.io/v1alpha1", "kind": kind,
                "metadata": {"name": name, "namespace": "gateways"}, "spec": spec}))
            .unwrap(),
        )
    };
    let mut objects = objects();
    objects.routes.push(object(
        "Route",
        "shop",
        serde_json::json!({"parentRefs": [{"kind": "Gateway", "name": "edge"}],
            "hostnames": ["shop.example.com", "open.example.com"],
            "rules": [{"name": "all", "backendRefs": [{"name": "echo", "namespace": "demo", "port": 80}]}]}),
    ));
    let tokens = serde_json::json!({"gateway": {"name": "edge", "hostnames": ["Shop.example.com", "nowhere.example.com"]},
        "providers": [{"issuer": "https://idp.test", "jwksUri": "https://idp.test/keys"}],
        "rules": [{"name": "orders", "path": {"value": "/orders"}, "claims": {"scope": ["orders.read"]}}]});
    objects
        .authentication_policies
        .push(object("AuthenticationPolicy", "a-shop", tokens));
    objects.authentication_policies.push(object(
        "AuthenticationPolicy",
        "b-again",
        serde_json::json!({"gateway": {"name": "edge", "hostnames": ["shop.example.com"]},
            "providers": [{"issuer": "https://other.test", "jwksUri": "https://other.test/keys"}]}),
    ));
    objects.authentication_policies.push(object(
        "AuthenticationPolicy",
        "c-both",
        serde_json::json!({"gateway": {"name": "edge", "hostnames": ["open.example.com"]}, "port": 8080,
            "providers": [{"issuer": "https://idp.test", "jwksUri": "https://idp.test/keys"}]}),
    ));
    let t = translate(&objects, TD);
    let edge = (t.catalog.workloads())
        .find(|w| w.identity.to_string() == "spiffe://cluster.local/ns/gateways/sa/edge")
        .unwrap();
    let hosts = &edge.gateway.as_ref().unwrap().hosts;
    let shop = hosts
        .iter()
        .find(|h| h.hostnames == ["shop.example.com"])
        .unwrap();
    let jwt = shop.jwt.as_ref().expect("the first policy for the host");
    assert_eq!(jwt.providers[0].issuer, "https://idp.test");
    assert_eq!(shop.server.routes[0].name, "authn.a-shop.orders");
    let open = hosts
        .iter()
        .find(|h| h.hostnames == ["open.example.com"])
        .unwrap();
    assert!(open.jwt.is_none(), "no policy applies to it");
    let all = t.warnings.join("\n");
    for want in [
        "AuthenticationPolicy gateways/b-again skipped for host shop.example.com: it already has an AuthenticationPolicy",
        "AuthenticationPolicy gateways/c-both skipped: a gateway target takes no port",
        "AuthenticationPolicy gateways/a-shop: gateway spiffe://cluster.local/ns/gateways/sa/edge serves no host nowhere.example.com",
    ] {
        assert!(all.contains(want), "{want}\n in\n{all}");
    }
}

#[test]
fn the_examples_authentication_policy_has_a_usable_key_set() {
    let path = format!(
        "{}/../deploy/example/policies.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let docs: Vec<serde_json::Value> = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    let policy = docs
        .iter()
        .find(|d| d["kind"] == "AuthenticationPolicy")
        .expect("the example has an AuthenticationPolicy");
    let jwks = policy["spec"]["providers"][0]["jwks"].as_str().unwrap();
    let keys = pillion_api::jwt::parse_jwks(jwks).unwrap();
    assert_eq!(keys.len(), 1);
}
