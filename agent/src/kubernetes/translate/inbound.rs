//! Inbound policy of workloads: AuthorizationPolicies and Service-targeted rate
//! limits (enforced by the proxies of the Service's pods).

use super::rules::rate_limit;
use super::{find_service, Translator};
use crate::kubernetes::crd::{self, AuthorizationPolicySpec, RateLimitPolicySpec};
use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use pillion_api::policy::ServerRoute;
use pillion_api::view::{self, Mode, PortPolicy};
use std::collections::BTreeSet;
use std::sync::Arc;

impl Translator<'_> {
    /// The identities of the meshed pods of namespace `ns` that carry every label of
    /// `selector` (an empty one selects all): whom a port policy applies to.
    pub(super) fn selected(
        &self,
        ns: &str,
        selector: &std::collections::BTreeMap<String, String>,
        pods: &[Arc<Pod>],
    ) -> BTreeSet<String> {
        pods.iter()
            .filter(|pod| pod.metadata.namespace.as_deref() == Some(ns))
            .filter(|pod| {
                let labels = pod.metadata.labels.as_ref();
                selector
                    .iter()
                    .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
            })
            .filter_map(|pod| {
                let key = (ns.to_string(), pod.metadata.name.clone()?);
                self.pods
                    .get(&key)?
                    .identity
                    .as_ref()
                    .map(|i| i.to_string())
            })
            .collect()
    }

    /// Service-targeted rate limits: a catch-all server route on the target port of
    /// every workload behind the Service.
    pub(super) fn service_rate_limits(
        &mut self,
        policies: &[Arc<DynamicObject>],
        services: &[view::Service],
    ) {
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
    pub(super) fn authorization_policies(
        &mut self,
        policies: &[Arc<DynamicObject>],
        pods: &[Arc<Pod>],
    ) {
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
                match pillion_api::identity::IdentityPattern::parse(pattern) {
                    Ok(_) => allow.push(pattern.clone()),
                    Err(e) => bad = Some(format!("{pattern:?}: {}", e.reason)),
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
            for id in self.selected(&p.namespace, &selector, pods) {
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
