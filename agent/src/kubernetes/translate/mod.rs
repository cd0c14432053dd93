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
//! - `AuthenticationPolicy` → the `jwt` (token providers, introspection) and claim
//!   rules (server routes `authn.<policy>.<rule>`) of one port of those workloads;
//!   one per port, the first by namespace/name, the others skipped with a warning.

mod authn;
mod inbound;
mod routes;
mod rules;
mod services;

use crate::source::{Catalog, Workload};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::core::DynamicObject;
use pillion_api::policy::{self, Route};
use pillion_api::view::{self, InboundPolicy};
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
/// The one part of a catalog translated from the cluster.
pub const KUBERNETES_PART: &str = "kubernetes";
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
    /// `pillion.io` AuthenticationPolicies, untyped.
    pub authentication_policies: Vec<Arc<DynamicObject>>,
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

/// One namespace's share of the catalog, and what was skipped on the way.
#[derive(Debug, Clone)]
pub struct Part {
    /// The workloads of the namespace's ServiceAccounts, by identity.
    pub workloads: Vec<Workload>,
    /// The namespace's services, by name.
    pub services: Vec<view::Service>,
    /// One line per skipped object or field, for the log.
    pub warnings: Vec<String>,
}

/// Builds the catalog of `objects` for `trust_domain`.
pub fn translate(objects: &Objects, trust_domain: &str) -> Translation {
    let part = run(objects, trust_domain, None);
    Translation {
        catalog: Catalog::of(KUBERNETES_PART, part.workloads, part.services),
        warnings: part.warnings,
    }
}

/// Builds namespace `ns`'s share of the catalog from `objects`: that namespace's
/// objects and the Routes of others that attach to its Services
/// ([`crate::kubernetes::cluster::Cluster::objects_in`]). A Route's parents in
/// other namespaces are theirs to translate, and are skipped here without a word.
pub fn translate_namespace(objects: &Objects, trust_domain: &str, ns: &str) -> Part {
    run(objects, trust_domain, Some(ns))
}

fn run(objects: &Objects, trust_domain: &str, scope: Option<&str>) -> Part {
    let mut t = Translator {
        trust_domain,
        scope,
        warnings: Vec::new(),
        pods: HashMap::new(),
        workloads: BTreeMap::new(),
        routes: BTreeMap::new(),
        gateway_hosts: BTreeMap::new(),
        gateway_auth: BTreeMap::new(),
    };
    t.index_pods(&objects.pods);
    let mut services = t.services(&objects.services, &objects.endpoint_slices);
    t.routes(&objects.routes, &services);
    t.retry_policies(&objects.retry_policies, &services);
    t.route_rate_limits(&objects.rate_limit_policies);
    t.authorization_policies(&objects.authorization_policies, &objects.pods);
    t.authentication_policies(&objects.authentication_policies, &objects.pods, &services);
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
    t.gateways();
    Part {
        workloads: t.workloads.into_values().collect(),
        services,
        warnings: t.warnings,
    }
}

struct Translator<'a> {
    trust_domain: &'a str,
    /// The one namespace being translated, when not the whole cluster.
    scope: Option<&'a str>,
    warnings: Vec<String>,
    pods: HashMap<(String, String), PodInfo>,
    workloads: BTreeMap<String, Workload>,
    routes: BTreeMap<PortKey, Vec<RouteEntry>>,
    /// Gateway identity → hostname → its routes, from Routes with a gateway parent.
    gateway_hosts: BTreeMap<String, BTreeMap<String, Vec<Route>>>,
    /// Gateway identity → hostname → its end-user policy, from AuthenticationPolicies.
    gateway_auth: BTreeMap<String, BTreeMap<String, authn::HostAuth>>,
}

impl Translator<'_> {
    fn warn(&mut self, warning: String) {
        self.warnings.push(warning);
    }

    /// The gateways' hosts onto their workloads (made for a gateway without meshed
    /// pods: it is a proxy itself). A gateway whose hosts do not validate serves none.
    fn gateways(&mut self) {
        for (identity, hosts) in std::mem::take(&mut self.gateway_hosts) {
            let Ok(id) = identity.parse::<SpiffeId>() else {
                continue;
            };
            let mut auth = self.gateway_auth.remove(&identity).unwrap_or_default();
            let mut policy = pillion_api::gateway::GatewayPolicy::default();
            for (hostname, routes) in hosts {
                let (jwt, server) = match auth.remove(&hostname) {
                    Some(a) => (Some(a.jwt), a.server),
                    None => (None, Default::default()),
                };
                let host = pillion_api::gateway::GatewayHost {
                    hostnames: vec![hostname],
                    routes: unique_names(routes),
                    jwt,
                    server,
                    api_keys: None,
                };
                // One bad host is dropped alone; the gateway keeps serving the rest.
                match host.validate() {
                    Ok(()) => policy.hosts.push(host),
                    Err(e) => self.warn(format!(
                        "gateway {identity}: host {} dropped: {e}",
                        host.hostnames[0]
                    )),
                }
            }
            for (hostname, a) in auth {
                self.warn(format!(
                    "{}: gateway {identity} serves no host {hostname}",
                    a.label
                ));
            }
            if policy.hosts.is_empty() {
                continue;
            }
            let workload = (self.workloads.entry(identity)).or_insert_with(|| workload_of(&id));
            workload.gateway = Some(policy);
        }
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
                    .or_insert_with(|| workload_of(id));
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
}

/// A ServiceAccount's workload with nothing yet: no addresses, the default policy.
fn workload_of(id: &SpiffeId) -> Workload {
    Workload {
        namespace: id.namespace().to_string(),
        name: id.service_account().to_string(),
        identity: id.clone(),
        addresses: Vec::new(),
        inbound: InboundPolicy::default(),
        gateway: None,
        token: None,
    }
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
