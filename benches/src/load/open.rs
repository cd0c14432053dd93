//! Latency at a fixed rate, open loop, with coordinated omission corrected: a pacer
//! thread stamps each request with its *intended* send time (`start + i / rate`) and
//! hands it to connection `i mod conns`; the latency recorded is answer time minus
//! intended time, so a stall counts against every request it delayed, as a real
//! client population would see it (the wrk2 approach, with HdrHistogram).

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::mpsc;

use super::{connect_many, Reconnecting, Sent};

/// Time between opening the connections and the first intended send.
const LEAD_IN: Duration = Duration::from_millis(50);
/// How long after the last intended send queued requests may still finish; later ones
/// count as errors.
const DRAIN: Duration = Duration::from_secs(5);
/// Largest latency the histogram holds, µs.
const MAX_US: u64 = 60_000_000;

/// Latency percentiles of one open-loop run, µs from the intended send time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest.
    pub max_us: f64,
    /// Requests answered.
    pub ok: u64,
    /// Requests that failed, timed out or could not be sent before the drain ended.
    pub errors: u64,
    /// Answered requests per second of the run (should match the target rate).
    pub achieved_rps: f64,
    /// The p99 of the requests meant to be sent in each second of the run, so a
    /// stall can be placed in time (`0` for a second with no answered request).
    pub p99_by_second_us: Vec<f64>,
}

/// Sends `rate` requests per second for `duration` over `conns` keep-alive connections.
pub async fn run(addr: SocketAddr, conns: usize, rate: u32, duration: Duration) -> Result<Latency> {
    let host = addr.to_string();
    let senders = connect_many(addr, conns)
        .await
        .context("opening the keep-alive connections")?;
    let total = (f64::from(rate) * duration.as_secs_f64()).round() as u64;
    let start = Instant::now() + LEAD_IN;
    let give_up = start + duration + DRAIN;
    let mut queues = Vec::with_capacity(conns);
    let mut workers = Vec::with_capacity(conns);
    for sender in senders {
        let (tx, rx) = mpsc::unbounded_channel::<Instant>();
        queues.push(tx);
        workers.push(tokio::spawn(worker(
            addr,
            host.clone(),
            sender,
            rx,
            start,
            give_up,
        )));
    }
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let pacer = thread::Builder::new()
        .name("bench-pacer".into())
        .spawn(move || pace(queues, start, interval, total))
        .context("starting the pacer thread")?;
    let mut hist = new_histogram()?;
    let mut by_second: Vec<Histogram<u64>> = Vec::new();
    let mut errors = 0;
    for w in workers {
        let (seconds, e) = w.await.context("a load worker panicked")?;
        for (i, h) in seconds.iter().enumerate() {
            hist.add(h).context("merging histograms")?;
            if by_second.len() <= i {
                by_second.push(new_histogram()?);
            }
            by_second[i].add(h).context("merging histograms")?;
        }
        errors += e;
    }
    let sent = pacer
        .join()
        .map_err(|_| anyhow::anyhow!("the pacer panicked"))?;
    let ok = hist.len();
    // Requests the pacer had not handed out (impossible unless it was starved) fail too.
    errors += total.saturating_sub(sent);
    let elapsed = start.elapsed().as_secs_f64().max(duration.as_secs_f64());
    Ok(Latency {
        p50_us: hist.value_at_quantile(0.50) as f64,
        p99_us: hist.value_at_quantile(0.99) as f64,
        p999_us: hist.value_at_quantile(0.999) as f64,
        max_us: hist.max() as f64,
        ok,
        errors,
        achieved_rps: ok as f64 / elapsed,
        p99_by_second_us: by_second
            .iter()
            .map(|h| h.value_at_quantile(0.99) as f64)
            .collect(),
    })
}

/// Latencies in microseconds up to a minute, three significant digits.
pub fn new_histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_US, 3).context("creating a histogram")
}

/// Hands out intended send times on schedule (a std thread: its sleeps are precise to
/// tens of µs, where tokio's timer rounds to a millisecond). Returns how many it sent.
fn pace(
    queues: Vec<mpsc::UnboundedSender<Instant>>,
    start: Instant,
    interval: Duration,
    total: u64,
) -> u64 {
    let mut sent = 0;
    for i in 0..total {
        let intended = start + interval.mul_f64(i as f64);
        let now = Instant::now();
        if intended > now {
            thread::sleep(intended - now);
        }
        if queues[(i as usize) % queues.len()].send(intended).is_ok() {
            sent += 1;
        }
    }
    sent
}

async fn worker(
    addr: SocketAddr,
    host: String,
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    mut queue: mpsc::UnboundedReceiver<Instant>,
    start: Instant,
    give_up: Instant,
) -> (Vec<Histogram<u64>>, u64) {
    // One histogram per second of intended send time.
    let mut seconds: Vec<Histogram<u64>> = Vec::new();
    let mut errors = 0;
    let mut conn = Reconnecting::new(addr, sender);
    while let Some(intended) = queue.recv().await {
        if Instant::now() > give_up {
            errors += 1;
            continue;
        }
        if conn.get(&host).await == Sent::Answered {
            let us = intended.elapsed().as_micros().min(u128::from(MAX_US)) as u64;
            let second = intended.saturating_duration_since(start).as_secs() as usize;
            while seconds.len() <= second {
                seconds.push(new_histogram().expect("static histogram bounds are valid"));
            }
            seconds[second].saturating_record(us.max(1));
        } else {
            errors += 1;
        }
    }
    (seconds, errors)
}
