//! Keeps the translation current: one kube-runtime watcher per kind feeds a store;
//! any change wakes the translator, which waits a short debounce (so a rollout's burst
//! of pod and EndpointSlice events becomes one new view), re-runs
//! [`translate`](super::translate::translate) over every store and publishes the
//! result on the same `watch` channel the YAML reloader uses, unless nothing a proxy
//! sees has changed.
//!
//! Nothing is published before every store has finished its first list, so a proxy
//! never mistakes a half-loaded cluster for the mesh; `ready` turns true then.

use super::crd;
use super::translate::{translate, Objects};
use crate::source::{Catalog, Snapshot};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::core::{ApiResource, DynamicObject};
use kube::runtime::reflector::{self, store::Writer, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Default wait between a change and the translation it triggers.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(100);

/// The stores the translation reads.
#[derive(Clone)]
pub struct Stores {
    /// Services.
    pub services: Store<Service>,
    /// EndpointSlices.
    pub endpoint_slices: Store<EndpointSlice>,
    /// Pods.
    pub pods: Store<Pod>,
    /// Namespaces (annotations for the injector).
    pub namespaces: Store<Namespace>,
    /// Routes.
    pub routes: Store<DynamicObject>,
    /// RetryPolicies.
    pub retry_policies: Store<DynamicObject>,
    /// RateLimitPolicies.
    pub rate_limit_policies: Store<DynamicObject>,
    /// AuthorizationPolicies.
    pub authorization_policies: Store<DynamicObject>,
}

impl Stores {
    /// What the translation needs, copied out of the stores (cheap: `Arc`s).
    pub fn objects(&self) -> Objects {
        Objects {
            services: self.services.state(),
            endpoint_slices: self.endpoint_slices.state(),
            pods: self.pods.state(),
            routes: self.routes.state(),
            retry_policies: self.retry_policies.state(),
            rate_limit_policies: self.rate_limit_policies.state(),
            authorization_policies: self.authorization_policies.state(),
        }
    }

    /// Waits until every store holds its first complete list.
    async fn wait_until_ready(&self) -> bool {
        self.services.wait_until_ready().await.is_ok()
            && self.endpoint_slices.wait_until_ready().await.is_ok()
            && self.pods.wait_until_ready().await.is_ok()
            && self.namespaces.wait_until_ready().await.is_ok()
            && self.routes.wait_until_ready().await.is_ok()
            && self.retry_policies.wait_until_ready().await.is_ok()
            && self.rate_limit_policies.wait_until_ready().await.is_ok()
            && self.authorization_policies.wait_until_ready().await.is_ok()
    }
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
    /// The stores (namespaces for the webhook, the rest for inspection).
    pub stores: Stores,
    /// Fires whenever any store changes.
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
    let mut tasks = Vec::new();
    let (services, w_services) = reflector::store();
    let (slices, w_slices) = reflector::store();
    let (pods, w_pods) = reflector::store();
    let (namespaces, w_namespaces) = reflector::store();
    tasks.push(run::<Service>(
        Api::all(client.clone()),
        w_services,
        "services",
        &changed,
        &shutdown,
    ));
    tasks.push(run::<EndpointSlice>(
        Api::all(client.clone()),
        w_slices,
        "endpointslices",
        &changed,
        &shutdown,
    ));
    tasks.push(run::<Pod>(
        Api::all(client.clone()),
        w_pods,
        "pods",
        &changed,
        &shutdown,
    ));
    tasks.push(run::<Namespace>(
        Api::all(client.clone()),
        w_namespaces,
        "namespaces",
        &changed,
        &shutdown,
    ));
    let mut crd_store = |kind: &str, plural: &'static str| {
        let ar: ApiResource = crd::api_resource(kind, plural);
        let writer = Writer::new(ar.clone());
        let store = writer.as_reader();
        tasks.push(run::<DynamicObject>(
            Api::all_with(client.clone(), &ar),
            writer,
            plural,
            &changed,
            &shutdown,
        ));
        store
    };
    let [(k0, p0), (k1, p1), (k2, p2), (k3, p3)] = crd::KINDS;
    let routes = crd_store(k0, p0);
    let retry_policies = crd_store(k1, p1);
    let rate_limit_policies = crd_store(k2, p2);
    let authorization_policies = crd_store(k3, p3);
    let stores = Stores {
        services,
        endpoint_slices: slices,
        pods,
        namespaces,
        routes,
        retry_policies,
        rate_limit_policies,
        authorization_policies,
    };
    let (snap_tx, snapshots) = watch::channel(Snapshot {
        version: 0,
        catalog: Arc::new(Catalog::default()),
        published: std::time::Instant::now(),
    });
    let (ready_tx, ready) = watch::channel(false);
    tasks.push(tokio::spawn(translate_loop(
        stores.clone(),
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
        stores,
        changed,
        tasks,
    }
}

/// Drives one kind's watcher into its store, waking the translator on every event.
fn run<K>(
    api: Api<K>,
    writer: Writer<K>,
    what: &'static str,
    changed: &Arc<Notify>,
    shutdown: &CancellationToken,
) -> JoinHandle<()>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    let changed = changed.clone();
    let shutdown = shutdown.clone();
    let stream =
        reflector::reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
    tokio::spawn(async move {
        drive(stream, what, changed, shutdown).await;
    })
}

async fn drive<S, K>(
    stream: S,
    what: &'static str,
    changed: Arc<Notify>,
    shutdown: CancellationToken,
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
            Some(Ok(_)) => {
                if failing {
                    tracing::info!(kind = what, "watch recovered");
                    failing = false;
                }
                changed.notify_one();
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

/// Re-translates after every (debounced) change and publishes real changes.
async fn translate_loop(
    stores: Stores,
    trust_domain: String,
    debounce: Duration,
    changed: Arc<Notify>,
    snapshots: watch::Sender<Snapshot>,
    ready: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    tokio::select! {
        _ = shutdown.cancelled() => return,
        ok = stores.wait_until_ready() => if !ok { return },
    }
    tracing::info!("first list of every watched kind loaded");
    let mut last_warnings: Vec<String> = Vec::new();
    loop {
        let translation = translate(&stores.objects(), &trust_domain);
        if translation.warnings != last_warnings {
            for w in &translation.warnings {
                tracing::warn!("skipped: {w}");
            }
            last_warnings = translation.warnings;
        }
        let current = snapshots.borrow().clone();
        if current.version == 0 || !current.catalog.same_content(&translation.catalog) {
            let version = current.version + 1;
            let catalog = translation.catalog;
            tracing::info!(
                version,
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
