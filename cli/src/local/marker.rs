//! The marker every process the harness starts carries in its environment, and the
//! sweep that kills what earlier, crashed test processes left behind.
//!
//! A marker reads `<pid of the test process>-<unique number>`. A marked process whose
//! test process is gone is a leftover: the sweep kills it by PID. Processes without our
//! marker, or whose test process is still alive, are never touched.

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Name of the environment variable that marks a process as started by the harness.
pub const MARKER_VAR: &str = "PILLION_TEST_WORLD";

/// Directory (under the system temp dir) where worlds keep their processes' logs.
pub const LOG_ROOT: &str = "pillion-tests";

static NEXT_WORLD: AtomicU64 = AtomicU64::new(0);
static SWEEP: Once = Once::new();

/// A fresh marker for one world of this test process.
pub fn new_marker() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        NEXT_WORLD.fetch_add(1, Ordering::Relaxed)
    )
}

/// The test process a marker belongs to, if the marker is well formed.
pub fn owner_pid(marker: &str) -> Option<u32> {
    let (pid, unique) = marker.split_once('-')?;
    if unique.is_empty() || !unique.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok().filter(|pid| *pid > 0)
}

/// Runs [`sweep`] once per test process, before its first world is built.
pub fn sweep_once() {
    SWEEP.call_once(|| {
        let report = sweep();
        if report.killed > 0 || report.dirs_removed > 0 {
            eprintln!(
                "pillion-tests: swept {} leftover process(es) and {} log dir(s) of dead test runs",
                report.killed, report.dirs_removed
            );
        }
    });
}

/// What one sweep cleaned up.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    /// Leftover processes killed.
    pub killed: usize,
    /// Log directories of dead test processes removed.
    pub dirs_removed: usize,
}

/// Kills every process whose marker names a test process that no longer exists, and
/// removes the log directories of such test processes.
pub fn sweep() -> SweepReport {
    let mut report = SweepReport::default();
    let me = std::process::id();
    for pid in proc_pids() {
        if pid == me {
            continue;
        }
        let Some(marker) = marker_of(pid) else {
            continue;
        };
        let Some(owner) = owner_pid(&marker) else {
            continue;
        };
        if owner != me && !pid_alive(owner) {
            // Errors mean the process went away by itself: nothing to do.
            if kill(Pid::from_raw(pid as i32), Signal::SIGKILL).is_ok() {
                report.killed += 1;
            }
        }
    }
    report.dirs_removed = sweep_log_dirs(me);
    report
}

/// Every numeric entry of /proc.
fn proc_pids() -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// The value of our marker variable in a process's environment, if it has one.
pub fn marker_of(pid: u32) -> Option<String> {
    let environ = fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{MARKER_VAR}=");
    environ
        .split(|b| *b == 0)
        .find_map(|entry| entry.strip_prefix(prefix.as_bytes()))
        .and_then(|value| String::from_utf8(value.to_vec()).ok())
}

/// Every live process that carries exactly this marker.
pub fn processes_with_marker(marker: &str) -> Vec<u32> {
    proc_pids()
        .into_iter()
        .filter(|pid| marker_of(*pid).as_deref() == Some(marker) && !is_zombie(*pid))
        .collect()
}

/// Every live process whose marker names test process `owner` (any of its worlds).
pub fn processes_owned_by(owner: u32) -> Vec<u32> {
    proc_pids()
        .into_iter()
        .filter(|pid| {
            marker_of(*pid).and_then(|m| owner_pid(&m)) == Some(owner) && !is_zombie(*pid)
        })
        .collect()
}

/// Whether a process exists (zombies count as gone).
pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid)
}

fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after_comm = stat.rsplit_once(')')?.1;
            after_comm.split_whitespace().next().map(|s| s == "Z")
        })
        .unwrap_or(false)
}

/// Removes `<tmp>/pillion-tests/<pid>-*` directories whose test process is gone.
fn sweep_log_dirs(me: u32) -> usize {
    let root = std::env::temp_dir().join(LOG_ROOT);
    let Ok(entries) = fs::read_dir(&root) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(owner) = name
            .to_str()
            .and_then(|n| n.split('-').next()?.parse().ok())
        else {
            continue;
        };
        if owner != me && !pid_alive(owner) && fs::remove_dir_all(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_of_markers() {
        assert_eq!(owner_pid("1234-0"), Some(1234));
        assert_eq!(owner_pid("1234-17"), Some(1234));
        assert_eq!(owner_pid("1234"), None);
        assert_eq!(owner_pid("1234-"), None);
        assert_eq!(owner_pid("0-1"), None);
        assert_eq!(owner_pid("x-1"), None);
        assert_eq!(owner_pid("12-a"), None);
    }

    #[test]
    fn markers_are_unique_and_ours() {
        let a = new_marker();
        let b = new_marker();
        assert_ne!(a, b);
        assert_eq!(owner_pid(&a), Some(std::process::id()));
    }

    #[test]
    fn we_are_alive() {
        assert!(pid_alive(std::process::id()));
    }
}
