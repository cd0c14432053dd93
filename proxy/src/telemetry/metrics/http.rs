//! The HTTP metrics, per route, with bounded labels: `direction`, `service` (outbound:
//! `namespace/name`; inbound: the application port), `route` (the route's name, or
//! `default`), `peer` (inbound: the caller's verified SPIFFE id, empty for plaintext;
//! outbound responses: the identity of the endpoint that answered, empty when it has
//! none) and, on responses, `status_code` and `class` (`2xx`, …).
//!
//! Counters of one route are resolved once when the view is compiled
//! ([`RouteMetrics`]); only the response counter, whose labels depend on the answer,
//! is looked up per response (labels are reference-counted strings, so the lookup
//! does not allocate).

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::telemetry::metrics::Direction;

/// A shared label value (a service, route or identity), cloned without allocating.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(crate) struct Label(pub Arc<str>);

impl EncodeLabelValue for Label {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&&*self.0, encoder)
    }
}

/// Labels of the per-route series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RouteLabels {
    /// `outbound` or `inbound`.
    pub direction: Direction,
    /// The service (outbound) or application port (inbound).
    pub service: Label,
    /// The route's name.
    pub route: Label,
}

/// Labels of the request and response series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PeerLabels {
    /// `outbound` or `inbound`.
    pub direction: Direction,
    /// The service (outbound) or application port (inbound).
    pub service: Label,
    /// The route's name.
    pub route: Label,
    /// The other side's verified identity, or empty.
    pub peer: Label,
}

/// Labels of the response series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResponseLabels {
    /// `outbound` or `inbound`.
    pub direction: Direction,
    /// The service (outbound) or application port (inbound).
    pub service: Label,
    /// The route's name.
    pub route: Label,
    /// The other side's verified identity, or empty.
    pub peer: Label,
    /// The status code returned to the caller.
    pub status_code: u16,
    /// `1xx` … `5xx`.
    pub class: &'static str,
}

/// What a route's policy did to a request beyond routing it.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) enum Action {
    /// An injected delay held the request back.
    FaultDelay,
    /// An injected abort answered it.
    FaultAbort,
    /// Its mirror copy was answered by the shadow backend.
    MirrorSent,
    /// It was to be copied, but the route's copies in flight were at their bound.
    MirrorSkipped,
    /// Its copy was not sent or not answered: a body too large or broken, no
    /// shadow endpoint, a failure or the timeout.
    MirrorDropped,
    /// The end user's token did not do (401, 400 or 403).
    TokenRefused,
    /// The token could not be judged: its introspection endpoint failed (502, 503
    /// or 504).
    IntrospectionFailed,
    /// Answered from the route's cache without asking upstream.
    CacheHit,
    /// Not in the cache: sent upstream (and kept if the answer allows).
    CacheMiss,
    /// In the cache but stale, and the origin sent a new answer.
    CacheStale,
    /// In the cache but stale, and the origin confirmed it (`304`).
    CacheRevalidated,
    /// A request the cache does not answer (not a plain `GET`, `no-store`, a range).
    CacheBypass,
    /// Refused with `503` at once: the backend's circuit breaker was full.
    Overflow,
}

impl EncodeLabelValue for Action {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        let text = match self {
            Action::FaultDelay => "fault_delay",
            Action::FaultAbort => "fault_abort",
            Action::MirrorSent => "mirror_sent",
            Action::MirrorSkipped => "mirror_skipped",
            Action::MirrorDropped => "mirror_dropped",
            Action::TokenRefused => "token_refused",
            Action::IntrospectionFailed => "introspection_failed",
            Action::CacheHit => "cache_hit",
            Action::CacheMiss => "cache_miss",
            Action::CacheStale => "cache_stale",
            Action::CacheRevalidated => "cache_revalidated",
            Action::CacheBypass => "cache_bypass",
            Action::Overflow => "overflow",
        };
        EncodeLabelValue::encode(&text, encoder)
    }
}

/// Labels of the policy-action series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ActionLabels {
    /// `outbound` or `inbound`.
    pub direction: Direction,
    /// The service (outbound) or application port (inbound).
    pub service: Label,
    /// The route's name.
    pub route: Label,
    /// What was done.
    pub action: Action,
}

/// Labels of the ejection series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ServiceLabels {
    /// `outbound` or `inbound`.
    pub direction: Direction,
    /// The service.
    pub service: Label,
}

/// Labels of a gateway's per-key series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ApiKeyLabels {
    /// The gateway host (`gateway/<first hostname>`).
    pub service: Label,
    /// The key's id (`-` for requests without a known key).
    pub key: Label,
    /// Its plan (`-` for requests without a known key).
    pub plan: Label,
    /// `allowed`, `rate_limited`, `over_quota`, `missing` or `unknown`.
    pub outcome: &'static str,
}

/// Every HTTP metric family, registered once per proxy.
#[derive(Clone, Debug)]
pub(crate) struct HttpMetrics {
    api_keys: Family<ApiKeyLabels, Counter>,
    requests: Family<PeerLabels, Counter>,
    responses: Family<ResponseLabels, Counter>,
    retries: Family<RouteLabels, Counter>,
    rate_limited: Family<RouteLabels, Counter>,
    ejections: Family<ServiceLabels, Counter>,
    duration: Family<RouteLabels, Histogram>,
    actions: Family<ActionLabels, Counter>,
}

/// The handles of one route, resolved when the view is compiled.
#[derive(Clone, Debug)]
pub(crate) struct RouteMetrics {
    families: HttpMetrics,
    labels: RouteLabels,
    /// Requests without a peer identity (every outbound request), resolved once.
    anonymous: Counter,
    /// Retries sent.
    pub retries: Counter,
    /// Requests refused with 429.
    pub rate_limited: Counter,
    /// Time from request to response headers, in seconds.
    pub duration: Histogram,
}

/// Empty label value (no identity); one shared allocation for every connection.
pub(crate) fn no_peer() -> Arc<str> {
    static EMPTY: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    Arc::clone(EMPTY.get_or_init(|| Arc::from("")))
}

fn duration_histogram() -> Histogram {
    // 1 ms … ~33 s, doubling.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics {
            api_keys: Family::default(),
            requests: Family::default(),
            responses: Family::default(),
            retries: Family::default(),
            rate_limited: Family::default(),
            ejections: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            actions: Family::default(),
        }
    }
}

impl HttpMetrics {
    /// Creates the families and registers them under their contract names.
    pub(crate) fn register(registry: &mut Registry) -> HttpMetrics {
        let m = HttpMetrics::default();
        registry.register(
            "pillion_http_requests",
            "HTTP requests received, per route",
            m.requests.clone(),
        );
        registry.register(
            "pillion_http_responses",
            "HTTP responses returned, per route and status",
            m.responses.clone(),
        );
        registry.register(
            "pillion_http_retries",
            "HTTP retries sent, per route",
            m.retries.clone(),
        );
        registry.register(
            "pillion_http_rate_limited",
            "HTTP requests refused by a rate limit (429), per route",
            m.rate_limited.clone(),
        );
        registry.register(
            "pillion_http_ejections",
            "Endpoints ejected by outlier detection, per service",
            m.ejections.clone(),
        );
        registry.register(
            "pillion_http_policy_actions",
            "What a route's policy did to a request beyond routing it (fault_delay, fault_abort, \
             mirror_sent, mirror_skipped, mirror_dropped, token_refused), per route",
            m.actions.clone(),
        );
        registry.register(
            "pillion_gateway_api_key_requests",
            "Requests at a gateway host with API keys, per key, plan and outcome",
            m.api_keys.clone(),
        );
        registry.register(
            "pillion_http_request_duration_seconds",
            "Time from an HTTP request to its response headers, per route",
            m.duration.clone(),
        );
        m
    }

    /// The handles of one route.
    pub(crate) fn route(
        &self,
        direction: Direction,
        service: &Arc<str>,
        route: &Arc<str>,
    ) -> RouteMetrics {
        let labels = RouteLabels {
            direction,
            service: Label(Arc::clone(service)),
            route: Label(Arc::clone(route)),
        };
        let anonymous = self
            .requests
            .get_or_create(&PeerLabels {
                direction,
                service: labels.service.clone(),
                route: labels.route.clone(),
                peer: Label(no_peer()),
            })
            .clone();
        RouteMetrics {
            families: self.clone(),
            anonymous,
            retries: self.retries.get_or_create(&labels).clone(),
            rate_limited: self.rate_limited.get_or_create(&labels).clone(),
            duration: self.duration.get_or_create(&labels).clone(),
            labels,
        }
    }

    /// The counters of one API key of a gateway host.
    pub(crate) fn api_key(
        &self,
        service: &Arc<str>,
        key: &str,
        plan: &str,
    ) -> crate::policy::api_key::KeyMetrics {
        let (key, plan) = (Label(Arc::from(key)), Label(Arc::from(plan)));
        let series = |outcome| {
            self.api_keys
                .get_or_create(&ApiKeyLabels {
                    service: Label(Arc::clone(service)),
                    key: key.clone(),
                    plan: plan.clone(),
                    outcome,
                })
                .clone()
        };
        crate::policy::api_key::KeyMetrics {
            allowed: series("allowed"),
            rate_limited: series("rate_limited"),
            over_quota: series("over_quota"),
        }
    }

    /// A gateway host's refusals for want of a key and for an unknown one.
    pub(crate) fn api_key_refusals(&self, service: &Arc<str>) -> (Counter, Counter) {
        let series = |outcome| {
            self.api_keys
                .get_or_create(&ApiKeyLabels {
                    service: Label(Arc::clone(service)),
                    key: Label(Arc::from("-")),
                    plan: Label(Arc::from("-")),
                    outcome,
                })
                .clone()
        };
        (series("missing"), series("unknown"))
    }

    /// The ejection counter of a service.
    pub(crate) fn ejections(&self, direction: Direction, service: &Arc<str>) -> Counter {
        self.ejections
            .get_or_create(&ServiceLabels {
                direction,
                service: Label(Arc::clone(service)),
            })
            .clone()
    }
}

impl RouteMetrics {
    /// Counts one `action` of the route's policy. Looked up when it happens: these
    /// are opt-in features, so routes without them carry no series.
    pub(crate) fn action(&self, action: Action) {
        self.families
            .actions
            .get_or_create(&ActionLabels {
                direction: self.labels.direction,
                service: self.labels.service.clone(),
                route: self.labels.route.clone(),
                action,
            })
            .inc();
    }

    /// Counts a request from `peer` (see the module docs).
    pub(crate) fn request(&self, peer: &Arc<str>) {
        if peer.is_empty() {
            self.anonymous.inc();
            return;
        }
        let labels = PeerLabels {
            direction: self.labels.direction,
            service: self.labels.service.clone(),
            route: self.labels.route.clone(),
            peer: Label(Arc::clone(peer)),
        };
        self.families.requests.get_or_create(&labels).inc();
    }

    /// Counts a response with `status` to or from `peer`, `elapsed` after the request.
    pub(crate) fn response(&self, peer: &Arc<str>, status: u16, elapsed: Duration) {
        let labels = ResponseLabels {
            direction: self.labels.direction,
            service: self.labels.service.clone(),
            route: self.labels.route.clone(),
            peer: Label(Arc::clone(peer)),
            status_code: status,
            class: status_class(status),
        };
        self.families.responses.get_or_create(&labels).inc();
        self.duration.observe(elapsed.as_secs_f64());
    }
}

/// `2xx` for 200, and so on.
pub(crate) fn status_class(status: u16) -> &'static str {
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_with_their_labels() {
        let mut registry = Registry::default();
        let m = HttpMetrics::register(&mut registry);
        let service: Arc<str> = "demo/echo".into();
        let route: Arc<str> = "default".into();
        let r = m.route(Direction::Outbound, &service, &route);
        let peer: Arc<str> = "spiffe://cluster.local/ns/demo/sa/server".into();
        r.request(&no_peer());
        r.response(&peer, 503, Duration::from_millis(3));
        r.retries.inc();
        m.ejections(Direction::Outbound, &service).inc();
        let text = crate::telemetry::metrics::encode(&registry).unwrap();
        assert!(text.contains(
            "pillion_http_requests_total{direction=\"outbound\",service=\"demo/echo\",route=\"default\",peer=\"\"} 1"
        ), "{text}");
        assert!(
            text.contains("status_code=\"503\",class=\"5xx\"} 1"),
            "{text}"
        );
        assert!(text.contains("pillion_http_retries_total{direction=\"outbound\",service=\"demo/echo\",route=\"default\"} 1"), "{text}");
        assert!(
            text.contains(
                "pillion_http_ejections_total{direction=\"outbound\",service=\"demo/echo\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("pillion_http_request_duration_seconds_count{direction=\"outbound\",service=\"demo/echo\",route=\"default\"} 1"), "{text}");
        assert_eq!(status_class(101), "1xx");
        assert_eq!(status_class(429), "4xx");
    }
}
