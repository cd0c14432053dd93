//! The validated content of a source: what the server answers from. A `Catalog` is
//! immutable; a reload builds a new one and swaps it in whole.

use crate::token::TokenHash;
use pillion_api::view::{InboundPolicy, Service};
use pillion_identity::SpiffeId;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// Everything the agent knows, checked and resolved against the trust domain.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub(crate) workloads: Vec<Workload>,
    pub(crate) services: Vec<Service>,
    pub(crate) by_token: HashMap<TokenHash, usize>,
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

    /// All workloads, in file order.
    pub fn workloads(&self) -> &[Workload] {
        &self.workloads
    }

    /// All services, as they go on the wire, in file order.
    pub fn services(&self) -> &[Service] {
        &self.services
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
