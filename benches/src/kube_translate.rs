//! The Kubernetes source's cost per change (part of `--control-plane`): a cluster of
//! N Services, 100 per namespace, each with an EndpointSlice and a meshed Pod, kept
//! as the agent's watchers keep it ([`Cluster`]). One EndpointSlice gains an
//! endpoint, and the namespaces the change touched are translated again into the
//! catalog ([`retranslate`]); beside it, one translation of the whole cluster, which
//! is what every change cost the agent before. In process, one thread: no API
//! server here, and the figure is the agent's own work after a watch event arrives.

use std::collections::BTreeSet;
use std::time::Instant;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::Event;
use pillion_agent::kubernetes::cluster::Cluster;
use pillion_agent::kubernetes::translate::{translate, INJECTED_ANNOTATION};
use pillion_agent::kubernetes::watch::retranslate;
use pillion_agent::source::Catalog;
use pillion_api::defaults::TRUST_DOMAIN;
use serde::Serialize;
use serde_json::json;

use crate::stats::percentile;

/// Services per namespace.
const PER_NAMESPACE: usize = 100;
/// Changes timed per size.
const CHANGES: usize = 20;

/// The figures of one cluster size.
#[derive(Debug, Clone, Serialize)]
pub struct KubeSize {
    /// Services in the cluster.
    pub services: usize,
    /// Namespaces they are spread over.
    pub namespaces: usize,
    /// One EndpointSlice change, event in → new catalog out, p50 ms.
    pub per_change_p50_ms: f64,
    /// The same, the slowest of the changes, ms.
    pub per_change_max_ms: f64,
    /// One translation of the whole cluster (every change, before), ms.
    pub whole_cluster_ms: f64,
}

/// Measures each size.
pub fn run(sizes: &[usize]) -> Result<Vec<KubeSize>> {
    sizes.iter().map(|&n| one(n)).collect()
}

fn one(services: usize) -> Result<KubeSize> {
    let cluster = Cluster::default();
    let (mut svcs, mut slices, mut pods) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..services {
        svcs.push(service(i)?);
        slices.push(slice(i, 0)?);
        pods.push(pod(i)?);
    }
    cluster.list(&cluster.services, svcs);
    cluster.list(&cluster.endpoint_slices, slices);
    cluster.list(&cluster.pods, pods);
    cluster.list(&cluster.routes, Vec::new());
    cluster.list(&cluster.retry_policies, Vec::new());
    cluster.list(&cluster.rate_limit_policies, Vec::new());
    cluster.list(&cluster.authorization_policies, Vec::new());
    cluster.list(&cluster.authentication_policies, Vec::new());
    let first = retranslate(
        &cluster,
        &Catalog::default(),
        &cluster.take_dirty(),
        TRUST_DOMAIN,
    );
    let mut catalog = first.catalog;
    let mut times = Vec::new();
    for change in 1..=CHANGES {
        let started = Instant::now();
        cluster.record(&cluster.endpoint_slices, Event::Apply(slice(0, change)?));
        let dirty: BTreeSet<String> = cluster.take_dirty();
        let step = retranslate(&cluster, &catalog, &dirty, TRUST_DOMAIN);
        times.push(started.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(step.changed, "change {change} changed nothing");
        catalog = step.catalog;
    }
    let started = Instant::now();
    let whole = translate(&cluster.objects(), TRUST_DOMAIN);
    let whole_cluster_ms = started.elapsed().as_secs_f64() * 1e3;
    anyhow::ensure!(
        whole.catalog.services().len() == catalog.services().len(),
        "the whole translation has {} services, the catalog {}",
        whole.catalog.services().len(),
        catalog.services().len()
    );
    let size = KubeSize {
        services,
        namespaces: services.div_ceil(PER_NAMESPACE),
        per_change_p50_ms: percentile(&times, 50.0),
        per_change_max_ms: times.iter().copied().fold(0.0, f64::max),
        whole_cluster_ms,
    };
    eprintln!(
        "kubernetes source, {services} services: {:.3} ms per change (max {:.3}), \
         {:.1} ms for the whole cluster",
        size.per_change_p50_ms, size.per_change_max_ms, size.whole_cluster_ms
    );
    Ok(size)
}

fn namespace(i: usize) -> String {
    format!("ns{}", i / PER_NAMESPACE)
}

/// The ClusterIP of Service `i` (never dialled).
fn cluster_ip(i: usize) -> String {
    std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(198, 18, 0, 0)) + i as u32)
        .to_string()
}

/// The pod IP of Service `i`'s pod (never dialled).
fn pod_ip(i: usize) -> String {
    std::net::Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, (i >> 16) as u16, i as u16).to_string()
}

fn service(i: usize) -> Result<Service> {
    serde_json::from_value(json!({
        "metadata": {"name": format!("s{i}"), "namespace": namespace(i)},
        "spec": {"clusterIP": cluster_ip(i), "ports": [{"name": "http", "port": 80}]}
    }))
    .context("a Service")
}

/// Service `i`'s slice, with `extra` more endpoints.
fn slice(i: usize, extra: usize) -> Result<EndpointSlice> {
    let mut endpoints = vec![json!({
        "addresses": [pod_ip(i)],
        "conditions": {"ready": true},
        "targetRef": {"kind": "Pod", "name": format!("p{i}"), "namespace": namespace(i)}
    })];
    for e in 0..extra {
        let ip = std::net::Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, e as u16 + 1);
        endpoints.push(json!({"addresses": [ip.to_string()]}));
    }
    serde_json::from_value(json!({
        "metadata": {
            "name": format!("s{i}-abcde"),
            "namespace": namespace(i),
            "labels": {"kubernetes.io/service-name": format!("s{i}")}
        },
        "addressType": "IPv6",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    }))
    .context("an EndpointSlice")
}

fn pod(i: usize) -> Result<Pod> {
    serde_json::from_value(json!({
        "metadata": {
            "name": format!("p{i}"),
            "namespace": namespace(i),
            "labels": {"app": format!("s{i}")},
            "annotations": {(INJECTED_ANNOTATION): "true"}
        },
        "spec": {"serviceAccountName": format!("s{i}"), "containers": []},
        "status": {"podIP": pod_ip(i), "podIPs": [{"ip": pod_ip(i)}]}
    }))
    .context("a Pod")
}

/// The figure as a Markdown table.
pub fn table(sizes: &[KubeSize]) -> String {
    let mut md = String::from(
        "| services | namespaces | one EndpointSlice change, p50 ms | max ms | \
         whole cluster translated, ms |\n|---:|---:|---:|---:|---:|\n",
    );
    for s in sizes {
        md.push_str(&format!(
            "| {} | {} | {:.3} | {:.3} | {:.1} |\n",
            s.services, s.namespaces, s.per_change_p50_ms, s.per_change_max_ms, s.whole_cluster_ms
        ));
    }
    md
}
