//! The agent's YAML source format, as written by hand: workloads (who may ask for
//! certificates, and their inbound policy) and services (what proxies may reach).
//!
//! Every value is checked while it is parsed, so a bad address, port or SPIFFE id is
//! reported at its own line and column; unknown keys are rejected, so a typo never
//! silently turns into a default. Checks that need the whole file (duplicates,
//! references between entries) happen afterwards, in `validate`.
//!
//! # Example
//!
//! ```yaml
//! workloads:
//!   - name: server                 # unique within its namespace; what services refer to
//!     namespace: demo
//!     service_account: server      # optional, defaults to `name`
//!     token: demo-server-token     # optional bearer token proving this identity
//!     addresses: [198.18.0.3, "2001:2::3"]   # optional pod addresses
//!     inbound:                     # optional; default: permissive, anyone
//!       default_mode: permissive   # permissive | strict
//!       ports:
//!         7000:
//!           mode: strict           # optional, defaults to default_mode
//!           allow: ["spiffe://cluster.local/ns/demo/*"]   # empty: any peer
//!           routes: []             # optional HTTP server routes (see `routes`)
//!           jwt: {providers: [...]} # optional end-user tokens (see `jwt`)
//!     gateway:                     # optional: this workload is an edge gateway
//!       hosts:
//!         - hostnames: [shop.example.com]
//!           routes: [{name: web, backends: [{service: echo, port: 8080}]}]
//!           jwt: {providers: [...]}  # optional, as on an inbound port
//!           server_routes: []        # optional claims and limits, as an inbound port's routes
//!
//! services:
//!   - name: echo
//!     namespace: demo
//!     addresses: [198.18.0.100]    # virtual IPs
//!     ports:
//!       - port: 7000
//!         protocol: opaque         # auto (default) | http1 | http2 | opaque
//!       - port: 80
//!         target_port: 8080        # optional, defaults to `port`
//!         routes: []               # optional HTTP routes (see `routes`)
//!     endpoints:
//!       - workload: server         # identity and (if not given) addresses of a workload;
//!                                  # `other-namespace/name` reaches across namespaces
//!         labels: {version: v1}
//!       - addresses: [198.18.0.9]  # a meshed endpoint outside this file
//!         ports: [7000]            # optional, defaults to every target port
//!         identity: spiffe://cluster.local/ns/legacy/sa/echo
//!       - addresses: [198.18.0.10] # no workload and no identity: plain TCP
//! ```

use super::jwt::JwtSpec;
use super::routes::{RouteSpec, ServerRouteSpec};
use pillion_api::identity::IdentityPattern;
use pillion_api::view::{Mode, Protocol};
use pillion_identity::SpiffeId;
use serde::de::{self, Deserializer};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// The whole source file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceFile {
    /// Workloads the agent knows by identity.
    #[serde(default)]
    pub workloads: Vec<WorkloadSpec>,
    /// Services proxies may reach.
    #[serde(default)]
    pub services: Vec<ServiceSpec>,
}

/// One workload: a namespace + service account identity, its credential and policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSpec {
    /// Name that service endpoints refer to, unique within the namespace.
    pub name: Name,
    /// Namespace of the workload's identity.
    pub namespace: Name,
    /// Service account of the workload's identity; defaults to `name`.
    #[serde(default)]
    pub service_account: Option<Name>,
    /// Bearer token that proves this identity when asking for a certificate.
    #[serde(default)]
    pub token: Option<Token>,
    /// Pod addresses, used for endpoints that refer to this workload.
    #[serde(default)]
    pub addresses: Vec<Address>,
    /// Who may connect to this workload.
    #[serde(default)]
    pub inbound: InboundSpec,
    /// Set for a workload in the gateway role: what it serves at the edge.
    #[serde(default)]
    pub gateway: Option<GatewaySpec>,
}

/// A gateway's hosts as written (see [`pillion_api::gateway`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySpec {
    /// Virtual hosts.
    pub hosts: Vec<GatewayHostSpec>,
}

/// One virtual host of a gateway as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayHostSpec {
    /// Exact names or `*.` wildcards of one label.
    pub hostnames: Vec<String>,
    /// Routes into the mesh; each backend names `service` (`name` in the gateway's
    /// namespace, or `namespace/name`) and its `port`.
    pub routes: Vec<RouteSpec>,
    /// End-user token providers (see [`super::jwt`]).
    #[serde(default)]
    pub jwt: Option<JwtSpec>,
    /// Authorization by claims and rate limits, as an inbound port's routes.
    #[serde(default)]
    pub server_routes: Vec<ServerRouteSpec>,
    /// API keys (by hash) and their usage plans (see [`pillion_api::api_keys`]).
    #[serde(default)]
    pub api_keys: Option<pillion_api::api_keys::ApiKeys>,
}

/// Inbound policy of a workload as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundSpec {
    /// Mode of ports without their own entry.
    #[serde(default)]
    pub default_mode: Mode,
    /// Per-port policies, keyed by port number.
    #[serde(default)]
    pub ports: BTreeMap<Port, PortPolicySpec>,
}

/// Policy of one inbound port as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortPolicySpec {
    /// Mode of this port; defaults to the workload's `default_mode`.
    #[serde(default)]
    pub mode: Option<Mode>,
    /// SPIFFE id patterns allowed in; empty allows any peer.
    #[serde(default)]
    pub allow: Vec<Pattern>,
    /// HTTP routes with their own allow lists and rate limits (see [`super::routes`]).
    #[serde(default)]
    pub routes: Vec<ServerRouteSpec>,
    /// End-user authentication with JSON Web Tokens (see [`super::jwt`]).
    #[serde(default)]
    pub jwt: Option<JwtSpec>,
}

/// One service as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Service name, unique within its namespace.
    pub name: Name,
    /// Namespace of the service.
    pub namespace: Name,
    /// Virtual IPs.
    #[serde(default)]
    pub addresses: Vec<Address>,
    /// Offered ports (at least one).
    pub ports: Vec<ServicePortSpec>,
    /// Endpoints behind the service.
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
}

/// One service port as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicePortSpec {
    /// Port on the VIPs.
    pub port: Port,
    /// Protocol spoken on the port.
    #[serde(default)]
    pub protocol: Protocol,
    /// Port the endpoints listen on; defaults to `port`.
    #[serde(default)]
    pub target_port: Option<Port>,
    /// HTTP routes of the port (see [`super::routes`]).
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    /// Bounds on the requests callers keep in flight to the port's backends.
    #[serde(default)]
    pub circuit_breaker: Option<pillion_api::breaker::CircuitBreaker>,
}

/// One group of endpoints as written: addresses × ports, sharing identity and labels.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    /// Endpoint addresses; defaults to the referenced workload's addresses.
    #[serde(default)]
    pub addresses: Vec<Address>,
    /// Endpoint ports; defaults to every target port of the service.
    #[serde(default)]
    pub ports: Vec<Port>,
    /// Workload whose identity (and addresses) these endpoints have.
    #[serde(default)]
    pub workload: Option<WorkloadRef>,
    /// Explicit SPIFFE id, for meshed endpoints not described in this file.
    #[serde(default)]
    pub identity: Option<Identity>,
    /// Labels routes can select on.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A name used in identities and references: lowercase letters, digits, '-' and '.'.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(pub String);

/// A TCP port, never 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Port(pub u16);

/// An IP address with a helpful error message when it isn't one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address(pub IpAddr);

/// A bearer token: at least 8 visible ASCII characters. Its Debug form hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(pub String);

/// A reference to a workload: `name` (same namespace as the service) or `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadRef {
    /// Namespace, when written explicitly.
    pub namespace: Option<Name>,
    /// Workload name.
    pub name: Name,
}

/// A SPIFFE id, checked at parse time.
#[derive(Debug, Clone)]
pub struct Identity(pub SpiffeId);

/// A SPIFFE id pattern with `*` wildcards, checked at parse time.
#[derive(Debug, Clone)]
pub struct Pattern(pub IdentityPattern);

/// Longest name accepted (a DNS subdomain).
const MAX_NAME_LEN: usize = 253;
/// Shortest token accepted.
const MIN_TOKEN_LEN: usize = 8;

impl FromStr for Name {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = s.as_bytes();
        let good_char =
            |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'.';
        let good_edge =
            |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if s.len() <= MAX_NAME_LEN
            && bytes.iter().all(good_char)
            && good_edge(bytes.first())
            && good_edge(bytes.last())
        {
            Ok(Self(s.to_string()))
        } else {
            Err(format!(
                "`{s}` is not a valid name: use 1-{MAX_NAME_LEN} lowercase letters, digits, '-' or '.', \
                 starting and ending with a letter or digit"
            ))
        }
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for WorkloadRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((ns, name)) => Ok(Self {
                namespace: Some(
                    ns.parse()
                        .map_err(|e| format!("bad workload reference: {e}"))?,
                ),
                name: name
                    .parse()
                    .map_err(|e| format!("bad workload reference: {e}"))?,
            }),
            None => Ok(Self {
                namespace: None,
                name: s
                    .parse()
                    .map_err(|e| format!("bad workload reference: {e}"))?,
            }),
        }
    }
}

impl fmt::Display for WorkloadRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{ns}/{}", self.name),
            None => write!(f, "{}", self.name),
        }
    }
}

impl FromStr for Token {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "token too short: use at least {MIN_TOKEN_LEN} characters"
            ));
        }
        if !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(
                "token must be visible ASCII without spaces (it travels in an HTTP header)".into(),
            );
        }
        Ok(Self(s.to_string()))
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Token(sha256:{})",
            crate::token::TokenHash::of(&self.0).short()
        )
    }
}

impl FromStr for Identity {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<SpiffeId>()
            .map(Self)
            .map_err(|e| format!("`{s}` is not a valid SPIFFE id: {e}"))
    }
}

impl FromStr for Pattern {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<IdentityPattern>()
            .map(Self)
            .map_err(|e| format!("`{s}` is not a valid SPIFFE id pattern: {}", e.reason))
    }
}

/// Parses a string scalar with `FromStr` *inside* the parser's visit, so an error is
/// stamped with the value's own line, column and path.
struct ParseVisitor<T>(std::marker::PhantomData<T>);

impl<T: FromStr<Err = String>> de::Visitor<'_> for ParseVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<T, E> {
        s.parse().map_err(E::custom)
    }
}

macro_rules! deserialize_from_str {
    ($($ty:ty),*) => {$(
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_str(ParseVisitor(std::marker::PhantomData))
            }
        }
    )*};
}

deserialize_from_str!(Name, Token, WorkloadRef, Identity, Pattern, Address);

impl FromStr for Address {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<IpAddr>()
            .map(Self)
            .map_err(|_| format!("`{s}` is not an IP address"))
    }
}

/// Checks a port number inside the parser's visit, for the same reason.
struct PortVisitor;

impl de::Visitor<'_> for PortVisitor {
    type Value = Port;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a port number (1-65535)")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Port, E> {
        match u16::try_from(v) {
            Ok(0) => Err(E::custom("port 0 is not a valid port: use 1-65535")),
            Ok(p) => Ok(Port(p)),
            Err(_) => Err(E::custom(format!("{v} is not a valid port: use 1-65535"))),
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Port, E> {
        match u64::try_from(v) {
            Ok(v) => self.visit_u64(v),
            Err(_) => Err(E::custom(format!("{v} is not a valid port: use 1-65535"))),
        }
    }
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_u16(PortVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_dns_rules() {
        assert!("demo".parse::<Name>().is_ok());
        assert!("a.b-c1".parse::<Name>().is_ok());
        for bad in ["", "Demo", "-a", "a-", "a_b", "a/b"] {
            assert!(bad.parse::<Name>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn workload_refs_take_an_optional_namespace() {
        let r: WorkloadRef = "server".parse().unwrap();
        assert_eq!(r.namespace, None);
        let r: WorkloadRef = "other/server".parse().unwrap();
        assert_eq!(r.to_string(), "other/server");
        assert!("a/b/c".parse::<WorkloadRef>().is_err());
    }

    #[test]
    fn tokens_are_checked_and_hidden() {
        assert!("short".parse::<Token>().is_err());
        assert!("has space in it".parse::<Token>().is_err());
        let t: Token = "demo-client-token".parse().unwrap();
        assert!(!format!("{t:?}").contains("demo"));
    }
}
