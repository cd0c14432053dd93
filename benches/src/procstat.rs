//! Resident memory and CPU time of the proxy processes, straight from /proc: `VmRSS`
//! and `VmHWM` of /proc/<pid>/status, `utime + stime` of /proc/<pid>/stat. A proxy is
//! a process tree (nginx: master + workers), so every figure sums over the tree.

use std::fs;

use nix::unistd::{sysconf, SysconfVar};

/// `pid` and all its descendants (found by their parent id in /proc/*/stat).
pub fn tree(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| Some((p, stat_fields(p)?.ppid)))
        .collect();
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        out.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    out
}

/// Memory of a process tree, KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    /// Sum of `VmRSS`.
    pub rss_kib: u64,
    /// Sum of `VmHWM` (each process's own peak: an upper bound of the tree's peak).
    pub hwm_kib: u64,
}

/// Memory of every process in the trees of `pids`.
pub fn memory(pids: &[u32]) -> Memory {
    let mut m = Memory::default();
    for pid in pids.iter().flat_map(|p| tree(*p)) {
        if let Ok(text) = fs::read_to_string(format!("/proc/{pid}/status")) {
            m.rss_kib += status_kib(&text, "VmRSS").unwrap_or(0);
            m.hwm_kib += status_kib(&text, "VmHWM").unwrap_or(0);
        }
    }
    m
}

/// Open file descriptors of process `pid` (entries of /proc/<pid>/fd), if readable.
pub fn open_fds(pid: u32) -> Option<u64> {
    Some(fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// The soft open-files limit of process `pid` (from /proc/<pid>/limits), if readable.
pub fn fd_limit(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Max open files"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// CPU seconds (user + system) used so far by the trees of `pids`.
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    let ticks: u64 = pids
        .iter()
        .flat_map(|p| tree(*p))
        .filter_map(stat_fields)
        .map(|s| s.utime + s.stime)
        .sum();
    ticks as f64 / clock_ticks()
}

/// CPU seconds the whole machine has been busy (every process, kernel, interrupts
/// and softirqs: all of /proc/stat's first line but idle and iowait).
pub fn machine_busy_seconds() -> f64 {
    let Ok(text) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let busy: u64 = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .enumerate()
        // user nice system idle iowait irq softirq steal (guest time is inside user)
        .filter(|(i, _)| !matches!(i, 3 | 4) && *i < 8)
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum();
    busy as f64 / clock_ticks()
}

fn clock_ticks() -> f64 {
    match sysconf(SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as f64,
        _ => 100.0,
    }
}

fn status_kib(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let v = l.strip_prefix(key)?.strip_prefix(':')?;
        v.split_whitespace().next()?.parse().ok()
    })
}

/// The fields of /proc/<pid>/stat the benchmark reads.
struct Stat {
    ppid: u32,
    utime: u64,
    stime: u64,
}

fn stat_fields(pid: u32) -> Option<Stat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Parses a stat line; the command name may hold spaces and parentheses, so fields are
/// counted after its last `)`.
fn parse_stat(line: &str) -> Option<Stat> {
    let rest = &line[line.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(3) ppid(4) ... utime(14) stime(15), 1-based over the line.
    Some(Stat {
        ppid: f.get(1)?.parse().ok()?,
        utime: f.get(11)?.parse().ok()?,
        stime: f.get(12)?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_names() {
        let line = "42 (a (b) c) S 7 42 42 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 1 0 1 1 1";
        let s = parse_stat(line).unwrap();
        assert_eq!((s.ppid, s.utime, s.stime), (7, 250, 31));
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        let m = memory(&[me]);
        assert!(m.rss_kib > 0 && m.hwm_kib >= m.rss_kib);
        assert!(cpu_seconds(&[me]) >= 0.0);
        assert_eq!(tree(me)[0], me);
        assert_eq!(status_kib("VmRSS:\t  1234 kB\n", "VmRSS"), Some(1234));
        assert!(open_fds(me).unwrap_or(0) >= 3);
        assert!(fd_limit(me).unwrap_or(0) >= 3);
    }
}
