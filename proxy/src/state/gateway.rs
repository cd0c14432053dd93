//! The gateway side of the state: hostname → the host's routes into the mesh
//! (compiled with the outbound table, so they share its endpoints, pools and
//! balancers) and its end-user policy (compiled as an inbound port's: token
//! providers, claim rules, rate limits). Empty unless the view makes this proxy a
//! gateway.
//!
//! A name is looked up exactly first, then as `*.` and the rest after its first
//! label, so a lookup is two hash probes whatever the number of hosts.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use pillion_api::view::{Mode, PortPolicy, View};

use super::inbound::{compile_host, InboundPort, InboundTable};
use super::outbound::PortRoutes;
use crate::policy::api_key::KeyTable;
use crate::telemetry::metrics::http::HttpMetrics;

/// One host of the gateway, compiled.
#[derive(Debug)]
pub(crate) struct GatewayHostState {
    /// Its first hostname: its name in logs and metrics.
    pub name: Arc<str>,
    /// Where its requests go.
    pub routes: Arc<PortRoutes>,
    /// Its end-user policy: tokens, claims, limits.
    pub policy: Arc<InboundPort>,
    /// Its API keys and usage plans.
    pub api_keys: HostKeys,
    /// What the next view's host of the same name carries over.
    reuse: InboundTable,
}

/// Whether and how a host checks API keys.
#[derive(Debug)]
pub(crate) enum HostKeys {
    /// No `api_keys`: keys are neither read nor required.
    Off,
    /// Keys are looked up in this table.
    On(KeyTable),
    /// The view's keys cannot be compiled: every request is refused.
    Unusable,
}

/// The compiled gateway table.
#[derive(Debug, Default)]
pub(crate) struct GatewayTable {
    hosts: Vec<GatewayHostState>,
    exact: HashMap<String, usize>,
    /// `*.example.com` under `example.com`.
    wildcard: HashMap<String, usize>,
}

impl GatewayTable {
    /// Whether the view made this proxy a gateway with at least one host.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// The host serving `host` (lowercase, no port, no trailing dot).
    pub(crate) fn host(&self, host: &str) -> Option<&GatewayHostState> {
        if let Some(&i) = self.exact.get(host) {
            return self.hosts.get(i);
        }
        let (label, rest) = host.split_once('.')?;
        if label.is_empty() {
            return None;
        }
        self.wildcard.get(rest).and_then(|&i| self.hosts.get(i))
    }

    /// Compiles the view's hosts over `routes` (the outbound table's, in the same
    /// order), reusing `previous`'s limiters and token caches by host name.
    pub(crate) fn compile(
        view: &View,
        routes: &[Arc<PortRoutes>],
        previous: &GatewayTable,
        metrics: &HttpMetrics,
        now: Instant,
    ) -> GatewayTable {
        let mut table = GatewayTable::default();
        let hosts = view.gateway.iter().flat_map(|g| &g.hosts);
        for (host, routes) in hosts.zip(routes) {
            let Some(first) = host.hostnames.first() else {
                continue;
            };
            let policy = PortPolicy {
                mode: Mode::Permissive,
                allow: Vec::new(),
                server: host.server.clone(),
                jwt: host.jwt.clone(),
            };
            // The previous view's host of the same name carries its state over.
            let old = previous.host(first).filter(|h| &*h.name == first);
            let empty = InboundTable::default();
            let label = format!("{}/{first}", super::outbound::GATEWAY_NAMESPACE);
            let old_policy = old.map_or(&empty, |h| &h.reuse);
            let (policy, reuse) = compile_host(&label, &policy, old_policy, metrics, now);
            let old_keys = old.and_then(|h| match &h.api_keys {
                HostKeys::On(t) => Some(t),
                _ => None,
            });
            let api_keys = match &host.api_keys {
                None => HostKeys::Off,
                Some(keys) => {
                    let service: Arc<str> = Arc::from(label.as_str());
                    let per_key = |id: &str, plan: &str| metrics.api_key(&service, id, plan);
                    let refusals = metrics.api_key_refusals(&service);
                    match KeyTable::new(keys, old_keys, per_key, refusals, now) {
                        Ok(table) => HostKeys::On(table),
                        Err(error) => {
                            tracing::warn!(host = %first, %error, "API keys unusable; the host refuses every request");
                            HostKeys::Unusable
                        }
                    }
                }
            };
            let index = table.hosts.len();
            for name in &host.hostnames {
                match name.strip_prefix("*.") {
                    Some(rest) => table.wildcard.entry(rest.to_string()).or_insert(index),
                    None => table.exact.entry(name.clone()).or_insert(index),
                };
            }
            table.hosts.push(GatewayHostState {
                name: Arc::from(first.as_str()),
                routes: Arc::clone(routes),
                policy,
                api_keys,
                reuse,
            });
        }
        table
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::State;

    #[test]
    fn hosts_are_found_exactly_then_by_one_label_wildcard() {
        let view: View = serde_json::from_value(serde_json::json!({
            "version": 1, "identity": "spiffe://cluster.local/ns/gateway/sa/edge",
            "services": [{"name": "web", "namespace": "shop", "ports": [{"port": 80}],
                "endpoints": [{"address": "198.18.0.3", "port": 80}]}],
            "gateway": {"hosts": [
                {"hostnames": ["shop.test", "*.shop.test"],
                 "routes": [{"name": "web", "backends": [{"service": "shop/web", "port": 80}]}]},
                {"hostnames": ["api.shop.test"],
                 "routes": [{"name": "api", "backends": [{"service": "shop/web", "port": 80}]}]}
            ]}
        }))
        .unwrap();
        let state = State::compile(
            &view,
            &Default::default(),
            &State::default(),
            &Default::default(),
            &HttpMetrics::default(),
            Instant::now(),
        );
        let gateway = state.gateway();
        assert!(!gateway.is_empty());
        let name = |h: &str| gateway.host(h).map(|h| h.name.to_string());
        assert_eq!(name("shop.test").as_deref(), Some("shop.test"));
        assert_eq!(name("www.shop.test").as_deref(), Some("shop.test"));
        // An exact name wins over a wildcard that also covers it.
        assert_eq!(name("api.shop.test").as_deref(), Some("api.shop.test"));
        for unknown in ["a.b.shop.test", ".shop.test", "evilshop.test", "test", ""] {
            assert_eq!(name(unknown), None, "{unknown:?}");
        }
        // The host's routes reach the service's endpoint.
        let host = gateway.host("shop.test").unwrap();
        assert_eq!(host.routes.label(), "gateway/shop.test:443");
        let backend = &host
            .routes
            .select(&http::Request::new(()).into_parts().0)
            .0
            .backends[0];
        assert!(backend.pick(Instant::now(), 7, None).is_ok());
        assert!(State::default().gateway().is_empty());
    }
}
