//! CPU pinning. On a small machine the load generator, the server and the proxies all
//! share the cores; pinning each pod's processes to "its" CPU makes every row pay the
//! same scheduling costs, so differences come from the proxies, not from migrations.

use std::fs;

use anyhow::{Context, Result};
use nix::sched::{sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// Which CPU each side of the topology runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// CPU of the client pod: the load generator and the client-side proxy.
    pub client: Option<usize>,
    /// CPU of the server pod: the server and the server-side proxy.
    pub server: Option<usize>,
}

impl Layout {
    /// Client pod on CPU 0, server pod on CPU 1; no pinning on a single-CPU machine.
    pub fn for_cpus(nproc: usize) -> Layout {
        if nproc >= 2 {
            Layout {
                client: Some(0),
                server: Some(1),
            }
        } else {
            Layout {
                client: None,
                server: None,
            }
        }
    }

    /// How the report describes it.
    pub fn describe(&self) -> String {
        match (self.client, self.server) {
            (Some(c), Some(s)) => format!(
                "client pod (load generator + its proxy) pinned to CPU {c}, \
                 server pod (server + its proxy) pinned to CPU {s}"
            ),
            _ => "no pinning (a single CPU)".to_string(),
        }
    }
}

fn set(cpu: usize) -> Result<CpuSet> {
    let mut set = CpuSet::new();
    set.set(cpu).with_context(|| format!("CPU {cpu}"))?;
    Ok(set)
}

/// Pins the calling thread (and the threads it creates later) to `cpu`.
pub fn pin_this_thread(cpu: Option<usize>) -> Result<()> {
    match cpu {
        Some(cpu) => sched_setaffinity(Pid::from_raw(0), &set(cpu)?)
            .with_context(|| format!("pinning a thread to CPU {cpu}")),
        None => Ok(()),
    }
}

/// Pins every thread of process `pid` and of its children (nginx workers) to `cpu`.
pub fn pin_process_tree(pid: u32, cpu: Option<usize>) -> Result<()> {
    let Some(cpu) = cpu else { return Ok(()) };
    let cpus = set(cpu)?;
    for p in crate::procstat::tree(pid) {
        let tasks = fs::read_dir(format!("/proc/{p}/task"))
            .with_context(|| format!("listing the threads of {p}"))?;
        for task in tasks.flatten() {
            if let Some(tid) = task
                .file_name()
                .to_str()
                .and_then(|t| t.parse::<i32>().ok())
            {
                // A thread may exit meanwhile; the others still get pinned.
                let _ = sched_setaffinity(Pid::from_raw(tid), &cpus);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts() {
        assert_eq!(Layout::for_cpus(2).client, Some(0));
        assert_eq!(Layout::for_cpus(8).server, Some(1));
        assert_eq!(Layout::for_cpus(1).server, None);
        assert!(Layout::for_cpus(1).describe().contains("no pinning"));
    }

    #[test]
    fn pinning_nothing_is_fine() {
        pin_this_thread(None).unwrap();
        pin_process_tree(std::process::id(), None).unwrap();
    }
}
