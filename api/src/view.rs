//! A proxy's whole view of the mesh: the services it may call, their endpoints with
//! the identities to expect, and the inbound policy of its own workload.
//!
//! The agent streams one [`View`] per line on [`crate::certs::WATCH_PATH`]; the proxy
//! replaces its view with each new line, and keeps the last good one while the agent
//! is unreachable.
//!
//! # Wire format
//!
//! JSON, one object per line (newline-delimited JSON). Field names are snake_case,
//! enum values lowercase. Every field except `version` and `identity` may be absent
//! and then takes its empty default, so later versions can add fields (routes,
//! retries, rate limits) without breaking older peers; unknown fields are ignored.
//!
//! ```json
//! {
//!   "version": 3,
//!   "identity": "spiffe://cluster.local/ns/demo/sa/client",
//!   "services": [
//!     {
//!       "name": "echo",
//!       "namespace": "demo",
//!       "addresses": ["198.18.0.100"],
//!       "ports": [{"port": 7000, "protocol": "opaque"}, {"port": 8080, "protocol": "auto"}],
//!       "endpoints": [
//!         {"address": "198.18.0.3", "port": 7000,
//!          "identity": "spiffe://cluster.local/ns/demo/sa/server",
//!          "labels": {"version": "v1"}}
//!       ]
//!     }
//!   ],
//!   "inbound": {
//!     "default_mode": "permissive",
//!     "ports": {"7000": {"mode": "strict", "allow": ["spiffe://cluster.local/ns/demo/*"]}}
//!   }
//! }
//! ```
//!
//! A connection to `VIP:P`, where `VIP` is one of a service's `addresses` and `P` one
//! of its `ports`, goes to one of the service's endpoints whose `port` equals that
//! port's `target_port` (absent: `P` itself). An endpoint with an `identity` is meshed
//! and is reached over mutual TLS, verifying that SPIFFE id; without one it is plain
//! TCP. `inbound.ports` keys are port numbers written as JSON strings.
//!
//! HTTP policy rides on the same objects: a service port may carry `routes` (a list
//! of [`crate::policy::Route`]) and an inbound port a `server` object (a
//! [`crate::policy::ServerPolicy`]), e.g.
//! `{"port": 8080, "routes": [{"name": "all", "timeout": "2s"}]}` and
//! `"8080": {"mode": "strict", "server": {"routes": [{"name": "admin", "allow": [...]}]}}`.
//!
//! `trust_bundle_pem`, when present, is the mesh's trust bundle (PEM roots), so a new
//! root reaches running proxies without waiting for a mounted file; a proxy checks it
//! as it checks its `--trust-anchors` file, and absent means "keep what you trust".

use crate::policy::{Route, ServerPolicy};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

/// Everything one proxy needs to route and authorize, versioned so a proxy can tell
/// a newer view from an older one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    /// Grows with every change of the agent's source; a proxy ignores lower versions.
    pub version: u64,
    /// The SPIFFE id of the workload this view was made for (the requester).
    pub identity: String,
    /// The services this workload may reach through the mesh.
    #[serde(default)]
    pub services: Vec<Service>,
    /// Who may connect to this workload, per port.
    #[serde(default)]
    pub inbound: InboundPolicy,
    /// The mesh's trust bundle (PEM roots) as the agent hands it out: the fast way a
    /// new root reaches running proxies. Absent means "no opinion" (an older agent):
    /// the proxy keeps what it trusts; a bundle is never "trust nothing".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_bundle_pem: Option<String>,
    /// SHA-256 (hex) of the certificate the agent signs leaves with. A proxy whose
    /// leaf was signed by another issuer renews soon, so an issuer switch does not
    /// wait for every leaf's renewal time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_sha256: Option<String>,
    /// Set for a workload in the gateway role: the hostnames it serves at the edge
    /// and their routes into the mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<crate::gateway::GatewayPolicy>,
}

/// A named set of virtual addresses and ports, served by endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// Service name, unique within its namespace.
    pub name: String,
    /// Namespace the service lives in.
    pub namespace: String,
    /// Virtual IPs (VIPs) that applications connect to.
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    /// The ports the service offers, each with its protocol.
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// The real addresses behind the service, one entry per address and port.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

/// One port of a service and how to treat its traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePort {
    /// The port applications connect to on the service's VIPs.
    pub port: u16,
    /// How the proxy should treat bytes on this port.
    #[serde(default)]
    pub protocol: Protocol,
    /// The port the endpoints listen on for this service port; absent means `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u16>,
    /// HTTP routes of the port (client side), most specific match wins; empty means
    /// one implicit route to every endpoint. See [`crate::policy`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// Bounds on what callers keep in flight to the port's backends; absent means
    /// the defaults ([`crate::breaker`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<crate::breaker::CircuitBreaker>,
}

/// What a port speaks, so the proxy knows whether to detect, parse or just copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Detect HTTP/1, HTTP/2 or opaque bytes from the first bytes of a connection.
    #[default]
    Auto,
    /// HTTP/1.x, without detection.
    Http1,
    /// HTTP/2 (prior knowledge), without detection.
    Http2,
    /// Opaque TCP: bytes are copied without looking at them.
    Opaque,
}

/// One real address and port behind a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// The endpoint's IP address (usually a pod address).
    pub address: IpAddr,
    /// The port the endpoint listens on.
    pub port: u16,
    /// The SPIFFE id to verify when the endpoint is meshed; `None` means plain TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Labels, such as `version`, that routes use to pick subsets of endpoints.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Whether plaintext (unauthenticated) connections are accepted on a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Mesh TLS and plaintext are both accepted (plaintext peers have no identity).
    #[default]
    Permissive,
    /// Only mesh TLS with an allowed client identity is accepted.
    Strict,
}

/// The inbound side of a workload's policy: a default, and overrides per port.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct InboundPolicy {
    /// Mode of every port not listed in `ports`; such ports allow any peer.
    #[serde(default)]
    pub default_mode: Mode,
    /// Per-port overrides, keyed by the port the application listens on.
    #[serde(default)]
    pub ports: BTreeMap<u16, PortPolicy>,
}

/// The policy of one inbound port.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PortPolicy {
    /// Whether plaintext is accepted on this port.
    #[serde(default)]
    pub mode: Mode,
    /// SPIFFE id patterns (`*` wildcards) of the clients allowed in; empty allows any
    /// authenticated peer, and plaintext peers too when the mode is permissive.
    #[serde(default)]
    pub allow: Vec<String>,
    /// HTTP routes of the port (server side): per-route allow lists and rate limits.
    #[serde(default, skip_serializing_if = "ServerPolicy::is_empty")]
    pub server: ServerPolicy,
    /// End-user authentication: tokens from these issuers are verified on every
    /// request, and routes may ask for claims.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<crate::jwt::JwtPolicy>,
}

impl InboundPolicy {
    /// The mode and allowed client patterns for an inbound port, falling back to the
    /// default mode (and "anyone") for ports without their own policy.
    pub fn for_port(&self, port: u16) -> (Mode, &[String]) {
        match self.ports.get(&port) {
            Some(policy) => (policy.mode, &policy.allow),
            None => (self.default_mode, &[]),
        }
    }
}

impl ServicePort {
    /// The port endpoints listen on for this service port.
    pub fn target_port(&self) -> u16 {
        self.target_port.unwrap_or(self.port)
    }
}

impl Service {
    /// The endpoints that serve one of this service's ports.
    pub fn endpoints_for<'a>(&'a self, port: &ServicePort) -> impl Iterator<Item = &'a Endpoint> {
        let target = port.target_port();
        self.endpoints.iter().filter(move |e| e.port == target)
    }
}

impl View {
    /// The token introspection endpoints the proxy calls itself: its inbound ports'
    /// and its gateway hosts'.
    pub fn introspections(&self) -> impl Iterator<Item = &crate::jwt::Introspection> {
        let hosts = self.gateway.iter().flat_map(|g| &g.hosts);
        (self.inbound.ports.values().filter_map(|p| p.jwt.as_ref()))
            .chain(hosts.filter_map(|h| h.jwt.as_ref()))
            .filter_map(|j| j.introspection.as_ref())
    }

    /// The endpoint listening at `addr`, if any service lists it, so a proxy that
    /// connects to a pod address directly still learns the identity to verify.
    pub fn endpoint_for(&self, addr: SocketAddr) -> Option<&Endpoint> {
        let ip = addr.ip().to_canonical();
        self.services
            .iter()
            .flat_map(|s| s.endpoints.iter())
            .find(|e| e.port == addr.port() && e.address.to_canonical() == ip)
    }

    /// The service and port that own the virtual address `addr` (a VIP and port).
    pub fn service_for(&self, addr: SocketAddr) -> Option<(&Service, &ServicePort)> {
        let ip = addr.ip().to_canonical();
        self.services.iter().find_map(|s| {
            if !s.addresses.iter().any(|a| a.to_canonical() == ip) {
                return None;
            }
            s.ports
                .iter()
                .find(|p| p.port == addr.port())
                .map(|p| (s, p))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> View {
        let server = "spiffe://cluster.local/ns/demo/sa/server".to_string();
        View {
            version: 3,
            identity: "spiffe://cluster.local/ns/demo/sa/client".into(),
            services: vec![Service {
                name: "echo".into(),
                namespace: "demo".into(),
                addresses: vec!["198.18.0.100".parse().unwrap()],
                ports: vec![
                    ServicePort {
                        port: 7000,
                        protocol: Protocol::Opaque,
                        target_port: None,
                        routes: Vec::new(),
                        circuit_breaker: None,
                    },
                    ServicePort {
                        port: 80,
                        protocol: Protocol::Auto,
                        target_port: Some(8080),
                        routes: vec![serde_json::from_str(
                            r#"{"name": "v2", "matches": [{"path": {"prefix": "/v2"}}],
                                "backends": [{"subset": {"version": "v2"}}]}"#,
                        )
                        .unwrap()],
                        circuit_breaker: None,
                    },
                ],
                endpoints: vec![
                    Endpoint {
                        address: "198.18.0.3".parse().unwrap(),
                        port: 7000,
                        identity: Some(server.clone()),
                        labels: BTreeMap::from([("version".into(), "v1".into())]),
                    },
                    Endpoint {
                        address: "2001:2::3".parse().unwrap(),
                        port: 8080,
                        identity: None,
                        labels: BTreeMap::new(),
                    },
                ],
            }],
            inbound: InboundPolicy {
                default_mode: Mode::Permissive,
                ports: BTreeMap::from([(
                    7000,
                    PortPolicy {
                        mode: Mode::Strict,
                        allow: vec!["spiffe://cluster.local/ns/demo/*".into()],
                        server: serde_json::from_str(
                            r#"{"routes": [{"name": "admin", "matches": [{"path": {"prefix": "/admin"}}],
                                "allow": ["spiffe://cluster.local/ns/ops/*"]}]}"#,
                        )
                        .unwrap(),
                        jwt: None,
                    },
                )]),
            },
            trust_bundle_pem: Some("-----BEGIN CERTIFICATE-----\n…".into()),
            issuer_sha256: Some("ab".repeat(32)),
            gateway: None,
        }
    }

    #[test]
    fn round_trips_through_json() {
        let view = sample();
        let line = serde_json::to_string(&view).unwrap();
        assert!(!line.contains('\n'), "one view must fit on one line");
        let back: View = serde_json::from_str(&line).unwrap();
        assert_eq!(back, view);
    }

    #[test]
    fn documented_example_parses() {
        let json = r#"{
          "version": 3,
          "identity": "spiffe://cluster.local/ns/demo/sa/client",
          "services": [{"name": "echo", "namespace": "demo",
            "addresses": ["198.18.0.100"],
            "ports": [{"port": 7000, "protocol": "opaque"}, {"port": 8080, "protocol": "auto"}],
            "endpoints": [{"address": "198.18.0.3", "port": 7000,
              "identity": "spiffe://cluster.local/ns/demo/sa/server",
              "labels": {"version": "v1"}}]}],
          "inbound": {"default_mode": "permissive",
            "ports": {"7000": {"mode": "strict", "allow": ["spiffe://cluster.local/ns/demo/*"]}}}
        }"#;
        let view: View = serde_json::from_str(json).unwrap();
        assert_eq!(view.services[0].ports[0].protocol, Protocol::Opaque);
        assert_eq!(view.inbound.for_port(7000).0, Mode::Strict);
    }

    #[test]
    fn missing_and_unknown_fields_are_tolerated() {
        let view: View = serde_json::from_str(
            r#"{"version": 1, "identity": "spiffe://td/ns/a/sa/b", "routes": [], "extra": 1}"#,
        )
        .unwrap();
        assert!(view.services.is_empty());
        assert_eq!(view.inbound, InboundPolicy::default());
        assert_eq!(view.inbound.for_port(80), (Mode::Permissive, &[][..]));
        // No bundle is "no opinion", and is not written back out.
        assert_eq!(view.trust_bundle_pem, None);
        assert!(!serde_json::to_string(&view)
            .unwrap()
            .contains("trust_bundle_pem"));
    }

    #[test]
    fn for_port_falls_back_to_default() {
        let view = sample();
        let (mode, allow) = view.inbound.for_port(7000);
        assert_eq!(mode, Mode::Strict);
        assert_eq!(allow, ["spiffe://cluster.local/ns/demo/*"]);
        assert_eq!(view.inbound.for_port(9999), (Mode::Permissive, &[][..]));
    }

    #[test]
    fn endpoint_and_service_lookup() {
        let view = sample();
        let ep = view
            .endpoint_for("198.18.0.3:7000".parse().unwrap())
            .unwrap();
        assert!(ep.identity.is_some());
        let mapped: SocketAddr = "[::ffff:198.18.0.3]:7000".parse().unwrap();
        assert!(view.endpoint_for(mapped).is_some());
        assert!(view
            .endpoint_for("198.18.0.3:7001".parse().unwrap())
            .is_none());
        assert!(view
            .endpoint_for("[2001:2::3]:8080".parse().unwrap())
            .unwrap()
            .identity
            .is_none());

        let (svc, port) = view
            .service_for("198.18.0.100:80".parse().unwrap())
            .unwrap();
        assert_eq!(svc.name, "echo");
        assert_eq!(port.target_port(), 8080);
        assert_eq!(svc.endpoints_for(port).count(), 1);
        assert!(view
            .service_for("198.18.0.100:81".parse().unwrap())
            .is_none());
    }
}
