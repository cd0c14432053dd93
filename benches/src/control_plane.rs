//! The control-plane figure (`--control-plane`): the agent alone, in a pod, against
//! simulated proxies that are the real thing on the wire: each its own TLS + HTTP/2
//! connection with a token of its own ([`pillion_proxy::control::AgentClient`]), an
//! on-demand view watch, and one answer stream per destination it uses.
//!
//! Per size (services in the mesh × proxies): the agent's RSS loaded, then with every
//! proxy watching and resolving; then a few changes to the one service every proxy
//! uses, each timed from the file's rename to each proxy's new answer (the agent
//! polls its files every 100 ms, so up to that is in the figure), with the agent's CPU
//! per change. The source is a directory, as a mesh of this size would be kept: the
//! workloads in one file, the services in files of 100, and a change rewrites one. At the first size of each mesh, a real proxy's RSS, ready and idle,
//! with on-demand and with full discovery; what a proxy holds when its workload calls
//! a few services is the discovery figure.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use pillion_api::defaults::{
    ADMIN_PORT, AGENT_NAMESPACE, AGENT_PORT, AGENT_SERVICE_ACCOUNT, TRUST_DOMAIN,
};
use pillion_identity::SpiffeId;
use pillion_proxy::control::{AgentClient, ControlConfig, Discovery};
use pillion_tests::{Cmd, World};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::procstat;
use crate::stats::percentile;
use crate::topology::pods::wait_listening_within;
use crate::workdir::WorkDir;

/// Destinations each simulated proxy resolves (the first is the one that changes).
const DESTINATIONS: usize = 10;
/// Changes timed per size.
const CHANGES: usize = 5;
/// How long one change may take to reach every proxy.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);
/// The agent's source poll interval in this figure.
const RELOAD: &str = "100ms";

/// The sizes measured: (services, proxies).
pub fn sizes(smoke: bool) -> Vec<(usize, usize)> {
    if smoke {
        vec![(10, 10), (1_000, 50)]
    } else {
        vec![
            (10, 10),
            (10, 1_000),
            (1_000, 10),
            (1_000, 1_000),
            (20_000, 10),
            (20_000, 1_000),
            (100_000, 10),
            (100_000, 1_000),
        ]
    }
}

/// The figures of one size.
#[derive(Debug, Clone, Serialize)]
pub struct Size {
    /// Services in the mesh.
    pub services: usize,
    /// Simulated proxies.
    pub proxies: usize,
    /// Streams open at the agent (a watch and the destinations per proxy).
    pub streams: usize,
    /// Agent RSS with the source loaded, before any proxy, MiB.
    pub agent_rss_loaded_mib: f64,
    /// Agent RSS with every proxy watching and resolving, MiB.
    pub agent_rss_watched_mib: f64,
    /// Time for every proxy to connect, watch and get its first answers, s.
    pub connect_all_s: f64,
    /// A change to the shared service, file rename → each proxy's new answer, p50 ms.
    pub push_p50_ms: f64,
    /// The same, p99 ms.
    pub push_p99_ms: f64,
    /// The same, the last proxy, ms (highest over the changes).
    pub push_max_ms: f64,
    /// Agent CPU per change (read, parse, check, publish, answers), s: its CPU from
    /// the rename to half a second after the last answer, less what it spends idle
    /// (polling its files) in as long.
    pub agent_cpu_per_change_s: f64,
    /// Agent CPU when nothing changes (polling its files every 100 ms), % of a core.
    pub agent_idle_cpu_pct: f64,
    /// RSS of a real proxy of this mesh, ready and idle, on-demand discovery, MiB
    /// (measured at the first size of each mesh: it does not depend on the proxies).
    pub proxy_rss_on_demand_mib: Option<f64>,
    /// The same with `--discovery full` (the whole mesh in its view), MiB.
    pub proxy_rss_full_mib: Option<f64>,
}

/// Measures every size; `binary` is this program (it runs the agent).
pub fn run(binary: &Path, smoke: bool, log_level: &str) -> Result<Vec<Size>> {
    let mut out: Vec<Size> = Vec::new();
    for (services, proxies) in sizes(smoke) {
        eprintln!("control plane: {services} services, {proxies} proxies");
        let real_proxy = !out.iter().any(|s| s.services == services);
        let size = one(binary, services, proxies, real_proxy, log_level)
            .with_context(|| format!("{services} services, {proxies} proxies"))?;
        eprintln!(
            "  agent {:.1} MiB loaded, {:.1} MiB with {} streams; push p50 {:.1} / p99 {:.1} / \
             max {:.1} ms; {:.3} s CPU per change; all connected in {:.1} s",
            size.agent_rss_loaded_mib,
            size.agent_rss_watched_mib,
            size.streams,
            size.push_p50_ms,
            size.push_p99_ms,
            size.push_max_ms,
            size.agent_cpu_per_change_s,
            size.connect_all_s
        );
        out.push(size);
    }
    Ok(out)
}

/// The VIP of service `i` (never dialled): 198.18.0.0/15 has room for 131,072.
fn vip(i: usize) -> SocketAddr {
    let base = u32::from(Ipv4Addr::new(198, 18, 0, 0));
    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(base + i as u32)), 80)
}

/// The endpoint address of service `i` (never dialled), in 2001:2::/48.
fn endpoint(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, (i >> 16) as u16, i as u16)
}

/// Services per file of the source directory: a change rewrites one file.
const SERVICES_PER_FILE: usize = 100;

/// Writes the source as a directory: `proxies` workloads with tokens in one file,
/// `services` services in files of [`SERVICES_PER_FILE`]; returns the directory.
fn write_source(work: &WorkDir, services: usize, proxies: usize) -> Result<PathBuf> {
    let dir = work.subdir("source")?;
    let mut yaml = String::from("workloads:\n");
    for p in 0..proxies {
        yaml.push_str(&format!(
            "  - name: w{p}\n    namespace: bench\n    token: bench-token-{p:06}\n"
        ));
    }
    write_atomically(&dir.join("workloads.yaml"), &yaml)?;
    for first in (0..services).step_by(SERVICES_PER_FILE) {
        let last = (first + SERVICES_PER_FILE).min(services);
        write_atomically(&services_file(&dir, first), &services_yaml(first..last, 0))?;
    }
    Ok(dir)
}

/// The file holding service `first` and the next ones.
fn services_file(dir: &Path, first: usize) -> PathBuf {
    dir.join(format!("services-{first:06}.yaml"))
}

/// The services `range`; service 0 gets `extra` more endpoints (what a change
/// changes).
fn services_yaml(range: std::ops::Range<usize>, extra: usize) -> String {
    let mut yaml = String::from("services:\n");
    for i in range {
        yaml.push_str(&format!(
            "  - name: s{i}\n    namespace: bench\n    addresses: [{}]\n    ports: [{{port: 80}}]\n    \
             endpoints:\n      - addresses: [\"{}\"]\n        \
             identity: spiffe://{TRUST_DOMAIN}/ns/bench/sa/s{i}\n",
            vip(i).ip(),
            endpoint(i)
        ));
        if i == 0 {
            for e in 0..extra {
                yaml.push_str(&format!(
                    "      - addresses: [\"{}\"]\n",
                    Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, e as u16 + 1)
                ));
            }
        }
    }
    yaml
}

fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("yaml.new");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

fn one(
    binary: &Path,
    services: usize,
    proxies: usize,
    real_proxy: bool,
    log_level: &str,
) -> Result<Size> {
    let work = WorkDir::create()?;
    let source_path = write_source(&work, services, proxies)?;
    let ca_dir = work.subdir("ca")?;
    let tokens = work.subdir("tokens")?;
    for p in 0..proxies {
        std::fs::write(tokens.join(format!("{p}")), format!("bench-token-{p:06}\n"))?;
    }
    let world = World::new("cplane")?;
    let agent_pod = world.pod("agent")?;
    let proxies_pod = world.pod("proxies")?;
    let listen = SocketAddr::new(agent_pod.ipv4(), AGENT_PORT);
    let agent = agent_pod.spawn(
        Cmd::new(binary)
            .arg("agent")
            .arg("--config")
            .arg(&source_path)
            .arg("--ca-dir")
            .arg(&ca_dir)
            .arg("--listen")
            .arg(format!("0.0.0.0:{AGENT_PORT}"))
            .arg("--reload-interval")
            .arg(RELOAD)
            .arg("--log-level")
            .arg(log_level),
    )?;
    // A large source takes a while to load.
    wait_listening_within(
        &proxies_pod,
        listen,
        "the agent",
        &agent,
        Duration::from_secs(180),
    )?;
    let anchors = std::fs::read_to_string(ca_dir.join("ca.pem"))
        .with_context(|| format!("reading {}", ca_dir.join("ca.pem").display()))?;
    std::thread::sleep(Duration::from_millis(500));
    let agent_pid = agent.pid();
    let loaded = procstat::memory(&[agent_pid]).rss_kib as f64 / 1024.0;
    let token = tokens.join("0");
    let measured = proxies_pod.run(move || async move {
        measure(
            agent_pid,
            listen,
            &anchors,
            &tokens,
            &source_path,
            services,
            proxies,
        )
        .await
    });
    let mut size = measured??;
    size.agent_rss_loaded_mib = loaded;
    if real_proxy {
        let anchors = ca_dir.join("ca.pem");
        let rss = |mode| {
            proxy_rss(
                binary,
                &proxies_pod,
                listen,
                &anchors,
                &token,
                mode,
                log_level,
            )
        };
        size.proxy_rss_on_demand_mib = Some(rss("on-demand")?);
        size.proxy_rss_full_mib = Some(rss("full")?);
    }
    agent.stop(Duration::from_secs(5));
    Ok(size)
}

/// RSS of a real proxy (workload `w0`) in `pod` with discovery `mode`, once ready and
/// two seconds idle, MiB; the proxy is stopped after.
fn proxy_rss(
    binary: &Path,
    pod: &pillion_tests::Pod,
    agent: SocketAddr,
    anchors: &Path,
    token: &Path,
    mode: &str,
    log_level: &str,
) -> Result<f64> {
    let proxy = pod.spawn(
        Cmd::new(binary)
            .arg("proxy")
            .arg("--agent-addr")
            .arg(agent.to_string())
            .arg("--trust-anchors")
            .arg(anchors)
            .arg("--token-file")
            .arg(token)
            .args(["--namespace", "bench", "--service-account", "w0"])
            .args(["--discovery", mode, "--log-level", log_level]),
    )?;
    // A full view of 100,000 services takes a while to fetch and compile.
    pillion_tests::sidecar::wait_ready(pod, &proxy, ADMIN_PORT, Duration::from_secs(300))
        .with_context(|| format!("a real proxy with --discovery {mode}"))?;
    std::thread::sleep(Duration::from_secs(2));
    let mib = procstat::memory(&[proxy.pid()]).rss_kib as f64 / 1024.0;
    proxy.stop(Duration::from_secs(5));
    eprintln!("  a real proxy, --discovery {mode}: {mib:.1} MiB");
    Ok(mib)
}

/// Connects every simulated proxy, then times the changes (runs in the proxies' pod).
async fn measure(
    agent_pid: u32,
    listen: SocketAddr,
    anchors: &str,
    tokens: &Path,
    source_path: &Path,
    services: usize,
    proxies: usize,
) -> Result<Size> {
    let rss = || procstat::memory(&[agent_pid]).rss_kib as f64 / 1024.0;
    let (arrivals, mut arrived) = mpsc::unbounded_channel::<(usize, Instant)>();
    let started = Instant::now();
    let (up, mut ups) = mpsc::unbounded_channel::<Result<()>>();
    for p in 0..proxies {
        let config = config(listen, anchors, &tokens.join(format!("{p}")), p)?;
        let (up, arrivals) = (up.clone(), arrivals.clone());
        tokio::spawn(async move {
            let opened = proxy(p, services, config, arrivals).await;
            let _ = up.send(opened);
        });
    }
    for _ in 0..proxies {
        match tokio::time::timeout(Duration::from_secs(120), ups.recv()).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => return Err(e),
            _ => bail!("the proxies did not all connect within 120 s"),
        }
    }
    let connect_all_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Only changes count from here.
    while arrived.try_recv().is_ok() {}
    let agent_rss_watched_mib = rss();
    let idle_started = (Instant::now(), procstat::cpu_seconds(&[agent_pid]));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_per_s = (procstat::cpu_seconds(&[agent_pid]) - idle_started.1)
        / idle_started.0.elapsed().as_secs_f64();

    let (mut all, mut max_ms, mut cpu) = (Vec::new(), 0f64, 0f64);
    for change in 1..=CHANGES {
        let text = services_yaml(0..SERVICES_PER_FILE.min(services), change);
        let cpu_before = procstat::cpu_seconds(&[agent_pid]);
        let written = Instant::now();
        write_atomically(&services_file(source_path, 0), &text)?;
        let mut seen = vec![false; proxies];
        let mut count = 0;
        let deadline = written + CHANGE_TIMEOUT;
        while count < proxies {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, arrived.recv()).await {
                Ok(Some((p, at))) if !seen[p] => {
                    seen[p] = true;
                    count += 1;
                    let ms = at.duration_since(written).as_secs_f64() * 1e3;
                    all.push(ms);
                    max_ms = max_ms.max(ms);
                }
                Ok(Some(_)) => {}
                _ => bail!(
                    "change {change} reached {count} of {proxies} proxies in {CHANGE_TIMEOUT:?}"
                ),
            }
        }
        // Let the agent finish what follows (the other streams' unchanged answers).
        tokio::time::sleep(Duration::from_millis(500)).await;
        let window = written.elapsed().as_secs_f64();
        cpu += procstat::cpu_seconds(&[agent_pid]) - cpu_before - idle_per_s * window;
    }
    Ok(Size {
        services,
        proxies,
        streams: proxies * (1 + DESTINATIONS.min(services)),
        agent_rss_loaded_mib: 0.0,
        agent_rss_watched_mib,
        connect_all_s,
        push_p50_ms: percentile(&all, 50.0),
        push_p99_ms: percentile(&all, 99.0),
        push_max_ms: max_ms,
        agent_cpu_per_change_s: (cpu / CHANGES as f64).max(0.0),
        agent_idle_cpu_pct: idle_per_s * 100.0,
        proxy_rss_on_demand_mib: None,
        proxy_rss_full_mib: None,
    })
}

/// The configuration of simulated proxy `p`, a real client of the agent.
fn config(agent: SocketAddr, anchors: &str, token: &Path, p: usize) -> Result<ControlConfig> {
    Ok(ControlConfig {
        agent_addr: agent.to_string(),
        agent_identity: SpiffeId::new(TRUST_DOMAIN, AGENT_NAMESPACE, AGENT_SERVICE_ACCOUNT)?,
        trust_anchors_pem: anchors.to_string(),
        trust_anchors_path: None,
        token_file: PathBuf::from(token),
        workload: SpiffeId::new(TRUST_DOMAIN, "bench", &format!("w{p}"))?,
        pod_name: None,
        discovery: Discovery::OnDemand {
            idle: Duration::from_secs(3600),
        },
    })
}

/// One simulated proxy: its connection, its on-demand watch and its answer streams;
/// resolves once every first line is in, then reports each new answer for service
/// 0 on `arrivals` until the runtime is dropped.
async fn proxy(
    p: usize,
    services: usize,
    config: ControlConfig,
    arrivals: mpsc::UnboundedSender<(usize, Instant)>,
) -> Result<()> {
    let client = Arc::new(AgentClient::new(&config)?);
    let watch = client.watch(true).await?;
    let mut watch = Lines::new(watch);
    watch
        .next()
        .await
        .ok_or_else(|| anyhow!("proxy {p}: the watch ended before its first view"))?;
    tokio::spawn(async move { while watch.next().await.is_some() {} });
    for d in 0..DESTINATIONS.min(services) {
        // Service 0 for everyone, then a spread of others.
        let service = if d == 0 {
            0
        } else {
            (p * 7919 + d * 104_729) % services
        };
        let body = client.resolve(vip(service)).await?;
        let mut answers = Lines::new(body);
        answers
            .next()
            .await
            .ok_or_else(|| anyhow!("proxy {p}: no answer for service {service}"))?;
        let arrivals = arrivals.clone();
        tokio::spawn(async move {
            while answers.next().await.is_some() {
                if d == 0 {
                    let _ = arrivals.send((p, Instant::now()));
                }
            }
        });
    }
    // The client lives as long as its streams' tasks hold the connection.
    std::mem::forget(client);
    Ok(())
}

/// Newline-delimited lines of a streaming body (their content is not needed).
struct Lines {
    body: Incoming,
    buf: Vec<u8>,
}

impl Lines {
    fn new(body: Incoming) -> Lines {
        Lines {
            body,
            buf: Vec::new(),
        }
    }

    /// Resolves at the next complete line; `None` when the stream ends.
    async fn next(&mut self) -> Option<()> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                self.buf.drain(..=pos);
                return Some(());
            }
            let frame = self.body.frame().await?.ok()?;
            if let Ok(data) = frame.into_data() {
                self.buf.extend_from_slice(&data);
            }
        }
    }
}

/// The markdown table of `sizes`.
pub fn table(sizes: &[Size]) -> String {
    let mut md = String::from(
        "| services | proxies | streams | agent RSS loaded, MiB | agent RSS watched, MiB | \
         all connected, s | push p50, ms | push p99, ms | push max, ms | agent CPU per change, s \
         | agent idle CPU, % | proxy RSS on-demand / full, MiB |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mib = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:.1}"));
    for s in sizes {
        md.push_str(&format!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.3} | {:.1} | {} / {} |\n",
            s.services,
            s.proxies,
            s.streams,
            s.agent_rss_loaded_mib,
            s.agent_rss_watched_mib,
            s.connect_all_s,
            s.push_p50_ms,
            s.push_p99_ms,
            s.push_max_ms,
            s.agent_cpu_per_change_s,
            s.agent_idle_cpu_pct,
            mib(s.proxy_rss_on_demand_mib),
            mib(s.proxy_rss_full_mib)
        ));
    }
    md
}
