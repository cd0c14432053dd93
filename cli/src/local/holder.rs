//! The holder: the process whose fresh network and mount namespaces are a world's
//! "node". It mounts a private tmpfs over `/run` (so named netns files and the xtables
//! lock stay inside the world), builds the bridge, says `ready`, then sleeps.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::local::addr::{BRIDGE, BRIDGE_V4, BRIDGE_V6, PREFIX_V4, PREFIX_V6};
use crate::local::marker::MARKER_VAR;

/// How long the holder may take to set the world up.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// The line the holder prints once its setup is done.
const READY_LINE: &str = "pillion-world-ready";

/// The setup script the holder runs inside its new namespaces; only constants go in.
fn setup_script() -> String {
    [
        "set -e".to_string(),
        "mount -t tmpfs -o mode=0755,size=64m pillion-world /run".into(),
        "mkdir -p /run/netns".into(),
        "ip link set lo up".into(),
        format!("ip link add {BRIDGE} type bridge forward_delay 0"),
        format!("ip addr add {BRIDGE_V4}/{PREFIX_V4} dev {BRIDGE}"),
        format!("ip -6 addr add {BRIDGE_V6}/{PREFIX_V6} dev {BRIDGE} nodad"),
        format!("ip link set {BRIDGE} up"),
        format!("echo {READY_LINE}"),
        "exec sleep infinity".into(),
    ]
    .join("\n")
}

/// Starts a holder marked with `marker`, waits until its world is ready and returns
/// it. Its stderr goes to `stderr_log`.
pub(crate) fn start(marker: &str, stderr_log: &Path) -> Result<Child> {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--pdeathsig", "KILL", "--"])
        .args(["unshare", "--net", "--mount", "--propagation", "private"])
        .args(["--", "sh", "-c"])
        .arg(setup_script())
        .env(MARKER_VAR, marker)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(File::create(stderr_log).context("creating the holder's log")?);
    let mut child = cmd
        .spawn()
        .context("starting the world's holder (unshare)")?;
    let Some(stdout) = child.stdout.take() else {
        let _ = child.kill();
        let _ = child.wait();
        bail!("the holder has no stdout pipe");
    };
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(READY_TIMEOUT) {
        Ok(line) if line.trim() == READY_LINE => match verify_isolated(child.id()) {
            Ok(()) => Ok(child),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        },
        outcome => {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(stderr_log).unwrap_or_default();
            bail!(
                "the world's holder did not get ready ({}): {}",
                match outcome {
                    Ok(_) => "it exited",
                    Err(_) => "timed out",
                },
                log.trim()
            )
        }
    }
}

/// Refuses a holder that does not live in namespaces of its own: its network and mount
/// namespaces must differ from this process's, and its `/run` must be another file
/// system than ours. Every later command targets this PID, so it is checked first.
pub(crate) fn verify_isolated(holder_pid: u32) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta =
        |path: String| std::fs::metadata(&path).with_context(|| format!("inspecting {path}"));
    for ns in ["net", "mnt"] {
        let ours = meta(format!("/proc/self/ns/{ns}"))?.ino();
        let holders = meta(format!("/proc/{holder_pid}/ns/{ns}"))?.ino();
        if ours == holders {
            bail!("holder {holder_pid} shares our {ns} namespace; refusing to use it");
        }
    }
    let our_run = meta("/run".into())?.dev();
    let world_run = meta(format!("/proc/{holder_pid}/root/run"))?.dev();
    if our_run == world_run {
        bail!("holder {holder_pid}'s /run is not its private tmpfs; refusing to use it");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_in_our_namespaces_is_refused() {
        // This test process itself is no world.
        let err = verify_isolated(std::process::id()).unwrap_err();
        assert!(
            err.to_string().contains("shares our net namespace"),
            "{err}"
        );
    }

    #[test]
    fn script_mounts_run_before_touching_netns_and_sleeps_last() {
        let s = setup_script();
        let mount = s.find("mount -t tmpfs").unwrap();
        let netns = s.find("/run/netns").unwrap();
        assert!(mount < netns);
        assert!(s.ends_with("exec sleep infinity"));
        assert!(s.starts_with("set -e"));
    }
}
