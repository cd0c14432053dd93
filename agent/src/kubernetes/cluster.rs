//! The objects the translation reads, kept by namespace as the watchers report them,
//! and the namespaces a change touched since the last translation. The Kubernetes
//! source translates only those ([`super::translate::translate_namespace`]), so a
//! change costs its namespace, never the cluster.
//!
//! Nearly everything the translation joins lives in one namespace: a Service, its
//! EndpointSlices and their pods, the policies that target it, the workloads of its
//! ServiceAccounts. The one exception is a Route whose `parentRefs` name another
//! namespace: it is kept in its own namespace and also listed under each namespace
//! it reaches, and a change to it touches them all.

use super::translate::Objects;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::core::DynamicObject;
use kube::runtime::watcher::Event;
use kube::Resource;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

/// Objects of one kind in one namespace, by name.
type ByName<K> = BTreeMap<String, Arc<K>>;

/// One kind's objects, by namespace and name.
#[derive(Debug)]
pub struct Kind<K> {
    by_ns: HashMap<String, ByName<K>>,
    /// Objects reaching namespaces other than their own, by the namespace reached.
    reaching: HashMap<String, BTreeSet<(String, String)>>,
    /// The list being received after a watch (re)started, swapped in when complete.
    relist: Option<HashMap<String, ByName<K>>>,
    /// Whether a first complete list is in.
    listed: bool,
    /// The namespaces other than its own an object reaches.
    reach: fn(&K) -> Vec<String>,
}

impl<K: Resource> Kind<K> {
    fn new(reach: fn(&K) -> Vec<String>) -> Self {
        Self {
            by_ns: HashMap::new(),
            reaching: HashMap::new(),
            relist: None,
            listed: false,
            reach,
        }
    }

    /// Takes in one watcher event, noting the namespaces it touched in `dirty`.
    pub fn record(&mut self, event: Event<K>, dirty: &mut Dirty) {
        match event {
            Event::Apply(obj) => {
                let Some((ns, name)) = key(&obj) else { return };
                let obj = Arc::new(slim(obj));
                self.touch(&ns, &name, Some(&obj), dirty);
                let old = self
                    .by_ns
                    .entry(ns.clone())
                    .or_default()
                    .insert(name.clone(), obj);
                self.forget_reach(&ns, &name, old.as_deref(), dirty);
            }
            Event::Delete(obj) => {
                let Some((ns, name)) = key(&obj) else { return };
                let removed = match self.by_ns.get_mut(&ns) {
                    Some(names) => {
                        let removed = names.remove(&name);
                        if names.is_empty() {
                            self.by_ns.remove(&ns);
                        }
                        removed
                    }
                    None => None,
                };
                dirty.namespaces.insert(ns.clone());
                self.forget_reach(&ns, &name, removed.as_deref(), dirty);
            }
            Event::Init => self.relist = Some(HashMap::new()),
            Event::InitApply(obj) => {
                let Some((ns, name)) = key(&obj) else { return };
                let relist = self.relist.get_or_insert_with(HashMap::new);
                relist
                    .entry(ns)
                    .or_default()
                    .insert(name, Arc::new(slim(obj)));
            }
            Event::InitDone => {
                let listed = self.relist.take().unwrap_or_default();
                // Every namespace before and after may have changed.
                dirty.namespaces.extend(self.by_ns.keys().cloned());
                dirty.namespaces.extend(listed.keys().cloned());
                dirty.namespaces.extend(self.reaching.keys().cloned());
                self.by_ns = listed;
                self.reaching.clear();
                let reach = self.reach;
                for (ns, names) in &self.by_ns {
                    for (name, obj) in names {
                        for other in reach(obj).into_iter().filter(|o| o != ns) {
                            dirty.namespaces.insert(other.clone());
                            let entry = self.reaching.entry(other).or_default();
                            entry.insert((ns.clone(), name.clone()));
                        }
                    }
                }
                self.listed = true;
            }
        }
    }

    /// Notes `ns` and the namespaces a new object reaches as touched.
    fn touch(&mut self, ns: &str, name: &str, obj: Option<&Arc<K>>, dirty: &mut Dirty) {
        dirty.namespaces.insert(ns.to_string());
        let Some(obj) = obj else { return };
        for other in (self.reach)(obj).into_iter().filter(|o| o != ns) {
            dirty.namespaces.insert(other.clone());
            let entry = self.reaching.entry(other).or_default();
            entry.insert((ns.to_string(), name.to_string()));
        }
    }

    /// Drops what the previous version of an object reached that it no longer does.
    fn forget_reach(&mut self, ns: &str, name: &str, old: Option<&K>, dirty: &mut Dirty) {
        let Some(old) = old else { return };
        let now: Vec<String> = (self.by_ns.get(ns))
            .and_then(|names| names.get(name))
            .map(|obj| (self.reach)(obj))
            .unwrap_or_default();
        for other in (self.reach)(old).into_iter().filter(|o| o != ns) {
            dirty.namespaces.insert(other.clone());
            if !now.contains(&other) {
                if let Some(entry) = self.reaching.get_mut(&other) {
                    entry.remove(&(ns.to_string(), name.to_string()));
                    if entry.is_empty() {
                        self.reaching.remove(&other);
                    }
                }
            }
        }
    }

    /// The objects of `ns`.
    fn in_namespace(&self, ns: &str) -> Vec<Arc<K>> {
        (self.by_ns.get(ns).into_iter())
            .flat_map(|names| names.values().cloned())
            .collect()
    }

    /// The objects of other namespaces that reach `ns`.
    fn reaching(&self, ns: &str) -> Vec<Arc<K>> {
        (self.reaching.get(ns).into_iter().flatten())
            .filter_map(|(their_ns, name)| self.by_ns.get(their_ns)?.get(name).cloned())
            .collect()
    }
}

/// The namespaces touched since the last translation.
#[derive(Debug, Default)]
pub struct Dirty {
    /// Namespaces to translate again.
    pub namespaces: BTreeSet<String>,
}

/// Every translated kind, by namespace, with what changed.
#[derive(Debug)]
pub struct Cluster {
    /// Services.
    pub services: Mutex<Kind<Service>>,
    /// EndpointSlices.
    pub endpoint_slices: Mutex<Kind<EndpointSlice>>,
    /// Pods.
    pub pods: Mutex<Kind<Pod>>,
    /// Routes (the one kind that reaches other namespaces).
    pub routes: Mutex<Kind<DynamicObject>>,
    /// RetryPolicies.
    pub retry_policies: Mutex<Kind<DynamicObject>>,
    /// RateLimitPolicies.
    pub rate_limit_policies: Mutex<Kind<DynamicObject>>,
    /// AuthorizationPolicies.
    pub authorization_policies: Mutex<Kind<DynamicObject>>,
    /// AuthenticationPolicies.
    pub authentication_policies: Mutex<Kind<DynamicObject>>,
    dirty: Mutex<Dirty>,
}

impl Default for Cluster {
    fn default() -> Self {
        fn own<K>(_: &K) -> Vec<String> {
            Vec::new()
        }
        Self {
            services: Mutex::new(Kind::new(own)),
            endpoint_slices: Mutex::new(Kind::new(own)),
            pods: Mutex::new(Kind::new(own)),
            routes: Mutex::new(Kind::new(parent_namespaces)),
            retry_policies: Mutex::new(Kind::new(own)),
            rate_limit_policies: Mutex::new(Kind::new(own)),
            authorization_policies: Mutex::new(Kind::new(own)),
            authentication_policies: Mutex::new(Kind::new(own)),
            dirty: Mutex::new(Dirty::default()),
        }
    }
}

impl Cluster {
    /// Takes in one event of the kind kept in `kind`.
    pub fn record<K: Resource>(&self, kind: &Mutex<Kind<K>>, event: Event<K>) {
        let mut dirty = lock(&self.dirty);
        lock(kind).record(event, &mut dirty);
    }

    /// Takes in `objects` as one complete list of `kind`, as a watch's first list
    /// arrives (benchmarks and tests build a cluster this way).
    pub fn list<K: Resource>(&self, kind: &Mutex<Kind<K>>, objects: Vec<K>) {
        self.record(kind, Event::Init);
        for obj in objects {
            self.record(kind, Event::InitApply(obj));
        }
        self.record(kind, Event::InitDone);
    }

    /// The namespaces touched since the last call.
    pub fn take_dirty(&self) -> BTreeSet<String> {
        std::mem::take(&mut lock(&self.dirty).namespaces)
    }

    /// Whether every kind has had its first complete list.
    pub fn listed(&self) -> bool {
        lock(&self.services).listed
            && lock(&self.endpoint_slices).listed
            && lock(&self.pods).listed
            && lock(&self.routes).listed
            && lock(&self.retry_policies).listed
            && lock(&self.rate_limit_policies).listed
            && lock(&self.authorization_policies).listed
            && lock(&self.authentication_policies).listed
    }

    /// What the translation of namespace `ns` reads: its objects, and the Routes
    /// of other namespaces that attach to its Services.
    pub fn objects_in(&self, ns: &str) -> Objects {
        let routes = {
            let routes = lock(&self.routes);
            let mut found = routes.in_namespace(ns);
            found.extend(routes.reaching(ns));
            found
        };
        Objects {
            services: lock(&self.services).in_namespace(ns),
            endpoint_slices: lock(&self.endpoint_slices).in_namespace(ns),
            pods: lock(&self.pods).in_namespace(ns),
            routes,
            retry_policies: lock(&self.retry_policies).in_namespace(ns),
            rate_limit_policies: lock(&self.rate_limit_policies).in_namespace(ns),
            authorization_policies: lock(&self.authorization_policies).in_namespace(ns),
            authentication_policies: lock(&self.authentication_policies).in_namespace(ns),
        }
    }

    /// Every object, as one translation of the whole cluster reads them.
    pub fn objects(&self) -> Objects {
        fn all<K>(kind: &Mutex<Kind<K>>) -> Vec<Arc<K>> {
            let kind = lock(kind);
            (kind.by_ns.values())
                .flat_map(|names| names.values().cloned())
                .collect()
        }
        Objects {
            services: all(&self.services),
            endpoint_slices: all(&self.endpoint_slices),
            pods: all(&self.pods),
            routes: all(&self.routes),
            retry_policies: all(&self.retry_policies),
            rate_limit_policies: all(&self.rate_limit_policies),
            authorization_policies: all(&self.authorization_policies),
            authentication_policies: all(&self.authentication_policies),
        }
    }
}

/// A lock that a panic elsewhere does not poison for good (the data is plain maps).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An object's namespace and name; cluster-scoped or unnamed objects have none.
fn key<K: Resource>(obj: &K) -> Option<(String, String)> {
    let meta = obj.meta();
    Some((meta.namespace.clone()?, meta.name.clone()?))
}

/// The object without what the translation never reads and costs the most memory.
fn slim<K: Resource>(mut obj: K) -> K {
    obj.meta_mut().managed_fields = None;
    obj
}

/// The namespaces a Route's `parentRefs` name (its own when they name none).
fn parent_namespaces(route: &DynamicObject) -> Vec<String> {
    let parents = (route.data.get("spec"))
        .and_then(|s| s.get("parentRefs"))
        .and_then(|p| p.as_array());
    let mut found: Vec<String> = (parents.into_iter().flatten())
        .filter_map(|p| p.get("namespace")?.as_str().map(str::to_string))
        .collect();
    found.sort_unstable();
    found.dedup();
    found
}
