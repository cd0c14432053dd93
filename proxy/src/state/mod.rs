//! The one compiled state: each view from the agent is compiled once into one
//! immutable [`State`] — outbound, original destination → [`Destination`]
//! ([`outbound`]); inbound, application port → mode, authorization, routes and limits
//! ([`inbound`]) — and swapped whole in one [`ArcSwap`] ([`Store`]). A connection
//! loads one snapshot and makes its whole decision with it; an HTTP connection
//! loads the newest one per request, so live policy reaches open connections.
//!
//! Compiling runs on a thread of its own at the lowest priority ([`follow`]),
//! never on the data path's runtime threads: on a busy CPU the data path preempts
//! it, so a large view or a burst of discovery answers does not pause traffic. Only
//! the newest view is compiled when several arrive during one compile. State that
//! must outlive a view (endpoints with their pools and latency estimates, balancers,
//! outlier detectors, rate limiters, retry budgets) is carried over from the
//! previous state by key.

pub(crate) mod gateway;
pub(crate) mod inbound;
pub(crate) mod outbound;
pub(crate) mod resolved;
mod views;

use std::sync::Arc;
use std::time::Instant;

use arc_swap::{ArcSwap, Guard};
use pillion_api::view::View;

use crate::admin::readiness::Condition;
use crate::app::settings::Settings;
use crate::telemetry::metrics::http::HttpMetrics;
use gateway::GatewayTable;
use inbound::InboundTable;
pub(crate) use outbound::Destination;
use outbound::OutboundTable;
use resolved::Resolved;
pub use views::Views;

/// Everything the data path decides with, compiled from one view.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// Counts compiles in this process (0 before the first): unlike the view's
    /// version, which a restarted agent counts anew, it only grows.
    generation: u64,
    version: Option<u64>,
    identity: Option<Arc<str>>,
    outbound: OutboundTable,
    inbound: InboundTable,
    gateway: GatewayTable,
}

impl State {
    /// Compiles `view` and what discovery `resolved`, carrying over what `previous`
    /// learned (see the module docs).
    pub(crate) fn compile(
        view: &View,
        resolved: &Resolved,
        previous: &State,
        settings: &Settings,
        metrics: &HttpMetrics,
        now: Instant,
    ) -> State {
        let outbound =
            OutboundTable::compile(view, resolved, &previous.outbound, settings, metrics, now);
        let gateway_routes = outbound.gateway_routes();
        State {
            generation: previous.generation + 1,
            version: Some(view.version),
            identity: Some(Arc::from(view.identity.as_str())),
            gateway: GatewayTable::compile(view, gateway_routes, &previous.gateway, metrics, now),
            inbound: InboundTable::compile(view, &previous.inbound, metrics, now),
            outbound,
        }
    }

    /// Which compile this is; compare it, not the version, to know the state changed.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// The version of the view compiled; `None` before the first.
    pub(crate) fn version(&self) -> Option<u64> {
        self.version
    }

    /// This workload's own identity (the client-side rate-limit key).
    pub(crate) fn identity(&self) -> Option<&Arc<str>> {
        self.identity.as_ref()
    }

    /// Where outbound connections go.
    pub(crate) fn outbound(&self) -> &OutboundTable {
        &self.outbound
    }

    /// What inbound ports allow.
    pub(crate) fn inbound(&self) -> &InboundTable {
        &self.inbound
    }

    /// The hosts this proxy serves in the gateway role (empty for a sidecar).
    pub(crate) fn gateway(&self) -> &GatewayTable {
        &self.gateway
    }
}

/// The current state: read without a lock by every connection, written by
/// [`follow`] alone.
#[derive(Debug, Default)]
pub(crate) struct Store {
    current: ArcSwap<State>,
}

impl Store {
    /// A store holding the state before any view: nothing known, every port permissive.
    pub(crate) fn new() -> Store {
        Store::default()
    }

    /// The current state, for one decision (cheap; do not hold it across awaits).
    pub(crate) fn load(&self) -> Guard<Arc<State>> {
        self.current.load()
    }

    /// The current state, to keep.
    pub(crate) fn load_full(&self) -> Arc<State> {
        self.current.load_full()
    }

    /// Serves `state` from now on; returns the state it replaces.
    fn swap(&self, state: State) -> Arc<State> {
        self.current.swap(Arc::new(state))
    }
}

/// What the compiler needs besides the views.
#[derive(Clone, Debug)]
pub(crate) struct Compiler {
    /// The data path's settings (mesh TLS client, balancing, outlier detection).
    pub settings: Arc<Settings>,
    /// The route metric families the compiled routes count into.
    pub metrics: HttpMetrics,
    /// Met once the first view's state is served.
    pub ready: Condition,
}

/// A compile job for the compiler's thread.
type Job = Box<dyn FnOnce() + Send>;

/// Starts the compiler's thread at the lowest priority (nice 19: it still gets its
/// share under load, unlike SCHED_IDLE, so policy changes are never starved); it
/// runs jobs until `jobs` is dropped.
fn compiler_thread() -> std::io::Result<std::sync::mpsc::Sender<Job>> {
    let (tx, rx) = std::sync::mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("pillion-compile".into())
        .spawn(move || {
            let lowest = thread_priority::ThreadPriority::Min;
            if let Err(error) = thread_priority::set_current_thread_priority(lowest) {
                tracing::warn!(?error, "cannot lower the compiler thread's priority");
            }
            for job in rx {
                job();
            }
        })?;
    Ok(tx)
}

/// Compiles every view `views` publishes on the compiler's thread and swaps the
/// result into `store`, until the views' channel closes (the task is aborted at
/// shutdown).
pub(crate) async fn follow(views: Views, store: Arc<Store>, compiler: Compiler) {
    let jobs = match compiler_thread() {
        Ok(jobs) => jobs,
        Err(error) => {
            tracing::error!(%error, "cannot start the compiler thread; no view will be served");
            return;
        }
    };
    let mut newest = views.subscribe();
    loop {
        let published = newest.borrow_and_update().clone();
        if let Some(view) = published.view {
            let previous = store.load_full();
            let job = compiler.clone();
            let started = Instant::now();
            let resolved = published.resolved;
            let (done, compiled) = tokio::sync::oneshot::channel();
            let sent = jobs.send(Box::new(move || {
                let state = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    State::compile(
                        &view,
                        &resolved,
                        &previous,
                        &job.settings,
                        &job.metrics,
                        Instant::now(),
                    )
                }));
                if let Ok(state) = state {
                    let _ = done.send(state);
                }
            }));
            let compiled = match sent {
                Ok(()) => compiled.await.ok(),
                Err(_) => None,
            };
            match compiled {
                Some(state) => {
                    let version = state.version();
                    let destinations = state.outbound.len();
                    let replaced = store.swap(state);
                    // Freed on the compiler's thread, not the data path's (unless a
                    // connection still holds it; then whoever lets go last frees it).
                    let _ = jobs.send(Box::new(move || drop(replaced)));
                    views.mark_handled(published.seq, version);
                    compiler.ready.set(true);
                    tracing::debug!(
                        ?version,
                        destinations,
                        compile_ms = started.elapsed().as_secs_f64() * 1e3,
                        "state compiled"
                    );
                }
                // A panic while compiling would be a bug; keep serving the last state.
                None => {
                    views.mark_handled(published.seq, None);
                    tracing::error!("compiling a view failed; the last state keeps serving");
                }
            }
        }
        if newest.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::readiness::Readiness;
    use pillion_api::view::Mode;
    use std::time::Duration;

    fn view(json: &str) -> View {
        serde_json::from_str(json).unwrap()
    }

    const SAMPLE: &str = r#"{"version": 4, "identity": "spiffe://cluster.local/ns/demo/sa/client",
      "services": [{"name": "echo", "namespace": "demo", "addresses": ["198.18.0.100"],
        "ports": [{"port": 7000}],
        "endpoints": [
          {"address": "198.18.0.3", "port": 7000, "identity": "spiffe://cluster.local/ns/demo/sa/server"},
          {"address": "2001:2::3", "port": 7000, "identity": "not an id"},
          {"address": "198.18.0.9", "port": 7000},
          {"address": "198.18.0.4", "port": 7100, "identity": "spiffe://cluster.local/ns/demo/sa/db"},
          {"address": "198.18.0.5", "port": 7100, "identity": "not an id"},
          {"address": "198.18.0.6", "port": 7100}]}],
      "inbound": {"default_mode": "strict", "ports": {
        "8080": {"mode": "permissive"},
        "7000": {"mode": "strict", "allow": ["spiffe://cluster.local/ns/demo/*"]},
        "7001": {"mode": "strict", "allow": ["bogus"]}}}}"#;

    fn compile(v: &View) -> State {
        let settings = Settings::with_mesh_client_for_tests();
        State::compile(
            v,
            &Resolved::default(),
            &State::default(),
            &settings,
            &HttpMetrics::default(),
            Instant::now(),
        )
    }

    fn at(s: &str) -> std::net::SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn destinations_by_address() {
        let s = compile(&view(SAMPLE));
        assert_eq!(s.version(), Some(4));
        let out = s.outbound();
        for service in [
            "198.18.0.100:7000",
            "198.18.0.3:7000",
            "[::ffff:198.18.0.3]:7000",
            "198.18.0.9:7000",
        ] {
            assert!(
                matches!(out.destination(at(service)), Some(Destination::Service(_))),
                "{service}"
            );
        }
        // Listed with an identity that is not a SPIFFE id: refused, never plaintext.
        assert!(matches!(
            out.destination(at("[2001:2::3]:7000")),
            Some(Destination::Refused)
        ));
        assert!(matches!(
            out.destination(at("198.18.0.5:7100")),
            Some(Destination::Refused)
        ));
        // Meshed endpoints under no service port: mesh TLS, bytes only.
        let Some(Destination::Endpoint(db)) = out.destination(at("198.18.0.4:7100")) else {
            panic!("the meshed endpoint is not an L4 endpoint");
        };
        assert_eq!(
            db.identity.as_deref(),
            Some("spiffe://cluster.local/ns/demo/sa/db")
        );
        // Plain endpoints under no service port, and the unknown: passthrough.
        assert!(out.destination(at("198.18.0.6:7100")).is_none());
        assert!(out.destination(at("198.18.0.3:7001")).is_none());
    }

    #[test]
    fn inbound_ports_and_patterns() {
        let s = compile(&view(SAMPLE));
        let port = |p| s.inbound().rule(p);
        let client = "spiffe://cluster.local/ns/demo/sa/client";
        let other = "spiffe://cluster.local/ns/other/sa/client";
        assert_eq!(port(9999).mode, Mode::Strict);
        assert!(port(9999).admits(other));
        assert_eq!(port(8080).mode, Mode::Permissive);
        assert!(port(7000).admits(client));
        assert!(!port(7000).admits(other));
        // A pattern that does not parse admits nobody, rather than everybody.
        assert!(!port(7001).admits(client));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn follow_compiles_the_newest_view_and_keeps_old_snapshots() {
        let store = Arc::new(Store::new());
        let before = store.load_full();
        assert_eq!(before.version(), None);
        assert_eq!(before.inbound().rule(1).mode, Mode::Permissive);
        let views = Views::new();
        let readiness = Readiness::new();
        let compiler = Compiler {
            settings: Arc::new(Settings::with_mesh_client_for_tests()),
            metrics: HttpMetrics::default(),
            ready: readiness.condition("view compiled"),
        };
        // Published before the compiler follows: still compiled.
        let first = tokio::spawn({
            let views = views.clone();
            async move { views.install(view(SAMPLE)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let task = tokio::spawn(follow(views.clone(), Arc::clone(&store), compiler));
        tokio::time::timeout(Duration::from_secs(10), first)
            .await
            .unwrap()
            .unwrap();
        assert!(readiness.is_ready());
        assert_eq!(store.load().version(), Some(4));
        let generation = store.load().generation();
        // A restarted agent counts versions anew: a lower one is served too.
        let restarted = SAMPLE.replace(r#""version": 4"#, r#""version": 1"#);
        tokio::time::timeout(Duration::from_secs(10), views.install(view(&restarted)))
            .await
            .unwrap();
        assert_eq!(store.load().version(), Some(1));
        assert!(store.load().generation() > generation);
        // The snapshot an open connection holds is unchanged.
        assert_eq!(before.version(), None);
        task.abort();
    }
}
