//! The flood figure (`--flood`): is a Pillion server pod's proxy bounded under a flood
//! of idle and slow-header connections, does normal traffic through the pair keep
//! its latency meanwhile, and is the memory returned afterwards?
//!
//! Per row and run: the server-side proxy's RSS idle; steady open-loop traffic
//! through the pair (its p99); the same traffic again while the [flood
//! client](crate::load::flood), a process of its own in an unmeshed pod, opens the
//! plan's idle and slow-header connections at the service and holds them (the
//! proxy's RSS and open descriptors sampled every half second, the traffic's p99);
//! the flood closed; the proxy's RSS once a second for the plan's `after`. Every run
//! gets a fresh topology (the benchmark rebuilds it), so no proxy meets a flood twice,
//! and rows are taken in the opposite order every other run.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use pillion_tests::{Cmd, Pod, Process, Signal};
use serde::Serialize;

use crate::figures::flood as fig;
use crate::load::flood::{self as client, Closed, Event, Opened};
use crate::load::{self, open::Latency};
use crate::measure::{in_client, mib, report_line, Collected};
use crate::pin::{pin_process_tree, pin_this_thread, Layout};
use crate::plan::FloodPlan;
use crate::procstat;
use crate::topology::{Contender, Kind};

/// Time between the traffic's start and the flood's, so the flood's opening is inside
/// the measured window.
pub const LEAD: Duration = Duration::from_secs(1);
/// Time between two samples during the flood.
const SAMPLE: Duration = Duration::from_millis(500);
/// How long the flood client may take to close everything and exit.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

/// What one flood run saw over time, for the JSON report (the table keeps the
/// figures only).
#[derive(Debug, Clone, Serialize)]
pub struct FloodTrace {
    /// The row's name when it was measured.
    pub row: String,
    /// Which run (1-based).
    pub run: usize,
    /// The server-side proxy's soft open-files limit.
    pub proxy_fd_limit: Option<u64>,
    /// The flood client's opening report.
    pub opened: Option<Opened>,
    /// The flood client's closing report.
    pub closed: Option<Closed>,
    /// The proxy's RSS every half second from the traffic's start to the flood's
    /// close, MiB.
    pub during_rss_mib: Vec<f64>,
    /// Its open descriptors at the same instants.
    pub during_fds: Vec<u64>,
    /// Its RSS once a second after the flood closed, MiB (the first is at +1 s).
    pub after_rss_mib: Vec<f64>,
    /// The traffic's p99 in each second of the run during the flood, ms (the flood
    /// starts [`LEAD`] in): where a stall falls in time.
    pub during_p99_by_second_ms: Vec<f64>,
}

/// The figures of one run.
#[derive(Debug, Clone)]
struct Outcome {
    idle_kib: u64,
    steady: Latency,
    during: Latency,
    trace: FloodTrace,
}

/// One collector per row, the figures of rows without a Pillion server proxy marked
/// as not applicable.
pub fn collectors(rows: &[Contender], plan: &FloodPlan) -> Vec<Collected> {
    let mut out = vec![Collected::default(); rows.len()];
    for (c, acc) in rows.iter().zip(out.iter_mut()) {
        if c.server_proxy.is_some() {
            continue;
        }
        let proxy_only = [
            fig::RSS_IDLE,
            fig::RSS_DURING,
            fig::RSS_AFTER,
            fig::FDS_DURING,
        ];
        for f in crate::figures::flood(plan) {
            if c.kind != Kind::Direct {
                acc.na(&f.id, "Pillion rows and direct only");
            } else if proxy_only.contains(&f.id.as_str()) {
                acc.na(&f.id, "no proxy");
            }
        }
    }
    out
}

/// One run of the flood figure over every row, on a fresh topology (so no proxy has
/// met a flood before).
#[derive(Debug, Clone, Copy)]
pub struct Run<'a> {
    number: usize,
    of: usize,
    binary: &'a Path,
    layout: &'a Layout,
}

impl<'a> Run<'a> {
    /// Run `number` of `of`; `binary` runs the flood client.
    pub fn new(number: usize, of: usize, binary: &'a Path, layout: &'a Layout) -> Run<'a> {
        Run {
            number,
            of,
            binary,
            layout,
        }
    }

    /// Floods every row with a Pillion server proxy from the unmeshed pod `from`, with
    /// traffic over `conns` connections; files the figures in `out` (one per row) and
    /// the samples in `traces`. Even runs take the rows in reverse order.
    pub fn all(
        &self,
        rows: &[Contender],
        from: &Pod,
        plan: &FloodPlan,
        conns: usize,
        out: &mut [Collected],
        traces: &mut Vec<FloodTrace>,
    ) {
        eprintln!("flood run {}/{}", self.number, self.of);
        let mut order: Vec<usize> = (0..rows.len().min(out.len())).collect();
        if self.number % 2 == 0 {
            order.reverse();
        }
        for i in order {
            let (c, acc) = (&rows[i], &mut out[i]);
            if c.server_proxy.is_none() && c.kind != Kind::Direct {
                continue;
            }
            match self.one(c, c.server_proxy, from, plan, conns) {
                Ok(o) => {
                    record(c, acc, &o, plan);
                    traces.push(o.trace);
                }
                Err(e) => {
                    for f in crate::figures::flood(plan) {
                        acc.fail(&f.id, &e);
                    }
                    report_line(c, "flood", &format!("FAILED: {e:#}"));
                }
            }
            std::thread::sleep(plan.settle);
        }
    }

    /// This run of the flood figure on one row; `server` is the server-side proxy
    /// (`None` for the direct row, which the flood meets at the server itself: the
    /// floor, what the flood costs the machine without a mesh).
    fn one(
        &self,
        c: &Contender,
        server: Option<u32>,
        from: &Pod,
        plan: &FloodPlan,
        conns: usize,
    ) -> Result<Outcome> {
        let (run, binary, layout) = (self.number, self.binary, self.layout);
        let rss = || server.map_or(0, |pid| procstat::memory(&[pid]).rss_kib);
        let (addr, rate, cpu) = (c.h1, plan.rate, layout.client);
        let idle_kib = rss();
        let steady_for = plan.steady;
        let steady = in_client(c, cpu, move || {
            load::open::run(addr, conns, rate, steady_for)
        })
        .context("the steady traffic")?;
        let mut trace = FloodTrace {
            row: c.name.clone(),
            run,
            proxy_fd_limit: server.and_then(procstat::fd_limit),
            opened: None,
            closed: None,
            during_rss_mib: Vec::new(),
            during_fds: Vec::new(),
            after_rss_mib: Vec::new(),
            during_p99_by_second_ms: Vec::new(),
        };
        let (tx, rx) = mpsc::channel();
        let during_for = plan.during;
        let probe = c
            .client
            .background(move || async move {
                if pin_this_thread(cpu).is_ok() {
                    let _ = tx.send(load::open::run(addr, conns, rate, during_for).await);
                }
            })
            .map_err(|e| anyhow!("{e:#}"))?;
        let started = Instant::now();
        std::thread::sleep(LEAD);
        let flood = start_client(from, binary, addr, plan)?;
        pin_process_tree(flood.pid(), cpu)?;
        let sample = |trace: &mut FloodTrace| {
            trace.during_rss_mib.push(mib(rss()));
            trace
                .during_fds
                .push(server.and_then(procstat::open_fds).unwrap_or(0));
        };
        let during = loop {
            match rx.recv_timeout(SAMPLE) {
                Ok(latency) => break latency.context("the traffic during the flood")?,
                Err(RecvTimeoutError::Timeout) => sample(&mut trace),
                Err(RecvTimeoutError::Disconnected) => bail!("the traffic ended without a result"),
            }
            if let Some(status) = flood.try_status() {
                bail!("the flood client exited early ({status})\n{}", flood.logs());
            }
            if started.elapsed() > plan.during + Duration::from_secs(60) {
                bail!("the traffic during the flood did not finish");
            }
        };
        sample(&mut trace);
        drop(probe);
        trace.during_p99_by_second_ms = during
            .p99_by_second_us
            .iter()
            .map(|us| us / 1000.0)
            .collect();
        trace.opened = last_event(&flood, |e| match e {
            Event::Opened(o) => Some(o),
            Event::Closed(_) => None,
        });
        let opened = trace.opened.ok_or_else(|| {
            anyhow!(
                "the flood had not finished opening when the traffic ended\n{}",
                flood.logs()
            )
        })?;
        flood.signal(Signal::SIGTERM)?;
        flood
            .wait_timeout(CLOSE_TIMEOUT)
            .ok_or_else(|| anyhow!("the flood client did not close within {CLOSE_TIMEOUT:?}"))?;
        let closed_at = Instant::now();
        trace.closed = last_event(&flood, |e| match e {
            Event::Closed(c) => Some(c),
            Event::Opened(_) => None,
        });
        if trace.closed.is_none() {
            bail!(
                "the flood client did not report its close\n{}",
                flood.logs()
            );
        }
        report_line(
            c,
            "flood opened",
            &format!(
                "{} idle + {} slow in {:.1} s, {} refused, {} pending",
                opened.idle, opened.slow, opened.seconds, opened.refused, opened.pending
            ),
        );
        for second in 1..=plan.after.as_secs() {
            let at = closed_at + Duration::from_secs(second);
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            trace.after_rss_mib.push(mib(rss()));
        }
        Ok(Outcome {
            idle_kib,
            steady,
            during,
            trace,
        })
    }
}

/// Files one run's figures under the row and prints them.
fn record(c: &Contender, acc: &mut Collected, o: &Outcome, plan: &FloodPlan) {
    let t = &o.trace;
    let peak = t.during_rss_mib.iter().copied().fold(0.0, f64::max);
    let after = t.after_rss_mib.last().copied().unwrap_or(f64::NAN);
    let fds = t.during_fds.iter().copied().max().unwrap_or(0);
    let (opened, closed) = (t.opened, t.closed);
    let refused = opened.map_or(0, |o| o.refused + o.pending);
    let idle_closed = closed.map_or(0, |c| c.idle_closed);
    let slow_closed = closed.map_or(0, |c| c.slow_closed);
    if c.server_proxy.is_some() {
        acc.push(fig::RSS_IDLE, mib(o.idle_kib), 0);
        acc.push(fig::RSS_DURING, peak, 0);
        acc.push(fig::RSS_AFTER, after, 0);
        acc.push(fig::FDS_DURING, fds as f64, 0);
    }
    acc.push(fig::P99_STEADY, o.steady.p99_us / 1000.0, o.steady.errors);
    acc.push(fig::P99_DURING, o.during.p99_us / 1000.0, o.during.errors);
    acc.push(fig::REFUSED, refused as f64, 0);
    acc.push(fig::IDLE_CLOSED, idle_closed as f64, 0);
    acc.push(fig::SLOW_CLOSED, slow_closed as f64, 0);
    let by_second: Vec<String> = t
        .during_p99_by_second_ms
        .iter()
        .map(|ms| format!("{ms:.1}"))
        .collect();
    report_line(c, "flood p99 by second, ms", &by_second.join(" "));
    report_line(
        c,
        "flood",
        &format!(
            "RSS idle {:.1} → during {peak:.1} → +{}s {after:.1} MiB; fds {fds}; p99 {:.3} → \
             {:.3} ms ({} errors); refused {refused}, closed by the proxy {idle_closed}/{} \
             idle {slow_closed}/{} slow",
            mib(o.idle_kib),
            plan.after.as_secs(),
            o.steady.p99_us / 1000.0,
            o.during.p99_us / 1000.0,
            o.during.errors,
            plan.idle,
            plan.slow,
        ),
    );
}

/// Starts the flood client in `from`, aimed at `target`.
fn start_client(
    from: &Pod,
    binary: &Path,
    target: SocketAddr,
    plan: &FloodPlan,
) -> Result<Process> {
    crate::topology::check_target(target)?;
    // chrt execs the client in place, so the PID pinned and signalled is the client's.
    let cmd = if plan.idle_priority {
        Cmd::new("chrt").arg("--idle").arg("0").arg(binary)
    } else {
        Cmd::new(binary)
    };
    from.spawn(
        cmd.arg(client::PROGRAM)
            .arg("--target")
            .arg(target.to_string())
            .arg("--idle")
            .arg(plan.idle.to_string())
            .arg("--slow")
            .arg(plan.slow.to_string())
            .arg("--drip-ms")
            .arg(plan.drip.as_millis().to_string())
            .arg("--open-rate")
            .arg(plan.open_rate.to_string()),
    )
    .context("starting the flood client")
}

/// The last event of the flood client that `pick` takes.
fn last_event<T>(flood: &Process, pick: impl Fn(Event) -> Option<T>) -> Option<T> {
    client::events(&flood.logs().stdout)
        .into_iter()
        .rev()
        .find_map(pick)
}
