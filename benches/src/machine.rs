//! The machine the figures were taken on (cores, CPU model, kernel, memory): numbers
//! from different machines are not comparable, so every report carries these.

use std::fs;

use serde::Serialize;

/// What the report says about the machine.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Online CPUs (`nproc`).
    pub nproc: usize,
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: String,
    /// Kernel release (`uname -r`).
    pub kernel: String,
    /// MemTotal from /proc/meminfo, GiB.
    pub memory_gib: f64,
    /// 1, 5 and 15 minute load averages when the run started: other work on the
    /// machine (a build, a test suite) shows here and distorts every figure.
    pub loadavg_at_start: String,
    /// The same when the measurements ended.
    pub loadavg_at_end: String,
}

impl Machine {
    /// Reads the details from /proc; unknown fields read "unknown".
    pub fn detect() -> Machine {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Machine {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model: field(&cpuinfo, "model name").unwrap_or_else(|| "unknown".into()),
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".into()),
            memory_gib: field(&meminfo, "MemTotal")
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
                .map_or(0.0, |kib| kib / (1024.0 * 1024.0)),
            loadavg_at_start: loadavg(),
            loadavg_at_end: String::new(),
        }
    }

    /// Records the load average at the end of the measurements.
    pub fn finish(&mut self) {
        self.loadavg_at_end = loadavg();
    }

    /// One line for the report's header.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} CPUs ({}), {:.1} GiB memory, Linux {}; load average {} at the start",
            self.nproc, self.cpu_model, self.memory_gib, self.kernel, self.loadavg_at_start
        );
        if !self.loadavg_at_end.is_empty() {
            s.push_str(&format!(", {} at the end", self.loadavg_at_end));
        }
        s
    }
}

/// The three load averages of /proc/loadavg.
pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// The value of the first `key : value` line of a /proc file.
fn field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_fields() {
        let text = "processor\t: 0\nmodel name\t: AMD EPYC\nMemTotal:       24576000 kB\n";
        assert_eq!(field(text, "model name").as_deref(), Some("AMD EPYC"));
        assert_eq!(field(text, "MemTotal").as_deref(), Some("24576000 kB"));
        assert_eq!(field(text, "nothing"), None);
    }

    #[test]
    fn detects_this_machine() {
        let m = Machine::detect();
        assert!(m.nproc >= 1);
        assert!(m.memory_gib > 0.0);
        assert!(m.summary().contains("CPUs"));
        assert_eq!(loadavg().split(' ').count(), 3);
    }
}
