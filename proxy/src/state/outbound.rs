//! The outbound side of the state: original destination → [`Destination`]. A
//! service VIP:port, or one of its endpoints' address:port, leads to the service
//! port's routes → each route's policy and backends → endpoints; an endpoint the view
//! lists under no service port is reached over mesh TLS as bytes; an endpoint listed
//! with an identity this proxy cannot verify is refused (never sent in plaintext).
//!
//! Compiling reuses the previous table's stateful parts wherever the view still has
//! them: endpoints (latency estimate, connection pools) by address and identity,
//! backends (balancer, outlier detector) by service, port and subset, and rate
//! limiters and retry budgets by route name while their settings are unchanged. So a
//! view update changes routing at once without resetting what the proxy learned, and
//! requests in flight finish on the state they started with.
//!
//! A connection aimed at one endpoint's own address keeps the routes of its service
//! (timeouts, retries, limits, edits) but always goes to that endpoint: the
//! application asked for that pod.
//!
//! Services come from the view and, with on-demand discovery, from what the agent
//! answered for destinations this workload used ([`Resolved`]); those carry a
//! [`Usage`] mark that every lookup of one of their destinations refreshes, and
//! destinations the agent placed outside the mesh compile to
//! [`Destination::Outside`], so they pass through without asking again.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::request::Parts;
use pillion_api::gateway::GatewayHost;
use pillion_api::policy::{RateLimit, RetryPolicy, Route, WeightedBackend};
use pillion_api::view::{Endpoint, Protocol, Service, ServicePort, View};
use pillion_identity::tls::server_name_for;
use pillion_identity::SpiffeId;

use crate::app::settings::{MeshProtocol, Settings};
use crate::http::errors::HttpError;
use crate::policy::balance::p2c::Balancer;
use crate::policy::balance::peak_ewma::PeakEwma;
use crate::policy::cache::RouteCache;
use crate::policy::fault::Faults;
use crate::policy::headers::{HeaderEditor, PathRewriter};
use crate::policy::mirror::MirrorShare;
use crate::policy::rate_limit::RateLimiter;
use crate::policy::retry::RetryBudget;
use crate::policy::route_match::RouteTable;
use crate::policy::split::{labels_match, Split};
use crate::policy::transform::Transforms;
use crate::state::resolved::{Resolved, Usage};
use crate::telemetry::metrics::http::{no_peer, HttpMetrics, RouteMetrics};
use crate::telemetry::metrics::Direction;
use crate::upstream::connect::{MeshTarget, UpstreamConnector};
use crate::upstream::endpoint::{Backend, EndpointState};
use crate::upstream::Upstream;
use http::uri::{Authority, PathAndQuery};
use pillion_api::aggregate::{Aggregate, OnPartial};

/// Name of the implicit route that takes requests no route matches.
pub(crate) const DEFAULT_ROUTE: &str = "default";
/// The namespace in a gateway host's metric label (`gateway/<hostname>`).
pub(crate) const GATEWAY_NAMESPACE: &str = "gateway";
/// The port number a gateway host's routes are compiled under (labels, keys).
const GATEWAY_PORT: u16 = 443;

/// How a connection to one original destination is served.
#[derive(Clone, Debug)]
pub(crate) enum Destination {
    /// A service port, or one of its endpoints: detection, routes, balancing.
    Service(Target),
    /// A meshed endpoint under no service port: mesh TLS, bytes only.
    Endpoint(Arc<EndpointState>),
    /// Listed with an identity this proxy cannot verify: refused.
    Refused,
    /// The agent said no service has this address: plain TCP, as sent.
    Outside,
}

/// A destination and, if discovery learned it, the mark its uses refresh.
#[derive(Debug)]
struct Entry {
    destination: Destination,
    used: Option<Arc<Usage>>,
}

/// A service port as one original destination reaches it.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    /// The service port's routes.
    pub port: Arc<PortRoutes>,
    /// Set for a connection aimed at one endpoint: every try goes there.
    pub pinned: Option<Arc<Backend>>,
}

/// One service port's routes, compiled.
#[derive(Debug)]
pub(crate) struct PortRoutes {
    /// `namespace/name` of the service.
    pub service: Arc<str>,
    /// The port applications connect to.
    pub port: u16,
    /// What the port speaks (`auto` means detect).
    pub protocol: Protocol,
    /// `None` when the port has no routes (or they failed to compile).
    table: Option<RouteTable>,
    routes: Box<[RouteState]>,
    default: RouteState,
    /// Every endpoint of the port (the default route's one backend).
    all: Arc<Backend>,
    /// A gateway host's: a request no declared route matches is 404, since the
    /// host has no endpoints of its own to send it to.
    only_declared: bool,
}

/// One route's policy and per-route state.
#[derive(Debug)]
pub(crate) struct RouteState {
    /// The route's name (metrics, rate-limit headers).
    pub name: Arc<str>,
    /// Weighted choice among `backends`.
    pub split: Split,
    /// The route's backends, by the split's indices.
    pub backends: Box<[Arc<Backend>]>,
    /// Deadline of the whole request, retries included.
    pub timeout: Option<Duration>,
    /// Deadline of each try.
    pub per_try_timeout: Option<Duration>,
    /// When to retry, and the budget that caps it.
    pub retry: Option<(RetryPolicy, Arc<RetryBudget>)>,
    /// Client-side rate limit.
    pub limiter: Option<Arc<RateLimiter>>,
    /// Edits of forwarded requests.
    pub request_edits: HeaderEditor,
    /// Edits of returned responses.
    pub response_edits: HeaderEditor,
    /// Prefix rewrite.
    pub rewrite: Option<PathRewriter>,
    /// Delays and aborts injected into the route's requests.
    pub faults: Option<Faults>,
    /// Where copies of a share of the route's requests go.
    pub mirror: Option<(Arc<Backend>, MirrorShare)>,
    /// Answers kept for reuse (boxed: most routes have none).
    pub cache: Option<Box<RouteCache>>,
    /// Rewrites of the bodies going each way (boxed: most routes have none).
    pub transform: Option<Box<Transforms>>,
    /// The calls whose JSON makes the answer, for an aggregation route.
    pub aggregate: Option<Box<Aggregation>>,
    /// The route's metric handles.
    pub metrics: RouteMetrics,
}

/// An aggregation route's calls, compiled.
#[derive(Debug)]
pub(crate) struct Aggregation {
    /// The calls, in the order written.
    pub parts: Box<[PartState]>,
    /// What a failed part does to the answer.
    pub on_partial: OnPartial,
    /// Largest answer read from each part.
    pub max_part_bytes: u64,
}

/// One call of an aggregation: a route of its own (its backend, timeout, retries
/// and metrics) with the request it sends.
#[derive(Debug)]
pub(crate) struct PartState {
    /// Its member in the answer.
    pub name: Arc<str>,
    /// Where it goes and how it is tried.
    pub route: RouteState,
    /// The path and query it asks for.
    pub path: PathAndQuery,
    /// The authority (and `Host`) it is sent with: `name.namespace[:port]`.
    pub authority: Authority,
}

impl RouteState {
    /// A route to one backend with no policy of its own: a port's default route,
    /// or (with a timeout and retries) an aggregation's part.
    fn plain(name: Arc<str>, backend: Arc<Backend>, metrics: RouteMetrics) -> RouteState {
        RouteState {
            metrics,
            name,
            split: Split::single(),
            backends: Box::new([backend]),
            timeout: None,
            per_try_timeout: None,
            retry: None,
            limiter: None,
            request_edits: HeaderEditor::default(),
            response_edits: HeaderEditor::default(),
            rewrite: None,
            faults: None,
            mirror: None,
            cache: None,
            transform: None,
            aggregate: None,
        }
    }
}

impl Target {
    /// The endpoint for an opaque (non-HTTP) connection: the pinned one, or one of
    /// the service port's endpoints by load.
    pub(crate) fn opaque_endpoint(&self, now: Instant) -> Result<Arc<EndpointState>, HttpError> {
        let backend = match &self.pinned {
            Some(pinned) => pinned,
            None => self.port.default_backend(),
        };
        backend
            .pick(now, rand::random(), None)
            .map(|(_, endpoint)| Arc::clone(endpoint))
    }
}

impl PortRoutes {
    /// The backend of every endpoint of the port (what the default route uses).
    pub(crate) fn default_backend(&self) -> &Arc<Backend> {
        &self.all
    }

    /// The route for a request and the prefix its path matched (for a rewrite);
    /// requests no route matches take the implicit default route (every endpoint,
    /// no policy).
    pub(crate) fn select(&self, parts: &Parts) -> (&RouteState, Option<&str>) {
        let selected = self.table.as_ref().and_then(|t| t.select_parts(parts));
        match selected {
            Some(selection) => match self.routes.get(selection.route) {
                Some(route) => (route, selection.matched_prefix),
                None => (&self.default, None),
            },
            None => (&self.default, None),
        }
    }

    /// Whether requests no declared route matches are refused (a gateway host's).
    pub(crate) fn only_declared_routes(&self) -> bool {
        self.only_declared
    }

    /// Whether `route` is the implicit default route (no declared route matched).
    pub(crate) fn is_default(&self, route: &RouteState) -> bool {
        std::ptr::eq(route, &self.default)
    }

    /// `namespace/name:port`, for errors and logs.
    pub(crate) fn label(&self) -> String {
        format!("{}:{}", self.service, self.port)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct EndpointKey {
    addr: SocketAddr,
    identity: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct BackendKey {
    service: String,
    port: u16,
    subset: BTreeMap<String, String>,
    pinned: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RouteKey {
    service: String,
    port: u16,
    route: String,
}

/// The compiled outbound view.
#[derive(Debug, Default)]
pub(crate) struct OutboundTable {
    targets: HashMap<SocketAddr, Entry>,
    endpoints: HashMap<EndpointKey, Arc<EndpointState>>,
    backends: HashMap<BackendKey, Arc<Backend>>,
    limiters: HashMap<RouteKey, (RateLimit, Arc<RateLimiter>)>,
    budgets: HashMap<RouteKey, (pillion_api::policy::RetryBudget, Arc<RetryBudget>)>,
    /// A gateway's hosts' routes, in the order of the view's hosts.
    gateway: Vec<Arc<PortRoutes>>,
    /// The token introspection endpoints' service ports, by `namespace/name` and
    /// port, with the address their calls are recorded as sent to.
    introspection: HashMap<(Box<str>, u16), (Target, SocketAddr)>,
}

impl OutboundTable {
    /// Where a connection to `orig_dst` goes (a use of it); `None` for destinations
    /// the state does not know: plain TCP with a full view, a question for the agent
    /// with on-demand discovery.
    pub(crate) fn destination(&self, orig_dst: SocketAddr) -> Option<&Destination> {
        let entry = self.targets.get(&SocketAddr::new(
            orig_dst.ip().to_canonical(),
            orig_dst.port(),
        ))?;
        if let Some(used) = &entry.used {
            used.touch();
        }
        Some(&entry.destination)
    }

    /// The service port a connection to `orig_dst` reaches, if it is one.
    pub(crate) fn target(&self, orig_dst: SocketAddr) -> Option<&Target> {
        match self.destination(orig_dst) {
            Some(Destination::Service(target)) => Some(target),
            _ => None,
        }
    }

    /// The routes of the view's gateway hosts, in their order.
    pub(crate) fn gateway_routes(&self) -> &[Arc<PortRoutes>] {
        &self.gateway
    }

    /// The service port a token introspection endpoint names, and the address its
    /// calls are recorded as sent to.
    pub(crate) fn introspection(
        &self,
        service_port: &(Box<str>, u16),
    ) -> Option<&(Target, SocketAddr)> {
        self.introspection.get(service_port)
    }

    /// How many destinations the table knows.
    pub(crate) fn len(&self) -> usize {
        self.targets.len()
    }

    /// Compiles the services of `view` and then those `resolved`, reusing
    /// `previous`'s state (see the module docs); the first listing of an address wins.
    pub(crate) fn compile(
        view: &View,
        resolved: &Resolved,
        previous: &OutboundTable,
        settings: &Settings,
        metrics: &HttpMetrics,
        now: Instant,
    ) -> OutboundTable {
        let services: Vec<(&Service, Option<&Arc<Usage>>)> = (view.services.iter())
            .map(|s| (s, None))
            .chain(resolved.services.iter().map(|(s, u)| (&**s, Some(u))))
            .collect();
        let mut table = OutboundTable::default();
        let mut compiler = Compiler {
            services: &services,
            used: None,
            previous,
            settings,
            metrics,
            now,
            table: &mut table,
        };
        for (service, used) in &services {
            compiler.used = used.cloned();
            for port in &service.ports {
                compiler.port(service, port);
            }
        }
        for (service, used) in &services {
            compiler.used = used.cloned();
            compiler.l4_endpoints(service);
        }
        compiler.used = None;
        let hosts = view.gateway.iter().flat_map(|g| &g.hosts);
        let gateway = hosts.map(|host| compiler.gateway_host(host)).collect();
        for x in view.introspections() {
            compiler.introspection(&x.service, x.port);
        }
        table.gateway = gateway;
        for (addr, used) in &resolved.outside {
            let addr = SocketAddr::new(canonical(addr.ip()), addr.port());
            table.targets.entry(addr).or_insert_with(|| Entry {
                destination: Destination::Outside,
                used: Some(Arc::clone(used)),
            });
        }
        table
    }
}

struct Compiler<'a> {
    /// Every service compiled, for backends that name another service.
    services: &'a [(&'a Service, Option<&'a Arc<Usage>>)],
    /// The usage mark of the service being compiled.
    used: Option<Arc<Usage>>,
    previous: &'a OutboundTable,
    settings: &'a Settings,
    metrics: &'a HttpMetrics,
    now: Instant,
    table: &'a mut OutboundTable,
}

fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// A stable digest of a transform's policy, for the keys of what it produced.
fn fingerprint(transform: &pillion_api::transform::Transform) -> u64 {
    let text = serde_json::to_vec(transform).unwrap_or_default();
    let digest = ring::digest::digest(&ring::digest::SHA256, &text);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    u64::from_be_bytes(first)
}

fn service_name(service: &Service) -> String {
    format!("{}/{}", service.namespace, service.name)
}

impl Compiler<'_> {
    /// A service port's routes, reached at its VIPs and at each of its endpoints.
    fn port(&mut self, service: &Service, port: &ServicePort) {
        let name = service_name(service);
        let endpoints = self.endpoints_of(service, port);
        let compiled = self.port_routes(service, port, &endpoints, false);
        for vip in &service.addresses {
            let addr = SocketAddr::new(canonical(*vip), port.port);
            let used = self.used.clone();
            self.table.targets.entry(addr).or_insert_with(|| Entry {
                destination: Destination::Service(Target {
                    port: Arc::clone(&compiled),
                    pinned: None,
                }),
                used,
            });
        }
        for endpoint in &endpoints {
            let pinned = self.backend(
                &name,
                port,
                &BTreeMap::new(),
                Some(endpoint.addr),
                std::slice::from_ref(endpoint),
            );
            let used = self.used.clone();
            self.table
                .targets
                .entry(endpoint.addr)
                .or_insert_with(|| Entry {
                    destination: Destination::Service(Target {
                        port: Arc::clone(&compiled),
                        pinned: Some(pinned),
                    }),
                    used,
                });
        }
    }

    /// A token introspection endpoint's service port: the target its address reaches
    /// (its routes, shared), or, for a service without one, its routes compiled here.
    fn introspection(&mut self, wanted: &str, port: u16) {
        let key = (Box::from(wanted), port);
        if self.table.introspection.contains_key(&key) {
            return;
        }
        let services = self.services;
        let found = services.iter().find_map(|&(s, _)| {
            (service_name(s) == wanted)
                .then(|| s.ports.iter().find(|p| p.port == port).map(|p| (s, p)))
                .flatten()
        });
        let Some((service, service_port)) = found else {
            tracing::warn!(service = %wanted, port, "introspection service not in the view; opaque tokens get 503");
            return;
        };
        let by_address = (service.addresses.iter())
            .map(|vip| SocketAddr::new(canonical(*vip), port))
            .find_map(|addr| match self.table.targets.get(&addr) {
                Some(Entry {
                    destination: Destination::Service(target),
                    ..
                }) => Some((target.clone(), addr)),
                _ => None,
            });
        let found = match by_address {
            Some(found) => found,
            None => {
                let endpoints = self.endpoints_of(service, service_port);
                let addr =
                    (endpoints.first()).map_or(SocketAddr::from(([0, 0, 0, 0], port)), |e| e.addr);
                let routes = self.port_routes(service, service_port, &endpoints, false);
                let target = Target {
                    port: routes,
                    pinned: None,
                };
                (target, addr)
            }
        };
        self.table.introspection.insert(key, found);
    }

    /// The routes of a service port over its `endpoints` (a gateway host's are a port
    /// of a service of its own, without endpoints).
    fn port_routes(
        &mut self,
        service: &Service,
        port: &ServicePort,
        endpoints: &[Arc<EndpointState>],
        only_declared: bool,
    ) -> Arc<PortRoutes> {
        let name = service_name(service);
        let service_label: Arc<str> = Arc::from(name.as_str());
        let mut routes = Vec::new();
        let mut specs = Vec::new();
        for route in &port.routes {
            match self.route(service, port, &service_label, endpoints, route) {
                Some(state) => {
                    routes.push(state);
                    specs.push(route);
                }
                None => continue,
            }
        }
        let table = if specs.is_empty() {
            None
        } else {
            match RouteTable::new(specs) {
                Ok(table) => Some(table),
                Err(err) => {
                    tracing::warn!(service = %name, port = port.port, error = %err,
                        "routes of the port cannot be compiled; only the default route applies");
                    routes.clear();
                    None
                }
            }
        };
        let all = self.backend(&name, port, &BTreeMap::new(), None, endpoints);
        let default_name: Arc<str> = Arc::from(DEFAULT_ROUTE);
        let metrics = (self.metrics).route(Direction::Outbound, &service_label, &default_name);
        let default = RouteState::plain(default_name, Arc::clone(&all), metrics);
        Arc::new(PortRoutes {
            service: service_label,
            port: port.port,
            protocol: port.protocol,
            table,
            routes: routes.into_boxed_slice(),
            default,
            all,
            only_declared,
        })
    }

    /// A gateway host's routes: those of a port of a service of its own
    /// (`gateway/<first hostname>`, no addresses, no endpoints) whose backends all
    /// name mesh services.
    fn gateway_host(&mut self, host: &GatewayHost) -> Arc<PortRoutes> {
        let port = ServicePort {
            port: GATEWAY_PORT,
            protocol: Protocol::Auto,
            target_port: None,
            routes: host.routes.clone(),
            circuit_breaker: None,
        };
        let service = Service {
            name: host.hostnames.first().cloned().unwrap_or_default(),
            namespace: GATEWAY_NAMESPACE.to_string(),
            addresses: Vec::new(),
            ports: vec![port],
            endpoints: Vec::new(),
        };
        self.port_routes(&service, &service.ports[0], &[], true)
    }

    /// Endpoints no service port covers: meshed ones are reached as bytes over mesh
    /// TLS, ones whose identity cannot be verified are refused, plain ones pass
    /// through (they are left out). The first listing of an address wins.
    fn l4_endpoints(&mut self, service: &Service) {
        for e in &service.endpoints {
            let addr = SocketAddr::new(canonical(e.address), e.port);
            if e.identity.is_none() || self.table.targets.contains_key(&addr) {
                continue;
            }
            let destination = match self.endpoint(service, None, e) {
                Some(endpoint) => Destination::Endpoint(endpoint),
                None => Destination::Refused,
            };
            let used = self.used.clone();
            self.table.targets.insert(addr, Entry { destination, used });
        }
    }

    /// The reachable endpoints of a service port, with their view labels.
    fn endpoints_of(&mut self, service: &Service, port: &ServicePort) -> Vec<Arc<EndpointState>> {
        service
            .endpoints_for(port)
            .filter_map(|e| self.endpoint(service, Some(port), e))
            .collect()
    }

    /// The endpoint's state, carried over from the previous table when possible,
    /// with its service port's connection bounds (none for bytes to an endpoint).
    fn endpoint(
        &mut self,
        service: &Service,
        port: Option<&ServicePort>,
        e: &Endpoint,
    ) -> Option<Arc<EndpointState>> {
        let addr = SocketAddr::new(canonical(e.address), e.port);
        let key = EndpointKey {
            addr,
            identity: e.identity.clone(),
        };
        let bounds = port.map(|p| p.circuit_breaker.unwrap_or_default());
        if let Some(found) = self.table.endpoints.get(&key) {
            // Listed by another port too: the tighter of their bounds holds.
            if let Some(b) = bounds {
                found
                    .upstream
                    .tighten_connection_limits(b.max_connections, b.max_pending_requests);
            }
            return Some(Arc::clone(found));
        }
        let state = match self.previous.endpoints.get(&key) {
            Some(old) => Arc::clone(old),
            None => {
                let identity: Option<Arc<str>> = e.identity.as_deref().map(Arc::from);
                let mesh = match &identity {
                    None => None,
                    Some(id) => Some(self.mesh_target(service, addr, id)?),
                };
                Arc::new(EndpointState {
                    addr,
                    peer_label: identity.clone().unwrap_or_else(no_peer),
                    identity,
                    ewma: Arc::new(PeakEwma::new(self.now)),
                    upstream: Upstream::new(UpstreamConnector::new(
                        addr,
                        mesh,
                        self.settings.connect_timeout,
                    ))
                    .mesh_http2(self.settings.mesh_protocol == MeshProtocol::Http2),
                })
            }
        };
        // Carried over with the endpoint, so connections held keep counting.
        if let Some(bounds) = bounds {
            state
                .upstream
                .set_connection_limits(bounds.max_connections, bounds.max_pending_requests);
        }
        self.table.endpoints.insert(key, Arc::clone(&state));
        Some(state)
    }

    /// Mesh TLS towards an endpoint; `None` (endpoint left out) when it cannot be
    /// reached safely: never send meshed traffic in plaintext.
    fn mesh_target(
        &self,
        service: &Service,
        addr: SocketAddr,
        id: &Arc<str>,
    ) -> Option<MeshTarget> {
        let Some(config) = &self.settings.mesh_client else {
            tracing::warn!(service = %service.name, endpoint = %addr,
                "endpoint is meshed but this proxy has no mesh TLS; leaving it out");
            return None;
        };
        let name = id
            .parse::<SpiffeId>()
            .map_err(|e| e.to_string())
            .and_then(|id| server_name_for(&id).map_err(|e| e.to_string()));
        match name {
            Ok(name) => Some(MeshTarget {
                config: config.clone(),
                name,
                identity: Arc::clone(id),
                metrics: self.settings.mesh_metrics.clone(),
            }),
            Err(error) => {
                tracing::warn!(service = %service.name, endpoint = %addr, identity = %id, %error,
                    "endpoint identity unusable; leaving it out");
                None
            }
        }
    }

    /// The backend with this key, carried over from the previous table when possible.
    fn backend(
        &mut self,
        service: &str,
        service_port: &ServicePort,
        subset: &BTreeMap<String, String>,
        pinned: Option<SocketAddr>,
        endpoints: &[Arc<EndpointState>],
    ) -> Arc<Backend> {
        let port = service_port.port;
        let key = BackendKey {
            service: service.to_string(),
            port,
            subset: subset.clone(),
            pinned,
        };
        if let Some(found) = self.table.backends.get(&key) {
            return Arc::clone(found);
        }
        let max_requests = service_port
            .circuit_breaker
            .unwrap_or_default()
            .max_requests;
        let backend = match self.previous.backends.get(&key) {
            Some(old) if old.same_endpoints(endpoints) => Arc::clone(old),
            Some(old) => Arc::new(old.changed(endpoints.to_vec(), self.balancer())),
            None => {
                let mut name = format!("{service}:{port}");
                if !subset.is_empty() {
                    let labels: Vec<String> =
                        subset.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    name.push_str(&format!("{{{}}}", labels.join(",")));
                }
                if let Some(addr) = pinned {
                    name.push_str(&format!(" at {addr}"));
                }
                let service_label: Arc<str> = Arc::from(service);
                Arc::new(Backend::new(
                    Arc::from(name.as_str()),
                    endpoints.to_vec(),
                    self.settings.outlier,
                    self.balancer(),
                    self.metrics.ejections(Direction::Outbound, &service_label),
                    self.now,
                ))
            }
        };
        // Carried over with the backend, so requests in flight keep counting.
        backend.breaker().set_max(max_requests);
        self.table.backends.insert(key, Arc::clone(&backend));
        backend
    }

    fn balancer(&self) -> Balancer {
        Balancer::new(self.settings.strategy)
    }

    /// One route, or `None` (logged) when the view sent one that cannot be compiled.
    fn route(
        &mut self,
        service: &Service,
        port: &ServicePort,
        service_label: &Arc<str>,
        all: &[Arc<EndpointState>],
        route: &Route,
    ) -> Option<RouteState> {
        let name = service_name(service);
        let fail = |what: &str, error: &dyn std::fmt::Display| {
            tracing::warn!(service = %name, port = port.port, route = %route.name, %error,
                "route {what} cannot be compiled; the route is left out");
        };
        let split = match Split::from_backends(&route.backends) {
            Ok(split) => split,
            Err(e) => {
                fail("backends", &e);
                return None;
            }
        };
        let request_edits = HeaderEditor::new(&route.request_headers)
            .map_err(|e| fail("request_headers", &e))
            .ok()?;
        let response_edits = HeaderEditor::new(&route.response_headers)
            .map_err(|e| fail("response_headers", &e))
            .ok()?;
        let rewrite = match &route.rewrite {
            Some(r) => Some(PathRewriter::new(r).map_err(|e| fail("rewrite", &e)).ok()?),
            None => None,
        };
        let key = RouteKey {
            service: name.clone(),
            port: port.port,
            route: route.name.clone(),
        };
        let limiter = match &route.rate_limit {
            None => None,
            Some(limit) => Some(
                self.limiter(&key, &route.name, limit)
                    .map_err(|e| fail("rate_limit", &e))
                    .ok()?,
            ),
        };
        let retry = (route.retry.as_ref()).map(|policy| self.retry(&key, policy));
        let backends = if route.backends.is_empty() {
            vec![self.backend(&name, port, &BTreeMap::new(), None, all)]
        } else {
            route
                .backends
                .iter()
                .map(|b| self.route_backend(service, port, b))
                .collect()
        };
        let mirror = route.mirror.as_ref().map(|m| {
            (
                self.route_backend(service, port, &m.backend),
                MirrorShare::new(m.percent),
            )
        });
        // Entries kept under another transform (or none) are never answered: the
        // transform's fingerprint is part of every key.
        let cache_route = match &route.transform {
            None => route.name.clone(),
            Some(t) => format!("{}#{:016x}", route.name, fingerprint(t)),
        };
        let cache = match &route.cache {
            None => None,
            Some(policy) => Some(Box::new(
                RouteCache::new(
                    policy,
                    &name,
                    port.port,
                    &cache_route,
                    Arc::clone(&self.settings.responses),
                )
                .map_err(|e| fail("cache", &e))
                .ok()?,
            )),
        };
        let transform = match &route.transform {
            None => None,
            Some(policy) => Some(Box::new(Transforms::compile(policy).or_else(|| {
                fail("transform", &"a JSON Pointer does not parse");
                None
            })?)),
        };
        let aggregate = match &route.aggregate {
            None => None,
            Some(aggregate) => Some(Box::new(
                self.aggregation(service, port, &route.name, aggregate)
                    .map_err(|e| fail("aggregate", &e))
                    .ok()?,
            )),
        };
        let route_name: Arc<str> = Arc::from(route.name.as_str());
        Some(RouteState {
            metrics: self
                .metrics
                .route(Direction::Outbound, service_label, &route_name),
            name: route_name,
            split,
            backends: backends.into_boxed_slice(),
            timeout: route.timeout,
            per_try_timeout: route.per_try_timeout,
            retry,
            limiter,
            request_edits,
            response_edits,
            rewrite,
            faults: route.fault.as_ref().map(Faults::new),
            mirror,
            cache,
            transform,
            aggregate,
        })
    }

    /// A weighted backend: a label subset of this port's endpoints, or of another
    /// service's endpoints (`name` in this service's namespace or `namespace/name`)
    /// on the backend's port, by default the same port number.
    fn route_backend(
        &mut self,
        service: &Service,
        port: &ServicePort,
        backend: &WeightedBackend,
    ) -> Arc<Backend> {
        let services = self.services;
        let (owner, owner_port) = match &backend.service {
            None => (service, port),
            Some(other) => {
                let (namespace, name) =
                    (other.split_once('/')).unwrap_or((service.namespace.as_str(), other.as_str()));
                let wanted = backend.port.unwrap_or(port.port);
                let found = services.iter().find_map(|&(s, _)| {
                    (s.namespace == namespace && s.name == name)
                        .then(|| s.ports.iter().find(|p| p.port == wanted).map(|p| (s, p)))
                        .flatten()
                });
                match found {
                    Some(found) => found,
                    None => {
                        tracing::warn!(service = %service.name, backend = %other,
                            "backend service not in the view (or lacks the port); it has no endpoints");
                        let name = format!("{namespace}/{name}");
                        return self.backend(&name, port, &backend.subset, None, &[]);
                    }
                }
            }
        };
        let endpoints: Vec<Arc<EndpointState>> = owner
            .endpoints_for(owner_port)
            .filter(|e| labels_match(&backend.subset, &e.labels))
            .filter_map(|e| self.endpoint(owner, Some(owner_port), e))
            .collect();
        let name = service_name(owner);
        self.backend(&name, owner_port, &backend.subset, None, &endpoints)
    }

    /// An aggregation's parts: each a route of one backend with the part's timeout,
    /// retries (and budget, kept by `route/part`) and metrics.
    fn aggregation(
        &mut self,
        service: &Service,
        port: &ServicePort,
        route: &str,
        aggregate: &Aggregate,
    ) -> Result<Aggregation, &'static str> {
        let mut parts = Vec::with_capacity(aggregate.parts.len());
        for part in &aggregate.parts {
            let (namespace, name) = match &part.backend.service {
                Some(other) => other
                    .split_once('/')
                    .unwrap_or((service.namespace.as_str(), other.as_str())),
                None => (service.namespace.as_str(), service.name.as_str()),
            };
            // A backend's port applies to another service only (as in `route_backend`).
            let part_port = match &part.backend.service {
                Some(_) => part.backend.port.unwrap_or(port.port),
                None => port.port,
            };
            let authority = match part_port {
                80 => format!("{name}.{namespace}"),
                other => format!("{name}.{namespace}:{other}"),
            };
            let authority = Authority::try_from(authority)
                .map_err(|_| "a part's service is not a host name")?;
            let path = PathAndQuery::try_from(part.path.as_str())
                .map_err(|_| "a part's path is not a valid target")?;
            let key = RouteKey {
                service: service_name(service),
                port: port.port,
                route: format!("{route}/{}", part.name),
            };
            let retry = (part.retry.as_ref()).map(|policy| self.retry(&key, policy));
            let backend = self.route_backend(service, port, &part.backend);
            let part_service: Arc<str> = Arc::from(format!("{namespace}/{name}"));
            let part_route: Arc<str> = Arc::from(key.route.as_str());
            let metrics = (self.metrics).route(Direction::Outbound, &part_service, &part_route);
            parts.push(PartState {
                name: Arc::from(part.name.as_str()),
                route: RouteState {
                    timeout: part.timeout,
                    retry,
                    ..RouteState::plain(part_route, backend, metrics)
                },
                path,
                authority,
            });
        }
        Ok(Aggregation {
            parts: parts.into_boxed_slice(),
            on_partial: aggregate.on_partial,
            max_part_bytes: aggregate.max_part_bytes,
        })
    }

    /// A retry policy with its budget, carried over (by route key) while the
    /// budget's configuration stays the same.
    fn retry(
        &mut self,
        key: &RouteKey,
        policy: &pillion_api::policy::RetryPolicy,
    ) -> (pillion_api::policy::RetryPolicy, Arc<RetryBudget>) {
        let config = policy.budget_or_default();
        let budget = match self.previous.budgets.get(key) {
            Some((old, budget)) if *old == config => Arc::clone(budget),
            _ => Arc::new(RetryBudget::new(&config, self.now)),
        };
        self.table
            .budgets
            .insert(key.clone(), (config, Arc::clone(&budget)));
        (policy.clone(), budget)
    }

    fn limiter(
        &mut self,
        key: &RouteKey,
        name: &str,
        limit: &RateLimit,
    ) -> Result<Arc<RateLimiter>, crate::policy::rate_limit::RateLimitError> {
        let limiter = match self.previous.limiters.get(key) {
            Some((old, limiter)) if old == limit => Arc::clone(limiter),
            _ => Arc::new(RateLimiter::new(name, limit, self.now)?),
        };
        self.table
            .limiters
            .insert(key.clone(), (limit.clone(), Arc::clone(&limiter)));
        Ok(limiter)
    }
}
