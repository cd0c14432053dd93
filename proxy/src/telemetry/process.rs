//! Process metrics in the names every Prometheus dashboard knows (`process_*`) plus
//! `pillion_build_info`, read from `/proc/self` at scrape time only, so they cost
//! nothing between scrapes and nothing on the request path.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`, 100 on Linux).
const USER_HZ: f64 = 100.0;

/// Reads the process's counters when `/metrics` is scraped.
#[derive(Debug)]
pub(crate) struct ProcessCollector {
    start_time: f64,
}

/// Registers the process collector and the build info.
pub(crate) fn register(registry: &mut Registry) {
    let start_time = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    registry.register_collector(Box::new(ProcessCollector { start_time }));
}

/// One sample of the process's resource use; `None` where `/proc` could not tell.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct ProcessStats {
    /// User plus system CPU time, seconds.
    pub cpu_seconds: Option<f64>,
    /// Resident memory, bytes.
    pub resident_bytes: Option<u64>,
    /// Open file descriptors.
    pub open_fds: Option<u64>,
    /// The soft limit on open file descriptors.
    pub max_fds: Option<u64>,
}

impl ProcessStats {
    /// Reads `/proc/self` now.
    pub(crate) fn read() -> ProcessStats {
        let stat = std::fs::read_to_string("/proc/self/stat").ok();
        let status = std::fs::read_to_string("/proc/self/status").ok();
        ProcessStats {
            cpu_seconds: stat.as_deref().and_then(cpu_seconds),
            resident_bytes: status.as_deref().and_then(vm_rss_bytes),
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|d| d.count() as u64),
            max_fds: nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                .ok()
                .map(|(soft, _)| soft),
        }
    }
}

/// utime + stime from `/proc/self/stat` (fields 14 and 15, after the `(comm)`).
fn cpu_seconds(stat: &str) -> Option<f64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_comm.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

/// `VmRSS:  1234 kB` from `/proc/self/status`.
fn vm_rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub(crate) fn encode_one(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    metric: &impl EncodeMetric,
) -> Result<(), fmt::Error> {
    let metric_encoder = encoder.encode_descriptor(name, help, unit, metric.metric_type())?;
    metric.encode(metric_encoder)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let stats = ProcessStats::read();
        if let Some(cpu) = stats.cpu_seconds {
            encode_one(
                &mut encoder,
                // The unit appends `_seconds`, the counter `_total`.
                "process_cpu",
                "User and system CPU time the proxy has used",
                Some(&Unit::Seconds),
                &ConstCounter::new(cpu),
            )?;
        }
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory of the proxy",
                stats.resident_bytes,
            ),
            (
                "process_open_fds",
                "File descriptors the proxy holds open",
                stats.open_fds,
            ),
            (
                "process_max_fds",
                "The proxy's soft limit on open file descriptors",
                stats.max_fds,
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(v) = value {
                encode_one(
                    &mut encoder,
                    name,
                    help,
                    None,
                    &ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX)),
                )?;
            }
        }
        encode_one(
            &mut encoder,
            "process_start_time_seconds",
            "When the proxy started, in Unix seconds",
            None,
            &ConstGauge::new(self.start_time),
        )?;
        let mut info = encoder.encode_descriptor(
            "pillion_build_info",
            "The proxy's version; always 1",
            None,
            MetricType::Gauge,
        )?;
        let labels = [("version", env!("CARGO_PKG_VERSION"))];
        ConstGauge::new(1i64).encode(info.encode_family(&labels)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_formats() {
        let stat =
            "4242 (pillion (proxy)) S 1 4242 4242 0 -1 4194560 1 0 0 0 250 50 0 0 20 0 9 0 1 2 3";
        assert_eq!(cpu_seconds(stat), Some(3.0));
        assert_eq!(cpu_seconds("garbage"), None);
        assert_eq!(
            vm_rss_bytes("Name:\tx\nVmRSS:\t  2048 kB\n"),
            Some(2 * 1024 * 1024)
        );
        assert_eq!(vm_rss_bytes("Name:\tx\n"), None);
    }

    #[test]
    fn exposed_names_are_the_contract() {
        let mut registry = Registry::default();
        register(&mut registry);
        let text = crate::telemetry::metrics::encode(&registry).unwrap();
        for prefix in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_max_fds ",
            "process_start_time_seconds ",
            "pillion_build_info{version=\"",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(prefix)),
                "missing {prefix:?} in\n{text}"
            );
        }
        assert!(ProcessStats::read().open_fds.unwrap_or(0) > 0);
    }
}
