//! The validated content of a source: what the server answers from. A `Catalog` is
//! a persistent value: a change makes a new one that shares every entry and index
//! node it did not touch, so publishing costs what changed, not the mesh, and every
//! stream may hold the version it read for as long as it likes.

use super::cow_map::CowMap;
use crate::token::TokenHash;
use imbl::OrdMap;
use pillion_api::view::{InboundPolicy, Service};
use pillion_identity::SpiffeId;
use smallvec::SmallVec;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// Where an entry comes from: its part of the source (a file, or one translation)
/// and its index there. Entries are ordered by it, and where two services claim an
/// address the first in this order has it, as a proxy compiling every service would.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Origin {
    /// The part: a file's name in a source directory, or the one file.
    pub part: Arc<str>,
    /// The entry's index within its list in that part.
    pub index: u32,
}

impl Origin {
    /// The entry at `index` of `part`.
    pub fn new(part: &Arc<str>, index: usize) -> Self {
        Self {
            part: part.clone(),
            index: u32::try_from(index).unwrap_or(u32::MAX),
        }
    }

    /// The first origin of `part` and the first after it: the range its entries fill.
    fn span(part: &str) -> std::ops::Range<Origin> {
        let part: Arc<str> = Arc::from(part);
        let next: Arc<str> = Arc::from(format!("{part}\0"));
        Origin { part, index: 0 }..Origin {
            part: next,
            index: 0,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] of {}", self.index, self.part)
    }
}

/// The entries claiming one key, in source order; the first wins. Nearly every key
/// has one, kept inline.
type Owners = SmallVec<[Origin; 1]>;

/// Who claims a socket address.
#[derive(Debug, Clone, Default)]
struct SocketOwners {
    /// Services with it as a VIP:port or an endpoint of a service port.
    port: Owners,
    /// Services with it as an endpoint with an identity under no service port
    /// (asked only when `port` has none).
    identified: Owners,
}

/// Who claims an IP address.
#[derive(Debug, Clone, Default)]
struct IpOwners {
    /// Services with it as an address (VIP).
    vip: Owners,
    /// Services with an endpoint at it: a workload's own services.
    endpoint: Owners,
    /// Workloads with it as a pod address.
    pod: Owners,
}
/// A namespace and a name.
type Named = (String, String);

/// Everything the agent knows, checked and resolved against the trust domain.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    workloads: OrdMap<Origin, Arc<Workload>>,
    services: OrdMap<Origin, Arc<Service>>,
    by_token: CowMap<TokenHash, Owners>,
    by_identity: CowMap<SpiffeId, Owners>,
    workload_names: CowMap<Named, Owners>,
    service_names: CowMap<Named, Owners>,
    by_socket: CowMap<SocketAddr, SocketOwners>,
    by_ip: CowMap<IpAddr, IpOwners>,
}

/// One workload with its resolved identity.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// Namespace of the workload.
    pub namespace: String,
    /// Name of the workload within its namespace.
    pub name: String,
    /// The SPIFFE id its certificates carry.
    pub identity: SpiffeId,
    /// Its pod addresses.
    pub addresses: Vec<IpAddr>,
    /// Who may connect to it.
    pub inbound: InboundPolicy,
    /// What it serves at the edge, if it is a gateway.
    pub gateway: Option<pillion_api::gateway::GatewayPolicy>,
    /// Hash of its bearer token, if it has one.
    pub token: Option<TokenHash>,
}

impl Workload {
    /// Its introspection endpoints (inbound ports', then gateway hosts'), each with
    /// where it is written below the workload.
    pub fn introspections(
        &self,
    ) -> impl Iterator<Item = (String, &pillion_api::jwt::Introspection)> + '_ {
        let ports = (self.inbound.ports.iter()).filter_map(|(port, p)| {
            let x = p.jwt.as_ref()?.introspection.as_ref()?;
            Some((format!("inbound.ports.{port}.jwt.introspection"), x))
        });
        let hosts = (self.gateway.iter().flat_map(|g| g.hosts.iter().enumerate())).filter_map(
            |(h, host)| {
                let x = host.jwt.as_ref()?.introspection.as_ref()?;
                Some((format!("gateway.hosts[{h}].jwt.introspection"), x))
            },
        );
        ports.chain(hosts)
    }
}

/// A catalog with the version it was published under, as the reloader hands it out.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Grows by one with every published change.
    pub version: u64,
    /// The catalog of that version.
    pub catalog: Arc<Catalog>,
    /// When it was published: how long a change takes to reach each proxy is
    /// measured from here.
    pub published: std::time::Instant,
}

impl Catalog {
    /// A catalog of one part holding these entries, in this order.
    pub fn of(part: &str, workloads: Vec<Workload>, services: Vec<Service>) -> Self {
        let mut catalog = Catalog::default();
        catalog.replace_part(part, workloads, services);
        catalog
    }

    /// Makes these entries, in this order, the whole of `part`. Entries equal to
    /// the ones already at their place are left alone, indexes and all, so this
    /// costs what changed.
    pub fn replace_part(&mut self, part: &str, workloads: Vec<Workload>, services: Vec<Service>) {
        let span = Origin::span(part);
        let old: Vec<(Origin, Arc<Workload>)> = (self.workloads.range(span.clone()))
            .map(|(o, w)| (o.clone(), w.clone()))
            .collect();
        let part: Arc<str> = Arc::from(part);
        let changed = changes(old, workloads, |at| Origin::new(&part, at));
        for (at, _) in &changed.gone {
            self.remove_workload(at);
        }
        for (at, workload) in changed.new {
            self.insert_workload(at, workload);
        }
        let old: Vec<(Origin, Arc<Service>)> = (self.services.range(span))
            .map(|(o, s)| (o.clone(), s.clone()))
            .collect();
        let changed = changes(old, services, |at| Origin::new(&part, at));
        for (at, _) in &changed.gone {
            self.remove_service(at);
        }
        for (at, service) in changed.new {
            self.insert_service(at, service);
        }
    }

    /// Adds a workload (its origin must be new to the catalog).
    pub fn insert_workload(&mut self, at: Origin, workload: Workload) {
        if let Some(hash) = workload.token {
            claim(&mut self.by_token, hash, &at, whole);
        }
        claim(&mut self.by_identity, workload.identity.clone(), &at, whole);
        for a in &workload.addresses {
            claim(&mut self.by_ip, a.to_canonical(), &at, |o| &mut o.pod);
        }
        let named = (workload.namespace.clone(), workload.name.clone());
        claim(&mut self.workload_names, named, &at, whole);
        self.workloads.insert(at, Arc::new(workload));
    }

    /// Adds a service (its origin must be new to the catalog).
    pub fn insert_service(&mut self, at: Origin, service: Service) {
        for_each_key(&service, |key| match key {
            Key::Address(a) => claim(&mut self.by_socket, a, &at, |o| &mut o.port),
            Key::IdentifiedEndpoint(a) => claim(&mut self.by_socket, a, &at, |o| &mut o.identified),
            Key::EndpointIp(ip) => claim(&mut self.by_ip, ip, &at, |o| &mut o.endpoint),
            Key::Vip(ip) => claim(&mut self.by_ip, ip, &at, |o| &mut o.vip),
        });
        let named = (service.namespace.clone(), service.name.clone());
        claim(&mut self.service_names, named, &at, whole);
        self.services.insert(at, Arc::new(service));
    }

    /// Removes every entry of `part`, and what the indexes held of them.
    pub fn remove_part(&mut self, part: &str) {
        let span = Origin::span(part);
        let workloads: Vec<Origin> = self
            .workloads
            .range(span.clone())
            .map(|(o, _)| o.clone())
            .collect();
        for at in &workloads {
            self.remove_workload(at);
        }
        let services: Vec<Origin> = self.services.range(span).map(|(o, _)| o.clone()).collect();
        for at in &services {
            self.remove_service(at);
        }
    }

    /// Removes the workload at `at`, and what the indexes held of it.
    fn remove_workload(&mut self, at: &Origin) {
        let Some(workload) = self.workloads.remove(at) else {
            return;
        };
        if let Some(hash) = workload.token {
            release(&mut self.by_token, &hash, at, whole);
        }
        release(&mut self.by_identity, &workload.identity, at, whole);
        for a in &workload.addresses {
            release(&mut self.by_ip, &a.to_canonical(), at, |o| &mut o.pod);
        }
        let named = (workload.namespace.clone(), workload.name.clone());
        release(&mut self.workload_names, &named, at, whole);
    }

    /// Removes the service at `at`, and what the indexes held of it.
    fn remove_service(&mut self, at: &Origin) {
        let Some(service) = self.services.remove(at) else {
            return;
        };
        for_each_key(&service, |key| match key {
            Key::Address(a) => release(&mut self.by_socket, &a, at, |o| &mut o.port),
            Key::IdentifiedEndpoint(a) => {
                release(&mut self.by_socket, &a, at, |o| &mut o.identified)
            }
            Key::EndpointIp(ip) => release(&mut self.by_ip, &ip, at, |o| &mut o.endpoint),
            Key::Vip(ip) => release(&mut self.by_ip, &ip, at, |o| &mut o.vip),
        });
        let named = (service.namespace.clone(), service.name.clone());
        release(&mut self.service_names, &named, at, whole);
    }

    /// Whether `part` holds the same entries here and in `other`: a change to it
    /// that changed nothing a proxy sees publishes nothing.
    pub fn same_part(&self, other: &Catalog, part: &str) -> bool {
        let span = Origin::span(part);
        same_entries(
            self.workloads.range(span.clone()),
            other.workloads.range(span.clone()),
        ) && same_entries(
            self.services.range(span.clone()),
            other.services.range(span),
        )
    }

    /// The workload a bearer token proves, if any.
    pub fn workload_for_token(&self, token: &str) -> Option<&Workload> {
        self.workload_for_hash(&TokenHash::of(token))
    }

    /// The workload whose token has this hash, if any.
    pub fn workload_for_hash(&self, hash: &TokenHash) -> Option<&Workload> {
        first(&self.by_token, hash).and_then(|at| self.workload_at(at))
    }

    /// The workload with this identity (the first listed), if any.
    pub fn workload(&self, identity: &SpiffeId) -> Option<&Workload> {
        first(&self.by_identity, identity).and_then(|at| self.workload_at(at))
    }

    /// The workload named `namespace/name` and where it comes from, if any.
    pub fn workload_named(&self, namespace: &str, name: &str) -> Option<(&Origin, &Workload)> {
        let at = first(
            &self.workload_names,
            &(namespace.to_string(), name.to_string()),
        )?;
        Some((at, self.workload_at(at)?))
    }

    /// The service named `namespace/name` and where it comes from, if any.
    pub fn service_named(&self, namespace: &str, name: &str) -> Option<(&Origin, &Service)> {
        let at = first(
            &self.service_names,
            &(namespace.to_string(), name.to_string()),
        )?;
        Some((at, self.services.get(at)?))
    }

    /// Where the first workload with this token hash comes from.
    pub fn token_owner(&self, hash: &TokenHash) -> Option<&Origin> {
        first(&self.by_token, hash)
    }

    /// Where the first workload with this pod address comes from.
    pub fn pod_address_owner(&self, ip: IpAddr) -> Option<&Origin> {
        first_in(&self.by_ip, &ip.to_canonical(), |o| &o.pod)
    }

    /// Where the first service with this address (VIP) comes from.
    pub fn vip_owner(&self, ip: IpAddr) -> Option<&Origin> {
        first_in(&self.by_ip, &ip.to_canonical(), |o| &o.vip)
    }

    fn workload_at(&self, at: &Origin) -> Option<&Workload> {
        self.workloads.get(at).map(|w| &**w)
    }

    /// All workloads, in source order.
    pub fn workloads(&self) -> impl ExactSizeIterator<Item = &Workload> + '_ {
        self.workloads.values().map(|w| &**w)
    }

    /// All services, as they go on the wire, in source order.
    pub fn services(&self) -> impl ExactSizeIterator<Item = &Service> + '_ {
        self.services.values().map(|s| &**s)
    }

    /// The workloads of `part`, in order.
    pub fn workloads_of(&self, part: &str) -> impl Iterator<Item = &Workload> + '_ {
        self.workloads.range(Origin::span(part)).map(|(_, w)| &**w)
    }

    /// The services of `part`, in order.
    pub fn services_of(&self, part: &str) -> impl Iterator<Item = &Service> + '_ {
        self.services.range(Origin::span(part)).map(|(_, s)| &**s)
    }

    /// The service a connection to `addr` reaches, as a proxy holding every service
    /// would pick it: a VIP:port or an endpoint of a service port first (in source
    /// order), then an endpoint with an identity under no service port.
    pub fn service_at(&self, addr: SocketAddr) -> Option<&Service> {
        let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
        let owners = self.by_socket.get(&addr)?;
        let at = owners.port.first().or(owners.identified.first())?;
        self.services.get(at).map(|s| &**s)
    }

    /// The services with an endpoint at one of `addresses` (a workload's own), in
    /// source order, each once.
    pub fn services_at(&self, addresses: &[IpAddr]) -> Vec<&Service> {
        let mut found: Vec<&Origin> = (addresses.iter())
            .filter_map(|a| self.by_ip.get(&a.to_canonical()))
            .flat_map(|o| &o.endpoint)
            .collect();
        found.sort_unstable();
        found.dedup();
        found
            .into_iter()
            .filter_map(|at| self.services.get(at).map(|s| &**s))
            .collect()
    }

    /// The other services `service`'s routes send to (same namespace, by name), in
    /// the order the routes name them.
    pub fn backends_of(&self, service: &Service) -> Vec<&Service> {
        let mut found: Vec<&Service> = Vec::new();
        let named = (service.ports.iter().flat_map(|p| &p.routes))
            .flat_map(|r| r.sent_to())
            .filter_map(|b| b.service.as_deref());
        for name in named {
            if let Some((_, other)) = self.service_named(&service.namespace, name) {
                let known =
                    std::ptr::eq(other, service) || found.iter().any(|f| std::ptr::eq(*f, other));
                if !known {
                    found.push(other);
                }
            }
        }
        found
    }

    /// Whether two catalogs would give every proxy the same view (the version aside),
    /// so a change that changed nothing publishes nothing.
    pub fn same_content(&self, other: &Catalog) -> bool {
        same_values(self.workloads.values(), other.workloads.values())
            && same_values(self.services.values(), other.services.values())
    }
}

/// The entries of a part that a replacement removes and adds: those not equal to
/// the entry at their place.
struct Changes<T> {
    gone: Vec<(Origin, Arc<T>)>,
    new: Vec<(Origin, T)>,
}

/// Compares a part's entries in place, `old` (in order) against `new`.
fn changes<T: PartialEq>(
    old: Vec<(Origin, Arc<T>)>,
    new: Vec<T>,
    origin: impl Fn(usize) -> Origin,
) -> Changes<T> {
    let mut gone = Vec::new();
    let mut added = Vec::new();
    let mut old = old.into_iter();
    for (i, entry) in new.into_iter().enumerate() {
        let at = origin(i);
        match old.next() {
            Some((o, same)) if o == at && *same == entry => {}
            Some(previous) => {
                gone.push(previous);
                added.push((at, entry));
            }
            None => added.push((at, entry)),
        }
    }
    gone.extend(old);
    Changes { gone, new: added }
}

/// What a service is found by.
enum Key {
    Address(SocketAddr),
    IdentifiedEndpoint(SocketAddr),
    EndpointIp(IpAddr),
    Vip(IpAddr),
}

/// Calls `f` with every key `service` is found by (a key may come more than once).
fn for_each_key(service: &Service, mut f: impl FnMut(Key)) {
    for vip in &service.addresses {
        f(Key::Vip(vip.to_canonical()));
    }
    for port in &service.ports {
        for vip in &service.addresses {
            f(Key::Address(SocketAddr::new(vip.to_canonical(), port.port)));
        }
        for e in service.endpoints_for(port) {
            f(Key::Address(SocketAddr::new(
                e.address.to_canonical(),
                e.port,
            )));
        }
    }
    for e in &service.endpoints {
        if e.identity.is_some() {
            let addr = SocketAddr::new(e.address.to_canonical(), e.port);
            f(Key::IdentifiedEndpoint(addr));
        }
        f(Key::EndpointIp(e.address.to_canonical()));
    }
}

/// A value of an index: the owners it holds, in one or more slots.
trait Slots: Clone + Default {
    /// Whether no slot has an owner left.
    fn vacant(&self) -> bool;
}

impl Slots for Owners {
    fn vacant(&self) -> bool {
        self.is_empty()
    }
}

impl Slots for SocketOwners {
    fn vacant(&self) -> bool {
        self.port.is_empty() && self.identified.is_empty()
    }
}

impl Slots for IpOwners {
    fn vacant(&self) -> bool {
        self.vip.is_empty() && self.endpoint.is_empty() && self.pod.is_empty()
    }
}

/// The one slot of a plain index.
fn whole(owners: &mut Owners) -> &mut Owners {
    owners
}

/// Adds `at` to the owners of `key` in `slot`, in order, once.
fn claim<K, V: Slots>(
    index: &mut CowMap<K, V>,
    key: K,
    at: &Origin,
    slot: impl FnOnce(&mut V) -> &mut Owners,
) where
    K: std::hash::Hash + Eq + Clone,
{
    let owners = slot(index.get_or_default(key));
    if let Err(i) = owners.binary_search(at) {
        owners.insert(i, at.clone());
    }
}

/// Removes `at` from the owners of `key` in `slot`, and the key when it is vacant.
fn release<K, V: Slots>(
    index: &mut CowMap<K, V>,
    key: &K,
    at: &Origin,
    slot: impl FnOnce(&mut V) -> &mut Owners,
) where
    K: std::hash::Hash + Eq + Clone,
{
    let vacant = match index.get_mut(key) {
        Some(value) => {
            slot(value).retain(|o| o != at);
            value.vacant()
        }
        None => false,
    };
    if vacant {
        index.remove(key);
    }
}

fn first<'a, K: std::hash::Hash + Eq + Clone>(
    index: &'a CowMap<K, Owners>,
    key: &K,
) -> Option<&'a Origin> {
    index.get(key).and_then(|owners| owners.first())
}

fn first_in<'a, K: std::hash::Hash + Eq + Clone, V: Slots>(
    index: &'a CowMap<K, V>,
    key: &K,
    slot: impl FnOnce(&V) -> &Owners,
) -> Option<&'a Origin> {
    index.get(key).and_then(|v| slot(v).first())
}

/// Equal values, the shared ones recognised without a deep comparison.
fn same_values<'a, T: PartialEq + 'a>(
    a: impl ExactSizeIterator<Item = &'a Arc<T>>,
    b: impl ExactSizeIterator<Item = &'a Arc<T>>,
) -> bool {
    a.len() == b.len() && a.zip(b).all(|(x, y)| Arc::ptr_eq(x, y) || x == y)
}

fn same_entries<'a, T: PartialEq + 'a>(
    mut a: impl Iterator<Item = (&'a Origin, &'a Arc<T>)>,
    mut b: impl Iterator<Item = (&'a Origin, &'a Arc<T>)>,
) -> bool {
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (Some((oa, x)), Some((ob, y))) if oa == ob && (Arc::ptr_eq(x, y) || x == y) => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{parse_source, EMBEDDED_DEFAULT};

    /// The services of a source file listing `vips` as one service each.
    fn services(vips: &[&str]) -> Vec<Service> {
        let mut yaml = String::from("services:\n");
        for (i, vip) in vips.iter().enumerate() {
            yaml.push_str(&format!(
                "  - {{name: s{i}, namespace: n, addresses: [{vip}], ports: [{{port: 80}}]}}\n"
            ));
        }
        let catalog = parse_source("t", &yaml, "cluster.local").unwrap();
        catalog.services().cloned().collect()
    }

    #[test]
    fn replacing_a_part_touches_only_what_changed() {
        let at = |vip: &str| format!("{vip}:80").parse::<SocketAddr>().unwrap();
        let mut catalog = Catalog::of("p", vec![], services(&["198.18.1.1", "198.18.1.2"]));
        let before = catalog.clone();
        catalog.replace_part("p", vec![], services(&["198.18.1.1", "198.18.1.3"]));
        let first = |c: &Catalog| c.services.values().next().cloned().unwrap();
        assert!(
            Arc::ptr_eq(&first(&before), &first(&catalog)),
            "unchanged: shared"
        );
        assert!(catalog.service_at(at("198.18.1.2")).is_none());
        assert_eq!(catalog.service_at(at("198.18.1.3")).unwrap().name, "s1");
        assert_eq!(before.service_at(at("198.18.1.2")).unwrap().name, "s1");
        assert!(!before.same_part(&catalog, "p"));
        // Fewer entries: the rest goes, with what the indexes held of it.
        catalog.replace_part("p", vec![], services(&["198.18.1.1"]));
        assert_eq!(catalog.services().len(), 1);
        assert!(catalog.service_named("n", "s1").is_none());
        assert!(catalog.vip_owner("198.18.1.3".parse().unwrap()).is_none());
        catalog.remove_part("p");
        assert_eq!(catalog.services().len(), 0);
        assert!(catalog.service_at(at("198.18.1.1")).is_none());
        assert_eq!(before.services().len(), 2, "the old version is untouched");
    }

    #[test]
    fn addresses_lead_to_their_service_and_nothing_else() {
        let catalog = parse_source("default", EMBEDDED_DEFAULT, "cluster.local").unwrap();
        for addr in [
            "198.18.0.100:8080",
            "198.18.0.100:7000",
            "198.18.0.3:7000",
            "[::ffff:198.18.0.3]:8080",
            "[2001:2::3]:7000",
        ] {
            let found = catalog.service_at(addr.parse().unwrap());
            assert_eq!(found.map(|s| s.name.as_str()), Some("echo"), "{addr}");
        }
        for addr in ["198.18.0.100:9999", "198.18.0.99:8080", "192.0.2.1:443"] {
            assert!(
                catalog.service_at(addr.parse().unwrap()).is_none(),
                "{addr}"
            );
        }
    }
}
