//! AuthenticationPolicies: end users' tokens on one port of the selected pods —
//! the same `jwt` policy (providers, introspection) and claim rules the YAML
//! source writes, checked by the same validator.

use super::{find_service, Translator};
use crate::kubernetes::crd::{
    self, AuthenticationPolicySpec, AuthenticationRule, IntrospectionSpec, ProviderSpec, TokenPlace,
};
use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use pillion_api::jwt::{Introspection, JwtPolicy, JwtProvider, TokenSource};
use pillion_api::policy::{validate_port_auth, PathMatch, RouteMatch, ServerPolicy, ServerRoute};
use pillion_api::view::{self, PortPolicy, Protocol};
use std::sync::Arc;

impl Translator<'_> {
    /// Each policy's `jwt` and claim rules onto its port of every workload with a
    /// selected pod. One policy per port and workload: a second is skipped there
    /// with a warning (policies are taken in namespace/name order).
    pub(super) fn authentication_policies(
        &mut self,
        policies: &[Arc<DynamicObject>],
        pods: &[Arc<Pod>],
        services: &[view::Service],
    ) {
        let mut parsed = Vec::new();
        for obj in policies {
            match crd::parse::<AuthenticationPolicySpec>(obj) {
                Ok(p) => parsed.push(p),
                Err(e) => self.warn(format!("AuthenticationPolicy {e}")),
            }
        }
        parsed.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        for p in parsed {
            let label = format!("AuthenticationPolicy {}/{}", p.namespace, p.name);
            let (jwt, server) = match compile(&p.spec, &p.namespace, &p.name) {
                Ok(compiled) => compiled,
                Err(why) => {
                    self.warn(format!("{label} skipped: {why}"));
                    continue;
                }
            };
            let endpoint = jwt.introspection.as_ref();
            if let Some(why) = endpoint.and_then(|x| unusable_endpoint(x, &p.namespace, services)) {
                self.warn(format!("{label} skipped: {why}"));
                continue;
            }
            if let Some(gateway) = &p.spec.gateway {
                self.gateway_authentication(gateway, &p.namespace, label, jwt, server);
                continue;
            }
            let selector = (p.spec.pod_selector.as_ref())
                .map(|s| s.match_labels.clone())
                .unwrap_or_default();
            for id in self.selected(&p.namespace, &selector, pods) {
                let Some(w) = self.workloads.get_mut(&id) else {
                    continue;
                };
                let default_mode = w.inbound.default_mode;
                let port = (w.inbound.ports.entry(p.spec.port)).or_insert_with(|| PortPolicy {
                    mode: default_mode,
                    ..PortPolicy::default()
                });
                if port.jwt.is_some() {
                    let warning = format!(
                        "{label} skipped for {id}: port {} already has an AuthenticationPolicy",
                        p.spec.port
                    );
                    self.warnings.push(warning);
                    continue;
                }
                port.jwt = Some(jwt.clone());
                port.server.routes.extend(server.routes.iter().cloned());
            }
        }
    }
}

/// A gateway host's end-user policy, waiting for the host its Routes make.
#[derive(Debug, Clone)]
pub(super) struct HostAuth {
    pub(super) jwt: JwtPolicy,
    pub(super) server: ServerPolicy,
    /// The policy it came from, for warnings.
    pub(super) label: String,
}

impl Translator<'_> {
    /// A policy for a gateway's hosts: kept by hostname until the gateway's hosts
    /// are built; the first policy for a host applies.
    fn gateway_authentication(
        &mut self,
        gateway: &crd::GatewayTarget,
        ns: &str,
        label: String,
        jwt: JwtPolicy,
        server: ServerPolicy,
    ) {
        let identity = match pillion_identity::SpiffeId::new(self.trust_domain, ns, &gateway.name) {
            Ok(id) => id.to_string(),
            Err(e) => return self.warn(format!("{label} skipped: {e}")),
        };
        if gateway.hostnames.is_empty() {
            return self.warn(format!("{label} skipped: a gateway target needs hostnames"));
        }
        for hostname in &gateway.hostnames {
            let hosts = self.gateway_auth.entry(identity.clone()).or_default();
            match hosts.entry(hostname.to_ascii_lowercase()) {
                std::collections::btree_map::Entry::Occupied(_) => {
                    let warning =
                        format!("{label} skipped for host {hostname}: it already has an AuthenticationPolicy");
                    self.warnings.push(warning);
                }
                std::collections::btree_map::Entry::Vacant(slot) => {
                    slot.insert(HostAuth {
                        jwt: jwt.clone(),
                        server: server.clone(),
                        label: label.clone(),
                    });
                }
            }
        }
    }
}

/// The wire policy and claim rules of `spec` (in namespace `ns`), validated.
fn compile(
    spec: &AuthenticationPolicySpec,
    ns: &str,
    name: &str,
) -> Result<(JwtPolicy, ServerPolicy), String> {
    match (spec.port, &spec.gateway) {
        (0, None) => return Err("port 0 (a port, or a gateway target, is needed)".into()),
        (p, Some(_)) if p != 0 => return Err("a gateway target takes no port".into()),
        _ => {}
    }
    let providers = (spec.providers.iter())
        .enumerate()
        .map(|(i, p)| provider(p).map_err(|why| format!("providers[{i}]: {why}")))
        .collect::<Result<_, _>>()?;
    let introspection = match &spec.introspection {
        Some(x) => Some(introspection(x, ns).map_err(|why| format!("introspection: {why}"))?),
        None => None,
    };
    let jwt = JwtPolicy {
        providers,
        introspection,
        required: spec.required,
    };
    let routes = (spec.rules.iter())
        .enumerate()
        .map(|(i, r)| rule(r, name, i).map_err(|why| format!("rules[{i}]: {why}")))
        .collect::<Result<_, _>>()?;
    let server = ServerPolicy { routes };
    validate_port_auth(Some(&jwt), &server).map_err(|e| e.to_string())?;
    Ok((jwt, server))
}

fn places(from: &[TokenPlace]) -> Result<Vec<TokenSource>, String> {
    from.iter()
        .map(|place| match (&place.header, &place.cookie) {
            (Some(h), None) => Ok(TokenSource::Header {
                name: h.name.clone(),
                prefix: h.prefix.clone(),
            }),
            (None, Some(cookie)) => Ok(TokenSource::Cookie(cookie.clone())),
            _ => Err("each `from` entry is exactly one of header and cookie".to_string()),
        })
        .collect()
}

/// A provider as the YAML source writes it, so both sources share one conversion
/// (and its defaults).
fn provider(p: &ProviderSpec) -> Result<JwtProvider, String> {
    let spec = crate::source::jwt::JwtProviderSpec {
        issuer: p.issuer.clone(),
        audiences: p.audiences.clone(),
        jwks: p.jwks.clone().map(serde_json::Value::String),
        jwks_uri: p.jwks_uri.clone(),
        from: places(&p.from)?,
        clock_skew: p.clock_skew,
        claim_headers: p.claim_headers.clone(),
        forward_token: p.forward_token,
    };
    Ok(spec.to_provider())
}

/// The introspection endpoint as the YAML source writes it, converted the same way.
fn introspection(x: &IntrospectionSpec, ns: &str) -> Result<Introspection, String> {
    let spec = crate::source::jwt::IntrospectionSpec {
        service: x.service.clone(),
        port: x.port,
        path: x.path.clone(),
        issuer: x.issuer.clone(),
        audiences: x.audiences.clone(),
        from: places(&x.from)?,
        timeout: x.timeout,
        cache_ttl: x.cache_ttl,
        clock_skew: x.clock_skew,
        claim_headers: x.claim_headers.clone(),
        forward_token: x.forward_token,
    };
    Ok(spec.to_wire(ns))
}

/// A rule as a server route, named `authn.<policy>.<rule name or index>`.
fn rule(r: &AuthenticationRule, policy: &str, index: usize) -> Result<ServerRoute, String> {
    let path = match r.path.kind.as_deref() {
        None | Some("PathPrefix") => PathMatch::Prefix(r.path.value.clone()),
        Some("Exact") => PathMatch::Exact(r.path.value.clone()),
        Some(other) => {
            return Err(format!(
                "path type {other:?} is neither Exact nor PathPrefix"
            ))
        }
    };
    let rule_name = (r.name.clone()).unwrap_or_else(|| index.to_string());
    Ok(ServerRoute {
        name: format!("authn.{policy}.{rule_name}"),
        matches: vec![RouteMatch {
            path: Some(path),
            ..RouteMatch::default()
        }],
        claims: r.claims.clone(),
        jwt_required: r.jwt_required,
        ..ServerRoute::default()
    })
}

/// Why an introspection endpoint in the policy's namespace `own` cannot be used (one
/// of another namespace is not visible here: a missing one answers 503 at the proxy).
fn unusable_endpoint(x: &Introspection, own: &str, services: &[view::Service]) -> Option<String> {
    let (ns, name) = x.service_name()?;
    let Some(service) = find_service(services, ns, name) else {
        return (ns == own).then(|| format!("no Service {name} for introspection"));
    };
    match service.ports.iter().find(|p| p.port == x.port) {
        None => Some(format!(
            "introspection service {} has no port {}",
            x.service, x.port
        )),
        Some(p) if p.protocol == Protocol::Opaque => Some(format!(
            "introspection port {} of {} is opaque: introspection is asked in HTTP",
            x.port, x.service
        )),
        Some(_) => None,
    }
}
