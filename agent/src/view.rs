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
        Discovery::OnDemand => (catalog.services_at(&workload.addresses).into_iter())
            .cloned()
            .collect(),
    };
    View {
        version,
        identity: workload.identity.to_string(),
        services,
        inbound: workload.inbound.clone(),
        trust_bundle_pem: Some(trust_bundle_pem.to_string()),
        issuer_sha256: None,
    }
}

/// Whether two views differ in anything but their version, so a watcher is only sent
/// a new line when its own view changed.
pub fn same_except_version(a: &View, b: &View) -> bool {
    a.identity == b.identity
        && a.services == b.services
        && a.inbound == b.inbound
        && a.trust_bundle_pem == b.trust_bundle_pem
        && a.issuer_sha256 == b.issuer_sha256
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
