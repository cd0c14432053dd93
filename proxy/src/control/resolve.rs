//! On-demand discovery: the proxy learns a service when its workload first connects
//! to one of the service's addresses, instead of carrying the whole mesh.
//!
//! A connection to a destination the state does not know waits here while the
//! agent is asked (`GET /v1/resolve`, one stream per destination over the agent's
//! one HTTP/2 connection) and the answer is compiled into the state; then it is
//! served as if the proxy had always known. The stream stays open, so a change of
//! that service arrives like a view change, and the last answer stays in force
//! while the agent is away. A destination nobody used for `--discovery-idle` (an
//! outside one: at most [`OUTSIDE_IDLE`]) is forgotten and its stream closed.
//!
//! Fail closed: a destination the agent could not be asked about is refused, not
//! passed through, since nothing says it is outside the mesh.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use pillion_api::resolve::Resolution;
use pillion_api::view::Service;
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use super::client::{AgentClient, AgentError};
use super::lines::{BodyLines, LineError, MAX_ANSWER_LINE};
use super::metrics::ControlMetrics;
use super::watch::{RECONNECT_BASE, RECONNECT_CAP};
use crate::policy::backoff::Backoff;
use crate::state::resolved::{Resolved, Usage};
use crate::state::Views;

/// Time a first connection waits for the agent's answer before it is refused.
pub(crate) const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest time an outside destination (no service has it) is kept unused: an
/// address can join the mesh later, and outside addresses are many.
pub(crate) const OUTSIDE_IDLE: Duration = Duration::from_secs(30);
/// Most destinations held at once; past it the least recently used goes, so a
/// workload scanning addresses cannot grow the proxy without bound (the agent
/// allows as many streams on the proxy's one connection).
pub(crate) use pillion_api::resolve::MAX_DESTINATIONS;

/// Why a destination could not be resolved.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum ResolveError {
    /// No answer in time.
    #[error("the agent gave no answer for {addr} within {timeout:?}")]
    Timeout {
        /// The destination.
        addr: SocketAddr,
        /// The bound.
        timeout: Duration,
    },
    /// The agent could not be asked, or refused.
    #[error("the agent could not be asked about {addr}: {reason}")]
    Failed {
        /// The destination.
        addr: SocketAddr,
        /// Why.
        reason: Arc<str>,
    },
}

/// Why one answer stream ended.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error(transparent)]
    Open(#[from] AgentError),
    #[error("the answer stream: {0}")]
    Lines(#[from] LineError),
    #[error("the agent answered for {got} when asked about {asked}")]
    WrongAddress { got: SocketAddr, asked: SocketAddr },
    #[error("the agent closed the answer stream")]
    Ended,
    #[error("the destination was forgotten")]
    Forgotten,
}

/// Where a destination's first answer stands.
#[derive(Clone, Debug)]
enum Progress {
    Asking,
    /// Answered and compiled into the state.
    Answered,
    Failed(Arc<str>),
}

/// The agent's last answer for a destination.
#[derive(Debug)]
struct Answer {
    service: Option<Arc<Service>>,
    backends: Vec<Arc<Service>>,
}

/// One destination being followed.
#[derive(Debug)]
struct Entry {
    /// Tells this entry from a later one for the same address.
    id: u64,
    progress: watch::Sender<Progress>,
    answer: Option<Answer>,
    used: Arc<Usage>,
    task: AbortHandle,
}

#[derive(Debug, Default)]
struct Entries {
    /// Ordered, so services compile in the same order every time.
    map: BTreeMap<SocketAddr, Entry>,
    next_id: u64,
}

/// The proxy's on-demand discovery; shared by the outbound stack.
#[derive(Debug)]
pub struct Resolver {
    client: Arc<AgentClient>,
    views: Views,
    idle: Duration,
    metrics: ControlMetrics,
    entries: Mutex<Entries>,
}

impl Resolver {
    /// Discovery through `client`, publishing to `views`, forgetting after `idle`.
    pub(crate) fn new(
        client: Arc<AgentClient>,
        views: Views,
        idle: Duration,
        metrics: ControlMetrics,
    ) -> Resolver {
        Resolver {
            client,
            views,
            idle,
            metrics,
            entries: Mutex::default(),
        }
    }

    /// Resolves once the state knows `dst` (a service, or outside the mesh); an
    /// error means the connection must be refused.
    pub(crate) async fn resolve(self: &Arc<Self>, dst: SocketAddr) -> Result<(), ResolveError> {
        let dst = SocketAddr::new(dst.ip().to_canonical(), dst.port());
        let mut progress = self.follow(dst);
        let settled = tokio::time::timeout(
            RESOLVE_TIMEOUT,
            progress.wait_for(|p| !matches!(p, Progress::Asking)),
        )
        .await;
        let failed = |reason: Arc<str>| ResolveError::Failed { addr: dst, reason };
        match settled {
            Ok(Ok(p)) => match &*p {
                Progress::Failed(reason) => Err(failed(Arc::clone(reason))),
                _ => Ok(()),
            },
            Ok(Err(_)) => Err(failed(Arc::from("the question was dropped"))),
            Err(_) => Err(ResolveError::Timeout {
                addr: dst,
                timeout: RESOLVE_TIMEOUT,
            }),
        }
    }

    /// How many destinations are held.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets idle destinations every so often until `shutdown`, then all of them.
    pub(crate) async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let every = (self.idle / 4).clamp(Duration::from_secs(1), Duration::from_secs(30));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(every) => self.forget_idle(),
            }
        }
        let mut entries = self.lock();
        for entry in entries.map.values() {
            entry.task.abort();
        }
        entries.map.clear();
    }

    fn lock(&self) -> MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The progress of `dst`'s question, asking it if nobody has.
    fn follow(self: &Arc<Self>, dst: SocketAddr) -> watch::Receiver<Progress> {
        let mut entries = self.lock();
        if let Some(entry) = entries.map.get(&dst) {
            entry.used.touch();
            return entry.progress.subscribe();
        }
        if entries.map.len() >= MAX_DESTINATIONS {
            self.forget_least_used(&mut entries);
        }
        let id = entries.next_id;
        entries.next_id += 1;
        let (progress, asking) = watch::channel(Progress::Asking);
        let task = tokio::spawn(Arc::clone(self).ask(dst, id)).abort_handle();
        entries.map.insert(
            dst,
            Entry {
                id,
                progress,
                answer: None,
                used: Arc::new(Usage::new()),
                task,
            },
        );
        self.metrics.destinations.set(gauge(entries.map.len()));
        asking
    }

    /// Follows `dst`'s answer stream, reopening it while an answer is held; a
    /// question that never got an answer fails its connections and is forgotten,
    /// so the next use asks again.
    async fn ask(self: Arc<Self>, dst: SocketAddr, id: u64) {
        let mut backoff = Backoff::new(RECONNECT_BASE, RECONNECT_CAP);
        let mut answered = false;
        loop {
            let ended = self.stream(dst, id, &mut answered, &mut backoff).await;
            if matches!(ended, StreamError::Forgotten) {
                return;
            }
            if !answered {
                tracing::warn!(%dst, error = %ended, "cannot resolve a destination; refusing its connections");
                self.metrics.resolved("failed");
                self.fail(dst, id, Arc::from(ended.to_string()));
                return;
            }
            let wait = backoff.next_delay();
            tracing::debug!(%dst, error = %ended, reconnect_in_ms = wait.as_millis() as u64,
                "answer stream ended; keeping the last answer");
            tokio::time::sleep(wait).await;
        }
    }

    /// One answer stream: each answer is learned and compiled before the next.
    async fn stream(
        &self,
        dst: SocketAddr,
        id: u64,
        answered: &mut bool,
        backoff: &mut Backoff,
    ) -> StreamError {
        let mut lines = match self.client.resolve(dst).await {
            Ok(body) => BodyLines::new(body, MAX_ANSWER_LINE),
            Err(err) => return err.into(),
        };
        loop {
            let complete = match lines.next_batch().await {
                Ok(Some(complete)) => complete,
                Ok(None) => return StreamError::Ended,
                Err(err) => return err.into(),
            };
            for line in complete {
                let resolution = match serde_json::from_slice::<Resolution>(&line) {
                    Ok(resolution) => resolution,
                    Err(error) => {
                        tracing::warn!(%dst, %error, "ignoring an answer that does not parse");
                        continue;
                    }
                };
                let got = SocketAddr::new(
                    resolution.address.ip().to_canonical(),
                    resolution.address.port(),
                );
                if got != dst {
                    return StreamError::WrongAddress { got, asked: dst };
                }
                let found = resolution.service.is_some();
                let Some(seq) = self.learn(dst, id, resolution) else {
                    return StreamError::Forgotten;
                };
                self.views.handled(seq).await;
                if !*answered {
                    *answered = true;
                    self.metrics
                        .resolved(if found { "service" } else { "outside" });
                    let entries = self.lock();
                    if let Some(entry) = entries.map.get(&dst).filter(|e| e.id == id) {
                        entry.progress.send_replace(Progress::Answered);
                    }
                }
                backoff.reset();
            }
        }
    }

    /// Records an answer and publishes what discovery knows; `None` when the
    /// destination was forgotten meanwhile.
    fn learn(&self, dst: SocketAddr, id: u64, resolution: Resolution) -> Option<u64> {
        let mut entries = self.lock();
        let entry = entries.map.get_mut(&dst).filter(|e| e.id == id)?;
        tracing::debug!(%dst, version = resolution.version,
            service = resolution.service.as_ref().map(|s| format!("{}/{}", s.namespace, s.name)),
            "destination resolved");
        entry.answer = Some(Answer {
            service: resolution.service.map(Arc::new),
            backends: resolution.backends.into_iter().map(Arc::new).collect(),
        });
        Some(self.publish(&entries))
    }

    /// Publishes every held answer to the compiler; returns the publish's number.
    fn publish(&self, entries: &Entries) -> u64 {
        let mut resolved = Resolved::default();
        for (addr, entry) in &entries.map {
            match &entry.answer {
                None => {}
                Some(Answer { service: None, .. }) => {
                    resolved.outside.push((*addr, Arc::clone(&entry.used)))
                }
                Some(Answer {
                    service: Some(service),
                    backends,
                }) => {
                    for s in std::iter::once(service).chain(backends) {
                        resolved
                            .services
                            .push((Arc::clone(s), Arc::clone(&entry.used)));
                    }
                }
            }
        }
        self.views.publish_resolved(resolved)
    }

    /// Fails the waiting connections of an unanswered question and forgets it.
    fn fail(&self, dst: SocketAddr, id: u64, reason: Arc<str>) {
        let mut entries = self.lock();
        if entries.map.get(&dst).is_some_and(|e| e.id == id) {
            if let Some(entry) = entries.map.remove(&dst) {
                entry.progress.send_replace(Progress::Failed(reason));
            }
            self.metrics.destinations.set(gauge(entries.map.len()));
        }
    }

    /// Forgets answered destinations unused for longer than their idle time.
    fn forget_idle(&self) {
        let mut entries = self.lock();
        let before = entries.map.len();
        let idle = self.idle;
        entries.map.retain(|dst, entry| {
            let limit = match &entry.answer {
                None => return true,
                Some(Answer { service: None, .. }) => idle.min(OUTSIDE_IDLE),
                Some(_) => idle,
            };
            let keep = entry.used.idle_for() < limit;
            if !keep {
                tracing::debug!(%dst, "forgetting an idle destination");
                entry.task.abort();
            }
            keep
        });
        if entries.map.len() != before {
            self.publish(&entries);
            self.metrics.destinations.set(gauge(entries.map.len()));
        }
    }

    /// Makes room for one more: the answered destination unused the longest goes.
    fn forget_least_used(&self, entries: &mut Entries) {
        let oldest = (entries.map.iter())
            .filter(|(_, e)| e.answer.is_some())
            .max_by_key(|(_, e)| e.used.idle_for())
            .map(|(dst, _)| *dst);
        if let Some(entry) = oldest.and_then(|dst| entries.map.remove(&dst)) {
            entry.task.abort();
            self.publish(entries);
        }
    }
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::config::{ControlConfig, Discovery};
    use pillion_identity::{Ca, SpiffeId};

    fn resolver(idle: Duration) -> Arc<Resolver> {
        let td = "cluster.local";
        let config = ControlConfig {
            // Nothing listens there: these tests never reach an agent.
            agent_addr: "127.0.0.1:1".into(),
            agent_identity: SpiffeId::new(td, "pillion", "agent").unwrap(),
            trust_anchors_pem: Ca::generate(td).unwrap().trust_bundle_pem(),
            trust_anchors_path: None,
            token_file: "/nonexistent".into(),
            workload: SpiffeId::new(td, "demo", "client").unwrap(),
            pod_name: None,
            discovery: Discovery::OnDemand { idle },
        };
        let client = Arc::new(AgentClient::new(&config).unwrap());
        Arc::new(Resolver::new(
            client,
            Views::new(),
            idle,
            ControlMetrics::default(),
        ))
    }

    fn service(name: &str) -> Arc<Service> {
        Arc::new(
            serde_json::from_value(serde_json::json!({"name": name, "namespace": "demo"})).unwrap(),
        )
    }

    /// Holds `dst` with `answer` (`None`: still asking), last used `idle_secs` ago.
    fn hold(r: &Resolver, dst: &str, answer: Option<Option<&str>>, idle_secs: u64) {
        let mut entries = r.lock();
        let id = entries.next_id;
        entries.next_id += 1;
        let used = Arc::new(Usage::new());
        used.set_idle_for_tests(idle_secs);
        entries.map.insert(
            dst.parse().unwrap(),
            Entry {
                id,
                progress: watch::channel(Progress::Asking).0,
                answer: answer.map(|a| Answer {
                    service: a.map(service),
                    backends: Vec::new(),
                }),
                used,
                task: tokio::spawn(std::future::pending::<()>()).abort_handle(),
            },
        );
    }

    fn held(r: &Resolver) -> Vec<String> {
        r.lock().map.keys().map(ToString::to_string).collect()
    }

    /// What the compiler was last given: service names and outside addresses.
    fn published(r: &Resolver) -> (Vec<String>, Vec<String>) {
        let resolved = Arc::clone(&r.views.subscribe().borrow().resolved);
        (
            resolved
                .services
                .iter()
                .map(|(s, _)| s.name.clone())
                .collect(),
            resolved
                .outside
                .iter()
                .map(|(a, _)| a.to_string())
                .collect(),
        )
    }

    #[tokio::test]
    async fn the_unused_are_forgotten_outside_ones_sooner_and_questions_never() {
        let r = resolver(Duration::from_secs(60));
        hold(&r, "198.18.0.1:80", Some(Some("used")), 0);
        hold(&r, "198.18.0.2:80", Some(Some("idle")), 120);
        hold(&r, "198.18.0.3:80", Some(Some("almost")), 50);
        hold(&r, "192.0.2.1:443", Some(None), 40);
        hold(&r, "192.0.2.2:443", Some(None), 5);
        hold(&r, "192.0.2.3:443", None, 500);
        r.forget_idle();
        assert_eq!(
            held(&r),
            [
                "192.0.2.2:443",
                "192.0.2.3:443",
                "198.18.0.1:80",
                "198.18.0.3:80"
            ]
        );
        let (services, outside) = published(&r);
        assert_eq!(services, ["used", "almost"]);
        assert_eq!(outside, ["192.0.2.2:443"]);
    }

    #[tokio::test]
    async fn past_the_cap_the_least_used_answer_makes_room() {
        let r = resolver(Duration::from_secs(60));
        hold(&r, "198.18.0.1:80", Some(Some("a")), 3);
        hold(&r, "198.18.0.2:80", Some(None), 9);
        hold(&r, "198.18.0.3:80", None, 30);
        let mut entries = r.lock();
        r.forget_least_used(&mut entries);
        drop(entries);
        // The oldest answer goes; a question still waiting for its answer stays.
        assert_eq!(held(&r), ["198.18.0.1:80", "198.18.0.3:80"]);
        assert_eq!(published(&r), (vec!["a".to_string()], Vec::new()));
    }

    #[tokio::test]
    async fn a_destination_nobody_can_ask_about_fails_and_is_forgotten() {
        let r = resolver(Duration::from_secs(60));
        // The token file does not exist: the question fails at once, every waiter
        // with it, and the next use asks again.
        let dst: SocketAddr = "198.18.0.9:80".parse().unwrap();
        let (a, b) = tokio::join!(r.resolve(dst), r.resolve(dst));
        for result in [a, b] {
            let err = result.unwrap_err().to_string();
            assert!(
                err.contains("could not be asked about 198.18.0.9:80"),
                "{err}"
            );
        }
        assert!(r.is_empty());
        assert!(r.resolve(dst).await.is_err());
    }
}
