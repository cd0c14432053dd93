//! Keeps the translation current: one kube-runtime watcher per kind feeds the
//! [`Cluster`]; any change wakes the translator, which waits a short debounce (so a
//! rollout's burst of pod and EndpointSlice events becomes one new view), translates
//! again only the namespaces the changes touched
//! ([`translate_namespace`](super::translate::translate_namespace)), and publishes
//! the result on the same `watch` channel the YAML reloader uses, unless nothing a
//! proxy sees has changed. Each namespace is one part of the catalog, so a change
//! costs its namespace, not the cluster.
//!
//! Nothing is published before every kind has finished its first list, so a proxy
//! never mistakes a half-loaded cluster for the mesh; `ready` turns true then.

use super::cluster::{Cluster, Kind};
use super::crd;
use super::translate::translate_namespace;
use crate::source::{Catalog, Snapshot};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::core::{ApiResource, DynamicObject};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Default wait between a change and the translation it triggers.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(100);

/// The stores read outside the translation.
#[derive(Clone)]
pub struct Stores {
    /// Namespaces (annotations for the injector).
    pub namespaces: Store<Namespace>,
}

impl Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores").finish_non_exhaustive()
    }
}

/// The running Kubernetes source.
#[derive(Debug)]
pub struct KubeSource {
    /// Published catalogs, as the server reads them.
    pub snapshots: watch::Receiver<Snapshot>,
    /// True once the first complete translation is published.
    pub ready: watch::Receiver<bool>,
    /// The stores read outside the translation (namespaces, for the webhook).
    pub stores: Stores,
    /// The translated kinds, by namespace.
    pub cluster: Arc<Cluster>,
    /// Fires whenever any watched object changes.
    pub changed: Arc<Notify>,
    tasks: Vec<JoinHandle<()>>,
}

impl KubeSource {
    /// Waits for every watcher and the translator to stop (after `shutdown`).
    pub async fn stopped(&mut self) {
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
    }
}

/// Starts the watchers and the translator; they run until `shutdown` fires.
pub fn start(
    client: Client,
    trust_domain: String,
    debounce: Duration,
    shutdown: CancellationToken,
) -> KubeSource {
    let changed = Arc::new(Notify::new());
    let cluster = Arc::new(Cluster::default());
    let mut tasks = Vec::new();
    let watch = Watching {
        cluster: &cluster,
        changed: &changed,
        shutdown: &shutdown,
    };
    tasks.push(watch.kind::<Service>(Api::all(client.clone()), "services", |c| &c.services));
    tasks.push(
        watch.kind::<EndpointSlice>(Api::all(client.clone()), "endpointslices", |c| {
            &c.endpoint_slices
        }),
    );
    tasks.push(watch.kind::<Pod>(Api::all(client.clone()), "pods", |c| &c.pods));
    let [(k0, p0), (k1, p1), (k2, p2), (k3, p3), (k4, p4)] = crd::KINDS;
    let policies: [(&str, &'static str, Selector<DynamicObject>); 5] = [
        (k0, p0, |c| &c.routes),
        (k1, p1, |c| &c.retry_policies),
        (k2, p2, |c| &c.rate_limit_policies),
        (k3, p3, |c| &c.authorization_policies),
        (k4, p4, |c| &c.authentication_policies),
    ];
    for (kind, plural, select) in policies {
        let ar: ApiResource = crd::api_resource(kind, plural);
        tasks.push(watch.kind(Api::all_with(client.clone(), &ar), plural, select));
    }
    let (namespaces, w_namespaces) = reflector::store();
    let stream = reflector::reflector(
        w_namespaces,
        watcher(Api::<Namespace>::all(client), watcher::Config::default()),
    )
    .default_backoff();
    let (shutdown_ns, changed_ns) = (shutdown.clone(), changed.clone());
    tasks.push(tokio::spawn(async move {
        drive(stream, "namespaces", shutdown_ns, |_| {
            changed_ns.notify_one()
        })
        .await;
    }));
    let (snap_tx, snapshots) = watch::channel(Snapshot {
        version: 0,
        catalog: Arc::new(Catalog::default()),
        published: std::time::Instant::now(),
    });
    let (ready_tx, ready) = watch::channel(false);
    tasks.push(tokio::spawn(translate_loop(
        cluster.clone(),
        trust_domain,
        debounce,
        changed.clone(),
        snap_tx,
        ready_tx,
        shutdown,
    )));
    KubeSource {
        snapshots,
        ready,
        stores: Stores { namespaces },
        cluster,
        changed,
        tasks,
    }
}

/// Where one kind's objects are kept in the cluster.
type Selector<K> = fn(&Cluster) -> &Mutex<Kind<K>>;

/// What every watcher of a translated kind shares.
struct Watching<'a> {
    cluster: &'a Arc<Cluster>,
    changed: &'a Arc<Notify>,
    shutdown: &'a CancellationToken,
}

impl Watching<'_> {
    /// Drives one kind's watcher into the cluster, waking the translator on every
    /// event.
    fn kind<K>(&self, api: Api<K>, what: &'static str, select: Selector<K>) -> JoinHandle<()>
    where
        K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
        K::DynamicType: Eq + Hash + Clone + Send + Sync,
    {
        let (cluster, changed) = (self.cluster.clone(), self.changed.clone());
        let stream = watcher(api, watcher::Config::default()).default_backoff();
        tokio::spawn(drive(stream, what, self.shutdown.clone(), move |event| {
            cluster.record(select(&cluster), event);
            changed.notify_one();
        }))
    }
}

async fn drive<S, K>(
    stream: S,
    what: &'static str,
    shutdown: CancellationToken,
    mut on_event: impl FnMut(watcher::Event<K>),
) where
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
{
    let mut stream = std::pin::pin!(stream);
    let mut failing = false;
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = stream.next() => next,
        };
        match next {
            Some(Ok(event)) => {
                if failing {
                    tracing::info!(kind = what, "watch recovered");
                    failing = false;
                }
                on_event(event);
            }
            Some(Err(e)) => {
                // Logged once per outage; the backoff retries quietly.
                if !failing {
                    tracing::warn!(kind = what, error = %e, "watch failed; retrying with backoff");
                    failing = true;
                }
            }
            None => break,
        }
    }
    tracing::debug!(kind = what, "watch stopped");
}

/// The catalog after translating some namespaces again.
#[derive(Debug)]
pub struct Retranslated {
    /// The new catalog (sharing all other namespaces with the old one).
    pub catalog: Catalog,
    /// Whether any proxy would see a difference.
    pub changed: bool,
    /// What each translated namespace skipped.
    pub warnings: BTreeMap<String, Vec<String>>,
}

/// Translates `namespaces` of `cluster` again into a copy of `catalog`.
pub fn retranslate(
    cluster: &Cluster,
    catalog: &Catalog,
    namespaces: &BTreeSet<String>,
    trust_domain: &str,
) -> Retranslated {
    let mut next = catalog.clone();
    let mut warnings = BTreeMap::new();
    for ns in namespaces {
        let part = translate_namespace(&cluster.objects_in(ns), trust_domain, ns);
        next.replace_part(ns, part.workloads, part.services);
        warnings.insert(ns.clone(), part.warnings);
    }
    let changed = (namespaces.iter()).any(|ns| !catalog.same_part(&next, ns));
    Retranslated {
        catalog: next,
        changed,
        warnings,
    }
}

/// Translates the touched namespaces after every (debounced) change and publishes
/// real changes.
async fn translate_loop(
    cluster: Arc<Cluster>,
    trust_domain: String,
    debounce: Duration,
    changed: Arc<Notify>,
    snapshots: watch::Sender<Snapshot>,
    ready: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    while !cluster.listed() {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = changed.notified() => {}
        }
    }
    tracing::info!("first list of every watched kind loaded");
    let mut last_warnings: BTreeMap<String, Vec<String>> = BTreeMap::new();
    loop {
        let dirty = cluster.take_dirty();
        let current = snapshots.borrow().clone();
        let step = retranslate(&cluster, &current.catalog, &dirty, &trust_domain);
        for (ns, warnings) in step.warnings {
            if last_warnings.get(&ns) != Some(&warnings) {
                for w in &warnings {
                    tracing::warn!(namespace = %ns, "skipped: {w}");
                }
            }
            if warnings.is_empty() {
                last_warnings.remove(&ns);
            } else {
                last_warnings.insert(ns, warnings);
            }
        }
        if current.version == 0 || step.changed {
            let version = current.version + 1;
            let catalog = step.catalog;
            tracing::info!(
                version,
                namespaces = dirty.len(),
                services = catalog.services().len(),
                workloads = catalog.workloads().len(),
                "cluster view published"
            );
            snapshots.send_replace(Snapshot {
                version,
                catalog: Arc::new(catalog),
                published: std::time::Instant::now(),
            });
        }
        ready.send_replace(true);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = changed.notified() => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(debounce) => {}
        }
    }
}
