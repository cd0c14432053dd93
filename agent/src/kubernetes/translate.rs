//! Kubernetes objects in, the agent's [`Catalog`] out: the same model the YAML source
//! builds, so every proxy gets the same kind of view whichever source feeds the agent.
//!
//! Pure and total: no I/O, and an object that makes no sense (a port out of range, an
//! unparsable address, a policy naming a missing Service) is skipped with a warning,
//! never a panic and never a failed translation.
//!
//! What becomes what:
//! - a Service → a service: its ClusterIPs (none when headless) and TCP ports. A port
//!   is opaque when its `appProtocol` says so or the Service's `pillion.io/opaque-ports`
//!   annotation lists it; `http`/`http1` and `h2c`/`grpc`/`http2` pin HTTP/1 or HTTP/2.
//! - its EndpointSlices (label `kubernetes.io/service-name`) → endpoints: every address
//!   of every endpoint not marked `ready: false`, on every slice port whose name is a
//!   Service port's name. The slice's port number is the resolved target port, so
//!   named target ports need nothing else.
//! - an endpoint's `targetRef` Pod → its labels (for subset routing) and, when the pod
//!   carries the injector's `pillion.io/injected` annotation, the SPIFFE id of its
//!   ServiceAccount. Unmeshed endpoints get no identity (plain TCP).
//! - meshed pods → one workload per ServiceAccount identity, holding its inbound policy.
//! - `Route` → `routes` on its parent Service port(s), one route per rule, named
//!   `<route>.<rule name or index>`; `RetryPolicy` and a Route-targeted
//!   `RateLimitPolicy` → `retry` / `rate_limit` on those routes (a Service port without
//!   routes gets one catch-all route `default` to carry them).
//! - a Service-targeted `RateLimitPolicy` → a server-side catch-all route on the target
//!   port of the workloads behind the Service.
//! - `AuthorizationPolicy` → the mode and allow list of one port of every workload
//!   with a selected pod. Policy is per identity: pods sharing a ServiceAccount share
//!   it; when several policies cover one port, `Strict` wins and allow lists add up.

use super::crd::{self, AuthorizationPolicySpec, RateLimitPolicySpec, RetryPolicySpec, RouteSpec};
use crate::source::{Catalog, Workload};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::core::DynamicObject;
use pillion_api::policy::{
    self, HeaderEdits, HeaderMatch, PathMatch, RateLimit, RateLimitKey, RetryBudget, RetryOn,
    RetryPolicy, Route, RouteMatch, ServerRoute, StringMatch, WeightedBackend,
};
use pillion_api::view::{self, Endpoint, InboundPolicy, Mode, PortPolicy, Protocol};
use pillion_identity::SpiffeId;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

/// The annotation the injector puts on every pod it meshed.
pub const INJECTED_ANNOTATION: &str = pillion_inject::annotations::INJECTED;
/// Service annotation listing ports that skip protocol detection.
pub const OPAQUE_PORTS_ANNOTATION: &str = pillion_inject::annotations::OPAQUE_PORTS;
/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Name of the implicit route that carries a Service-wide retry or rate limit.
pub const DEFAULT_ROUTE: &str = "default";

/// Everything the translation reads: the watched objects, as the stores hold them.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    /// `v1` Services.
    pub services: Vec<Arc<Service>>,
    /// `discovery.k8s.io/v1` EndpointSlices.
    pub endpoint_slices: Vec<Arc<EndpointSlice>>,
    /// `v1` Pods.
    pub pods: Vec<Arc<Pod>>,
    /// `pillion.io` Routes, untyped.
    pub routes: Vec<Arc<DynamicObject>>,
    /// `pillion.io` RetryPolicies, untyped.
    pub retry_policies: Vec<Arc<DynamicObject>>,
    /// `pillion.io` RateLimitPolicies, untyped.
    pub rate_limit_policies: Vec<Arc<DynamicObject>>,
    /// `pillion.io` AuthorizationPolicies, untyped.
    pub authorization_policies: Vec<Arc<DynamicObject>>,
}

/// The translated model and what was skipped on the way.
#[derive(Debug, Clone)]
pub struct Translation {
    /// The model the server answers from.
    pub catalog: Catalog,
    /// One line per skipped object or field, for the log.
    pub warnings: Vec<String>,
}

/// What the translation needs to know of a pod.
struct PodInfo {
    identity: Option<SpiffeId>,
    labels: BTreeMap<String, String>,
}

/// A route with the name of the `Route` object it came from.
struct RouteEntry {
    origin: Option<String>,
    route: Route,
}

/// One service port being built, keyed by (namespace, service, port).
type PortKey = (String, String, u16);

/// Builds the catalog of `objects` for `trust_domain`.
pub fn translate(objects: &Objects, trust_domain: &str) -> Translation {
    let mut t = Translator {
        trust_domain,
        warnings: Vec::new(),
        pods: HashMap::new(),
        workloads: BTreeMap::new(),
        routes: BTreeMap::new(),
    };
    t.index_pods(&objects.pods);
    let mut services = t.services(&objects.services, &objects.endpoint_slices);
    t.routes(&objects.routes, &services);
    t.retry_policies(&objects.retry_policies, &services);
    t.route_rate_limits(&objects.rate_limit_policies);
    t.authorization_policies(&objects.authorization_policies, &objects.pods);
    t.service_rate_limits(&objects.rate_limit_policies, &services);
    for service in &mut services {
        for port in &mut service.ports {
            let key = (service.namespace.clone(), service.name.clone(), port.port);
            if let Some(entries) = t.routes.remove(&key) {
                port.routes = unique_names(entries.into_iter().map(|e| e.route).collect());
                if let Err(e) = policy::validate_routes(&port.routes) {
                    t.warn(format!(
                        "service {}/{} port {}: routes dropped: {e}",
                        service.namespace, service.name, port.port
                    ));
                    port.routes.clear();
                }
            }
        }
    }
    let catalog = Catalog {
        workloads: t.workloads.into_values().collect(),
        services,
        ..Catalog::default()
    };
    Translation {
        catalog,
        warnings: t.warnings,
    }
}

struct Translator<'a> {
    trust_domain: &'a str,
    warnings: Vec<String>,
    pods: HashMap<(String, String), PodInfo>,
    workloads: BTreeMap<String, Workload>,
    routes: BTreeMap<PortKey, Vec<RouteEntry>>,
}

impl Translator<'_> {
    fn warn(&mut self, warning: String) {
        self.warnings.push(warning);
    }

    /// Indexes pods by name and makes one workload per meshed ServiceAccount.
    fn index_pods(&mut self, pods: &[Arc<Pod>]) {
        for pod in pods {
            let (Some(ns), Some(name)) = (&pod.metadata.namespace, &pod.metadata.name) else {
                continue;
            };
            let meshed = pod
                .metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(INJECTED_ANNOTATION));
            let identity = if meshed {
                let sa = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.service_account_name.as_deref())
                    .filter(|sa| !sa.is_empty())
                    .unwrap_or("default");
                match SpiffeId::new(self.trust_domain, ns, sa) {
                    Ok(id) => Some(id),
                    Err(e) => {
                        self.warn(format!("pod {ns}/{name}: no identity: {e}"));
                        None
                    }
                }
            } else {
                None
            };
            if let Some(id) = &identity {
                let workload = self
                    .workloads
                    .entry(id.to_string())
                    .or_insert_with(|| Workload {
                        namespace: ns.clone(),
                        name: id.service_account().to_string(),
                        identity: id.clone(),
                        addresses: Vec::new(),
                        inbound: InboundPolicy::default(),
                        token: None,
                    });
                for ip in pod_ips(pod) {
                    if !workload.addresses.contains(&ip) {
                        workload.addresses.push(ip);
                    }
                }
                workload.addresses.sort();
            }
            let labels = pod.metadata.labels.clone().unwrap_or_default();
            self.pods
                .insert((ns.clone(), name.clone()), PodInfo { identity, labels });
        }
    }

    /// Services with their ports and ready endpoints, sorted by namespace and name.
    fn services(
        &mut self,
        services: &[Arc<Service>],
        slices: &[Arc<EndpointSlice>],
    ) -> Vec<view::Service> {
        let mut by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
        for slice in slices {
            let ns = slice.metadata.namespace.as_deref();
            let svc = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL));
            if let (Some(ns), Some(svc)) = (ns, svc) {
                by_service
                    .entry((ns, svc.as_str()))
                    .or_default()
                    .push(slice);
            }
        }
        let mut out = Vec::new();
        for service in services {
            let (Some(ns), Some(name)) = (&service.metadata.namespace, &service.metadata.name)
            else {
                continue;
            };
            let slices = by_service
                .get(&(ns.as_str(), name.as_str()))
                .map(Vec::as_slice)
                .unwrap_or_default();
            if let Some(s) = self.service(service, ns, name, slices) {
                out.push(s);
            }
        }
        out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        out
    }

    fn service(
        &mut self,
        service: &Service,
        ns: &str,
        name: &str,
        slices: &[&EndpointSlice],
    ) -> Option<view::Service> {
        let spec = service.spec.as_ref()?;
        if spec.type_.as_deref() == Some("ExternalName") {
            return None;
        }
        let mut addresses = Vec::new();
        let ips = spec
            .cluster_ips
            .clone()
            .filter(|ips| !ips.is_empty())
            .or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip]))
            .unwrap_or_default();
        for ip in ips.iter().filter(|ip| !ip.is_empty() && *ip != "None") {
            match ip.parse::<IpAddr>() {
                Ok(ip) if !addresses.contains(&ip) => addresses.push(ip),
                Ok(_) => {}
                Err(_) => self.warn(format!("service {ns}/{name}: bad clusterIP {ip:?}")),
            }
        }
        let opaque = self.opaque_ports(service, ns, name);
        let mut ports = Vec::new();
        // Service port name → service port number, to pick slice ports.
        let mut names: HashMap<String, u16> = HashMap::new();
        for p in spec.ports.iter().flatten() {
            if !is_tcp(p.protocol.as_deref()) {
                continue;
            }
            let Some(number) = port_number(p.port) else {
                self.warn(format!("service {ns}/{name}: port {} out of range", p.port));
                continue;
            };
            let port_name = p.name.clone().unwrap_or_default();
            let target = slices
                .iter()
                .flat_map(|s| s.ports.iter().flatten())
                .find(|sp| sp.name.clone().unwrap_or_default() == port_name)
                .and_then(|sp| sp.port.and_then(port_number))
                .or(match &p.target_port {
                    Some(IntOrString::Int(n)) => port_number(*n),
                    _ => None,
                });
            names.insert(port_name, number);
            let protocol = if opaque.contains(&number) {
                Protocol::Opaque
            } else {
                app_protocol(p.app_protocol.as_deref())
            };
            ports.push(view::ServicePort {
                port: number,
                protocol,
                target_port: target.filter(|&t| t != number),
                routes: Vec::new(),
            });
        }
        if ports.is_empty() {
            return None;
        }
        let endpoints = self.endpoints(slices, &names);
        Some(view::Service {
            name: name.to_string(),
            namespace: ns.to_string(),
            addresses,
            ports,
            endpoints,
        })
    }

    fn opaque_ports(&mut self, service: &Service, ns: &str, name: &str) -> Vec<u16> {
        let Some(text) = service
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(OPAQUE_PORTS_ANNOTATION))
        else {
            return Vec::new();
        };
        match pillion_inject::values::parse_ports(text) {
            Ok(ports) => ports,
            Err(e) => {
                self.warn(format!(
                    "service {ns}/{name}: {OPAQUE_PORTS_ANNOTATION} ignored: {e}"
                ));
                Vec::new()
            }
        }
    }

    /// Ready endpoints of a service's slices, on the ports named like service ports.
    fn endpoints(
        &mut self,
        slices: &[&EndpointSlice],
        names: &HashMap<String, u16>,
    ) -> Vec<Endpoint> {
        let mut out: Vec<Endpoint> = Vec::new();
        let mut seen = BTreeSet::new();
        for slice in slices {
            if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
                continue;
            }
            let slice_ns = slice.metadata.namespace.clone().unwrap_or_default();
            let ports: Vec<u16> = slice
                .ports
                .iter()
                .flatten()
                .filter(|p| is_tcp(p.protocol.as_deref()))
                .filter(|p| names.contains_key(&p.name.clone().unwrap_or_default()))
                .filter_map(|p| p.port.and_then(port_number))
                .collect();
            for ep in &slice.endpoints {
                let ready = ep.conditions.as_ref().and_then(|c| c.ready);
                if ready == Some(false) {
                    continue;
                }
                let pod = ep.target_ref.as_ref().and_then(|r| {
                    if r.kind.as_deref() != Some("Pod") {
                        return None;
                    }
                    let ns = r.namespace.clone().unwrap_or_else(|| slice_ns.clone());
                    self.pods.get(&(ns, r.name.clone()?))
                });
                let identity = pod.and_then(|p| p.identity.as_ref().map(|i| i.to_string()));
                let labels = pod.map(|p| p.labels.clone()).unwrap_or_default();
                for addr in &ep.addresses {
                    let Ok(ip) = addr.parse::<IpAddr>() else {
                        continue;
                    };
                    for &port in &ports {
                        if seen.insert((ip, port)) {
                            out.push(Endpoint {
                                address: ip,
                                port,
                                identity: identity.clone(),
                                labels: labels.clone(),
                            });
                        }
                    }
                }
            }
        }
        out.sort_by_key(|e| (e.address, e.port));
        out
    }

    /// Route objects → routes on their parents' ports.
    fn routes(&mut self, routes: &[Arc<DynamicObject>], services: &[view::Service]) {
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

    /// The routes a policy's `targetRef` names, creating a catch-all for a Service
    /// port without routes.
    fn targeted_routes(
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
    fn retry_policies(&mut self, policies: &[Arc<DynamicObject>], services: &[view::Service]) {
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
    fn route_rate_limits(&mut self, policies: &[Arc<DynamicObject>]) {
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

    /// Service-targeted rate limits: a catch-all server route on the target port of
    /// every workload behind the Service.
    fn service_rate_limits(&mut self, policies: &[Arc<DynamicObject>], services: &[view::Service]) {
        for obj in policies {
            let Ok(p) = crd::parse::<RateLimitPolicySpec>(obj) else {
                continue; // already warned about
            };
            if p.spec.target_ref.kind != "Service" {
                continue;
            }
            let Ok(limit) = rate_limit(&p.spec) else {
                self.warn(format!(
                    "RateLimitPolicy {}/{} skipped: bad rate or key",
                    p.namespace, p.name
                ));
                continue;
            };
            let Some(service) = find_service(services, &p.namespace, &p.spec.target_ref.name)
            else {
                self.warn(format!(
                    "RateLimitPolicy {}/{}: Service {} not found",
                    p.namespace, p.name, p.spec.target_ref.name
                ));
                continue;
            };
            let route_name = format!("ratelimit.{}", p.name);
            let route = ServerRoute {
                name: route_name.clone(),
                rate_limit: Some(limit),
                ..ServerRoute::default()
            };
            if let Err(e) = route.validate() {
                self.warn(format!(
                    "RateLimitPolicy {}/{} skipped: {e}",
                    p.namespace, p.name
                ));
                continue;
            }
            for port in &service.ports {
                if p.spec.target_ref.port.is_some_and(|t| t != port.port) {
                    continue;
                }
                let target = port.target_port();
                let ids: BTreeSet<&str> = service
                    .endpoints_for(port)
                    .filter_map(|e| e.identity.as_deref())
                    .collect();
                for id in ids {
                    let Some(w) = self.workloads.get_mut(id) else {
                        continue;
                    };
                    let default_mode = w.inbound.default_mode;
                    let policy = w.inbound.ports.entry(target).or_insert_with(|| PortPolicy {
                        mode: default_mode,
                        ..PortPolicy::default()
                    });
                    if !policy.server.routes.iter().any(|r| r.name == route_name) {
                        policy.server.routes.push(route.clone());
                    }
                }
            }
        }
    }

    /// AuthorizationPolicies → per-port mode and allow list of the selected workloads.
    fn authorization_policies(&mut self, policies: &[Arc<DynamicObject>], pods: &[Arc<Pod>]) {
        let mut parsed = Vec::new();
        for obj in policies {
            match crd::parse::<AuthorizationPolicySpec>(obj) {
                Ok(p) => parsed.push(p),
                Err(e) => self.warn(format!("AuthorizationPolicy {e}")),
            }
        }
        parsed.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        for p in parsed {
            let mode = match p.spec.mode.as_deref() {
                None | Some("Permissive") => Mode::Permissive,
                Some("Strict") => Mode::Strict,
                Some(other) => {
                    self.warn(format!(
                        "AuthorizationPolicy {}/{} skipped: mode {other:?} is neither Permissive nor Strict",
                        p.namespace, p.name
                    ));
                    continue;
                }
            };
            if p.spec.port == 0 {
                self.warn(format!(
                    "AuthorizationPolicy {}/{} skipped: port 0",
                    p.namespace, p.name
                ));
                continue;
            }
            let mut allow = Vec::new();
            let mut bad = None;
            for pattern in &p.spec.allow {
                match policy::validate_identity_pattern(pattern) {
                    Ok(()) => allow.push(pattern.clone()),
                    Err(why) => bad = Some(format!("{pattern:?}: {why}")),
                }
            }
            if let Some(why) = bad {
                self.warn(format!(
                    "AuthorizationPolicy {}/{} skipped: bad allow pattern {why}",
                    p.namespace, p.name
                ));
                continue;
            }
            let selector = p
                .spec
                .pod_selector
                .as_ref()
                .map(|s| s.match_labels.clone())
                .unwrap_or_default();
            let ids: BTreeSet<String> = pods
                .iter()
                .filter(|pod| pod.metadata.namespace.as_deref() == Some(p.namespace.as_str()))
                .filter(|pod| {
                    let labels = pod.metadata.labels.as_ref();
                    selector
                        .iter()
                        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
                })
                .filter_map(|pod| {
                    let key = (p.namespace.clone(), pod.metadata.name.clone()?);
                    self.pods
                        .get(&key)?
                        .identity
                        .as_ref()
                        .map(|i| i.to_string())
                })
                .collect();
            for id in ids {
                let Some(w) = self.workloads.get_mut(&id) else {
                    continue;
                };
                match w.inbound.ports.get_mut(&p.spec.port) {
                    None => {
                        w.inbound.ports.insert(
                            p.spec.port,
                            PortPolicy {
                                mode,
                                allow: allow.clone(),
                                ..PortPolicy::default()
                            },
                        );
                    }
                    Some(existing) => {
                        if mode == Mode::Strict {
                            existing.mode = Mode::Strict;
                        }
                        // An empty list already allows any identity; otherwise add up.
                        if allow.is_empty() {
                            existing.allow.clear();
                        } else if !existing.allow.is_empty() {
                            for a in &allow {
                                if !existing.allow.contains(a) {
                                    existing.allow.push(a.clone());
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// One Route rule → one `api::policy::Route` (not yet validated).
fn translate_rule(rule: &crd::RouteRule, name: &str) -> Result<Route, String> {
    let mut route = Route {
        name: name.to_string(),
        ..Route::default()
    };
    for m in &rule.matches {
        let path = match &m.path {
            None => None,
            Some(p) => Some(match p.kind.as_str() {
                "Exact" => PathMatch::Exact(p.value.clone()),
                "PathPrefix" => PathMatch::Prefix(p.value.clone()),
                "RegularExpression" => PathMatch::Regex(p.value.clone()),
                other => return Err(format!("unknown path match type {other:?}")),
            }),
        };
        let mut headers = Vec::new();
        for h in &m.headers {
            let value = match h.kind.as_str() {
                "Exact" => StringMatch::Exact(h.value.clone()),
                "RegularExpression" => StringMatch::Regex(h.value.clone()),
                other => return Err(format!("unknown header match type {other:?}")),
            };
            headers.push(HeaderMatch {
                name: h.name.to_ascii_lowercase(),
                value,
            });
        }
        route.matches.push(RouteMatch {
            path,
            method: m.method.clone(),
            headers,
        });
    }
    for b in &rule.backend_refs {
        // The parent Service itself becomes `service: None` when the rule is attached.
        route.backends.push(WeightedBackend {
            weight: b.weight,
            subset: b.subset.clone(),
            service: Some(b.name.clone()),
        });
    }
    for f in &rule.filters {
        match (f.kind.as_str(), f) {
            (
                "RequestHeaderModifier",
                crd::Filter {
                    request_header_modifier: Some(m),
                    ..
                },
            ) => {
                route.request_headers = header_edits(m);
            }
            (
                "ResponseHeaderModifier",
                crd::Filter {
                    response_header_modifier: Some(m),
                    ..
                },
            ) => {
                route.response_headers = header_edits(m);
            }
            (
                "URLRewrite",
                crd::Filter {
                    url_rewrite: Some(r),
                    ..
                },
            ) => {
                let prefix = match r.path.kind.as_str() {
                    "ReplacePrefixMatch" => r.path.replace_prefix_match.clone(),
                    // A full-path replacement is a prefix rewrite of an exact match.
                    "ReplaceFullPath"
                        if route
                            .matches
                            .iter()
                            .all(|m| matches!(m.path, Some(PathMatch::Exact(_)))) =>
                    {
                        r.path.replace_full_path.clone()
                    }
                    "ReplaceFullPath" => {
                        return Err(
                            "ReplaceFullPath needs every match to have an Exact path".to_string()
                        )
                    }
                    other => return Err(format!("unknown rewrite type {other:?}")),
                };
                let prefix = prefix.ok_or("the URLRewrite has no replacement path")?;
                route.rewrite = Some(policy::PathRewrite { prefix });
            }
            (kind, _) => return Err(format!("filter {kind:?} is unknown or has no settings")),
        }
    }
    if let Some(t) = &rule.timeouts {
        route.timeout = t.request.as_deref().map(duration).transpose()?;
        route.per_try_timeout = t.backend_request.as_deref().map(duration).transpose()?;
    }
    Ok(route)
}

/// A rule as attached to one parent: backends naming the parent mean its own
/// endpoints.
fn for_parent(route: &Route, parent: &str) -> Route {
    let mut route = route.clone();
    for b in &mut route.backends {
        if b.service.as_deref() == Some(parent) {
            b.service = None;
        }
    }
    route
}

fn header_edits(m: &crd::HeaderModifier) -> HeaderEdits {
    let pairs = |list: &[crd::NameValue]| {
        list.iter()
            .map(|nv| (nv.name.to_ascii_lowercase(), nv.value.clone()))
            .collect()
    };
    HeaderEdits {
        set: pairs(&m.set),
        add: pairs(&m.add),
        remove: m.remove.iter().map(|h| h.to_ascii_lowercase()).collect(),
    }
}

fn duration(text: &str) -> Result<std::time::Duration, String> {
    policy::parse_duration(text).map_err(|e| format!("bad duration {text:?}: {e}"))
}

/// A RetryPolicy's retry settings and per-try timeout, checked.
fn retry_policy(
    spec: &RetryPolicySpec,
) -> Result<(RetryPolicy, Option<std::time::Duration>), String> {
    let mut retry = RetryPolicy {
        retry_non_idempotent: spec.retry_non_idempotent,
        ..RetryPolicy::default()
    };
    if let Some(a) = spec.attempts {
        retry.attempts = a;
    }
    if let Some(conditions) = &spec.conditions {
        retry.conditions = conditions
            .iter()
            .map(|c| {
                serde_json::from_value::<RetryOn>(serde_json::Value::String(c.clone()))
                    .map_err(|e| format!("bad condition {c:?}: {e}"))
            })
            .collect::<Result<_, _>>()?;
    }
    if let Some(b) = &spec.backoff {
        if let Some(base) = &b.base {
            retry.backoff_base = duration(base)?;
        }
        if let Some(max) = &b.max {
            retry.backoff_max = duration(max)?;
        }
    }
    if let Some(b) = &spec.budget {
        let mut budget = RetryBudget::default();
        if let Some(r) = b.ratio {
            budget.ratio = r;
        }
        if let Some(m) = b.min_per_second {
            budget.min_per_second = m;
        }
        if let Some(w) = &b.window {
            budget.window = duration(w)?;
        }
        retry.budget = Some(budget);
    }
    retry.validate().map_err(|e| e.to_string())?;
    let per_try = spec.per_try_timeout.as_deref().map(duration).transpose()?;
    Ok((retry, per_try))
}

/// A RateLimitPolicy's limit, checked.
fn rate_limit(spec: &RateLimitPolicySpec) -> Result<RateLimit, String> {
    let key = match spec.key.as_ref().and_then(|k| k.kind.as_deref()) {
        None | Some("None") => RateLimitKey::None,
        Some("ClientIdentity") => RateLimitKey::ClientIdentity,
        Some("Header") => RateLimitKey::Header(
            spec.key
                .as_ref()
                .and_then(|k| k.header.clone())
                .ok_or("key type Header needs header")?
                .to_ascii_lowercase(),
        ),
        Some(other) => return Err(format!("unknown key type {other:?}")),
    };
    let limit = RateLimit {
        requests_per_second: spec.requests_per_second,
        // The CRD's burst counts requests on top of the rate; at least one always passes.
        burst: spec.burst.max(1),
        key,
    };
    limit.validate().map_err(|e| e.to_string())?;
    Ok(limit)
}

fn find_service<'s>(
    services: &'s [view::Service],
    ns: &str,
    name: &str,
) -> Option<&'s view::Service> {
    services
        .iter()
        .find(|s| s.namespace == ns && s.name == name)
}

/// Makes route names unique within a port by suffixing repeats (`a`, `a-2`).
fn unique_names(mut routes: Vec<Route>) -> Vec<Route> {
    let mut seen = BTreeSet::new();
    for r in &mut routes {
        let mut name = r.name.clone();
        let mut n = 2;
        while !seen.insert(name.clone()) {
            name = format!("{}-{n}", r.name);
            n += 1;
        }
        r.name = name;
    }
    routes
}

fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let status = pod.status.as_ref();
    let mut ips: Vec<IpAddr> = status
        .and_then(|s| s.pod_ips.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .collect();
    if ips.is_empty() {
        ips.extend(
            status
                .and_then(|s| s.pod_ip.as_deref())
                .and_then(|ip| ip.parse::<IpAddr>().ok()),
        );
    }
    ips
}

fn is_tcp(protocol: Option<&str>) -> bool {
    matches!(protocol, None | Some("TCP"))
}

fn port_number(n: i32) -> Option<u16> {
    u16::try_from(n).ok().filter(|&p| p != 0)
}

/// How an `appProtocol` value pins the protocol; anything unknown is detected.
fn app_protocol(value: Option<&str>) -> Protocol {
    match value.map(str::to_ascii_lowercase).as_deref() {
        Some("http" | "http1" | "http/1.1") => Protocol::Http1,
        Some("http2" | "h2c" | "kubernetes.io/h2c" | "grpc") => Protocol::Http2,
        Some(
            "tcp" | "opaque" | "mysql" | "postgres" | "postgresql" | "redis" | "mongo" | "mongodb"
            | "smtp" | "tls" | "https",
        ) => Protocol::Opaque,
        _ => Protocol::Auto,
    }
}
