//! The figures of the report, in order: id (the JSON key), label, unit and which
//! direction is better. One list, so the table, the JSON and the ratios agree.

use serde::Serialize;

use crate::plan::Plan;

/// One figure's definition.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// Stable key in the JSON.
    pub id: String,
    /// Row label in the markdown table.
    pub label: String,
    /// Unit of the values.
    pub unit: &'static str,
    /// Whether a larger value is better (throughput) or worse (latency, memory, CPU).
    pub higher_is_better: bool,
    /// Decimals shown in the table.
    #[serde(skip)]
    pub decimals: usize,
}

fn fig(id: String, label: String, unit: &'static str, higher: bool, decimals: usize) -> Figure {
    Figure {
        id,
        label,
        unit,
        higher_is_better: higher,
        decimals,
    }
}

/// Id of the closed-loop HTTP/1.1 figure.
pub const H1_RPS: &str = "http1_rps";
/// Id of the HTTP/2 figure.
pub const H2_RPS: &str = "http2_rps";
/// Id of the new-connections figure.
pub const CONN_RATE: &str = "new_connections_per_s";
/// Id of the bulk figure.
pub const BULK: &str = "bulk_gbit_per_s";
/// Id of the idle memory figure.
pub const RSS_IDLE: &str = "proxy_rss_idle_mib";
/// Id of the memory-with-open-connections figure.
pub const RSS_HOLD: &str = "proxy_rss_open_conns_mib";
/// Id of the peak memory figure.
pub const RSS_PEAK: &str = "proxy_rss_peak_mib";
/// Id of the CPU figure.
pub const CPU: &str = "proxy_cpu_s_per_10k_requests";
/// Id of the whole machine's CPU figure (softirq work is nobody's process time).
pub const MACHINE_CPU: &str = "machine_cpu_s_per_10k_requests";

/// Id of the longest answer while a large view is pushed.
pub const PUSH_PAUSE: &str = "view_push_longest_answer_ms";
/// Id of the steady p99 of the same probe, before the push (what the pause is read against).
pub const PUSH_STEADY_P99: &str = "view_push_steady_p99_ms";

/// Ids of the flood figure (`--flood`), server-side proxy only: its RSS idle, the
/// highest sample during the flood, 30 s (the plan's `after`) after it closed; its
/// open descriptors at most; the steady traffic's p99 before and during; connections
/// refused at connect, and closed by the proxy before the client closed them.
pub mod flood {
    /// RSS idle, before the flood.
    pub const RSS_IDLE: &str = "flood_server_proxy_rss_idle_mib";
    /// Highest RSS sample during the flood.
    pub const RSS_DURING: &str = "flood_server_proxy_rss_during_mib";
    /// RSS once the plan's `after` has passed since the flood closed.
    pub const RSS_AFTER: &str = "flood_server_proxy_rss_after_mib";
    /// Most open descriptors during the flood.
    pub const FDS_DURING: &str = "flood_server_proxy_fds_during";
    /// p99 of the steady traffic alone.
    pub const P99_STEADY: &str = "flood_steady_p99_ms";
    /// p99 of the same traffic during the flood.
    pub const P99_DURING: &str = "flood_during_p99_ms";
    /// Flood connects refused, reset or timed out.
    pub const REFUSED: &str = "flood_refused";
    /// Idle flood connections the proxy closed first.
    pub const IDLE_CLOSED: &str = "flood_idle_closed_by_proxy";
    /// Slow-header flood connections the proxy closed first.
    pub const SLOW_CLOSED: &str = "flood_slow_closed_by_proxy";
}

/// Ids of the discovery figure (`--discovery`), Pillion rows with an agent only.
pub mod discovery {
    /// Client proxy RSS with the mesh grown, after calling the used services.
    pub const CLIENT_RSS: &str = "discovery_client_proxy_rss_mib";
    /// Median first request to a destination the proxy has not seen.
    pub const FIRST_P50: &str = "discovery_first_request_p50_ms";
    /// p99 of the same.
    pub const FIRST_P99: &str = "discovery_first_request_p99_ms";
    /// p99 of the second request to each (known by then).
    pub const KNOWN_P99: &str = "discovery_known_request_p99_ms";
    /// From writing the grown source to the server's proxy holding its services.
    pub const LOAD_SECONDS: &str = "discovery_load_s";
    /// p99 of a 100 req/s probe to a used service, alone.
    pub const PROBE_STEADY_P99: &str = "discovery_probe_steady_p99_ms";
    /// Its longest answer over the same window without a change (what the longest
    /// across a change is read against: this machine's own worst answer).
    pub const PROBE_QUIET_LONGEST: &str = "discovery_probe_longest_quiet_ms";
    /// Its longest answer across a change of the services it uses.
    pub const PROBE_LONGEST: &str = "discovery_probe_longest_during_change_ms";
}

/// The discovery figure's rows of the table (`--discovery` measures these only).
pub fn discovery(plan: &crate::plan::DiscoveryPlan) -> Vec<Figure> {
    let (n, used) = (plan.services, plan.used);
    vec![
        fig(
            discovery::CLIENT_RSS.into(),
            format!("client proxy RSS, {n} services in the mesh, its workload calling {used}, MiB"),
            "MiB",
            false,
            1,
        ),
        fig(
            discovery::FIRST_P50.into(),
            format!(
                "first request to each of {} new destinations, p50 ms",
                plan.fresh
            ),
            "ms",
            false,
            2,
        ),
        fig(
            discovery::FIRST_P99.into(),
            format!(
                "first request to each of {} new destinations, p99 ms",
                plan.fresh
            ),
            "ms",
            false,
            2,
        ),
        fig(
            discovery::KNOWN_P99.into(),
            "second request to each (destination known), p99 ms".into(),
            "ms",
            false,
            2,
        ),
        fig(
            discovery::LOAD_SECONDS.into(),
            format!("source of {n} services written → the server's proxy holds its own, s"),
            "s",
            false,
            1,
        ),
        fig(
            discovery::PROBE_STEADY_P99.into(),
            "100 req/s probe to a used service, steady p99 ms".into(),
            "ms",
            false,
            2,
        ),
        fig(
            discovery::PROBE_QUIET_LONGEST.into(),
            "its longest answer over the same 6 s without a change, ms".into(),
            "ms",
            false,
            2,
        ),
        fig(
            discovery::PROBE_LONGEST.into(),
            format!("its longest answer while a change of the used services is pushed at {n} services, ms"),
            "ms",
            false,
            2,
        ),
    ]
}

/// The flood figure's rows of the table (`--flood` measures these only).
pub fn flood(plan: &crate::plan::FloodPlan) -> Vec<Figure> {
    let secs = plan.after.as_secs();
    let (idle, slow) = (plan.idle, plan.slow);
    vec![
        fig(
            flood::RSS_IDLE.into(),
            "server-side proxy RSS idle, MiB".into(),
            "MiB",
            false,
            1,
        ),
        fig(
            flood::RSS_DURING.into(),
            format!("server-side proxy RSS during {idle} idle + {slow} slow-header conns (highest sample), MiB"),
            "MiB",
            false,
            1,
        ),
        fig(
            flood::RSS_AFTER.into(),
            format!("server-side proxy RSS {secs} s after the flood closed, MiB"),
            "MiB",
            false,
            1,
        ),
        fig(
            flood::FDS_DURING.into(),
            "server-side proxy open fds during the flood (most)".into(),
            "fds",
            false,
            0,
        ),
        fig(
            flood::P99_STEADY.into(),
            format!("p99 at {} req/s through the pair, steady, ms", plan.rate),
            "ms",
            false,
            3,
        ),
        fig(
            flood::P99_DURING.into(),
            format!("p99 at {} req/s through the pair, during the flood, ms", plan.rate),
            "ms",
            false,
            3,
        ),
        fig(
            flood::REFUSED.into(),
            "flood connects refused or timed out".into(),
            "conns",
            false,
            0,
        ),
        fig(
            flood::IDLE_CLOSED.into(),
            format!("idle flood conns closed by the proxy (of {idle})"),
            "conns",
            true,
            0,
        ),
        fig(
            flood::SLOW_CLOSED.into(),
            format!("slow-header flood conns closed by the proxy (of {slow})"),
            "conns",
            true,
            0,
        ),
    ]
}

/// Id of a latency percentile at an open-loop rate (`p` is `p50`, `p99` or `p999`).
pub fn latency_id(rate: u32, p: &str) -> String {
    format!("latency_{p}_ms_at_{rate}_rps")
}

/// The percentiles reported per rate, with their labels.
pub const PERCENTILES: &[(&str, &str)] = &[("p50", "p50"), ("p99", "p99"), ("p999", "p99.9")];

/// Every figure the plan measures, in table order.
pub fn all(plan: &Plan) -> Vec<Figure> {
    let mut v = vec![fig(
        H1_RPS.into(),
        format!("HTTP/1.1 keep-alive, {} conns: max req/s", plan.h1_conns),
        "req/s",
        true,
        0,
    )];
    for rate in &plan.open_rates {
        for (p, label) in PERCENTILES {
            v.push(fig(
                latency_id(*rate, p),
                format!("latency {label} at {rate} req/s (open loop, CO-corrected), ms"),
                "ms",
                false,
                3,
            ));
        }
    }
    v.extend([
        fig(
            H2_RPS.into(),
            format!(
                "HTTP/2, {} streams on {} conns: req/s",
                plan.h2_streams, plan.h2_conns
            ),
            "req/s",
            true,
            0,
        ),
        fig(
            CONN_RATE.into(),
            "new connections/s (1 request each)".into(),
            "conn/s",
            true,
            0,
        ),
        fig(
            BULK.into(),
            format!("bulk TCP, {} MiB: Gbit/s", plan.bulk_bytes >> 20),
            "Gbit/s",
            true,
            2,
        ),
        fig(
            RSS_IDLE.into(),
            "proxy RSS idle (both sides), MiB".into(),
            "MiB",
            false,
            1,
        ),
        fig(
            RSS_HOLD.into(),
            format!("proxy RSS at {} open conns, MiB", plan.hold_conns),
            "MiB",
            false,
            1,
        ),
        fig(
            RSS_PEAK.into(),
            "proxy RSS peak (VmHWM), MiB".into(),
            "MiB",
            false,
            1,
        ),
        fig(
            CPU.into(),
            "proxy CPU s per 10,000 requests".into(),
            "s",
            false,
            3,
        ),
        fig(
            MACHINE_CPU.into(),
            "machine CPU s per 10,000 requests (everything: load, server, proxies, kernel)".into(),
            "s",
            false,
            3,
        ),
        fig(
            PUSH_STEADY_P99.into(),
            format!(
                "steady p99 at {} req/s before a view push, ms",
                plan.push_rate
            ),
            "ms",
            false,
            3,
        ),
        fig(
            PUSH_PAUSE.into(),
            format!(
                "longest answer at {} req/s while a {}-service view is pushed, ms",
                plan.push_rate, plan.push_services
            ),
            "ms",
            false,
            3,
        ),
    ]);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique() {
        let figs = all(&Plan::full());
        let mut ids: Vec<_> = figs.iter().map(|f| f.id.clone()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), figs.len());
        assert!(ids.contains(&latency_id(5000, "p999")));
        let flood = flood(&crate::plan::FloodPlan::full());
        assert!(flood.iter().all(|f| !ids.contains(&f.id)));
        assert!(flood[2].label.contains("30 s after"));
    }
}
