//! Builds the [`View`] one workload's proxy gets from the agent's catalog.

use crate::source::{Catalog, Workload};
use pillion_api::view::View;

/// The view of `workload` at catalog `version`: every service (discovery is not
/// scoped yet), the workload's own inbound policy, and the trust bundle.
pub fn view_for(
    catalog: &Catalog,
    workload: &Workload,
    version: u64,
    trust_bundle_pem: &str,
) -> View {
    View {
        version,
        identity: workload.identity.to_string(),
        services: catalog.services().to_vec(),
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

        let v = view_for(&catalog, client, 1, "");
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

        let v = view_for(&catalog, server, 1, "");
        assert_eq!(v.identity, "spiffe://cluster.local/ns/demo/sa/server");
        assert_eq!(v.inbound.default_mode, Mode::Permissive);
        let (mode, allow) = v.inbound.for_port(7000);
        assert_eq!(mode, Mode::Strict);
        assert_eq!(allow, ["spiffe://cluster.local/ns/demo/*"]);
        assert_eq!(v.inbound.for_port(8080).0, Mode::Permissive);
    }
}
