//! The flood client: thousands of idle connections and hundreds of slow-header ones
//! (`GET / HTTP/1.1`, `Host`, then one header byte every couple of seconds) against one
//! address, held until it is told to stop (SIGTERM) or a bound passes, then closed.
//!
//! It runs as a process of its own (`pillion-benches flood-client …`) in an unmeshed
//! pod, so its sockets count against its own open-files limit, not the benchmark's
//! (whose in-process servers may receive as many). It reports on stdout, one JSON
//! line per [`Event`]: once every connection is opened or refused, and once they are
//! closed, with how many the other side closed first.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, timeout, Instant};

/// The subcommand of the benchmark binary that runs the flood client.
pub const PROGRAM: &str = "flood-client";

/// What a slow-header connection sends first; a byte of the `x-slow` value follows
/// every drip interval, so the head never ends.
const SLOW_HEAD: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nx-slow: ";
/// Connects in flight at once (a SYN burst of all of them would only measure the
/// listener's backlog).
const CONNECTS_IN_FLIGHT: usize = 256;
/// Bound of one connect; slower counts as refused.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound of the opening phase as a whole.
const OPEN_BUDGET: Duration = Duration::from_secs(60);

/// The flood client's flags (given by the benchmark, not meant for people).
#[derive(Debug, Clone, Parser)]
#[command(name = "pillion-benches flood-client")]
pub struct FloodArgs {
    /// Where every connection goes (loopback or the bench ranges only).
    #[arg(long)]
    pub target: SocketAddr,
    /// Connections that send nothing.
    #[arg(long)]
    pub idle: u64,
    /// Connections that send a request head one byte at a time.
    #[arg(long)]
    pub slow: u64,
    /// Time between two bytes of a slow head, ms.
    #[arg(long, default_value_t = 2000)]
    pub drip_ms: u64,
    /// Connects started per second (0: as fast as the in-flight bound lets them).
    #[arg(long, default_value_t = 0)]
    pub open_rate: u32,
    /// Longest hold without a SIGTERM; then it closes everything and exits anyway.
    #[arg(long, default_value_t = 180)]
    pub max_hold_s: u64,
}

/// One line of the client's report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Every connection is open or has failed to open (or the opening budget ran out).
    Opened(Opened),
    /// The client was told to stop and has closed every connection.
    Closed(Closed),
}

/// How the opening went.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Opened {
    /// Idle connections open.
    pub idle: u64,
    /// Slow-header connections open.
    pub slow: u64,
    /// Connects refused, reset or timed out.
    pub refused: u64,
    /// Connects still pending when the opening budget ran out.
    pub pending: u64,
    /// Time the opening took, s.
    pub seconds: f64,
}

/// What the other side did before the client closed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Closed {
    /// Idle connections the other side closed (or reset) first.
    pub idle_closed: u64,
    /// Slow-header connections the other side closed (or reset) first.
    pub slow_closed: u64,
    /// Connections that got an answer (e.g. a 408) before being closed.
    pub answered: u64,
    /// Connects refused, reset or timed out (over the whole run).
    pub refused: u64,
}

/// Shared tallies of every connection task.
#[derive(Debug, Default)]
struct Counters {
    open_idle: AtomicU64,
    open_slow: AtomicU64,
    refused: AtomicU64,
    idle_closed: AtomicU64,
    slow_closed: AtomicU64,
    answered: AtomicU64,
}

impl Counters {
    fn get(v: &AtomicU64) -> u64 {
        v.load(Ordering::Relaxed)
    }

    fn bump(v: &AtomicU64) {
        v.fetch_add(1, Ordering::Relaxed);
    }

    fn opened(&self, started: Instant, total: u64) -> Opened {
        let (idle, slow, refused) = (
            Self::get(&self.open_idle),
            Self::get(&self.open_slow),
            Self::get(&self.refused),
        );
        Opened {
            idle,
            slow,
            refused,
            pending: total.saturating_sub(idle + slow + refused),
            seconds: started.elapsed().as_secs_f64(),
        }
    }

    fn closed(&self) -> Closed {
        Closed {
            idle_closed: Self::get(&self.idle_closed),
            slow_closed: Self::get(&self.slow_closed),
            answered: Self::get(&self.answered),
            refused: Self::get(&self.refused),
        }
    }
}

/// The program's entry point: flags, a current-thread runtime, the flood, the exit code.
pub fn main_with_args(args: Vec<OsString>) -> ExitCode {
    let args = match FloodArgs::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("flood-client: building a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flood-client: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Opens the flood, reports, holds until SIGTERM (or the bound), closes, reports.
pub async fn run(args: &FloodArgs) -> Result<()> {
    crate::topology::check_target(args.target)?;
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    pillion_tests::apps::raise_nofile_limit().context("raising the open-files limit")?;
    let counters = Arc::new(Counters::default());
    let permits = Arc::new(Semaphore::new(CONNECTS_IN_FLIGHT));
    let drip = Duration::from_millis(args.drip_ms.max(1));
    let total = args.idle + args.slow;
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    // Slow connections spread among the idle ones, so both kinds open all along.
    let every = (total / args.slow.max(1)).max(1);
    let (mut idle_left, mut slow_left) = (args.idle, args.slow);
    let pace = (args.open_rate > 0).then(|| Duration::from_secs(1) / args.open_rate);
    for i in 0..total {
        if let Some(pace) = pace {
            sleep_until(started + pace.mul_f64(i as f64)).await;
        }
        let slow = slow_left > 0 && (i % every == every - 1 || idle_left == 0);
        if slow {
            slow_left -= 1;
        } else {
            idle_left -= 1;
        }
        // Each slow connection drips at its own phase of the interval.
        let phase = drip.mul_f64((i % 97) as f64 / 97.0);
        tasks.spawn(hold_one(
            args.target,
            slow.then_some((drip, phase)),
            Arc::clone(&counters),
            Arc::clone(&permits),
        ));
    }
    let open_deadline = started + OPEN_BUDGET;
    while counters.opened(started, total).pending > 0 && Instant::now() < open_deadline {
        sleep(Duration::from_millis(20)).await;
    }
    report(&Event::Opened(counters.opened(started, total)))?;
    tokio::select! {
        _ = term.recv() => {}
        () = sleep(Duration::from_secs(args.max_hold_s)) => {}
    }
    let closed = counters.closed();
    tasks.shutdown().await;
    report(&Event::Closed(closed))
}

fn report(event: &Event) -> Result<()> {
    use std::io::Write as _;
    let line = serde_json::to_string(event)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .context("writing to stdout")
}

/// One connection: open it, then (for a slow one) drip its head, until the other side
/// closes it or the task is aborted.
async fn hold_one(
    target: SocketAddr,
    slow: Option<(Duration, Duration)>,
    counters: Arc<Counters>,
    permits: Arc<Semaphore>,
) {
    let stream = {
        let _permit = permits.acquire().await;
        match timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
            Ok(Ok(stream)) => stream,
            _ => return Counters::bump(&counters.refused),
        }
    };
    let (mut rd, wr) = stream.into_split();
    match slow {
        None => {
            Counters::bump(&counters.open_idle);
            watch_peer(&mut rd, &counters).await;
            Counters::bump(&counters.idle_closed);
        }
        Some((drip, phase)) => {
            Counters::bump(&counters.open_slow);
            tokio::select! {
                () = watch_peer(&mut rd, &counters) => {}
                () = drip_head(wr, drip, phase) => {}
            }
            Counters::bump(&counters.slow_closed);
        }
    }
}

/// Returns when the other side has closed or reset the connection; an answer before
/// that is counted once.
async fn watch_peer(rd: &mut OwnedReadHalf, counters: &Counters) {
    let mut buf = [0u8; 256];
    let mut answered = false;
    loop {
        match rd.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) if !answered => {
                answered = true;
                Counters::bump(&counters.answered);
            }
            Ok(_) => {}
        }
    }
}

/// Sends the slow head, then one byte per `drip`; returns when a write fails.
async fn drip_head(mut wr: OwnedWriteHalf, drip: Duration, phase: Duration) {
    if wr.write_all(SLOW_HEAD).await.is_err() {
        return;
    }
    sleep(phase).await;
    loop {
        sleep(drip).await;
        if wr.write_all(b"a").await.is_err() {
            return;
        }
    }
}

/// The events in a flood client's stdout, in order (lines that are not events are
/// skipped).
pub fn events(stdout: &str) -> Vec<Event> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip() {
        let opened = Event::Opened(Opened {
            idle: 3,
            slow: 1,
            refused: 0,
            pending: 0,
            seconds: 0.5,
        });
        let closed = Event::Closed(Closed {
            idle_closed: 2,
            slow_closed: 1,
            answered: 1,
            refused: 0,
        });
        let text = format!(
            "noise\n{}\n{}\n",
            serde_json::to_string(&opened).unwrap(),
            serde_json::to_string(&closed).unwrap()
        );
        assert!(text.contains("\"event\":\"opened\""));
        assert_eq!(events(&text), vec![opened, closed]);
    }

    #[test]
    fn flags() {
        let parse = |extra: &[&str]| {
            let base = [
                "f",
                "--target",
                "198.18.0.5:8080",
                "--idle",
                "10",
                "--slow",
                "2",
            ];
            FloodArgs::try_parse_from(base.iter().chain(extra)).unwrap()
        };
        let a = parse(&[]);
        assert_eq!((a.idle, a.slow, a.drip_ms, a.open_rate), (10, 2, 2000, 0));
        assert_eq!(parse(&["--open-rate", "500"]).open_rate, 500);
    }

    // Loopback of the test process's own namespace: a listener that closes every
    // connection after a moment, and one that answers the slow head.
    #[tokio::test]
    async fn counts_what_the_other_side_closes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    if let Ok(Ok(n)) = timeout(Duration::from_millis(200), s.read(&mut buf)).await {
                        if n > 0 {
                            let _ = s.write_all(b"HTTP/1.1 408 Request Timeout\r\n\r\n").await;
                        }
                    }
                });
            }
        });
        let counters = Arc::new(Counters::default());
        let permits = Arc::new(Semaphore::new(4));
        let drip = Some((Duration::from_millis(50), Duration::ZERO));
        let mut set = JoinSet::new();
        for i in 0..6 {
            let slow = if i < 2 { drip } else { None };
            set.spawn(hold_one(
                target,
                slow,
                Arc::clone(&counters),
                Arc::clone(&permits),
            ));
        }
        timeout(Duration::from_secs(10), async {
            while set.join_next().await.is_some() {}
        })
        .await
        .unwrap();
        let c = counters.closed();
        assert_eq!((c.idle_closed, c.slow_closed, c.refused), (4, 2, 0));
        assert_eq!(c.answered, 2);
    }
}
