//! The discovery figure (`--discovery`): what a Pillion client proxy holds and what
//! it costs when the mesh is large and its workload calls a few services (issue 13:
//! idle RSS at 20,000 services calling 10, and the price of the first request to a
//! destination the proxy has not seen).
//!
//! Per Pillion row and run, on a fresh topology: the agent's source grows to the
//! plan's services, the first `used + fresh` of them served by the server pod; once
//! the server's proxy shows them loaded, the client calls each of the `used` services
//! a few times (new connections), the client proxy's RSS is read after a settle;
//! then each of the `fresh` services is called once (its first request: with
//! on-demand discovery the proxy asks the agent first) and once more (known), each
//! on a new connection. Rows differ by their proxies' `PILLION_DISCOVERY`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};

use crate::figures::discovery as fig;
use crate::measure::{in_client, mib, report_line, Collected};
use crate::plan::DiscoveryPlan;
use crate::procstat;
use crate::stats::percentile;
use crate::topology::{Contender, Kind, ViewControl};

/// What the report says about the figure's method.
pub const NOTE: &str = "discovery: the agent's source grows to the plan's services (each a VIP \
     with one meshed endpoint; the first used + fresh served by the server pod); once the \
     server's proxy holds them, the client calls each used service 5 times (new connections) \
     and the client proxy's RSS is read 2 s later; then each fresh service is called once \
     (first request) and again (known), each on a new HTTP/1.1 connection. Between the two, \
     a 100 req/s probe to the first used service, pinned to the client's CPU, runs 6 s \
     alone (its p99 and longest answer) and 6 s across a change of every served service \
     (its longest answer, coordinated omission corrected): the pause a change at this \
     mesh size costs a workload, next to the longest answer without one. Every run builds \
     new proxies. A row's discovery mode is its proxies' PILLION_DISCOVERY (default \
     on-demand).";

/// Rate of the probe that looks for a pause while a change is pushed.
const PROBE_RATE: u32 = 100;
/// Its keep-alive connections.
const PROBE_CONNS: usize = 4;
/// How long it runs alone, and (twice this) across the change.
const PROBE_WINDOW: Duration = Duration::from_secs(3);

/// Requests to each used service before the RSS is read.
const CALLS_PER_USED: usize = 5;
/// Time the agent and the proxies get to load the grown source.
const LOAD_TIMEOUT: Duration = Duration::from_secs(180);

/// One collector per row; rows without an agent have no discovery to measure.
pub fn collectors(rows: &[Contender], plan: &DiscoveryPlan) -> Vec<Collected> {
    let mut out = vec![Collected::default(); rows.len()];
    for (c, acc) in rows.iter().zip(out.iter_mut()) {
        if c.view.is_none() {
            for f in crate::figures::discovery(plan) {
                acc.na(&f.id, "Pillion rows with an agent only");
            }
        }
    }
    out
}

/// Measures every Pillion row of `rows` once (one run).
pub fn run(rows: &[Contender], plan: &DiscoveryPlan, cpu: Option<usize>, acc: &mut [Collected]) {
    for (c, acc) in rows.iter().zip(acc.iter_mut()) {
        let Some(view) = &c.view else { continue };
        if !matches!(c.kind, Kind::Pillion | Kind::PillionBaseline) {
            continue;
        }
        match one(c, view, plan, cpu) {
            Ok(o) => {
                acc.push(fig::CLIENT_RSS, mib(o.rss_kib), 0);
                acc.push(fig::FIRST_P50, o.first_p50_ms, 0);
                acc.push(fig::FIRST_P99, o.first_p99_ms, 0);
                acc.push(fig::KNOWN_P99, o.known_p99_ms, 0);
                acc.push(fig::LOAD_SECONDS, o.load_s, 0);
                acc.push(fig::PROBE_STEADY_P99, o.probe_steady_p99_ms, 0);
                acc.push(fig::PROBE_QUIET_LONGEST, o.probe_quiet_longest_ms, 0);
                acc.push(fig::PROBE_LONGEST, o.probe_longest_ms, o.probe_errors);
                report_line(
                    c,
                    "discovery",
                    &format!(
                        "client proxy {:.1} MiB calling {} of {} services; first request \
                         p50 {:.2} / p99 {:.2} ms, known p99 {:.2} ms; loaded in {:.1} s; \
                         during a change: longest answer {:.2} ms (steady p99 {:.2}, longest \
                         without a change {:.2}, {} errors)",
                        mib(o.rss_kib),
                        plan.used,
                        plan.services,
                        o.first_p50_ms,
                        o.first_p99_ms,
                        o.known_p99_ms,
                        o.load_s,
                        o.probe_longest_ms,
                        o.probe_steady_p99_ms,
                        o.probe_quiet_longest_ms,
                        o.probe_errors
                    ),
                );
            }
            Err(e) => {
                for f in crate::figures::discovery(plan) {
                    acc.fail(&f.id, &e);
                }
                report_line(c, "discovery", &format!("FAILED: {e:#}"));
            }
        }
    }
}

struct Outcome {
    rss_kib: u64,
    first_p50_ms: f64,
    first_p99_ms: f64,
    known_p99_ms: f64,
    load_s: f64,
    probe_steady_p99_ms: f64,
    probe_quiet_longest_ms: f64,
    probe_longest_ms: f64,
    probe_errors: u64,
}

fn one(
    c: &Contender,
    view: &ViewControl,
    plan: &DiscoveryPlan,
    cpu: Option<usize>,
) -> Result<Outcome> {
    let client_proxy = *c
        .proxies
        .first()
        .ok_or_else(|| anyhow!("the row has no client proxy"))?;
    let served = plan.used + plan.fresh;
    let started = Instant::now();
    view.push_served(plan.services, served)?;
    // The server pod serves them: its proxy holds them once the agent has loaded
    // the source (on demand, its own services; in full, every service).
    loop {
        if view.server_view_services()? > served {
            break;
        }
        if started.elapsed() > LOAD_TIMEOUT {
            bail!(
                "the server proxy did not see the {served} served services within {LOAD_TIMEOUT:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let load_s = started.elapsed().as_secs_f64();

    let used: Vec<SocketAddr> = (0..plan.used).map(ViewControl::vip).collect();
    in_client(c, cpu, move || async move {
        for vip in used {
            for _ in 0..CALLS_PER_USED {
                call(vip).await?;
            }
        }
        Ok(())
    })?;
    std::thread::sleep(Duration::from_secs(2));
    let rss_kib = procstat::memory(&[client_proxy]).rss_kib;

    let probe = probe_during_a_change(c, view, plan, cpu)?;

    let fresh: Vec<SocketAddr> = (plan.used..served).map(ViewControl::vip).collect();
    let (first, known) = in_client(c, cpu, move || async move {
        let (mut first, mut known) = (Vec::new(), Vec::new());
        for vip in fresh {
            first.push(call(vip).await?);
            known.push(call(vip).await?);
        }
        Ok((first, known))
    })?;
    Ok(Outcome {
        rss_kib,
        first_p50_ms: percentile(&first, 50.0),
        first_p99_ms: percentile(&first, 99.0),
        known_p99_ms: percentile(&known, 99.0),
        load_s,
        probe_steady_p99_ms: probe.steady_p99_ms,
        probe_quiet_longest_ms: probe.quiet_longest_ms,
        probe_longest_ms: probe.longest_ms,
        probe_errors: probe.errors,
    })
}

/// What the probe saw.
struct Probe {
    steady_p99_ms: f64,
    quiet_longest_ms: f64,
    longest_ms: f64,
    errors: u64,
}

/// A probe at [`PROBE_RATE`] to the first used service, twice over the same window
/// from the same pinned thread: alone (its p99 and longest answer), then across a
/// change to every served service in the large mesh (its longest answer): how long
/// pushing a change at this size pauses a workload's requests, read against the
/// longest answer this machine gives without one.
fn probe_during_a_change(
    c: &Contender,
    view: &ViewControl,
    plan: &DiscoveryPlan,
    cpu: Option<usize>,
) -> Result<Probe> {
    let vip = ViewControl::vip(0);
    let window = PROBE_WINDOW * 2;
    let quiet = in_client(c, cpu, move || {
        crate::load::open::run(vip, PROBE_CONNS, PROBE_RATE, window)
    })?;
    let change = view.prepare_served_generation(plan.services, plan.used + plan.fresh, 1)?;
    let (tx, rx) = std::sync::mpsc::channel();
    let probe = c.client.background(move || async move {
        let run = async {
            crate::pin::pin_this_thread(cpu)?;
            crate::load::open::run(vip, PROBE_CONNS, PROBE_RATE, window).await
        };
        let _ = tx.send(run.await);
    });
    let probe = probe.map_err(|e| anyhow!("{e:#}"))?;
    std::thread::sleep(PROBE_WINDOW / 2);
    change.publish()?;
    let during = rx
        .recv_timeout(window + Duration::from_secs(30))
        .map_err(|_| anyhow!("the probe did not finish"))??;
    drop(probe);
    Ok(Probe {
        steady_p99_ms: quiet.p99_us / 1000.0,
        quiet_longest_ms: quiet.max_us / 1000.0,
        longest_ms: during.max_us / 1000.0,
        errors: quiet.errors + during.errors,
    })
}

/// One HTTP/1.1 request on a new connection; its time in ms (a non-200 is an error).
async fn call(vip: SocketAddr) -> Result<f64> {
    let started = Instant::now();
    let answer = pillion_tests::http::request(vip, "GET", "/").await?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    if answer.status != 200 {
        bail!("GET http://{vip}/ answered {}", answer.status);
    }
    Ok(ms)
}
