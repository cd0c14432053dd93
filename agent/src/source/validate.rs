//! Checks that need more than one entry (duplicates, references between entries)
//! and adds a parsed [`SourceFile`] to a [`Catalog`] as one part. Entries of other
//! parts already in the catalog count: a name, address or token is taken whichever
//! part took it, and an endpoint may name a workload of another part.

use super::catalog::{Catalog, Origin, Workload};
use super::model::{EndpointSpec, GatewaySpec, Name, ServiceSpec, SourceFile, WorkloadSpec};
use super::path::EntryPath;
use super::routes;
use super::routes::{RouteSpec, ServerRouteSpec};
use crate::token::TokenHash;
use pillion_api::gateway::{GatewayHost, GatewayPolicy};
use pillion_api::policy::validate_port_auth;
use pillion_api::policy::ServerPolicy;
use pillion_api::view::{Endpoint, InboundPolicy, PortPolicy, Service, ServicePort};
use pillion_identity::{IdError, SpiffeId};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

/// A problem found after parsing, naming the entry it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SemanticError {
    /// The offending entry, like `services[2].endpoints[0].workload`.
    pub path: EntryPath,
    /// What is wrong and what to do about it.
    pub reason: String,
}

/// Checks a parsed file and resolves it against the trust domain: the catalog of
/// a source that is this one file.
pub fn validate(
    file: &SourceFile,
    part: &str,
    trust_domain: &str,
) -> Result<Catalog, SemanticError> {
    let part: Arc<str> = Arc::from(part);
    let mut catalog = Catalog::default();
    add_workloads(file, &part, trust_domain, &mut catalog)?;
    add_services(file, &part, &mut catalog)?;
    check_backend_services(&part, &catalog)?;
    check_gateway_backends(&part, &catalog)?;
    Ok(catalog)
}

/// How an error names an entry: `[3]` in its own part, `[3] of <file>` in another.
fn entry(list: &str, at: &Origin, part: &Arc<str>) -> String {
    if at.part == *part {
        format!("{list}[{}]", at.index)
    } else {
        format!("{list}{at}")
    }
}

/// Adds the workloads of `file` as `part`; first of a part's two steps, so that
/// the services of every part may refer to the workloads of any.
pub fn add_workloads(
    file: &SourceFile,
    part: &Arc<str>,
    trust_domain: &str,
    catalog: &mut Catalog,
) -> Result<(), SemanticError> {
    for (i, spec) in file.workloads.iter().enumerate() {
        let at = EntryPath::root("workloads").index(i);
        if let Some((first, _)) = catalog.workload_named(&spec.namespace.0, &spec.name.0) {
            return Err(err(
                at.key("name"),
                format!(
                    "duplicate workload {}/{}: {} already has this namespace and name",
                    spec.namespace.0,
                    spec.name.0,
                    entry("workloads", first, part)
                ),
            ));
        }
        let workload = workload(spec, &at, trust_domain)?;
        for (k, addr) in workload.addresses.iter().enumerate() {
            if let Some(other) = catalog.pod_address_owner(*addr) {
                return Err(err(
                    at.key("addresses").index(k),
                    format!(
                        "address {addr} is already an address of {}",
                        entry("workloads", other, part)
                    ),
                ));
            }
        }
        if let Some(hash) = workload.token {
            if let Some(other) = catalog.token_owner(&hash) {
                return Err(err(
                    at.key("token"),
                    format!(
                        "{} already uses this token: every workload needs its own token",
                        entry("workloads", other, part)
                    ),
                ));
            }
        }
        catalog.insert_workload(Origin::new(part, i), workload);
    }
    Ok(())
}

/// Adds the services of `file` as `part`, once every part's workloads are in.
pub fn add_services(
    file: &SourceFile,
    part: &Arc<str>,
    catalog: &mut Catalog,
) -> Result<(), SemanticError> {
    for (i, spec) in file.services.iter().enumerate() {
        let at = EntryPath::root("services").index(i);
        if let Some((first, _)) = catalog.service_named(&spec.namespace.0, &spec.name.0) {
            return Err(err(
                at.key("name"),
                format!(
                    "duplicate service {}/{}: {} already has this namespace and name",
                    spec.namespace.0,
                    spec.name.0,
                    entry("services", first, part)
                ),
            ));
        }
        for (k, vip) in spec.addresses.iter().enumerate() {
            if let Some(other) = catalog.vip_owner(vip.0) {
                return Err(err(
                    at.key("addresses").index(k),
                    format!(
                        "address {} is already an address of {}",
                        vip.0,
                        entry("services", other, part)
                    ),
                ));
            }
        }
        let service = service(spec, &at, catalog)?;
        catalog.insert_service(Origin::new(part, i), service);
    }
    Ok(())
}

/// Every backend `route` (written at `at_route`) sends to, its mirror's and its
/// aggregation's included, with the entry path each is written at.
fn sent_to<'r>(
    at_route: &'r EntryPath,
    route: &'r pillion_api::policy::Route,
) -> impl Iterator<Item = (EntryPath, &'r pillion_api::policy::WeightedBackend)> + 'r {
    let parts = (route.aggregate.iter()).flat_map(|a| a.parts.iter().enumerate());
    (route.backends.iter().enumerate())
        .map(|(b, backend)| (at_route.key("backends").index(b), backend))
        .chain((route.mirror.iter()).map(|m| (at_route.key("mirror").key("backend"), &m.backend)))
        .chain(parts.map(|(p, part)| {
            let at = at_route.key("aggregate").key("parts").index(p);
            (at.key("backend"), &part.backend)
        }))
}

/// Every route backend of `part` that names another service must name one of the
/// same namespace that offers the same port, since that is where the proxy sends it.
pub fn check_backend_services(part: &str, catalog: &Catalog) -> Result<(), SemanticError> {
    for (i, service) in catalog.services_of(part).enumerate() {
        for (k, port) in service.ports.iter().enumerate() {
            for (r, route) in port.routes.iter().enumerate() {
                let at_route = EntryPath::root("services")
                    .index(i)
                    .key("ports")
                    .index(k)
                    .key("routes")
                    .index(r);
                for (at, backend) in sent_to(&at_route, route) {
                    let Some(name) = &backend.service else {
                        continue;
                    };
                    let at = at.key("service");
                    let wanted = backend.port.unwrap_or(port.port);
                    match catalog.service_named(&service.namespace, name) {
                        None => {
                            return Err(err(
                                at,
                                format!(
                                    "no service named `{name}` in namespace `{}`",
                                    service.namespace
                                ),
                            ))
                        }
                        Some((_, t)) if !t.ports.iter().any(|p| p.port == wanted) => {
                            return Err(err(
                                at,
                                format!(
                                    "service `{name}` has no port {wanted}: a backend service must offer the route's port, or the backend's `port`"
                                ),
                            ))
                        }
                        Some(_) => {}
                    }
                }
            }
        }
    }
    Ok(())
}

/// Workloads an error about an unknown one lists as the known ones.
const KNOWN_LISTED: usize = 20;

fn err(path: EntryPath, reason: impl Into<String>) -> SemanticError {
    SemanticError {
        path,
        reason: reason.into(),
    }
}

fn workload(spec: &WorkloadSpec, at: &EntryPath, td: &str) -> Result<Workload, SemanticError> {
    let sa = spec.service_account.as_ref().unwrap_or(&spec.name);
    let identity = SpiffeId::new(td, &spec.namespace.0, &sa.0).map_err(|e| {
        let field = match e {
            IdError::InvalidNamespace { .. } => "namespace",
            IdError::InvalidServiceAccount { .. } if spec.service_account.is_some() => {
                "service_account"
            }
            IdError::InvalidServiceAccount { .. } => "name",
            _ => "namespace",
        };
        err(at.key(field), format!("cannot make a SPIFFE id: {e}"))
    })?;
    let mut seen = BTreeSet::new();
    let mut addresses = Vec::new();
    for (k, a) in spec.addresses.iter().enumerate() {
        if !seen.insert(a.0) {
            return Err(err(
                at.key("addresses").index(k),
                format!("address {} is listed twice", a.0),
            ));
        }
        addresses.push(a.0);
    }
    let default_mode = spec.inbound.default_mode;
    let mut ports = BTreeMap::new();
    for (port, p) in &spec.inbound.ports {
        let at = at.key("inbound").key("ports").key(port.0);
        let server = routes::server_policy(&p.routes, &at).map_err(|(path, why)| err(path, why))?;
        let jwt = p.jwt.as_ref().map(|j| j.to_policy(&spec.namespace.0));
        validate_port_auth(jwt.as_ref(), &server)
            .map_err(|e| err(routes::join(&at, &e.path), e.problem.to_string()))?;
        let policy = PortPolicy {
            mode: p.mode.unwrap_or(default_mode),
            allow: p.allow.iter().map(|a| a.0.as_str().to_string()).collect(),
            server,
            jwt,
        };
        ports.insert(port.0, policy);
    }
    let inbound = InboundPolicy {
        default_mode,
        ports,
    };
    let gateway = match &spec.gateway {
        Some(g) => Some(gateway(g, &spec.namespace.0, &at.key("gateway"))?),
        None => None,
    };
    Ok(Workload {
        namespace: spec.namespace.0.clone(),
        name: spec.name.0.clone(),
        identity,
        addresses,
        inbound,
        gateway,
        token: spec.token.as_ref().map(|t| TokenHash::of(&t.0)),
    })
}

/// A gateway's hosts: routes converted, backend services written as
/// `namespace/name` (a bare name is in the gateway's namespace), everything checked
/// by the api's validator with its paths below `at`.
fn gateway(
    spec: &GatewaySpec,
    namespace: &str,
    at: &EntryPath,
) -> Result<GatewayPolicy, SemanticError> {
    let mut hosts = Vec::new();
    for host in &spec.hosts {
        let mut routes: Vec<_> = host.routes.iter().map(RouteSpec::to_route).collect();
        let backends = routes.iter_mut().flat_map(|r| {
            r.backends
                .iter_mut()
                .chain(r.mirror.as_mut().map(|m| &mut m.backend))
        });
        for backend in backends {
            if let Some(name) = &mut backend.service {
                if !name.contains('/') {
                    *name = format!("{namespace}/{name}");
                }
            }
        }
        hosts.push(GatewayHost {
            hostnames: host.hostnames.clone(),
            routes,
            jwt: host.jwt.as_ref().map(|j| j.to_policy(namespace)),
            server: ServerPolicy {
                routes: host
                    .server_routes
                    .iter()
                    .map(ServerRouteSpec::to_route)
                    .collect(),
            },
            api_keys: host.api_keys.clone(),
        });
    }
    let policy = GatewayPolicy { hosts };
    policy.validate().map_err(|e| {
        // The api names server routes `server.routes`; the source writes `server_routes`.
        let path = e.path.replacen("server.routes", "server_routes", 1);
        err(routes::join(at, &path), e.problem.to_string())
    })?;
    Ok(policy)
}

/// Every gateway route backend of `part` must name a service with the port it names.
pub fn check_gateway_backends(part: &str, catalog: &Catalog) -> Result<(), SemanticError> {
    for (i, workload) in catalog.workloads_of(part).enumerate() {
        check_introspection(workload, &EntryPath::root("workloads").index(i), catalog)?;
        let Some(gateway) = &workload.gateway else {
            continue;
        };
        for (h, host) in gateway.hosts.iter().enumerate() {
            for (r, route) in host.routes.iter().enumerate() {
                let at_route = EntryPath::root("workloads")
                    .index(i)
                    .key("gateway")
                    .key("hosts")
                    .index(h)
                    .key("routes")
                    .index(r);
                for (at, backend) in sent_to(&at_route, route) {
                    let (Some(name), Some(port)) = (&backend.service, backend.port) else {
                        continue;
                    };
                    let (ns, short) = name.split_once('/').unwrap_or(("", name));
                    match catalog.service_named(ns, short) {
                        None => {
                            return Err(err(
                                at.key("service"),
                                format!("no service named `{name}`"),
                            ))
                        }
                        Some((_, s)) if !s.ports.iter().any(|p| p.port == port) => {
                            let offered: Vec<String> =
                                s.ports.iter().map(|p| p.port.to_string()).collect();
                            return Err(err(
                                at.key("port"),
                                format!(
                                    "service `{name}` has no port {port} (it offers {})",
                                    offered.join(", ")
                                ),
                            ));
                        }
                        Some(_) => {}
                    }
                }
            }
        }
    }
    Ok(())
}

/// Every introspection endpoint of `workload` (at `at`) must name a service with
/// the port it names.
fn check_introspection(
    workload: &Workload,
    at: &EntryPath,
    catalog: &Catalog,
) -> Result<(), SemanticError> {
    for (path, x) in workload.introspections() {
        let at = routes::join(at, &path);
        let Some((ns, name)) = x.service_name() else {
            continue;
        };
        match catalog.service_named(ns, name) {
            None => {
                return Err(err(
                    at.key("service"),
                    format!("no service named `{}`", x.service),
                ))
            }
            Some((_, s))
                if s.ports.iter().any(|p| {
                    p.port == x.port && p.protocol == pillion_api::view::Protocol::Opaque
                }) =>
            {
                return Err(err(
                    at.key("port"),
                    format!(
                        "port {} of `{}` is opaque: introspection is asked in HTTP",
                        x.port, x.service
                    ),
                ))
            }
            Some((_, s)) if !s.ports.iter().any(|p| p.port == x.port) => {
                let offered: Vec<String> = s.ports.iter().map(|p| p.port.to_string()).collect();
                return Err(err(
                    at.key("port"),
                    format!(
                        "service `{}` has no port {} (it offers {})",
                        x.service,
                        x.port,
                        offered.join(", ")
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn service(
    spec: &ServiceSpec,
    at: &EntryPath,
    catalog: &Catalog,
) -> Result<Service, SemanticError> {
    if spec.ports.is_empty() {
        return Err(err(
            at.key("ports"),
            "a service needs at least one port, like `ports: [{port: 80}]`",
        ));
    }
    let mut ports = Vec::new();
    let mut seen = BTreeSet::new();
    for (k, p) in spec.ports.iter().enumerate() {
        if !seen.insert(p.port.0) {
            return Err(err(
                at.key("ports").index(k).key("port"),
                format!("port {} is listed twice", p.port.0),
            ));
        }
        let routes = routes::client_routes(&p.routes, &at.key("ports").index(k))
            .map_err(|(path, why)| err(path, why))?;
        if let Some(breaker) = &p.circuit_breaker {
            let at = at.key("ports").index(k).key("circuit_breaker");
            breaker
                .validate()
                .map_err(|e| err(routes::join(&at, &e.path), e.problem.to_string()))?;
        }
        ports.push(ServicePort {
            port: p.port.0,
            protocol: p.protocol,
            target_port: p.target_port.map(|t| t.0).filter(|&t| t != p.port.0),
            routes,
            circuit_breaker: p.circuit_breaker,
        });
    }
    let targets: BTreeSet<u16> = ports.iter().map(ServicePort::target_port).collect();

    let mut endpoints: Vec<Endpoint> = Vec::new();
    for (j, e) in spec.endpoints.iter().enumerate() {
        let at = at.key("endpoints").index(j);
        for ep in endpoint_group(e, &at, &spec.namespace, &targets, catalog)? {
            if endpoints
                .iter()
                .any(|other| other.address == ep.address && other.port == ep.port)
            {
                return Err(err(
                    at,
                    format!(
                        "endpoint {} is listed twice in this service",
                        std::net::SocketAddr::new(ep.address, ep.port)
                    ),
                ));
            }
            endpoints.push(ep);
        }
    }
    Ok(Service {
        name: spec.name.0.clone(),
        namespace: spec.namespace.0.clone(),
        addresses: spec.addresses.iter().map(|a| a.0).collect(),
        ports,
        endpoints,
    })
}

/// Expands one endpoint entry into one wire endpoint per address and port.
fn endpoint_group(
    e: &EndpointSpec,
    at: &EntryPath,
    service_ns: &Name,
    targets: &BTreeSet<u16>,
    catalog: &Catalog,
) -> Result<Vec<Endpoint>, SemanticError> {
    let workload = match &e.workload {
        None => None,
        Some(r) => {
            let ns = r.namespace.as_ref().unwrap_or(service_ns);
            match catalog.workload_named(&ns.0, &r.name.0) {
                Some((_, w)) => Some(w),
                None => {
                    let mut known: Vec<String> = (catalog.workloads().take(KNOWN_LISTED))
                        .map(|w| format!("{}/{}", w.namespace, w.name))
                        .collect();
                    let more = catalog.workloads().len().saturating_sub(KNOWN_LISTED);
                    if more > 0 {
                        known.push(format!("and {more} more"));
                    }
                    return Err(err(
                        at.key("workload"),
                        format!(
                            "no workload named `{}` in namespace `{ns}` (known workloads: {})",
                            r.name,
                            if known.is_empty() {
                                "none".to_string()
                            } else {
                                known.join(", ")
                            }
                        ),
                    ));
                }
            }
        }
    };
    if workload.is_some() && e.identity.is_some() {
        return Err(err(
            at.key("identity"),
            "give either `workload` or `identity`, not both (a workload brings its identity)",
        ));
    }
    let identity = match (workload, &e.identity) {
        (Some(w), _) => Some(w.identity.to_string()),
        (None, Some(id)) => Some(id.0.to_string()),
        (None, None) => None,
    };
    let addresses: Vec<IpAddr> = if e.addresses.is_empty() {
        workload.map(|w| w.addresses.clone()).unwrap_or_default()
    } else {
        e.addresses.iter().map(|a| a.0).collect()
    };
    if addresses.is_empty() {
        let why = match workload {
            Some(w) => format!(
                "endpoint has no addresses: list `addresses` here or on workload {}/{}",
                w.namespace, w.name
            ),
            None => {
                "endpoint has no addresses: list `addresses` or refer to a `workload` that has them"
                    .into()
            }
        };
        return Err(err(at.clone(), why));
    }
    let ports: Vec<u16> = if e.ports.is_empty() {
        targets.iter().copied().collect()
    } else {
        let mut ports = Vec::new();
        for (k, p) in e.ports.iter().enumerate() {
            if !targets.contains(&p.0) {
                let list: Vec<String> = targets.iter().map(u16::to_string).collect();
                return Err(err(
                    at.key("ports").index(k),
                    format!(
                        "port {} is not a target port of this service (target ports: {})",
                        p.0,
                        list.join(", ")
                    ),
                ));
            }
            ports.push(p.0);
        }
        ports
    };
    let mut out = Vec::new();
    for address in &addresses {
        for port in &ports {
            out.push(Endpoint {
                address: *address,
                port: *port,
                identity: identity.clone(),
                labels: e.labels.clone(),
            });
        }
    }
    Ok(out)
}
