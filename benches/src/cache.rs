//! The response cache through the Pillion pair (`--cache`): HTTP/1.1 keep-alive
//! requests per second for a route whose answers the client's proxy keeps (hits),
//! a route with a cache whose answers cannot be kept (every request a miss, sent
//! upstream through the cache's path) and the default route without a cache, in
//! one run through the same pair; then the client proxy's memory as four times
//! its cache bound's worth of distinct answers goes through it, twice. The target
//! is a hit at least twice the requests per second of a miss.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::certs::{Certs, NAMESPACE};
use crate::load::closed::{self, Paths};
use crate::pin::{pin_process_tree, pin_this_thread, Layout};
use crate::procstat;
use crate::server::HTTP_PORT;
use crate::stats::Spread;
use crate::topology::{pillion, pods};
use crate::workdir::WorkDir;

/// A hit must carry at least this many times a miss's requests per second.
pub const HIT_OVER_MISS_TARGET: f64 = 2.0;

/// The client proxy's cache bound in this figure.
pub const CAP_BYTES: u64 = 16 << 20;

/// The bench service's routes: `/hit` kept for an hour (the server states no
/// freshness, the route's default gives it), `/miss` cached but never kept.
const ROUTES: &str = "\x20         - name: hit
            matches: [{path: {prefix: /hit}}]
            cache: {default_ttl: 1h}
          - name: miss
            matches: [{path: {prefix: /miss}}]
            cache: {}
";

/// One case's requests per second over the runs.
#[derive(Debug, Clone, Serialize)]
pub struct CacheRow {
    /// What was asked.
    pub case: String,
    /// Requests per second: median, min, max.
    pub per_second: Spread,
    /// Requests that failed, over every run.
    pub errors: u64,
}

/// The client proxy's memory as distinct answers fill its cache.
#[derive(Debug, Clone, Serialize)]
pub struct CacheMemory {
    /// The cache's bound, MiB.
    pub cap_mib: f64,
    /// RSS before the fill, MiB.
    pub before_mib: f64,
    /// Distinct answers asked for in each fill.
    pub answers: [u64; 2],
    /// RSS after the first and the second fill, MiB.
    pub after_mib: [f64; 2],
}

/// Everything `--cache` measured.
#[derive(Debug, Clone, Serialize)]
pub struct CacheReport {
    /// Hit, miss and no-cache rows.
    pub rows: Vec<CacheRow>,
    /// Median hits per second over median misses per second.
    pub hit_over_miss: f64,
    /// Memory at the bound.
    pub memory: CacheMemory,
}

/// Builds the pods and the pair and measures; `smoke` runs one short run of each.
pub fn run(binary: &std::path::Path, smoke: bool, log_level: &str) -> Result<CacheReport> {
    let (runs, duration, fill) = if smoke {
        (1, Duration::from_secs(1), Duration::from_secs(1))
    } else {
        (3, Duration::from_secs(5), Duration::from_secs(10))
    };
    let conns = 64;
    let work = WorkDir::create()?;
    let certs = Certs::create(&work)?;
    let world = pillion_tests::World::new("bench-cache")?;
    let (client, server, agent) = (
        world.pod("client")?,
        world.pod("server")?,
        world.pod("agent")?,
    );
    pods::tune(&client)?;
    pods::tune(&server)?;
    let layout = Layout::for_cpus(crate::machine::Machine::detect().nproc);
    let _server = pods::start_server(&server, layout.server)?;
    let opts = pillion::PairOpts {
        binary: binary.to_path_buf(),
        workers: 1,
        log_level: log_level.to_string(),
        proxy_binary: None,
        env: vec![("PILLION_RESPONSE_CACHE_BYTES".into(), CAP_BYTES.to_string())],
        tag: "cache",
        http_routes: ROUTES.to_string(),
        extra_workloads: String::new(),
    };
    let pair = pillion::start(&opts, &client, &server, &agent, &certs, &work)?;
    pin_process_tree(pair.client.proxy().pid(), layout.client)?;
    pin_process_tree(pair.server.proxy().pid(), layout.server)?;
    if let Some(agent) = &pair.agent {
        pin_process_tree(agent.pid(), layout.server)?;
    }
    let addr = pillion::service_addr(&server, HTTP_PORT);
    let cpu = layout.client;
    let load = |paths: Paths, duration: Duration| -> Result<(f64, u64)> {
        let t = client.run(move || async move {
            pin_this_thread(cpu)?;
            closed::run_paths(addr, conns, duration, paths).await
        })??;
        Ok((t.per_second(), t.errors))
    };
    // The routes reach the client proxy with the agent's first push; the first
    // hit fills the entry.
    wait_for_routes(&pair, addr, &load)?;
    let cases = [
        (
            "hit: GET /hit, answered by the client's proxy",
            Paths::Fixed("/hit"),
        ),
        (
            "miss: GET /miss, a cached route whose answers cannot be kept",
            Paths::Fixed("/miss"),
        ),
        ("no cache: GET /, the default route", Paths::Fixed("/")),
    ];
    let mut measured: Vec<(Vec<f64>, u64)> = vec![(Vec::new(), 0); cases.len()];
    for run in 0..runs {
        // Alternate the order run by run, so no case always goes first.
        for i in 0..cases.len() {
            let i = if run % 2 == 0 { i } else { cases.len() - 1 - i };
            let (per_second, errors) = load(cases[i].1, duration)?;
            eprintln!("  cache {:<60} {per_second:>10.0} req/s", cases[i].0);
            measured[i].0.push(per_second);
            measured[i].1 += errors;
        }
    }
    let rows: Vec<CacheRow> = cases
        .iter()
        .zip(measured)
        .map(|((case, _), (values, errors))| CacheRow {
            case: case.to_string(),
            per_second: Spread::of(&values).unwrap_or(Spread {
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
                runs: 0,
            }),
            errors,
        })
        .collect();
    let hit_over_miss = rows[0].per_second.median / rows[1].per_second.median;

    let rss = || procstat::memory(&[pair.client.proxy().pid()]).rss_kib as f64 / 1024.0;
    let before_mib = rss();
    let mut answers = [0; 2];
    let mut after_mib = [0.0; 2];
    for i in 0..2 {
        let (per_second, errors) = load(Paths::Numbered("/hit"), fill)?;
        answers[i] = (per_second * fill.as_secs_f64()) as u64;
        anyhow::ensure!(errors == 0, "{errors} requests of the fill failed");
        std::thread::sleep(Duration::from_secs(1));
        after_mib[i] = rss();
        eprintln!(
            "  cache fill {}: {} distinct answers, client proxy RSS {:.1} MiB",
            i + 1,
            answers[i],
            after_mib[i]
        );
    }
    Ok(CacheReport {
        rows,
        hit_over_miss,
        memory: CacheMemory {
            cap_mib: CAP_BYTES as f64 / (1024.0 * 1024.0),
            before_mib,
            answers,
            after_mib,
        },
    })
}

/// Waits (up to 30 s) until `/hit` is answered by the client proxy's cache.
fn wait_for_routes(
    pair: &pillion::PillionPair,
    addr: SocketAddr,
    load: &dyn Fn(Paths, Duration) -> Result<(f64, u64)>,
) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let hits = || -> Result<f64> {
        let m = pair.client.metrics()?;
        Ok(m.value(
            "pillion_http_policy_actions_total",
            &[
                ("direction", "outbound"),
                ("service", &format!("{NAMESPACE}/bench")),
                ("route", "hit"),
                ("action", "cache_hit"),
            ],
        ))
    };
    loop {
        load(Paths::Fixed("/hit"), Duration::from_millis(200))?;
        if hits()? > 0.0 {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(anyhow::anyhow!(
                "no cache hit at {addr} within 30 s: the routes did not reach the client proxy"
            ))
            .context(pair.client.proxy().logs().to_string());
        }
    }
}

/// The markdown table.
pub fn table(report: &CacheReport) -> String {
    let mut out =
        String::from("| case | req/s (median) | min–max | errors |\n|---|---:|---:|---:|\n");
    for r in &report.rows {
        out.push_str(&format!(
            "| {} | {:.0} | {:.0}–{:.0} | {} |\n",
            r.case, r.per_second.median, r.per_second.min, r.per_second.max, r.errors
        ));
    }
    let verdict = if report.hit_over_miss >= HIT_OVER_MISS_TARGET {
        "met"
    } else {
        "NOT MET"
    };
    out.push_str(&format!(
        "\nhit / miss: {:.2}× (target ≥ {HIT_OVER_MISS_TARGET}×: {verdict})\n",
        report.hit_over_miss
    ));
    let m = &report.memory;
    out.push_str(&format!(
        "\nclient proxy RSS with a {:.0} MiB cache bound: {:.1} MiB before, {:.1} MiB after \
         {} distinct answers, {:.1} MiB after {} more\n",
        m.cap_mib, m.before_mib, m.after_mib[0], m.answers[0], m.after_mib[1], m.answers[1]
    ));
    out
}
