//! Endpoints and backends: the state that outlives a view update. An endpoint keeps
//! its latency estimate and connection pools for as long as some view lists it (by
//! address and identity); a backend (a service's endpoints, or a label subset of
//! them) keeps its balancer and outlier detector, carried over by endpoint when its
//! list changes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;

use super::Upstream;
use crate::http::errors::HttpError;
use crate::policy::balance::p2c::Balancer;
use crate::policy::balance::peak_ewma::PeakEwma;
use crate::policy::breaker::Breaker;
use crate::policy::outlier::{OutlierConfig, OutlierDetector};
use pillion_api::breaker::DEFAULT_MAX_REQUESTS;

/// What an ejected endpoint costs a retry: more than any endpoint in service (costs
/// are expected latencies in nanoseconds times load; this is over a day).
const RETRY_EJECTED_COST: f64 = 1e14;

/// One endpoint of a service, shared by every backend and view that lists it.
#[derive(Debug)]
pub(crate) struct EndpointState {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The SPIFFE id it must prove (meshed), or `None` (plain).
    pub identity: Option<Arc<str>>,
    /// Its identity as a metrics label (empty when plain).
    pub peer_label: Arc<str>,
    /// Its latency estimate.
    pub ewma: Arc<PeakEwma>,
    /// Its connection pools.
    pub upstream: Upstream,
}

/// A set of endpoints one route backend sends to.
#[derive(Debug)]
pub(crate) struct Backend {
    /// `namespace/name:port`, plus `{label=value,…}` for a subset; for logs and errors.
    pub name: Arc<str>,
    /// The endpoints, in view order.
    pub endpoints: Box<[Arc<EndpointState>]>,
    outlier: OutlierDetector,
    balancer: Balancer,
    ejections: Counter,
    breaker: Arc<Breaker>,
}

impl Backend {
    /// A backend over `endpoints` with fresh outlier state.
    pub(crate) fn new(
        name: Arc<str>,
        endpoints: Vec<Arc<EndpointState>>,
        outlier: OutlierConfig,
        balancer: Balancer,
        ejections: Counter,
        now: Instant,
    ) -> Backend {
        Backend {
            name,
            outlier: OutlierDetector::new(endpoints.len(), outlier, now),
            endpoints: endpoints.into_boxed_slice(),
            balancer,
            ejections,
            breaker: Arc::new(Breaker::new(DEFAULT_MAX_REQUESTS)),
        }
    }

    /// This backend for a changed endpoint list: health carried over by endpoint.
    pub(crate) fn changed(
        &self,
        endpoints: Vec<Arc<EndpointState>>,
        balancer: Balancer,
    ) -> Backend {
        let outlier = self.outlier.carried(endpoints.len(), |i| {
            self.endpoints
                .iter()
                .position(|old| Arc::ptr_eq(old, &endpoints[i]))
        });
        Backend {
            name: Arc::clone(&self.name),
            outlier,
            endpoints: endpoints.into_boxed_slice(),
            balancer,
            ejections: self.ejections.clone(),
            breaker: Arc::clone(&self.breaker),
        }
    }

    /// The bound on this backend's requests in flight.
    pub(crate) fn breaker(&self) -> &Arc<Breaker> {
        &self.breaker
    }

    /// Whether this backend already has exactly these endpoints.
    pub(crate) fn same_endpoints(&self, endpoints: &[Arc<EndpointState>]) -> bool {
        self.endpoints.len() == endpoints.len()
            && self
                .endpoints
                .iter()
                .zip(endpoints)
                .all(|(a, b)| Arc::ptr_eq(a, b))
    }

    /// Picks an endpoint: power of two choices over peak-EWMA cost (or round robin),
    /// never an ejected one. A retry names the endpoint that just failed it in
    /// `avoid`: another one is taken whenever there is one, an ejected one too (last):
    /// the endpoint that just failed is no better a bet than one that failed earlier,
    /// and may be the only one still in service while the ejected one has recovered.
    pub(crate) fn pick(
        &self,
        now: Instant,
        rng: u64,
        avoid: Option<&Arc<EndpointState>>,
    ) -> Result<(usize, &Arc<EndpointState>), HttpError> {
        if self.endpoints.is_empty() {
            return Err(HttpError::NoEndpoints {
                service: self.name.to_string(),
            });
        }
        let alone = self.endpoints.len() == 1;
        let picked = self.balancer.pick(self.endpoints.len(), rng, |i| {
            let endpoint = &self.endpoints[i];
            let ejected = self.outlier.is_ejected(i, now);
            match avoid {
                None if ejected => f64::INFINITY,
                None => endpoint.ewma.cost(now),
                Some(failed) if !alone && Arc::ptr_eq(failed, endpoint) => f64::INFINITY,
                // Finite, but above any endpoint in service.
                Some(_) if ejected => RETRY_EJECTED_COST + endpoint.ewma.cost(now),
                Some(_) => endpoint.ewma.cost(now),
            }
        });
        match picked {
            Some(i) => Ok((i, &self.endpoints[i])),
            None => Err(HttpError::AllEjected {
                service: self.name.to_string(),
            }),
        }
    }

    /// Whether endpoint `i` is ejected at `now`.
    pub(crate) fn is_ejected(&self, i: usize, now: Instant) -> bool {
        self.outlier.is_ejected(i, now)
    }

    /// Reports how a try to endpoint `i` went, for outlier detection. A try sent to
    /// an ejected endpoint (a retry's last resort) that went well ends its ejection:
    /// it has recovered, and may be the only endpoint that has.
    pub(crate) fn report(&self, i: usize, ok: bool, now: Instant, sent_ejected: bool) {
        if ok {
            self.outlier.record_success(i);
            if sent_ejected && self.outlier.readmit(i, now) {
                if let Some(endpoint) = self.endpoints.get(i) {
                    tracing::info!(backend = %self.name, endpoint = %endpoint.addr,
                        "ejected endpoint answered a retry well; back in service");
                }
            }
            return;
        }
        if let Some(ejection) = self.outlier.record_failure(i, now) {
            self.ejections.inc();
            if let Some(endpoint) = self.endpoints.get(i) {
                tracing::warn!(
                    backend = %self.name,
                    endpoint = %endpoint.addr,
                    seconds = ejection.duration.as_secs_f64(),
                    times = ejection.times,
                    "endpoint ejected after repeated failures"
                );
            }
        }
    }
}
