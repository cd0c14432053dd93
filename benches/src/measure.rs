//! Runs every figure for every row: run-major, then figure, then row, so slow drift of
//! the machine spreads over all rows instead of favouring whichever ran first. Failures
//! are recorded per cell and the run goes on.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{anyhow, Result};

use crate::figures::{self, latency_id};
use crate::load::{self, Throughput};
use crate::pin::{pin_this_thread, Layout};
use crate::plan::Plan;
use crate::procstat;
use crate::report::Cell;
use crate::stats::Spread;
use crate::topology::{Contender, ViewControl};

/// How long holding the connections may take to set up.
const HOLD_TIMEOUT: Duration = Duration::from_secs(60);

/// The values one row collected so far, by figure id.
#[derive(Debug, Default, Clone)]
pub struct Collected {
    values: BTreeMap<String, Vec<f64>>,
    errors: BTreeMap<String, u64>,
    failed: BTreeMap<String, String>,
    not_applicable: BTreeMap<String, String>,
}

impl Collected {
    pub(crate) fn push(&mut self, id: &str, value: f64, errors: u64) {
        self.values.entry(id.to_string()).or_default().push(value);
        *self.errors.entry(id.to_string()).or_default() += errors;
    }

    pub(crate) fn fail(&mut self, id: &str, error: &anyhow::Error) {
        self.failed
            .entry(id.to_string())
            .or_insert_with(|| format!("{error:#}"));
    }

    pub(crate) fn na(&mut self, id: &str, reason: &str) {
        self.not_applicable
            .insert(id.to_string(), reason.to_string());
    }

    /// The cell of figure `id`: a failure wins over partial values, so a figure is
    /// never reported from fewer runs than it claims without saying so.
    pub fn cell(&self, id: &str) -> Cell {
        if let Some(reason) = self.not_applicable.get(id) {
            return Cell::NotApplicable {
                reason: reason.clone(),
            };
        }
        if let Some(error) = self.failed.get(id) {
            return Cell::Failed {
                error: error.clone(),
            };
        }
        match self.values.get(id).and_then(|v| Spread::of(v)) {
            Some(spread) => Cell::Ok {
                spread,
                errors: self.errors.get(id).copied().unwrap_or(0),
            },
            None => Cell::Failed {
                error: "not measured".into(),
            },
        }
    }
}

/// Runs `make()`'s future on a fresh thread in the row's client pod, pinned to `cpu`.
pub(crate) fn in_client<T, F, Fut>(c: &Contender, cpu: Option<usize>, make: F) -> Result<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>>,
    T: Send + 'static,
{
    c.client.run(move || async move {
        pin_this_thread(cpu)?;
        make().await
    })?
}

pub(crate) fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub(crate) fn report_line(c: &Contender, what: &str, text: &str) {
    eprintln!("  {:<20} {what:<28} {text}", c.name);
}

/// Measures everything for `rows`; returns what each collected, in the same order.
pub fn all(rows: &[Contender], plan: &Plan, layout: &Layout) -> Vec<Collected> {
    let mut out = vec![Collected::default(); rows.len()];
    let cpu = layout.client;
    for (c, acc) in rows.iter().zip(out.iter_mut()) {
        if c.proxies.is_empty() {
            for id in [
                figures::RSS_IDLE,
                figures::RSS_HOLD,
                figures::RSS_PEAK,
                figures::CPU,
            ] {
                acc.na(id, "no proxy");
            }
        } else {
            let m = procstat::memory(&c.proxies);
            acc.push(figures::RSS_IDLE, mib(m.rss_kib), 0);
            report_line(c, "proxy RSS idle", &format!("{:.1} MiB", mib(m.rss_kib)));
        }
        if let Err(reason) = &c.h2 {
            acc.na(figures::H2_RPS, reason);
        }
    }
    for run in 1..=plan.runs {
        eprintln!("run {run}/{}", plan.runs);
        for (c, acc) in rows.iter().zip(out.iter_mut()) {
            closed_h1(c, acc, plan, cpu);
            std::thread::sleep(plan.settle);
        }
        for &rate in &plan.open_rates {
            for (c, acc) in rows.iter().zip(out.iter_mut()) {
                open_loop(c, acc, plan, cpu, rate);
                std::thread::sleep(plan.settle);
            }
        }
        for (c, acc) in rows.iter().zip(out.iter_mut()) {
            h2(c, acc, plan, cpu);
            std::thread::sleep(plan.settle);
        }
        for (c, acc) in rows.iter().zip(out.iter_mut()) {
            conn_rate(c, acc, plan, cpu);
            // TIME_WAIT sockets of the previous row drain meanwhile.
            std::thread::sleep(plan.settle * 2);
        }
        for (c, acc) in rows.iter().zip(out.iter_mut()) {
            bulk(c, acc, plan, cpu);
            std::thread::sleep(plan.settle);
        }
    }
    for (c, acc) in rows.iter().zip(out.iter_mut()) {
        if !c.proxies.is_empty() {
            hold(c, acc, plan, cpu);
            let m = procstat::memory(&c.proxies);
            acc.push(figures::RSS_PEAK, mib(m.hwm_kib), 0);
            report_line(c, "proxy RSS peak", &format!("{:.1} MiB", mib(m.hwm_kib)));
        }
    }
    // Last, so the large views never weigh on the other figures (RSS peak included).
    for run in 1..=plan.runs {
        for (c, acc) in rows.iter().zip(out.iter_mut()) {
            match &c.view {
                Some(view) => push_pause(c, view, acc, plan, cpu, run),
                None => {
                    acc.na(figures::PUSH_STEADY_P99, "no agent");
                    acc.na(figures::PUSH_PAUSE, "no agent");
                }
            }
        }
    }
    out
}

/// The longest answer of an open-loop probe while the agent pushes a view with
/// `plan.push_services` more services, next to the probe's steady p99 just before;
/// then the small view is restored (unmeasured).
fn push_pause(
    c: &Contender,
    view: &ViewControl,
    acc: &mut Collected,
    plan: &Plan,
    cpu: Option<usize>,
    run: usize,
) {
    let (addr, rate, window) = (c.h1, plan.push_rate, plan.push_window);
    let conns = plan.h1_conns;
    let steady = in_client(c, cpu, move || load::open::run(addr, conns, rate, window));
    let (tx, rx) = mpsc::channel();
    let probe = c.client.background(move || async move {
        if pin_this_thread(cpu).is_ok() {
            let _ = tx.send(load::open::run(addr, conns, rate, window * 2).await);
        }
    });
    let pushed = probe.map_err(|e| anyhow!("{e:#}")).and_then(|probe| {
        std::thread::sleep(window / 2);
        // A different size each run, so every run's file is a change to push.
        let services = plan.push_services + run;
        view.push(services)?;
        let latency = rx
            .recv_timeout(window * 2 + Duration::from_secs(30))
            .map_err(|_| anyhow!("the probe did not finish"))??;
        drop(probe);
        // Checked after the probe: serving /config (the whole view as JSON) would
        // itself load the proxy while it is measured.
        view.reached(services)?;
        Ok(latency)
    });
    let restored = view.push(0);
    match (steady, pushed) {
        (Ok(s), Ok(p)) => {
            acc.push(figures::PUSH_STEADY_P99, s.p99_us / 1000.0, s.errors);
            acc.push(figures::PUSH_PAUSE, p.max_us / 1000.0, p.errors);
            report_line(
                c,
                "view push",
                &format!(
                    "longest answer {:.3} ms (steady p99 {:.3} ms, {} errors)",
                    p.max_us / 1000.0,
                    s.p99_us / 1000.0,
                    p.errors
                ),
            );
        }
        (s, p) => {
            let e = s.err().or(p.err()).unwrap_or_else(|| anyhow!("unknown"));
            acc.fail(figures::PUSH_STEADY_P99, &e);
            acc.fail(figures::PUSH_PAUSE, &e);
            report_line(c, "view push", &format!("FAILED: {e:#}"));
        }
    }
    if let Err(e) = restored.and_then(|()| wait_small(view)) {
        report_line(c, "view restore", &format!("FAILED: {e:#}"));
    }
}

/// Waits (up to 30 s) until the client proxy's view is small again.
fn wait_small(view: &ViewControl) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if view.client_view_services()? <= 1 {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(anyhow!("the small view did not come back within 30 s"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn closed_h1(c: &Contender, acc: &mut Collected, plan: &Plan, cpu: Option<usize>) {
    let (addr, conns, duration) = (c.h1, plan.h1_conns, plan.rps_duration);
    let before = procstat::cpu_seconds(&c.proxies);
    let machine_before = procstat::machine_busy_seconds();
    let result = in_client(c, cpu, move || load::closed::run(addr, conns, duration));
    let used = procstat::cpu_seconds(&c.proxies) - before;
    let machine = procstat::machine_busy_seconds() - machine_before;
    match result {
        Ok(t) => {
            acc.push(figures::H1_RPS, t.per_second(), t.errors);
            report_line(c, "HTTP/1.1 req/s", &throughput(&t, "req/s"));
            if !c.proxies.is_empty() && t.ok > 0 {
                acc.push(figures::CPU, used / t.ok as f64 * 10_000.0, 0);
            }
            if t.ok > 0 {
                acc.push(figures::MACHINE_CPU, machine / t.ok as f64 * 10_000.0, 0);
            }
        }
        Err(e) => {
            acc.fail(figures::H1_RPS, &e);
            acc.fail(figures::CPU, &e);
            acc.fail(figures::MACHINE_CPU, &e);
            report_line(c, "HTTP/1.1 req/s", &format!("FAILED: {e:#}"));
        }
    }
}

fn open_loop(c: &Contender, acc: &mut Collected, plan: &Plan, cpu: Option<usize>, rate: u32) {
    let (addr, conns, duration) = (c.h1, plan.h1_conns, plan.open_duration);
    let what = format!("latency at {rate} req/s");
    match in_client(c, cpu, move || load::open::run(addr, conns, rate, duration)) {
        Ok(l) => {
            let ms = |us: f64| us / 1000.0;
            acc.push(&latency_id(rate, "p50"), ms(l.p50_us), l.errors);
            acc.push(&latency_id(rate, "p99"), ms(l.p99_us), l.errors);
            acc.push(&latency_id(rate, "p999"), ms(l.p999_us), l.errors);
            report_line(
                c,
                &what,
                &format!(
                    "p50 {:.3} p99 {:.3} p99.9 {:.3} ms ({:.0} req/s achieved, {} errors)",
                    ms(l.p50_us),
                    ms(l.p99_us),
                    ms(l.p999_us),
                    l.achieved_rps,
                    l.errors
                ),
            );
        }
        Err(e) => {
            for (p, _) in figures::PERCENTILES {
                acc.fail(&latency_id(rate, p), &e);
            }
            report_line(c, &what, &format!("FAILED: {e:#}"));
        }
    }
}

fn h2(c: &Contender, acc: &mut Collected, plan: &Plan, cpu: Option<usize>) {
    let Ok(addr) = c.h2.clone() else { return };
    let (conns, streams, duration) = (plan.h2_conns, plan.h2_streams, plan.h2_duration);
    match in_client(c, cpu, move || {
        load::h2::run(addr, conns, streams, duration)
    }) {
        Ok(t) => {
            acc.push(figures::H2_RPS, t.per_second(), t.errors);
            report_line(c, "HTTP/2 req/s", &throughput(&t, "req/s"));
        }
        Err(e) => {
            acc.fail(figures::H2_RPS, &e);
            report_line(c, "HTTP/2 req/s", &format!("FAILED: {e:#}"));
        }
    }
}

fn conn_rate(c: &Contender, acc: &mut Collected, plan: &Plan, cpu: Option<usize>) {
    let (addr, workers, duration) = (c.h1, plan.conn_workers, plan.conn_duration);
    match in_client(c, cpu, move || load::conns::rate(addr, workers, duration)) {
        Ok(t) => {
            acc.push(figures::CONN_RATE, t.per_second(), t.errors);
            report_line(c, "new connections/s", &throughput(&t, "conn/s"));
        }
        Err(e) => {
            acc.fail(figures::CONN_RATE, &e);
            report_line(c, "new connections/s", &format!("FAILED: {e:#}"));
        }
    }
}

fn bulk(c: &Contender, acc: &mut Collected, plan: &Plan, cpu: Option<usize>) {
    let (addr, bytes) = (c.bulk, plan.bulk_bytes);
    match in_client(c, cpu, move || load::bulk::run(addr, bytes)) {
        Ok(t) => {
            acc.push(figures::BULK, t.gbit_per_s(), 0);
            report_line(
                c,
                "bulk TCP",
                &format!("{:.2} Gbit/s ({:.2} s)", t.gbit_per_s(), t.seconds),
            );
        }
        Err(e) => {
            acc.fail(figures::BULK, &e);
            report_line(c, "bulk TCP", &format!("FAILED: {e:#}"));
        }
    }
}

/// Opens the connections in the background, reads the proxies' memory while they are
/// held, then closes them.
fn hold(c: &Contender, acc: &mut Collected, plan: &Plan, cpu: Option<usize>) {
    let (addr, conns) = (c.h1, plan.hold_conns);
    let (tx, rx) = mpsc::channel();
    let task = c.client.background(move || async move {
        if pin_this_thread(cpu).is_ok() {
            load::conns::hold(addr, conns, tx).await;
        }
    });
    let held = task.map_err(|e| anyhow!("{e:#}")).and_then(|task| {
        let n = rx
            .recv_timeout(HOLD_TIMEOUT)
            .map_err(|_| anyhow!("holding {conns} connections did not finish in time"))??;
        // Let the proxies finish their side of the last handshakes.
        std::thread::sleep(Duration::from_millis(200));
        let m = procstat::memory(&c.proxies);
        drop(task);
        Ok((n, m))
    });
    match held {
        Ok((n, m)) => {
            acc.push(figures::RSS_HOLD, mib(m.rss_kib), (conns - n) as u64);
            report_line(
                c,
                &format!("proxy RSS at {n} conns"),
                &format!("{:.1} MiB", mib(m.rss_kib)),
            );
        }
        Err(e) => {
            acc.fail(figures::RSS_HOLD, &e);
            report_line(c, "proxy RSS open conns", &format!("FAILED: {e:#}"));
        }
    }
}

fn throughput(t: &Throughput, unit: &str) -> String {
    format!(
        "{:.0} {unit} ({} in {:.2} s, {} errors)",
        t.per_second(),
        t.ok,
        t.seconds,
        t.errors
    )
}
