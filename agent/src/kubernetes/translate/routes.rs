//! Route objects onto service ports, and the retries and client-side rate limits
//! that policies attach to those routes.

use super::rules::{for_parent, rate_limit, retry_policy, translate_rule};
use super::{find_service, PortKey, RouteEntry, Translator, DEFAULT_ROUTE};
use crate::kubernetes::crd::{self, RateLimitPolicySpec, RetryPolicySpec, RouteSpec};
use kube::core::DynamicObject;
use pillion_api::policy::Route;
use pillion_api::view;
use pillion_identity::SpiffeId;
use std::sync::Arc;

/// The `kind` of a parent that is a gateway (named by its ServiceAccount).
pub const GATEWAY_KIND: &str = "Gateway";

impl Translator<'_> {
    /// Route objects → routes on their parents' ports.
    pub(super) fn routes(&mut self, routes: &[Arc<DynamicObject>], services: &[view::Service]) {
        let mut parsed: Vec<crd::Object<RouteSpec>> = Vec::new();
        for obj in routes {
            match crd::parse::<RouteSpec>(obj) {
                Ok(r) => parsed.push(r),
                Err(e) => self.warn(format!("Route {e}")),
            }
        }
        parsed.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        for route in parsed {
            let mut rules = Vec::new();
            for (i, rule) in route.spec.rules.iter().enumerate() {
                let rule_name = rule.name.clone().unwrap_or_else(|| i.to_string());
                let name = format!("{}.{rule_name}", route.name);
                match translate_rule(rule, &name) {
                    Ok(r) => match r.validate() {
                        Ok(()) => rules.push(r),
                        Err(e) => self.warn(format!(
                            "Route {}/{} rule {rule_name} skipped: {e}",
                            route.namespace, route.name
                        )),
                    },
                    Err(e) => self.warn(format!(
                        "Route {}/{} rule {rule_name} skipped: {e}",
                        route.namespace, route.name
                    )),
                }
            }
            for parent in &route.spec.parent_refs {
                let ns = parent.namespace.as_deref().unwrap_or(&route.namespace);
                if self.scope.is_some_and(|scope| scope != ns) {
                    continue;
                }
                if parent.kind.as_deref() == Some(GATEWAY_KIND) {
                    self.gateway_route(&route, ns, &parent.name, &rules);
                    continue;
                }
                let elsewhere = |r: &&Route| {
                    (r.backends
                        .iter()
                        .chain(r.mirror.as_ref().map(|m| &m.backend)))
                    .any(|b| b.service.as_deref().is_some_and(|s| s.contains('/')))
                };
                if let Some(r) = rules.iter().find(elsewhere) {
                    self.warn(format!(
                        "Route {}/{}: rule {} skipped on service {ns}/{}: a backend in another namespace is for gateways only",
                        route.namespace, route.name, r.name, parent.name
                    ));
                }
                let rules: Vec<Route> = rules.iter().filter(|r| !elsewhere(r)).cloned().collect();
                let Some(service) = find_service(services, ns, &parent.name) else {
                    self.warn(format!(
                        "Route {}/{}: parent service {ns}/{} not found",
                        route.namespace, route.name, parent.name
                    ));
                    continue;
                };
                for port in &service.ports {
                    if parent.port.is_some_and(|p| p != port.port) {
                        continue;
                    }
                    let entries = self
                        .routes
                        .entry((ns.to_string(), parent.name.clone(), port.port))
                        .or_default();
                    entries.extend(rules.iter().map(|r| RouteEntry {
                        origin: Some(route.name.clone()),
                        route: for_parent(r, &parent.name),
                    }));
                }
            }
        }
    }

    /// A Route's rules onto gateway `ns/name` (its ServiceAccount), one host per
    /// hostname; every backend names its Service in the Route's namespace and a port.
    fn gateway_route(
        &mut self,
        route: &crd::Object<RouteSpec>,
        ns: &str,
        name: &str,
        rules: &[Route],
    ) {
        let what = format!(
            "Route {}/{} on gateway {ns}/{name}",
            route.namespace, route.name
        );
        // A gateway takes Routes from its own namespace only (Gateway API's
        // `allowedRoutes: Same`): whoever may write Routes elsewhere must not take
        // over its hostnames. Its Routes name backends in other namespaces instead.
        if route.namespace != ns {
            self.warn(format!(
                "{what}: skipped: a gateway takes Routes from its own namespace only"
            ));
            return;
        }
        if route.spec.hostnames.is_empty() {
            self.warn(format!(
                "{what}: skipped: a gateway's route needs hostnames"
            ));
            return;
        }
        let identity = match SpiffeId::new(self.trust_domain, ns, name) {
            Ok(id) => id.to_string(),
            Err(e) => return self.warn(format!("{what}: skipped: {e}")),
        };
        let mut attached = Vec::new();
        for rule in rules {
            let mut r = rule.clone();
            let mut complete = true;
            for b in r
                .backends
                .iter_mut()
                .chain(r.mirror.as_mut().map(|m| &mut m.backend))
            {
                match (&b.service, b.port) {
                    (Some(service), Some(_)) => {
                        if !service.contains('/') {
                            b.service = Some(format!("{}/{service}", route.namespace));
                        }
                    }
                    _ => complete = false,
                }
            }
            if complete && !r.backends.is_empty() {
                attached.push(r);
            } else {
                self.warn(format!(
                    "{what}: rule {} skipped: a gateway's backendRefs need a Service name and a port",
                    rule.name
                ));
            }
        }
        let hosts = self.gateway_hosts.entry(identity).or_default();
        for host in &route.spec.hostnames {
            let entries = hosts.entry(host.to_ascii_lowercase()).or_default();
            entries.extend(attached.iter().cloned());
        }
    }

    /// The routes a policy's `targetRef` names, creating a catch-all for a Service
    /// port without routes.
    pub(super) fn targeted_routes(
        &mut self,
        ns: &str,
        target: &crd::TargetRef,
        services: &[view::Service],
    ) -> Vec<&mut Route> {
        match target.kind.as_str() {
            "Service" => {
                let Some(service) = find_service(services, ns, &target.name) else {
                    return Vec::new();
                };
                let keys: Vec<PortKey> = service
                    .ports
                    .iter()
                    .filter(|p| target.port.is_none_or(|t| t == p.port))
                    .map(|p| (ns.to_string(), target.name.clone(), p.port))
                    .collect();
                for key in &keys {
                    let entries = self.routes.entry(key.clone()).or_default();
                    if entries.is_empty() {
                        entries.push(RouteEntry {
                            origin: None,
                            route: Route {
                                name: DEFAULT_ROUTE.to_string(),
                                ..Route::default()
                            },
                        });
                    }
                }
                self.routes
                    .iter_mut()
                    .filter(|(k, _)| keys.contains(k))
                    .flat_map(|(_, entries)| entries.iter_mut().map(|e| &mut e.route))
                    .collect()
            }
            "Route" => self
                .routes
                .iter_mut()
                .filter(|((route_ns, _, _), _)| route_ns == ns)
                .flat_map(|(_, entries)| entries.iter_mut())
                .filter(|e| e.origin.as_deref() == Some(target.name.as_str()))
                .map(|e| &mut e.route)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Service-targeted retry policies first, then Route-targeted ones, so the more
    /// specific policy wins.
    pub(super) fn retry_policies(
        &mut self,
        policies: &[Arc<DynamicObject>],
        services: &[view::Service],
    ) {
        let mut parsed = Vec::new();
        for obj in policies {
            match crd::parse::<RetryPolicySpec>(obj) {
                Ok(p) => parsed.push(p),
                Err(e) => self.warn(format!("RetryPolicy {e}")),
            }
        }
        parsed.sort_by_key(|p| (p.spec.target_ref.kind == "Route", p.name.clone()));
        for p in parsed {
            let (retry, per_try) = match retry_policy(&p.spec) {
                Ok(r) => r,
                Err(e) => {
                    self.warn(format!(
                        "RetryPolicy {}/{} skipped: {e}",
                        p.namespace, p.name
                    ));
                    continue;
                }
            };
            let targets = self.targeted_routes(&p.namespace, &p.spec.target_ref, services);
            let found = !targets.is_empty();
            for route in targets {
                route.retry = Some(retry.clone());
                // A Route's own backendRequest timeout is more specific; keep it.
                if route.per_try_timeout.is_none() {
                    route.per_try_timeout = per_try;
                }
            }
            if !found {
                self.warn(format!(
                    "RetryPolicy {}/{}: target {} {} not found",
                    p.namespace, p.name, p.spec.target_ref.kind, p.spec.target_ref.name
                ));
            }
        }
    }

    /// Route-targeted rate limits: enforced by every calling proxy.
    pub(super) fn route_rate_limits(&mut self, policies: &[Arc<DynamicObject>]) {
        for obj in policies {
            let p = match crd::parse::<RateLimitPolicySpec>(obj) {
                Ok(p) if p.spec.target_ref.kind == "Route" => p,
                Ok(_) => continue,
                Err(e) => {
                    self.warn(format!("RateLimitPolicy {e}"));
                    continue;
                }
            };
            let limit = match rate_limit(&p.spec) {
                Ok(l) => l,
                Err(e) => {
                    self.warn(format!(
                        "RateLimitPolicy {}/{} skipped: {e}",
                        p.namespace, p.name
                    ));
                    continue;
                }
            };
            let targets = self.targeted_routes(&p.namespace, &p.spec.target_ref, &[]);
            let found = !targets.is_empty();
            for route in targets {
                route.rate_limit = Some(limit.clone());
            }
            if !found {
                self.warn(format!(
                    "RateLimitPolicy {}/{}: Route {} not found",
                    p.namespace, p.name, p.spec.target_ref.name
                ));
            }
        }
    }
}
