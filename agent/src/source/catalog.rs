//! The validated content of a source: what the server answers from. A `Catalog` is
//! immutable; a reload builds a new one and swaps it in whole.

use crate::token::TokenHash;
use pillion_api::view::{InboundPolicy, Service};
use pillion_identity::SpiffeId;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

/// Everything the agent knows, checked and resolved against the trust domain.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub(crate) workloads: Vec<Workload>,
    pub(crate) services: Vec<Service>,
    pub(crate) by_token: HashMap<TokenHash, usize>,
    /// Service by address (VIP:port or endpoint), built on the first on-demand
    /// resolution of this catalog: a catalog nobody resolves against never pays for it.
    pub(crate) by_address: OnceLock<HashMap<SocketAddr, usize>>,
    /// Services by the IP of one of their endpoints, built on first use: a
    /// workload's own services, found without walking the mesh per watcher.
    pub(crate) by_endpoint_ip: OnceLock<HashMap<IpAddr, Vec<usize>>>,
    /// Workloads by identity (the first listed), built on first use.
    pub(crate) by_identity: OnceLock<HashMap<SpiffeId, usize>>,
}

/// One workload with its resolved identity.
#[derive(Debug, Clone)]
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
    /// Hash of its bearer token, if it has one.
    pub token: Option<TokenHash>,
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
    /// The workload a bearer token proves, if any.
    pub fn workload_for_token(&self, token: &str) -> Option<&Workload> {
        self.workload_for_hash(&TokenHash::of(token))
    }

    /// The workload whose token has this hash, if any.
    pub fn workload_for_hash(&self, hash: &TokenHash) -> Option<&Workload> {
        self.by_token.get(hash).and_then(|&i| self.workloads.get(i))
    }

    /// The workload with this identity (the first listed), if any.
    pub fn workload(&self, identity: &SpiffeId) -> Option<&Workload> {
        let index = self.by_identity.get_or_init(|| {
            let mut index = HashMap::new();
            for (i, w) in self.workloads.iter().enumerate() {
                index.entry(w.identity.clone()).or_insert(i);
            }
            index
        });
        index.get(identity).and_then(|&i| self.workloads.get(i))
    }

    /// All workloads, in file order.
    pub fn workloads(&self) -> &[Workload] {
        &self.workloads
    }

    /// All services, as they go on the wire, in file order.
    pub fn services(&self) -> &[Service] {
        &self.services
    }

    /// The service a connection to `addr` reaches, as a proxy holding every service
    /// would pick it: a VIP:port or an endpoint of a service port first (in file
    /// order), then an endpoint with an identity under no service port.
    pub fn service_at(&self, addr: SocketAddr) -> Option<&Service> {
        let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
        let index = self
            .by_address
            .get_or_init(|| index_addresses(&self.services));
        index.get(&addr).and_then(|&i| self.services.get(i))
    }

    /// The services with an endpoint at one of `addresses` (a workload's own), in
    /// file order, each once.
    pub fn services_at(&self, addresses: &[IpAddr]) -> Vec<&Service> {
        let index = self.by_endpoint_ip.get_or_init(|| {
            let mut index: HashMap<IpAddr, Vec<usize>> = HashMap::new();
            for (i, service) in self.services.iter().enumerate() {
                for e in &service.endpoints {
                    let found = index.entry(e.address.to_canonical()).or_default();
                    if found.last() != Some(&i) {
                        found.push(i);
                    }
                }
            }
            index
        });
        let mut found: Vec<usize> = (addresses.iter())
            .filter_map(|a| index.get(&a.to_canonical()))
            .flatten()
            .copied()
            .collect();
        found.sort_unstable();
        found.dedup();
        found.iter().filter_map(|&i| self.services.get(i)).collect()
    }

    /// The other services `service`'s routes send to (same namespace, by name), in
    /// the order the routes name them.
    pub fn backends_of(&self, service: &Service) -> Vec<&Service> {
        let mut found: Vec<&Service> = Vec::new();
        let named = (service.ports.iter().flat_map(|p| &p.routes))
            .flat_map(|r| &r.backends)
            .filter_map(|b| b.service.as_deref());
        for name in named {
            let other = self
                .services
                .iter()
                .find(|s| s.namespace == service.namespace && s.name == name);
            if let Some(other) = other {
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
    /// so a reload that changed only comments publishes nothing.
    pub fn same_content(&self, other: &Catalog) -> bool {
        self.services == other.services
            && self.by_token == other.by_token
            && self.workloads.len() == other.workloads.len()
            && self.workloads.iter().zip(&other.workloads).all(|(a, b)| {
                a.namespace == b.namespace
                    && a.name == b.name
                    && a.identity == b.identity
                    && a.addresses == b.addresses
                    && a.inbound == b.inbound
                    && a.token == b.token
            })
    }
}

/// Every address a proxy routes by, to the index of the first service that has it
/// (the order a proxy compiling every service uses, so both modes agree).
fn index_addresses(services: &[Service]) -> HashMap<SocketAddr, usize> {
    let mut index = HashMap::new();
    for (i, service) in services.iter().enumerate() {
        for port in &service.ports {
            for vip in &service.addresses {
                index
                    .entry(SocketAddr::new(vip.to_canonical(), port.port))
                    .or_insert(i);
            }
            for e in service.endpoints_for(port) {
                index
                    .entry(SocketAddr::new(e.address.to_canonical(), e.port))
                    .or_insert(i);
            }
        }
    }
    for (i, service) in services.iter().enumerate() {
        for e in service.endpoints.iter().filter(|e| e.identity.is_some()) {
            index
                .entry(SocketAddr::new(e.address.to_canonical(), e.port))
                .or_insert(i);
        }
    }
    index
}

#[cfg(test)]
mod tests {
    use crate::source::{parse_source, EMBEDDED_DEFAULT};

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
