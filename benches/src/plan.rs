//! What one run measures and for how long: the full plan (several runs of each figure,
//! seconds each) and the smoke plan (one short run of each, for tests and CI).

use std::time::Duration;

use serde::Serialize;

/// Durations, sizes and counts of one benchmark run.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// `full` or `smoke`.
    pub mode: &'static str,
    /// Runs of each figure; figures report the median, min and max.
    pub runs: usize,
    /// HTTP/1.1 keep-alive connections of the closed-loop and open-loop tests.
    pub h1_conns: usize,
    /// Length of a closed-loop HTTP/1.1 run.
    pub rps_duration: Duration,
    /// Open-loop rates, requests per second.
    pub open_rates: Vec<u32>,
    /// Length of an open-loop run.
    pub open_duration: Duration,
    /// HTTP/2 connections.
    pub h2_conns: usize,
    /// Concurrent HTTP/2 streams over all connections.
    pub h2_streams: usize,
    /// Length of an HTTP/2 run.
    pub h2_duration: Duration,
    /// Concurrent workers of the new-connection test.
    pub conn_workers: usize,
    /// Length of a new-connection run.
    pub conn_duration: Duration,
    /// Bytes of one bulk transfer.
    pub bulk_bytes: u64,
    /// Connections held open for the memory figure.
    pub hold_conns: usize,
    /// Pause between two measurements (lets sockets and caches settle).
    pub settle: Duration,
    /// Services the agent adds to the view for the push figure.
    pub push_services: usize,
    /// Rate of the probe that watches for pauses during the push, requests per second.
    pub push_rate: u32,
    /// How long the probe runs before the push (its steady p99) and after it.
    pub push_window: Duration,
    /// The flood figure instead of the others (`--flood`), or none.
    pub flood: Option<FloodPlan>,
    /// The discovery figure instead of the others (`--discovery`), or none.
    pub discovery: Option<DiscoveryPlan>,
}

/// The discovery figure: a mesh of `services`, a client workload calling `used` of
/// them, and `fresh` more called for the first time one by one.
#[derive(Debug, Clone, Serialize)]
pub struct DiscoveryPlan {
    /// Services in the agent's source (plus the bench's own).
    pub services: usize,
    /// Services the client calls before its proxy's RSS is read.
    pub used: usize,
    /// Services then called for the first time, one at a time.
    pub fresh: usize,
}

impl DiscoveryPlan {
    /// Issue 13's figure: 20,000 services, 10 used, 200 first requests.
    pub fn full() -> DiscoveryPlan {
        DiscoveryPlan {
            services: 20_000,
            used: 10,
            fresh: 200,
        }
    }

    /// A small one for tests.
    pub fn smoke() -> DiscoveryPlan {
        DiscoveryPlan {
            services: 300,
            used: 3,
            fresh: 20,
        }
    }
}

/// The flood figure: idle and slow-header connections from an unmeshed pod at a
/// Pillion server pod, with steady traffic through the pair before and during it, and
/// the server-side proxy's memory until some time after the flood closed.
#[derive(Debug, Clone, Serialize)]
pub struct FloodPlan {
    /// Connections that send nothing.
    pub idle: u64,
    /// Connections that send a request head one byte per `drip`.
    pub slow: u64,
    /// Time between two bytes of a slow head.
    pub drip: Duration,
    /// Connections opened per second (0: as fast as the flood client can).
    pub open_rate: u32,
    /// The flood client runs SCHED_IDLE, so it takes no CPU the traffic wants.
    pub idle_priority: bool,
    /// Rate of the steady traffic through the pair, requests per second (open loop).
    pub rate: u32,
    /// How long the steady traffic runs alone (its p99 is the steady figure).
    pub steady: Duration,
    /// How long the traffic runs with the flood: it starts a second before the flood
    /// and the flood is closed when it ends.
    pub during: Duration,
    /// How long the proxy's memory is followed (once a second) after the flood closed.
    pub after: Duration,
    /// Pause between two rows (sockets of the last flood leave TIME_WAIT meanwhile).
    pub settle: Duration,
}

impl FloodPlan {
    /// Issue 12's flood: 10,000 idle and 1,000 slow-header connections, 30 s after.
    pub fn full() -> FloodPlan {
        FloodPlan {
            idle: 10_000,
            slow: 1_000,
            drip: Duration::from_secs(2),
            open_rate: 0,
            idle_priority: true,
            rate: 1_000,
            steady: Duration::from_secs(5),
            during: Duration::from_secs(20),
            after: Duration::from_secs(30),
            settle: Duration::from_secs(5),
        }
    }

    /// A tiny flood that checks the path in seconds.
    pub fn smoke() -> FloodPlan {
        FloodPlan {
            idle: 200,
            slow: 20,
            drip: Duration::from_millis(500),
            steady: Duration::from_secs(1),
            during: Duration::from_secs(3),
            after: Duration::from_secs(2),
            settle: Duration::from_millis(200),
            ..FloodPlan::full()
        }
    }

    /// The measuring time of one flood run of one row.
    pub fn per_run(&self) -> Duration {
        self.steady + self.during + self.after + self.settle + Duration::from_secs(6)
    }
}

impl Plan {
    /// The real benchmark: three runs of each figure.
    pub fn full() -> Plan {
        Plan {
            mode: "full",
            runs: 3,
            h1_conns: 64,
            rps_duration: Duration::from_secs(10),
            open_rates: vec![1_000, 5_000],
            open_duration: Duration::from_secs(10),
            h2_conns: 4,
            h2_streams: 100,
            h2_duration: Duration::from_secs(10),
            conn_workers: 32,
            conn_duration: Duration::from_secs(5),
            bulk_bytes: 256 << 20,
            hold_conns: 1_000,
            settle: Duration::from_secs(1),
            push_services: 5_000,
            push_rate: 1_000,
            push_window: Duration::from_secs(4),
            flood: None,
            discovery: None,
        }
    }

    /// One short run of each figure: checks the whole path in seconds, numbers are
    /// only indicative.
    pub fn smoke() -> Plan {
        Plan {
            mode: "smoke",
            runs: 1,
            rps_duration: Duration::from_millis(500),
            open_duration: Duration::from_millis(500),
            h2_duration: Duration::from_millis(500),
            conn_duration: Duration::from_millis(500),
            bulk_bytes: 16 << 20,
            hold_conns: 100,
            settle: Duration::from_millis(50),
            push_services: 200,
            push_window: Duration::from_secs(2),
            ..Plan::full()
        }
    }

    /// This plan measuring the discovery figure only (`--discovery`), full or tiny.
    pub fn with_discovery(mut self) -> Plan {
        let smoke = self.mode == "smoke";
        self.mode = if smoke {
            "discovery smoke"
        } else {
            "discovery"
        };
        self.discovery = Some(if smoke {
            DiscoveryPlan::smoke()
        } else {
            DiscoveryPlan::full()
        });
        self
    }

    /// This plan measuring the flood figure only (`--flood`), at full size or tiny.
    pub fn with_flood(mut self, open_rate: u32, idle_priority: bool) -> Plan {
        let smoke = self.mode == "smoke";
        self.mode = if smoke { "flood smoke" } else { "flood" };
        let flood = if smoke {
            FloodPlan::smoke()
        } else {
            FloodPlan::full()
        };
        self.flood = Some(FloodPlan {
            open_rate,
            idle_priority,
            ..flood
        });
        self
    }

    /// A rough upper bound of the measuring time per row, for the progress line.
    pub fn estimate_per_row(&self) -> Duration {
        if let Some(flood) = &self.flood {
            return flood.per_run() * self.runs as u32;
        }
        if let Some(d) = &self.discovery {
            // Loading the source dominates: about a second per 2,000 services.
            let load = Duration::from_millis(d.services as u64 / 2 + 5_000);
            return load * self.runs as u32;
        }
        let one = self.rps_duration
            + self.open_duration * self.open_rates.len() as u32
            + self.h2_duration
            + self.conn_duration
            + self.push_window * 3
            + self.settle * 6;
        one * self.runs as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoke_is_short_and_shaped_like_full() {
        let (full, smoke) = (Plan::full(), Plan::smoke());
        assert_eq!(full.open_rates, smoke.open_rates);
        assert_eq!(full.h1_conns, 64);
        assert_eq!(full.h2_streams, 100);
        assert_eq!(full.bulk_bytes, 256 * 1024 * 1024);
        assert!(smoke.estimate_per_row() < Duration::from_secs(10));
        assert!(full.runs >= 3);
        assert!(full.flood.is_none() && smoke.flood.is_none());
        let flood = Plan::full().with_flood(0, true);
        assert_eq!(flood.mode, "flood");
        assert_eq!(
            Plan::full()
                .with_flood(500, false)
                .flood
                .map(|f| (f.open_rate, f.idle_priority)),
            Some((500, false))
        );
        assert!(flood.flood.as_ref().is_some_and(|f| f.idle_priority));
        // Bounded: under two minutes a run.
        assert!(flood.estimate_per_row() / flood.runs as u32 <= Duration::from_secs(120));
        let tiny = Plan::smoke().with_flood(0, true);
        assert!(tiny.estimate_per_row() < Duration::from_secs(20));
        assert!(tiny.flood.map_or(0, |f| f.idle + f.slow) <= 500);
    }
}
