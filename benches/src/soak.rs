//! The fault soak (`--soak`): steady HTTP load through the mesh while what breaks in
//! production breaks, at random moments, and what a client of the mesh sees.
//!
//! Two agents sign with one issuer directory (the shared Secret); a client pod calls
//! three services with retry routes, each served by both backend pods, at a fixed
//! rate through its sidecar. Meanwhile, from a seeded schedule: a backend app is
//! killed and comes back, one of the agents is SIGKILLed and comes back, the issuer
//! is rotated under the same root, a backend pod restarts (its app and its proxy, as
//! a pod's containers do), and the policy is rewritten every few seconds (every fifth
//! time first with a broken file the agents must refuse). It ends whole and measures:
//! requests that failed (the goal is none), whether a proxy or agent exited by
//! itself, the least time any proxy's leaf had left when sampled, renewals, the
//! last policy generation the apps saw, and the memory of every process at the
//! start, its peak and the end.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use http_body_util::BodyExt;
use hyper::header::HeaderValue;
use pillion_identity::ca::{init_issuer_dir, load_root_dir, ISSUER_CERT_FILE, ISSUER_KEY_FILE};
use pillion_testkit::http::{handler, serve, text, Counters, Handler};
use pillion_tests::http_mesh::{get, h1_client, one};
use pillion_tests::mesh::{mesh_sidecar_opts, replace_file, MeshAgent, MeshDir};
use pillion_tests::{Pod, Sidecar, SidecarOpts, Signal, Task, World};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::load::open::new_histogram;
use crate::procstat;

/// Ports of the three services' apps on each backend pod.
const APP_PORTS: [u16; 3] = [8081, 8082, 8083];
/// The services' VIPs (port 80), in the order of [`APP_PORTS`].
const VIPS: [&str; 3] = ["198.18.1.101:80", "198.18.1.102:80", "198.18.1.103:80"];
/// Keep-alive clients per service.
const CLIENTS_PER_SERVICE: usize = 8;
/// Load before the first fault, and after the last restore before the end.
const WARMUP: Duration = Duration::from_secs(5);
const SETTLE: Duration = Duration::from_secs(5);
/// The header a route sets to the policy's generation; the apps echo it in `x-app`.
const GENERATION_HEADER: &str = "x-soak-generation";
/// Failures described in the report (all are counted).
const FAILURES_KEPT: usize = 20;
/// Memory is sampled this often, certificates every other time.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// What one soak does.
#[derive(Debug, Clone, Serialize)]
pub struct SoakPlan {
    /// How long the load and the faults run (plus a settle at the end).
    pub duration: Duration,
    /// Requests per second over the three services.
    pub rate: u32,
    /// Seed of the fault schedule (printed, so a failing run can be replayed).
    pub seed: u64,
    /// The agents' `--leaf-lifetime`: every proxy renews many times in a run.
    pub leaf_lifetime: Duration,
    /// How often the policy is rewritten.
    pub policy_every: Duration,
    /// Shortest and longest wait between two faults.
    pub gap: (Duration, Duration),
}

impl SoakPlan {
    /// The soak of issue 13: ten minutes at 1,000 requests a second.
    pub fn full(seed: u64) -> SoakPlan {
        SoakPlan {
            duration: Duration::from_secs(600),
            rate: 1000,
            seed,
            leaf_lifetime: Duration::from_secs(30),
            policy_every: Duration::from_secs(3),
            gap: (Duration::from_secs(3), Duration::from_secs(8)),
        }
    }

    /// CI's minute: every kind of fault at least once, at a rate a debug build
    /// sustains beside other tests on two cores.
    pub fn smoke(seed: u64) -> SoakPlan {
        SoakPlan {
            duration: Duration::from_secs(60),
            rate: 300,
            seed,
            leaf_lifetime: Duration::from_secs(15),
            policy_every: Duration::from_secs(3),
            gap: (Duration::from_secs(2), Duration::from_secs(4)),
        }
    }
}

/// A seed from the clock, for runs that do not name one.
pub fn clock_seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The faults the schedule draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// One backend app dies (its connections with it) and starts again 1–3 s later.
    KillApp,
    /// One agent is SIGKILLed and starts again 2–5 s later.
    KillAgent,
    /// A new issuer under the same root replaces the one the agents sign with.
    RotateIssuer,
    /// A backend pod's app and proxy stop (the proxy drains) and start again.
    RestartPod,
}

const FAULTS: [Fault; 4] = [
    Fault::KillApp,
    Fault::KillAgent,
    Fault::RotateIssuer,
    Fault::RestartPod,
];

/// Memory of one process (or one pod's proxy across its restarts), MiB.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MemoryLine {
    /// The first sample after the warm-up.
    pub start: f64,
    /// The largest sample.
    pub peak: f64,
    /// The last sample, after the settle.
    pub end: f64,
}

impl MemoryLine {
    fn sample(&mut self, mib: f64) {
        if self.start == 0.0 {
            self.start = mib;
        }
        self.peak = self.peak.max(mib);
        self.end = mib;
    }

    /// Whether the end is within half again the start, plus 8 MiB of allocator
    /// slack: memory that grows with time fails this over a long soak.
    pub fn flat(&self) -> bool {
        self.end <= self.start * 1.5 + 8.0
    }
}

/// What a soak measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SoakReport {
    /// The plan it ran.
    pub seed: u64,
    /// Seconds of load, warm-up and settle included.
    pub seconds: f64,
    /// Requests answered 200.
    pub ok: u64,
    /// Requests that were not (status, error code, or no answer).
    pub failed: u64,
    /// The first failures, described.
    pub failures: Vec<String>,
    /// Latency of every request, ms: p50, p99, p99.9, max.
    pub latency_ms: [f64; 4],
    /// Faults applied, by kind.
    pub faults: BTreeMap<Fault, u32>,
    /// Every fault and restore, with its second.
    pub events: Vec<String>,
    /// Policy rewrites: good ones, and broken ones the agents had to refuse.
    pub policy_writes: (u64, u64),
    /// The last generation written, and the highest an app saw.
    pub generation: (u64, u64),
    /// Renewals that succeeded, per proxy (summed over a restarted proxy's runs).
    pub renewals: BTreeMap<String, f64>,
    /// The least time a proxy's leaf had left when sampled, seconds.
    pub least_leaf_left_s: f64,
    /// Memory per process, MiB.
    pub memory: BTreeMap<String, MemoryLine>,
    /// What did not hold (empty when the soak passed).
    pub problems: Vec<String>,
    /// Each process's logs (its last run), by name, for a failed soak's files.
    #[serde(skip)]
    pub logs: BTreeMap<String, String>,
}

/// Request tallies shared by the load's workers.
#[derive(Debug, Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    failures: Mutex<Vec<String>>,
    generation: AtomicU64,
}

/// The running world.
struct Soak {
    plan: SoakPlan,
    dir: MeshDir,
    issuer: PathBuf,
    agents: Vec<MeshAgent>,
    /// Client, b1, b2.
    sidecars: Vec<Sidecar>,
    /// Backend pods b1, b2.
    backends: Vec<Pod>,
    /// The apps by (backend, port index); `None` while killed.
    apps: Vec<Vec<Option<Task<()>>>>,
    client: Pod,
    started: Instant,
    generation: u64,
    report: SoakReport,
    /// Renewals of earlier runs of a restarted proxy.
    renewals_before: Vec<f64>,
    /// What the faults so far undid, each due back at a time: what is down.
    pending: Vec<(Instant, Restore)>,
    _world: World,
}

/// Something undone by a fault, due back at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Restore {
    App(usize, usize),
    Agent(usize),
    Pod(usize),
}

/// Runs the soak with `binary` as the pods' program (agent, init, proxy).
pub fn run(binary: &Path, plan: &SoakPlan, log_level: &str) -> Result<SoakReport> {
    let mut soak = Soak::start(binary, plan, log_level)?;
    let tally = Arc::new(Tally::default());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let load = {
        let (tally, rate, started) = (Arc::clone(&tally), plan.rate, soak.started);
        soak.client
            .background(move || load(rate, stopped, tally, started))?
    };
    let outcome = soak.drive();
    let _ = stop.send(true);
    let histogram = load.join().context("the load generator")??;
    outcome?;
    soak.finish(&tally, &histogram);
    Ok(soak.report)
}

impl Soak {
    fn start(binary: &Path, plan: &SoakPlan, log_level: &str) -> Result<Soak> {
        let world = World::new("soak")?;
        let pod = |name: &str| world.pod(name);
        let (agent_pods, client) = ([pod("agent1")?, pod("agent2")?], pod("a")?);
        let backends = vec![pod("b1")?, pod("b2")?];
        let dir = MeshDir::new("soak")?;
        let issuer = dir.path().join("identity");
        init_issuer_dir(&issuer, "cluster.local", Duration::from_secs(24 * 3600))?;
        let source = dir.write("source.yaml", &source_yaml(&client, &backends, 0))?;
        let issuer_flag = issuer.display().to_string();
        let leaf = format!("{}s", plan.leaf_lifetime.as_secs());
        let flags = ["--issuer-dir", &issuer_flag, "--leaf-lifetime", &leaf];
        let agents = agent_pods
            .iter()
            .map(|p| MeshAgent::start(p, binary, &dir, &source, &flags))
            .collect::<Result<Vec<_>>>()?;
        let mut apps = Vec::new();
        for b in &backends {
            let mut on_pod = Vec::new();
            for port in APP_PORTS {
                on_pod.push(Some(spawn_app(b, port)?));
            }
            apps.push(on_pod);
        }
        let replicas = format!("{},{}", agents[0].addr(), agents[1].addr());
        let mut sidecars = Vec::new();
        for (p, sa, token) in [
            (&client, "client", "soak-client-token"),
            (&backends[0], "server", "soak-server-token"),
            (&backends[1], "server", "soak-server-token"),
        ] {
            let token = dir.write(&format!("{}.token", p.name()), token)?;
            let base = SidecarOpts::new(binary)
                .proxy_args(["--drain-timeout", "2s"])
                .proxy_env("PILLION_LOG_LEVEL", log_level);
            let opts = mesh_sidecar_opts(base, &replicas, agents[0].anchors(), &token, "demo", sa);
            let sidecar = p
                .install_sidecar(&opts)
                .with_context(|| format!("the sidecar of {}", p.name()))?;
            sidecars.push(sidecar);
        }
        Ok(Soak {
            plan: plan.clone(),
            dir,
            issuer,
            agents,
            sidecars,
            backends,
            apps,
            client,
            started: Instant::now(),
            generation: 0,
            report: SoakReport {
                seed: plan.seed,
                least_leaf_left_s: f64::MAX,
                ..SoakReport::default()
            },
            renewals_before: vec![0.0; 3],
            pending: Vec::new(),
            _world: world,
        })
    }

    fn at(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    fn event(&mut self, what: String) {
        let line = format!("{:6.1}s {what}", self.at());
        eprintln!("soak: {line}");
        self.report.events.push(line);
    }

    /// The schedule: faults at random moments, their restores, policy rewrites and
    /// samples, until the plan's duration; then everything restored and a settle.
    fn drive(&mut self) -> Result<()> {
        let mut rng = StdRng::seed_from_u64(self.plan.seed);
        let end = self.started + WARMUP + self.plan.duration;
        let mut next_fault = self.started + WARMUP;
        let mut next_policy = self.started + self.plan.policy_every;
        let mut next_sample = self.started + WARMUP;
        let mut samples = 0u64;
        let mut deck: Vec<Fault> = Vec::new();
        while Instant::now() < end {
            let now = Instant::now();
            let (due, later) = std::mem::take(&mut self.pending)
                .into_iter()
                .partition::<Vec<_>, _>(|(t, _)| *t <= now);
            self.pending = later;
            for (_, restore) in due {
                self.restore(restore)?;
            }
            if now >= next_sample {
                self.sample(samples % 2 == 0);
                samples += 1;
                next_sample += SAMPLE_EVERY;
            }
            if now >= next_policy {
                self.rewrite_policy()?;
                next_policy += self.plan.policy_every;
            }
            if now >= next_fault {
                if deck.is_empty() {
                    deck = FAULTS.to_vec();
                    deck.shuffle(&mut rng);
                }
                let busy_backend = (self.pending.iter())
                    .any(|(_, r)| matches!(r, Restore::App(..) | Restore::Pod(_)));
                let busy_agent = (self.pending.iter()).any(|(_, r)| matches!(r, Restore::Agent(_)));
                let fits = |f: &Fault| match f {
                    Fault::KillApp | Fault::RestartPod => !busy_backend,
                    Fault::KillAgent => !busy_agent,
                    Fault::RotateIssuer => true,
                };
                if let Some(i) = deck.iter().position(fits) {
                    let fault = deck.remove(i);
                    if let Some(restore) = self.apply(fault, &mut rng)? {
                        self.pending.push(restore);
                    }
                    *self.report.faults.entry(fault).or_default() += 1;
                }
                let (lo, hi) = self.plan.gap;
                next_fault = Instant::now() + rng.gen_range(lo..=hi);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for (_, restore) in std::mem::take(&mut self.pending) {
            self.restore(restore)?;
        }
        let settled = Instant::now() + SETTLE;
        while Instant::now() < settled {
            std::thread::sleep(SAMPLE_EVERY);
            self.sample(true);
        }
        Ok(())
    }

    /// Applies `fault`; what to undo and when.
    fn apply(&mut self, fault: Fault, rng: &mut StdRng) -> Result<Option<(Instant, Restore)>> {
        let in_ms = |rng: &mut StdRng, lo: u64, hi: u64| {
            Instant::now() + Duration::from_millis(rng.gen_range(lo..=hi))
        };
        Ok(match fault {
            Fault::KillApp => {
                let (b, p) = (rng.gen_range(0..2), rng.gen_range(0..APP_PORTS.len()));
                if let Some(task) = self.apps[b][p].take() {
                    let _ = task.shutdown();
                }
                self.event(format!("killed the app b{}:{}", b + 1, APP_PORTS[p]));
                Some((in_ms(rng, 1000, 3000), Restore::App(b, p)))
            }
            Fault::KillAgent => {
                let a = rng.gen_range(0..2);
                self.expect_alive();
                if let Some(p) = self.agents[a].process() {
                    p.signal(Signal::SIGKILL)?;
                }
                self.event(format!("SIGKILLed agent{}", a + 1));
                Some((in_ms(rng, 2000, 5000), Restore::Agent(a)))
            }
            Fault::RotateIssuer => {
                let root = load_root_dir(&self.issuer, "cluster.local")?;
                let (cert, key) = root.issue_intermediate(Duration::from_secs(24 * 3600))?;
                // Key first: between the two writes the agents see a pair that does
                // not fit, refuse it and keep signing with the last good issuer.
                replace_file(&self.issuer, ISSUER_KEY_FILE, &key)?;
                replace_file(&self.issuer, ISSUER_CERT_FILE, &cert)?;
                self.event("rotated the issuer".into());
                None
            }
            Fault::RestartPod => {
                let b = rng.gen_range(0..2);
                self.expect_alive();
                for app in self.apps[b].iter_mut() {
                    if let Some(task) = app.take() {
                        let _ = task.shutdown();
                    }
                }
                let sidecar = &self.sidecars[1 + b];
                self.renewals_before[1 + b] += renewals(sidecar);
                sidecar.stop_proxy(Duration::from_secs(10));
                self.event(format!("stopped pod b{} (apps and proxy)", b + 1));
                Some((in_ms(rng, 500, 2000), Restore::Pod(b)))
            }
        })
    }

    fn restore(&mut self, restore: Restore) -> Result<()> {
        match restore {
            Restore::App(b, p) => {
                self.apps[b][p] = Some(spawn_app(&self.backends[b], APP_PORTS[p])?);
                self.event(format!("started the app b{}:{}", b + 1, APP_PORTS[p]));
            }
            Restore::Agent(a) => {
                self.agents[a].restart()?;
                self.event(format!("started agent{}", a + 1));
            }
            Restore::Pod(b) => {
                for (p, port) in APP_PORTS.iter().enumerate() {
                    self.apps[b][p] = Some(spawn_app(&self.backends[b], *port)?);
                }
                self.sidecars[1 + b]
                    .start_again()
                    .with_context(|| format!("restarting the proxy of b{}", b + 1))?;
                self.event(format!("started pod b{} (apps, then proxy)", b + 1));
            }
        }
        Ok(())
    }

    /// Writes the next generation of the policy; every fifth is first written
    /// broken, which the agents must refuse while they keep serving the last.
    fn rewrite_policy(&mut self) -> Result<()> {
        self.generation += 1;
        if self.generation % 5 == 0 {
            self.dir.write(
                "source.yaml",
                "services:\n  - name: [this is not a service\n",
            )?;
            self.report.policy_writes.1 += 1;
            std::thread::sleep(Duration::from_millis(300));
        }
        let text = source_yaml(&self.client, &self.backends, self.generation);
        self.dir.write("source.yaml", &text)?;
        self.report.policy_writes.0 += 1;
        self.report.generation.0 = self.generation;
        Ok(())
    }

    /// Whether a fault has stopped this and it is not back yet.
    fn down(&self, what: Restore) -> bool {
        self.pending.iter().any(|(_, r)| *r == what)
    }

    /// Notes every proxy and agent that exited without a fault stopping it (the
    /// client's proxy, sidecar 0, is never stopped).
    fn expect_alive(&mut self) {
        let mut exited = Vec::new();
        for (i, s) in self.sidecars.iter().enumerate() {
            let stopped = i > 0 && self.down(Restore::Pod(i - 1));
            if let Some(status) = s.proxy().try_status().filter(|_| !stopped) {
                exited.push(format!("{} exited by itself ({status})", proxy_name(i)));
            }
        }
        for (i, a) in self.agents.iter().enumerate() {
            let status = a.process().and_then(|p| p.try_status());
            if let Some(status) = status.filter(|_| !self.down(Restore::Agent(i))) {
                exited.push(format!("agent{} exited by itself ({status})", i + 1));
            }
        }
        for problem in exited {
            if !self.report.problems.contains(&problem) {
                self.report.problems.push(problem);
            }
        }
    }

    /// Memory of every process; with `certs`, each running proxy's leaf expiry.
    fn sample(&mut self, certs: bool) {
        self.expect_alive();
        let mib = |pid: u32| procstat::memory(&[pid]).rss_kib as f64 / 1024.0;
        for (i, s) in self.sidecars.iter().enumerate() {
            if s.proxy().try_status().is_none() {
                let m = mib(s.proxy().pid());
                self.report
                    .memory
                    .entry(proxy_name(i))
                    .or_default()
                    .sample(m);
            }
        }
        for (i, a) in self.agents.iter().enumerate() {
            if let Some(p) = a.process().filter(|p| p.try_status().is_none()) {
                let m = mib(p.pid());
                self.report
                    .memory
                    .entry(format!("agent{}", i + 1))
                    .or_default()
                    .sample(m);
            }
        }
        if certs {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            for s in &self.sidecars {
                if s.proxy().try_status().is_some() {
                    continue;
                }
                if let Ok(m) = s.metrics() {
                    let expiry = m.value("pillion_identity_cert_expiry_timestamp_seconds", &[]);
                    let least = &mut self.report.least_leaf_left_s;
                    *least = least.min(expiry - now);
                }
            }
        }
    }

    /// Fills the report: tallies, latencies, renewals and what did not hold.
    fn finish(&mut self, tally: &Tally, histogram: &Histogram<u64>) {
        let r = &mut self.report;
        r.seconds = self.started.elapsed().as_secs_f64();
        r.ok = tally.ok.load(Ordering::Relaxed);
        r.failed = tally.failed.load(Ordering::Relaxed);
        r.failures = tally.failures.lock().map(|f| f.clone()).unwrap_or_default();
        r.generation.1 = tally.generation.load(Ordering::Relaxed);
        let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
        r.latency_ms = [
            ms(0.5),
            ms(0.99),
            ms(0.999),
            histogram.max() as f64 / 1000.0,
        ];
        for (i, s) in self.sidecars.iter().enumerate() {
            r.renewals
                .insert(proxy_name(i), self.renewals_before[i] + renewals(s));
        }
        let mut problems = std::mem::take(&mut r.problems);
        if r.failed > 0 {
            problems.push(format!(
                "{} of {} requests failed",
                r.failed,
                r.ok + r.failed
            ));
        }
        if r.least_leaf_left_s == f64::MAX {
            problems.push("no proxy's leaf was ever sampled".into());
        } else if r.least_leaf_left_s <= 0.0 {
            problems.push(format!(
                "a proxy's leaf had expired when sampled ({:.1} s left)",
                r.least_leaf_left_s
            ));
        }
        if r.generation.1 != r.generation.0 {
            problems.push(format!(
                "the apps saw policy generation {} last, {} was written",
                r.generation.1, r.generation.0
            ));
        }
        // Renewal at 70 % of the leaf: at least one per leaf lifetime run, less one.
        let expected = (r.seconds / self.plan.leaf_lifetime.as_secs_f64()).floor() - 1.0;
        let client = r.renewals.get(&proxy_name(0)).copied().unwrap_or(0.0);
        if client < expected.max(1.0) {
            problems.push(format!(
                "the client proxy renewed {client} times in {:.0} s of {} s leaves",
                r.seconds,
                self.plan.leaf_lifetime.as_secs()
            ));
        }
        // A broken write is refused with where and why (seen in either agent's
        // current run: a restarted one may not have seen one yet).
        let refused = self
            .agents
            .iter()
            .map(MeshAgent::logs)
            .any(|l| l.contains("source file refused") && l.contains("line="));
        if r.policy_writes.1 > 0 && !refused {
            problems.push("no agent logged refusing a broken source".into());
        }
        for fault in FAULTS {
            if !r.faults.contains_key(&fault) {
                problems.push(format!("no {fault:?} in this run"));
            }
        }
        for (name, m) in &r.memory {
            if !m.flat() {
                problems.push(format!(
                    "{name}'s memory grew: {:.1} MiB at the start, {:.1} at the end",
                    m.start, m.end
                ));
            }
        }
        r.problems = problems;
        for (i, s) in self.sidecars.iter().enumerate() {
            r.logs.insert(proxy_name(i), s.proxy().logs().to_string());
        }
        for (i, a) in self.agents.iter().enumerate() {
            r.logs.insert(format!("agent{}", i + 1), a.logs());
        }
    }
}

fn proxy_name(i: usize) -> String {
    match i {
        0 => "proxy a (client)".into(),
        n => format!("proxy b{n}"),
    }
}

fn renewals(s: &Sidecar) -> f64 {
    s.metrics().map_or(0.0, |m| {
        m.value("pillion_identity_renewals_total", &[("result", "ok")])
    })
}

/// An app on `port` of `pod` that answers 200 and echoes the policy generation the
/// route stamped on the request in `x-app`.
fn spawn_app(pod: &Pod, port: u16) -> Result<Task<()>> {
    let app: Handler = handler(|req| async move {
        let generation = req
            .headers()
            .get(GENERATION_HEADER)
            .cloned()
            .unwrap_or(HeaderValue::from_static("0"));
        let _ = req.into_body().collect().await;
        let mut r = text(200, "ok");
        r.headers_mut().insert("x-app", generation);
        r
    });
    pillion_tests::apps::spawn_listener(pod, port, "the soak app", move |listener| {
        serve(listener, app, Arc::new(Counters::default()))
    })
}

/// The load: `rate` requests a second spread over the services' clients, each on its
/// own keep-alive connection, paced (a late answer delays only its own client).
async fn load(
    rate: u32,
    stopped: tokio::sync::watch::Receiver<bool>,
    tally: Arc<Tally>,
    started: Instant,
) -> Result<Histogram<u64>> {
    let clients = VIPS.len() * CLIENTS_PER_SERVICE;
    let period = Duration::from_secs_f64(clients as f64 / f64::from(rate.max(1)));
    let mut workers = Vec::new();
    for i in 0..clients {
        let vip: SocketAddr = match VIPS[i % VIPS.len()].parse() {
            Ok(v) => v,
            Err(_) => continue,
        };
        let (mut stopped, tally) = (stopped.clone(), Arc::clone(&tally));
        let phase = period.mul_f64(i as f64 / clients as f64);
        let Ok(mut h) = new_histogram() else {
            continue;
        };
        workers.push(tokio::spawn(async move {
            let client = h1_client();
            let start = tokio::time::Instant::now() + phase;
            let mut tick = tokio::time::interval_at(start, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stopped.changed() => break,
                    _ = tick.tick() => {}
                }
                let sent = Instant::now();
                let answer = one(&client, get(vip, "/work", &[])).await;
                let _ = h.record(sent.elapsed().as_micros() as u64);
                if answer.status == 200 {
                    tally.ok.fetch_add(1, Ordering::Relaxed);
                    if let Ok(g) = answer.app.parse::<u64>() {
                        tally.generation.fetch_max(g, Ordering::Relaxed);
                    }
                } else {
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut kept) = tally.failures.lock() {
                        if kept.len() < FAILURES_KEPT {
                            kept.push(format!(
                                "{:6.1}s {vip}: status {} {}",
                                started.elapsed().as_secs_f64(),
                                answer.status,
                                answer.error
                            ));
                        }
                    }
                }
            }
            h
        }));
    }
    let mut all = new_histogram()?;
    for w in workers {
        if let Ok(h) = w.await {
            let _ = all.add(&h);
        }
    }
    Ok(all)
}

/// The agents' source at policy `generation`: the client and server workloads, and
/// three services on both backends whose one route retries and stamps the generation.
fn source_yaml(client: &Pod, backends: &[Pod], generation: u64) -> String {
    let (b1, b2) = (backends[0].ipv4(), backends[1].ipv4());
    let mut text = format!(
        "workloads:
  - name: client
    namespace: demo
    token: soak-client-token
    addresses: [{a}]
  - name: server
    namespace: demo
    token: soak-server-token
    addresses: [{b1}, {b2}]
    inbound:
      default_mode: strict
services:
",
        a = client.ipv4()
    );
    for (i, (vip, port)) in VIPS.iter().zip(APP_PORTS).enumerate() {
        let ip = vip.split(':').next().unwrap_or_default();
        text.push_str(&format!(
            "  - name: s{n}
    namespace: demo
    addresses: [{ip}]
    ports:
      - port: 80
        target_port: {port}
        routes:
          - name: work
            timeout: 10s
            retry: {{attempts: 5, backoff_base: 5ms, backoff_max: 50ms}}
            request_headers: {{set: {{{GENERATION_HEADER}: \"{generation}\"}}}}
    endpoints:
      - workload: server
        addresses: [{b1}]
      - workload: server
        addresses: [{b2}]
",
            n = i + 1
        ));
    }
    text
}

/// The report as markdown: the figures, then the memory table, then the events.
pub fn table(plan: &SoakPlan, r: &SoakReport) -> String {
    let mut out = format!(
        "| figure | value |\n|---|---:|\n\
         | duration, s | {:.0} |\n| rate asked, req/s | {} |\n| requests ok | {} |\n\
         | requests failed | {} |\n| latency p50 / p99 / p99.9 / max, ms | {:.2} / {:.2} / {:.2} / {:.1} |\n",
        r.seconds, plan.rate, r.ok, r.failed, r.latency_ms[0], r.latency_ms[1], r.latency_ms[2],
        r.latency_ms[3]
    );
    for (fault, n) in &r.faults {
        out.push_str(&format!("| faults: {fault:?} | {n} |\n"));
    }
    out.push_str(&format!(
        "| policy rewrites (broken ones refused) | {} ({}) |\n\
         | last policy generation written / seen by the apps | {} / {} |\n\
         | least time a leaf had left, s (leaf {} s) | {:.1} |\n",
        r.policy_writes.0,
        r.policy_writes.1,
        r.generation.0,
        r.generation.1,
        plan.leaf_lifetime.as_secs(),
        r.least_leaf_left_s
    ));
    for (proxy, n) in &r.renewals {
        out.push_str(&format!("| renewals: {proxy} | {n} |\n"));
    }
    out.push_str("\n| process | RSS start, MiB | peak | end |\n|---|---:|---:|---:|\n");
    for (name, m) in &r.memory {
        out.push_str(&format!(
            "| {name} | {:.1} | {:.1} | {:.1} |\n",
            m.start, m.peak, m.end
        ));
    }
    out.push_str(&format!("\nseed {}; events:\n", r.seed));
    for e in &r.events {
        out.push_str(&format!("    {e}\n"));
    }
    if !r.failures.is_empty() {
        out.push_str("\nfirst failures:\n");
        for f in &r.failures {
            out.push_str(&format!("    {f}\n"));
        }
    }
    if !r.problems.is_empty() {
        out.push_str("\nNOT MET:\n");
        for p in &r.problems {
            out.push_str(&format!("- {p}\n"));
        }
    }
    out
}
