//! The inbound side of the state: each application port's mode (is plaintext
//! accepted?), its authorization (the allow list), its end-user authentication (JWT
//! providers) and its server routes with their own allow lists, claim rules and rate
//! limits; the connection-level decision and every request's read the same
//! [`InboundPort`]. Rate limiters and token caches carry over view updates while
//! their settings are unchanged.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use http::request::Parts;
use pillion_api::jwt::JwtPolicy;
use pillion_api::policy::RateLimit;
use pillion_api::view::{Mode, PortPolicy, Protocol, View};

use crate::policy::authz::Authorizer;
use crate::policy::jwt::{unix_now, Ask, Authenticator, Checked, ClaimRules, Judged, Refusal};
use crate::policy::rate_limit::RateLimiter;
use crate::policy::route_match::RouteTable;
use crate::telemetry::metrics::http::{HttpMetrics, RouteMetrics};
use crate::telemetry::metrics::Direction;

/// Route name of inbound requests that match no server route.
pub(crate) const DEFAULT_ROUTE: &str = "default";

/// One inbound port's policy.
#[derive(Debug)]
pub(crate) struct InboundPort {
    table: Option<RouteTable>,
    routes: Box<[ServerRouteState]>,
    default: ServerRouteState,
    /// End-user authentication of the port.
    jwt: PortJwt,
}

/// Whether and how a port checks end users' tokens.
#[derive(Debug, Clone, Default)]
pub(crate) enum PortJwt {
    /// No providers: tokens are neither read nor required.
    #[default]
    Off,
    /// Tokens are verified by these providers.
    On(Arc<Authenticator>),
    /// The providers cannot be compiled: every request is refused (fail closed).
    Unusable,
}

/// One server route (or the port's default).
#[derive(Debug)]
pub(crate) struct ServerRouteState {
    /// The route's name.
    pub name: Arc<str>,
    /// Who may call it.
    pub authz: Authorizer,
    /// Server-side rate limit.
    pub limiter: Option<Arc<RateLimiter>>,
    /// Whether a request without a token is refused here (`None`: the port decides;
    /// claims always need one).
    pub jwt_required: Option<bool>,
    /// Claims the token must carry here.
    pub claims: ClaimRules,
    /// The route's metric handles.
    pub metrics: RouteMetrics,
}

impl InboundPort {
    /// The end user's part where the port has token providers
    /// ([`crate::policy::jwt::Authenticator::authenticate`]): a route with claims
    /// needs a token; otherwise the route's `jwt_required`, or the port's, decides.
    pub(crate) fn authenticate(
        &self,
        route: &ServerRouteState,
        headers: &mut http::HeaderMap,
    ) -> Result<Checked<'_>, Refusal> {
        match &self.jwt {
            PortJwt::Off => Ok(Checked::Done),
            PortJwt::Unusable => Err(Refusal::Invalid("this port's token keys are unusable")),
            PortJwt::On(auth) => {
                let required =
                    !route.claims.is_empty() || route.jwt_required.unwrap_or(auth.required());
                auth.authenticate(required, &route.claims, headers, unix_now())
            }
        }
    }

    /// Finishes what [`InboundPort::authenticate`] handed back, with the
    /// introspection endpoint's answer.
    pub(crate) fn settle(
        &self,
        route: &ServerRouteState,
        ask: Ask<'_>,
        answer: &[u8],
        headers: &mut http::HeaderMap,
    ) -> Result<(), Judged> {
        match &self.jwt {
            PortJwt::On(auth) => auth.settle(ask, answer, &route.claims, headers, unix_now()),
            // An ask comes from this port's authenticator: unreachable, and refused.
            PortJwt::Off | PortJwt::Unusable => Err(Judged::Refused(Refusal::Invalid(
                "this port's token keys are unusable",
            ))),
        }
    }

    /// The route for a request; requests no route matches are judged by the port's
    /// allow list alone and not rate limited.
    pub(crate) fn select(&self, parts: &Parts) -> &ServerRouteState {
        self.table
            .as_ref()
            .and_then(|t| t.select_parts(parts))
            .and_then(|s| self.routes.get(s.route))
            .unwrap_or(&self.default)
    }
}

/// What a connection to one port is decided by, before any request: no metrics, no
/// lock, so a port scan costs nothing but the lookup.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PortRule<'a> {
    /// Whether plaintext is accepted.
    pub mode: Mode,
    /// Who may connect (requests are judged again by their route).
    pub authz: &'a Authorizer,
    /// Whether a service marks the port opaque (no detection).
    pub opaque: bool,
    /// Whether HTTP policy lives here (server routes, or a service declares the
    /// port HTTP): then nothing but HTTP is served, never relayed bytes.
    pub http_only: bool,
    /// The port's server routes, each with its own allow list.
    pub routes: &'a [ServerRouteState],
}

impl PortRule<'_> {
    /// Whether a caller that proved `identity` may connect at all.
    pub(crate) fn admits(&self, identity: &str) -> bool {
        self.authz.check(Some(identity)).is_ok()
    }

    /// Whether the port serves HTTP or refuses, never relaying bytes: HTTP policy
    /// lives here and no service marks it opaque.
    pub(crate) fn fails_closed(&self) -> bool {
        self.http_only && !self.opaque
    }

    /// Whether `peer` (`None`: plaintext) may send bytes no route judges: only if
    /// every route would admit it, so a relay is never more permissive than HTTP.
    pub(crate) fn every_route_admits(&self, peer: Option<&str>) -> bool {
        self.routes.iter().all(|r| r.authz.check(peer).is_ok())
    }
}

/// The compiled inbound view.
#[derive(Debug, Default)]
pub(crate) struct InboundTable {
    default_mode: Mode,
    /// The allow decision of ports without policy of their own.
    default_authz: Authorizer,
    ports: HashMap<u16, Arc<InboundPort>>,
    /// Ports without policy of their own, built on first use and shared by every
    /// connection after (this table is replaced, and this with it, on a new view).
    unlisted: Mutex<HashMap<u16, Arc<InboundPort>>>,
    limiters: HashMap<(u16, String), (RateLimit, Arc<RateLimiter>)>,
    /// Each port's compiled providers, kept while the policy is unchanged so a view
    /// that does not touch them keeps the verified tokens.
    authenticators: HashMap<u16, (JwtPolicy, Arc<Authenticator>)>,
    /// Application ports some service marks `opaque` (its target ports): inbound
    /// connections there skip detection, so server-speaks-first protocols never
    /// wait for the detection timeout.
    opaque: HashSet<u16>,
    /// Application ports with server routes or that some service declares `http1`
    /// or `http2`: detection there fails closed.
    http_only: HashSet<u16>,
}

impl InboundTable {
    /// The connection-level rule of application port `port`.
    pub(crate) fn rule(&self, port: u16) -> PortRule<'_> {
        let opaque = self.opaque.contains(&port);
        let http_only = self.http_only.contains(&port);
        match self.ports.get(&port) {
            Some(policy) => PortRule {
                mode: policy.default.authz.mode(),
                authz: &policy.default.authz,
                opaque,
                http_only,
                routes: &policy.routes,
            },
            None => PortRule {
                mode: self.default_mode,
                authz: &self.default_authz,
                opaque,
                http_only,
                routes: &[],
            },
        }
    }

    /// The policy of application port `port` (ports without their own policy get the
    /// default mode, anyone allowed, no routes).
    pub(crate) fn port(&self, port: u16, metrics: &HttpMetrics) -> Arc<InboundPort> {
        if let Some(found) = self.ports.get(&port) {
            return Arc::clone(found);
        }
        let mut unlisted = self.unlisted.lock().unwrap_or_else(PoisonError::into_inner);
        let built = unlisted
            .entry(port)
            .or_insert_with(|| self.unlisted_port(port, metrics));
        Arc::clone(built)
    }

    /// The policy of a port the view says nothing about: the default mode, one route.
    fn unlisted_port(&self, port: u16, metrics: &HttpMetrics) -> Arc<InboundPort> {
        let label: Arc<str> = Arc::from(port.to_string().as_str());
        let default_name: Arc<str> = Arc::from(DEFAULT_ROUTE);
        Arc::new(InboundPort {
            table: None,
            routes: Box::new([]),
            default: ServerRouteState {
                metrics: metrics.route(Direction::Inbound, &label, &default_name),
                name: default_name,
                authz: self.default_authz.clone(),
                limiter: None,
                jwt_required: None,
                claims: ClaimRules::default(),
            },
            jwt: PortJwt::Off,
        })
    }

    /// Compiles the inbound policy of `view`, carrying rate limiters from `previous`.
    pub(crate) fn compile(
        view: &View,
        previous: &InboundTable,
        metrics: &HttpMetrics,
        now: Instant,
    ) -> InboundTable {
        let mut table = InboundTable {
            default_mode: view.inbound.default_mode,
            default_authz: Authorizer::new(view.inbound.default_mode, &[])
                .unwrap_or_else(|_| Authorizer::deny_all()),
            ..InboundTable::default()
        };
        let ports = || view.services.iter().flat_map(|s| &s.ports);
        table.opaque = ports()
            .filter(|p| p.protocol == Protocol::Opaque)
            .map(|p| p.target_port())
            .collect();
        table.http_only = ports()
            .filter(|p| matches!(p.protocol, Protocol::Http1 | Protocol::Http2))
            .map(|p| p.target_port())
            .chain(
                view.inbound
                    .ports
                    .iter()
                    .filter(|(_, policy)| !policy.server.routes.is_empty() || policy.jwt.is_some())
                    .map(|(port, _)| *port),
            )
            .collect();
        for (port, policy) in &view.inbound.ports {
            let label = port.to_string();
            let compiled = compile_port(*port, &label, policy, previous, &mut table, metrics, now);
            table.ports.insert(*port, Arc::new(compiled));
        }
        table
    }
}

/// One gateway host's end-user policy, compiled as an inbound port's under metric
/// label `label`; its rate limiters and token cache carry over from `previous`
/// (the host's table of the last view) while unchanged.
pub(crate) fn compile_host(
    label: &str,
    policy: &PortPolicy,
    previous: &InboundTable,
    metrics: &HttpMetrics,
    now: Instant,
) -> (Arc<InboundPort>, InboundTable) {
    let mut table = InboundTable::default();
    let port = compile_port(0, label, policy, previous, &mut table, metrics, now);
    (Arc::new(port), table)
}

fn compile_port(
    port: u16,
    label: &str,
    policy: &PortPolicy,
    previous: &InboundTable,
    table: &mut InboundTable,
    metrics: &HttpMetrics,
    now: Instant,
) -> InboundPort {
    let label: Arc<str> = Arc::from(label);
    let port_authz = Authorizer::new(policy.mode, &policy.allow).unwrap_or_else(|e| {
        tracing::warn!(port, error = %e, "inbound allow list unusable; the port admits nobody");
        Authorizer::deny_all()
    });
    let mut routes = Vec::new();
    let mut specs = Vec::new();
    for route in &policy.server.routes {
        let authz = match port_authz.for_route(&route.allow) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(port, route = %route.name, error = %e,
                    "route allow list unusable; the route admits nobody");
                Authorizer::deny_all()
            }
        };
        let limiter = match &route.rate_limit {
            None => None,
            Some(limit) => {
                let key = (port, route.name.clone());
                let limiter = match previous.limiters.get(&key) {
                    Some((old, limiter)) if old == limit => Some(Arc::clone(limiter)),
                    _ => match RateLimiter::new(&route.name, limit, now) {
                        Ok(l) => Some(Arc::new(l)),
                        Err(e) => {
                            tracing::warn!(port, route = %route.name, error = %e,
                                "route rate limit unusable; the route is left out");
                            continue;
                        }
                    },
                };
                if let Some(l) = &limiter {
                    table.limiters.insert(key, (limit.clone(), Arc::clone(l)));
                }
                limiter
            }
        };
        let name: Arc<str> = Arc::from(route.name.as_str());
        routes.push(ServerRouteState {
            metrics: metrics.route(Direction::Inbound, &label, &name),
            name,
            authz,
            limiter,
            jwt_required: route.jwt_required,
            claims: ClaimRules::new(&route.claims),
        });
        specs.push(route);
    }
    let table_compiled = if specs.is_empty() {
        None
    } else {
        match RouteTable::new(specs) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(port, error = %e, "inbound routes cannot be compiled; only the port's policy applies");
                routes.clear();
                None
            }
        }
    };
    let default_name: Arc<str> = Arc::from(DEFAULT_ROUTE);
    InboundPort {
        table: table_compiled,
        routes: routes.into_boxed_slice(),
        default: ServerRouteState {
            metrics: metrics.route(Direction::Inbound, &label, &default_name),
            name: default_name,
            authz: port_authz,
            limiter: None,
            jwt_required: None,
            claims: ClaimRules::default(),
        },
        jwt: compile_jwt(port, policy.jwt.as_ref(), previous, table),
    }
}

/// The port's authenticator: the previous view's when its policy is unchanged (its
/// cache of verified tokens with it), a new one otherwise.
fn compile_jwt(
    port: u16,
    policy: Option<&JwtPolicy>,
    previous: &InboundTable,
    table: &mut InboundTable,
) -> PortJwt {
    let Some(policy) = policy else {
        return PortJwt::Off;
    };
    let auth = match previous.authenticators.get(&port) {
        Some((old, auth)) if old == policy => Arc::clone(auth),
        _ => match Authenticator::new(policy) {
            Ok(a) => Arc::new(a),
            Err(e) => {
                tracing::warn!(port, error = %e, "token providers unusable; the port refuses every request");
                return PortJwt::Unusable;
            }
        },
    };
    table
        .authenticators
        .insert(port, (policy.clone(), Arc::clone(&auth)));
    PortJwt::On(auth)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opaque_target_ports_and_port_policies_compile() {
        let view: View = serde_json::from_str(
            r#"{"version": 1, "identity": "spiffe://cluster.local/ns/demo/sa/server",
              "services": [{"name": "db", "namespace": "demo", "ports": [
                 {"port": 5433, "target_port": 15433, "protocol": "opaque"}, {"port": 80},
                 {"port": 81, "target_port": 9081, "protocol": "http2"}]}],
              "inbound": {"default_mode": "strict", "ports": {"8080": {"mode": "permissive",
                "server": {"routes": [{"name": "admin", "matches": [{"path": {"prefix": "/admin"}}],
                  "allow": ["spiffe://cluster.local/ns/ops/*"]}]}}}}}"#,
        )
        .unwrap();
        let metrics = HttpMetrics::default();
        let table =
            InboundTable::compile(&view, &InboundTable::default(), &metrics, Instant::now());
        assert!(table.rule(15433).opaque && !table.rule(80).opaque);
        // Server routes or a declared HTTP protocol make a port HTTP-only.
        let http_only = |p| table.rule(p).http_only;
        assert!(http_only(8080) && http_only(9081));
        assert!(!http_only(80) && !http_only(15433) && !http_only(9090));
        let port = table.port(8080, &metrics);
        let admin = http::Request::get("/admin/x")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let other = http::Request::get("/x").body(()).unwrap().into_parts().0;
        let ops = Some("spiffe://cluster.local/ns/ops/sa/tool");
        let demo = Some("spiffe://cluster.local/ns/demo/sa/client");
        assert_eq!(&*port.select(&admin).name, "admin");
        assert!(port.select(&admin).authz.check(ops).is_ok());
        assert!(port.select(&admin).authz.check(demo).is_err());
        assert!(port.select(&other).authz.check(None).is_ok());
        // An unlisted port takes the default mode: strict refuses plaintext.
        assert!(table
            .port(9090, &metrics)
            .select(&other)
            .authz
            .check(None)
            .is_err());
    }
}
