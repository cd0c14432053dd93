//! Builds the [`View`] one workload's proxy gets from the agent's catalog.

use crate::source::{Catalog, Workload};
use pillion_api::view::View;

/// Which services a view carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discovery {
    /// Every service of the mesh (a proxy that asked for nothing else).
    Full,
    /// Only the workload's own services (those with an endpoint at one of its
    /// addresses: their declared protocols guard its inbound ports); the proxy
    /// resolves each destination it meets ([`pillion_api::resolve`]), so its view
    /// does not grow with the mesh.
    OnDemand,
}

/// The view of `workload` at catalog `version`: the services `discovery` asks
/// for, the workload's own inbound policy, and the trust bundle.
pub fn view_for(
    catalog: &Catalog,
    workload: &Workload,
    version: u64,
    trust_bundle_pem: &str,
    discovery: Discovery,
) -> View {
    let services = match discovery {
        Discovery::Full => catalog.services().cloned().collect(),
        Discovery::OnDemand => {
            let mut own = catalog.services_at(&workload.addresses);
            for service in called_services(catalog, workload) {
                if !own.iter().any(|s| std::ptr::eq(*s, service)) {
                    own.push(service);
                }
            }
            own.into_iter().cloned().collect()
        }
    };
    View {
        version,
        identity: workload.identity.to_string(),
        services,
        inbound: workload.inbound.clone(),
        trust_bundle_pem: Some(trust_bundle_pem.to_string()),
        issuer_sha256: None,
        gateway: workload.gateway.clone(),
    }
}

/// The services a workload's proxy calls on its own: its token introspection
/// endpoints, the services a gateway's routes send to, and the services their
/// routes send to in turn (a canary split behind the gateway), so a gateway never
/// asks for them: it has no original destinations to resolve.
fn called_services<'a>(
    catalog: &'a Catalog,
    workload: &Workload,
) -> Vec<&'a pillion_api::view::Service> {
    let mut found: Vec<&pillion_api::view::Service> = Vec::new();
    // Token introspection endpoints are called by the proxy itself, never through
    // an original destination it could resolve.
    let asked = (workload.introspections()).filter_map(|(_, x)| x.service_name());
    for (ns, name) in asked {
        let Some((_, service)) = catalog.service_named(ns, name) else {
            continue;
        };
        // With the services its routes split to: the call is routed like any other.
        for s in std::iter::once(service).chain(catalog.backends_of(service)) {
            if !found.iter().any(|f| std::ptr::eq(*f, s)) {
                found.push(s);
            }
        }
    }
    let hosts = workload.gateway.iter().flat_map(|g| &g.hosts);
    let named = (hosts.flat_map(|h| &h.routes))
        .flat_map(|r| r.sent_to())
        .filter_map(|b| b.service.as_deref()?.split_once('/'));
    for (ns, name) in named {
        let Some((_, service)) = catalog.service_named(ns, name) else {
            continue;
        };
        for s in std::iter::once(service).chain(catalog.backends_of(service)) {
            if !found.iter().any(|f| std::ptr::eq(*f, s)) {
                found.push(s);
            }
        }
    }
    found
}

/// Whether two views differ in anything but their version, so a watcher is only sent
/// a new line when its own view changed.
pub fn same_except_version(a: &View, b: &View) -> bool {
    a.identity == b.identity
        && a.services == b.services
        && a.inbound == b.inbound
        && a.trust_bundle_pem == b.trust_bundle_pem
        && a.issuer_sha256 == b.issuer_sha256
        && a.gateway == b.gateway
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{parse_source, EMBEDDED_DEFAULT};
    use pillion_api::view::{Mode, Protocol};
    use std::net::SocketAddr;

    #[test]
    fn demo_views_match_the_demo_world() {
        let catalog = parse_source("default", EMBEDDED_DEFAULT, "cluster.local").unwrap();
        let client = catalog.workload_for_token("demo-client-token").unwrap();
        let server = catalog.workload_for_token("demo-server-token").unwrap();

        let v = view_for(&catalog, client, 1, "", Discovery::Full);
        assert_eq!(v.identity, "spiffe://cluster.local/ns/demo/sa/client");
        assert_eq!(v.services.len(), 1);
        let echo = &v.services[0];
        assert_eq!(
            (echo.name.as_str(), echo.namespace.as_str()),
            ("echo", "demo")
        );
        assert_eq!(
            echo.addresses,
            vec!["198.18.0.100".parse::<std::net::IpAddr>().unwrap()]
        );
        assert_eq!(echo.ports.len(), 2);
        assert_eq!(echo.ports[0].port, 7000);
        assert_eq!(echo.ports[0].protocol, Protocol::Opaque);
        assert_eq!(echo.ports[1].port, 8080);
        assert_eq!(echo.ports[1].protocol, Protocol::Auto);
        assert_eq!(echo.endpoints.len(), 4);
        for addr in ["198.18.0.3:7000", "[2001:2::3]:7000", "198.18.0.3:8080"] {
            let ep = v.endpoint_for(addr.parse::<SocketAddr>().unwrap()).unwrap();
            assert_eq!(
                ep.identity.as_deref(),
                Some("spiffe://cluster.local/ns/demo/sa/server")
            );
            assert_eq!(ep.labels.get("version").map(String::as_str), Some("v1"));
        }
        assert_eq!(
            v.inbound.for_port(7000).0,
            Mode::Permissive,
            "client has no policy"
        );

        // On demand: the server's own service only (its protocols guard its ports).
        let on_demand = view_for(&catalog, server, 1, "", Discovery::OnDemand);
        let own: Vec<&str> = on_demand.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(own, ["echo"]);
        let client_on_demand = view_for(&catalog, client, 1, "", Discovery::OnDemand);
        assert!(client_on_demand.services.is_empty());
        let v = view_for(&catalog, server, 1, "", Discovery::Full);
        assert_eq!(on_demand.inbound, v.inbound);
        assert_eq!(v.identity, "spiffe://cluster.local/ns/demo/sa/server");
        assert_eq!(v.inbound.default_mode, Mode::Permissive);
        let (mode, allow) = v.inbound.for_port(7000);
        assert_eq!(mode, Mode::Strict);
        assert_eq!(allow, ["spiffe://cluster.local/ns/demo/*"]);
        assert_eq!(v.inbound.for_port(8080).0, Mode::Permissive);
    }
}

#[cfg(test)]
mod gateway_tests {
    use super::*;
    use crate::source::parse_source;

    const FILE: &str = r#"
workloads:
  - name: edge
    namespace: gateway
    token: edge-token-123
    gateway:
      hosts:
        - hostnames: [shop.example.com, "*.shop.example.com"]
          routes:
            - name: web
              matches: [{path: {prefix: /}}]
              backends: [{service: shop/web, port: 80}]
            - name: local
              matches: [{path: {prefix: /status}}]
              backends: [{service: status, port: 8080}]
          server_routes:
            - {name: orders, matches: [{path: {prefix: /orders}}], rate_limit: {requests_per_second: 5, burst: 5}}
  - name: web
    namespace: shop
    addresses: [198.18.0.3]
services:
  - name: web
    namespace: shop
    addresses: [198.18.0.100]
    ports: [{port: 80, target_port: 8080, routes: [{name: canary, backends: [{weight: 9}, {weight: 1, service: web-v2}]}]}]
    endpoints: [{workload: web}]
  - name: web-v2
    namespace: shop
    ports: [{port: 80}]
  - name: status
    namespace: gateway
    ports: [{port: 8080}]
  - name: other
    namespace: shop
    ports: [{port: 80}]
"#;

    fn refused(text: &str) -> crate::source::SourceError {
        match parse_source("g.yaml", text, "cluster.local") {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e,
        }
    }

    #[test]
    fn a_gateway_view_carries_its_hosts_and_the_services_they_reach() {
        let catalog = parse_source("g.yaml", FILE, "cluster.local").unwrap();
        let edge = catalog.workload_for_token("edge-token-123").unwrap();
        let view = view_for(&catalog, edge, 3, "", Discovery::OnDemand);
        let gateway = view.gateway.as_ref().expect("a gateway view");
        let host = &gateway.hosts[0];
        assert_eq!(host.hostnames, ["shop.example.com", "*.shop.example.com"]);
        // A bare name is the gateway's own namespace.
        assert_eq!(
            host.routes[1].backends[0].service.as_deref(),
            Some("gateway/status")
        );
        assert_eq!(host.server.routes[0].name, "orders");
        // On demand, its view holds what its routes reach and their canary backends,
        // nothing else.
        let mut names: Vec<&str> = view.services.iter().map(|s| s.name.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["status", "web", "web-v2"]);
        let plain = catalog.workloads().find(|w| w.name == "web").unwrap();
        assert!(view_for(&catalog, plain, 3, "", Discovery::Full)
            .gateway
            .is_none());
    }

    #[test]
    fn gateway_mistakes_are_refused_at_their_line() {
        for (from, to, line, says) in [
            (
                "[shop.example.com,",
                "[Shop.Example.com,",
                8,
                "must be a lowercase DNS name",
            ),
            (
                "{service: shop/web, port: 80}",
                "{service: shop/web, port: 81}",
                12,
                "has no port 81",
            ),
            (
                "{service: shop/web, port: 80}",
                "{service: shop/nope, port: 80}",
                12,
                "no service named `shop/nope`",
            ),
            (
                "{service: shop/web, port: 80}",
                "{service: shop/web}",
                12,
                "a port",
            ),
            (
                "{service: shop/web, port: 80}",
                "{weight: 1}",
                12,
                "must name a service",
            ),
            (
                "rate_limit: {requests_per_second: 5, burst: 5}}",
                "allow: [\"spiffe://cluster.local/ns/a/*\"]}",
                17,
                "claims, not allow lists",
            ),
            (
                "rate_limit: {requests_per_second: 5, burst: 5}}",
                "claims: {scope: [a]}}",
                17,
                "need the port's jwt providers",
            ),
        ] {
            assert!(FILE.contains(from), "{from}");
            let e = refused(&FILE.replacen(from, to, 1));
            assert!(e.to_string().contains(says), "{to}: {e}");
            assert_eq!(e.line(), Some(line), "{to}: {e}");
        }
    }

    #[test]
    fn api_keys_travel_by_hash_and_mistakes_are_located() {
        let hash = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";
        let keys = format!(
            "          api_keys:\n            plans: [{{name: free, quota: {{requests: 10, per: month}}}}]\n            keys: [{{id: acme, sha256: {hash}, plan: free}}]\n"
        );
        let with_keys = FILE.replacen(
            "          server_routes:\n",
            &format!("{keys}          server_routes:\n"),
            1,
        );
        let catalog = parse_source("g.yaml", &with_keys, "cluster.local").unwrap();
        let edge = catalog.workload_for_token("edge-token-123").unwrap();
        let view = view_for(&catalog, edge, 1, "", Discovery::Full);
        let host = &view.gateway.as_ref().unwrap().hosts[0];
        assert_eq!(host.api_keys.as_ref().unwrap().keys[0].sha256, hash);
        let e = refused(&with_keys.replace(hash, "not-a-hash"));
        assert!(e.to_string().contains("api_keys.keys[0].sha256"), "{e}");
        assert!(e.to_string().contains("sha256sum"), "{e}");
        assert_eq!(e.line(), Some(18), "{e}");
        let e = refused(&with_keys.replace("plan: free}", "plan: gold}"));
        assert!(e.to_string().contains("no plan named \"gold\""), "{e}");
    }
}
