//! The one place that builds a command meant to touch networking: every such command
//! runs inside a world's mount and network namespaces, so nothing the harness runs can
//! reach the root namespace by mistake.

use std::ffi::OsStr;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use crate::local::marker::MARKER_VAR;

/// Builds commands that run inside one world (its holder's mount + network namespaces).
#[derive(Debug, Clone)]
pub(crate) struct Enter {
    holder_pid: u32,
    marker: String,
}

impl Enter {
    /// A builder for the world whose holder process has this PID.
    pub(crate) fn new(holder_pid: u32, marker: String) -> Enter {
        Enter { holder_pid, marker }
    }

    /// `program` run in the world's node namespace, marked, killed if the thread that
    /// started it dies (`--pdeathsig`), with stdin closed, in its own process group (so
    /// a terminal's Ctrl-C reaches only the harness, which then tears down in order).
    /// Callers add arguments.
    ///
    /// This is the only function that creates commands touching networking; pods
    /// prefix their commands with `ip netns exec <ns>` on top of it.
    pub(crate) fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--pdeathsig", "KILL", "--", "nsenter", "--target"])
            .arg(self.holder_pid.to_string())
            .args(["--mount", "--net", "--"])
            .arg(program)
            .env(MARKER_VAR, &self.marker)
            .stdin(Stdio::null())
            .process_group(0);
        cmd
    }

    /// `ip netns exec <netns>` in the world: callers append the program to run in pod
    /// network namespace `netns` (as root unless they add a `setpriv`).
    pub(crate) fn pod_command(&self, netns: &str) -> Command {
        let mut cmd = self.command("ip");
        cmd.args(["netns", "exec", netns]);
        cmd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_always_enter_the_world() {
        let enter = Enter::new(4242, "1-0".into());
        let mut cmd = enter.pod_command("pt1w0-a");
        cmd.arg("iptables-save");
        let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy()).collect();
        assert_eq!(cmd.get_program(), "setpriv");
        assert_eq!(
            args,
            [
                "--pdeathsig",
                "KILL",
                "--",
                "nsenter",
                "--target",
                "4242",
                "--mount",
                "--net",
                "--",
                "ip",
                "netns",
                "exec",
                "pt1w0-a",
                "iptables-save"
            ]
        );
        let marked = cmd
            .get_envs()
            .any(|(k, v)| k == MARKER_VAR && v == Some(OsStr::new("1-0")));
        assert!(marked);
    }
}
