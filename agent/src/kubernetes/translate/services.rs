//! Services, their ports and endpoints, from Services, EndpointSlices and the pod
//! index.

use super::{Translator, OPAQUE_PORTS_ANNOTATION, SERVICE_NAME_LABEL};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use pillion_api::view::{self, Endpoint, Protocol};
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

impl Translator<'_> {
    /// Services with their ports and ready endpoints, sorted by namespace and name.
    pub(super) fn services(
        &mut self,
        services: &[Arc<Service>],
        slices: &[Arc<EndpointSlice>],
    ) -> Vec<view::Service> {
        let mut by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
        for slice in slices {
            let ns = slice.metadata.namespace.as_deref();
            let svc = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL));
            if let (Some(ns), Some(svc)) = (ns, svc) {
                by_service
                    .entry((ns, svc.as_str()))
                    .or_default()
                    .push(slice);
            }
        }
        let mut out = Vec::new();
        for service in services {
            let (Some(ns), Some(name)) = (&service.metadata.namespace, &service.metadata.name)
            else {
                continue;
            };
            let slices = by_service
                .get(&(ns.as_str(), name.as_str()))
                .map(Vec::as_slice)
                .unwrap_or_default();
            if let Some(s) = self.service(service, ns, name, slices) {
                out.push(s);
            }
        }
        out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        out
    }

    pub(super) fn service(
        &mut self,
        service: &Service,
        ns: &str,
        name: &str,
        slices: &[&EndpointSlice],
    ) -> Option<view::Service> {
        let spec = service.spec.as_ref()?;
        if spec.type_.as_deref() == Some("ExternalName") {
            return None;
        }
        let mut addresses = Vec::new();
        let ips = spec
            .cluster_ips
            .clone()
            .filter(|ips| !ips.is_empty())
            .or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip]))
            .unwrap_or_default();
        for ip in ips.iter().filter(|ip| !ip.is_empty() && *ip != "None") {
            match ip.parse::<IpAddr>() {
                Ok(ip) if !addresses.contains(&ip) => addresses.push(ip),
                Ok(_) => {}
                Err(_) => self.warn(format!("service {ns}/{name}: bad clusterIP {ip:?}")),
            }
        }
        let opaque = self.opaque_ports(service, ns, name);
        let mut ports = Vec::new();
        // Service port name → service port number, to pick slice ports.
        let mut names: HashMap<String, u16> = HashMap::new();
        for p in spec.ports.iter().flatten() {
            if !is_tcp(p.protocol.as_deref()) {
                continue;
            }
            let Some(number) = port_number(p.port) else {
                self.warn(format!("service {ns}/{name}: port {} out of range", p.port));
                continue;
            };
            let port_name = p.name.clone().unwrap_or_default();
            let target = slices
                .iter()
                .flat_map(|s| s.ports.iter().flatten())
                .find(|sp| sp.name.clone().unwrap_or_default() == port_name)
                .and_then(|sp| sp.port.and_then(port_number))
                .or(match &p.target_port {
                    Some(IntOrString::Int(n)) => port_number(*n),
                    _ => None,
                });
            names.insert(port_name, number);
            let protocol = if opaque.contains(&number) {
                Protocol::Opaque
            } else {
                app_protocol(p.app_protocol.as_deref())
            };
            ports.push(view::ServicePort {
                port: number,
                protocol,
                target_port: target.filter(|&t| t != number),
                routes: Vec::new(),
                circuit_breaker: None,
            });
        }
        if ports.is_empty() {
            return None;
        }
        let endpoints = self.endpoints(slices, &names);
        Some(view::Service {
            name: name.to_string(),
            namespace: ns.to_string(),
            addresses,
            ports,
            endpoints,
        })
    }

    pub(super) fn opaque_ports(&mut self, service: &Service, ns: &str, name: &str) -> Vec<u16> {
        let Some(text) = service
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(OPAQUE_PORTS_ANNOTATION))
        else {
            return Vec::new();
        };
        match pillion_inject::values::parse_ports(text) {
            Ok(ports) => ports,
            Err(e) => {
                self.warn(format!(
                    "service {ns}/{name}: {OPAQUE_PORTS_ANNOTATION} ignored: {e}"
                ));
                Vec::new()
            }
        }
    }

    /// Ready endpoints of a service's slices, on the ports named like service ports.
    pub(super) fn endpoints(
        &mut self,
        slices: &[&EndpointSlice],
        names: &HashMap<String, u16>,
    ) -> Vec<Endpoint> {
        let mut out: Vec<Endpoint> = Vec::new();
        let mut seen = BTreeSet::new();
        for slice in slices {
            if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
                continue;
            }
            let slice_ns = slice.metadata.namespace.clone().unwrap_or_default();
            let ports: Vec<u16> = slice
                .ports
                .iter()
                .flatten()
                .filter(|p| is_tcp(p.protocol.as_deref()))
                .filter(|p| names.contains_key(&p.name.clone().unwrap_or_default()))
                .filter_map(|p| p.port.and_then(port_number))
                .collect();
            for ep in &slice.endpoints {
                let ready = ep.conditions.as_ref().and_then(|c| c.ready);
                if ready == Some(false) {
                    continue;
                }
                let pod = ep.target_ref.as_ref().and_then(|r| {
                    if r.kind.as_deref() != Some("Pod") {
                        return None;
                    }
                    let ns = r.namespace.clone().unwrap_or_else(|| slice_ns.clone());
                    self.pods.get(&(ns, r.name.clone()?))
                });
                let identity = pod.and_then(|p| p.identity.as_ref().map(|i| i.to_string()));
                let labels = pod.map(|p| p.labels.clone()).unwrap_or_default();
                for addr in &ep.addresses {
                    let Ok(ip) = addr.parse::<IpAddr>() else {
                        continue;
                    };
                    for &port in &ports {
                        if seen.insert((ip, port)) {
                            out.push(Endpoint {
                                address: ip,
                                port,
                                identity: identity.clone(),
                                labels: labels.clone(),
                            });
                        }
                    }
                }
            }
        }
        out.sort_by_key(|e| (e.address, e.port));
        out
    }
}

fn is_tcp(protocol: Option<&str>) -> bool {
    matches!(protocol, None | Some("TCP"))
}

fn port_number(n: i32) -> Option<u16> {
    u16::try_from(n).ok().filter(|&p| p != 0)
}

/// How an `appProtocol` value pins the protocol; anything unknown is detected.
fn app_protocol(value: Option<&str>) -> Protocol {
    match value.map(str::to_ascii_lowercase).as_deref() {
        Some("http" | "http1" | "http/1.1") => Protocol::Http1,
        Some("http2" | "h2c" | "kubernetes.io/h2c" | "grpc") => Protocol::Http2,
        Some(
            "tcp" | "opaque" | "mysql" | "postgres" | "postgresql" | "redis" | "mongo" | "mongodb"
            | "smtp" | "tls" | "https",
        ) => Protocol::Opaque,
        _ => Protocol::Auto,
    }
}
