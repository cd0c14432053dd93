//! Runs one iptables binary, feeds it stdin, and turns a failure into an [`InitError`]
//! that says what to fix (missing capability, busy lock, rejected rule).

use std::ffi::OsStr;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::error::InitError;

/// Runs `tool args...`, writing `stdin` to it if given, and returns its stdout.
pub fn run(tool: &Path, args: &[&str], stdin: Option<&str>) -> Result<String, InitError> {
    let shown = command_line(tool, args);
    tracing::debug!(command = %shown, "running");
    let mut child = Command::new(tool)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("LC_ALL", "C")
        .spawn()
        .map_err(|source| InitError::Spawn {
            tool: shown.clone(),
            source,
        })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A tool that dies early closes the pipe; its exit status says why, below.
        if let Err(error) = pipe.write_all(text.as_bytes()) {
            tracing::debug!(command = %shown, %error, "stdin closed early");
        }
    }
    let output = child
        .wait_with_output()
        .map_err(|source| InitError::Spawn {
            tool: shown.clone(),
            source,
        })?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        return Ok(stdout);
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let status = match output.status.code() {
        Some(code) => format!("exit status {code}"),
        None => "killed by a signal".to_owned(),
    };
    Err(classify(&shown, &status, &stderr))
}

/// Maps a failed tool's stderr to the error that explains it best.
pub fn classify(tool: &str, status: &str, stderr: &str) -> InitError {
    let detail = tidy(stderr);
    let lower = detail.to_ascii_lowercase();
    if lower.contains("permission denied")
        || lower.contains("operation not permitted")
        || lower.contains("you must be root")
    {
        InitError::NeedsNetAdmin {
            detail: format!("`{tool}` was refused: {detail}"),
        }
    } else if lower.contains("xtables lock") {
        InitError::LockBusy {
            tool: tool.to_owned(),
            detail,
        }
    } else {
        InitError::ToolFailed {
            tool: tool.to_owned(),
            status: status.to_owned(),
            detail,
        }
    }
}

/// Joins stderr into one line and drops iptables' generic "Try --help" advice, which
/// would only mislead a reader of the init container's log.
fn tidy(stderr: &str) -> String {
    let kept: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("Try `"))
        .collect();
    if kept.is_empty() {
        "(no output)".to_owned()
    } else {
        kept.join(" / ")
    }
}

fn command_line(tool: &Path, args: &[&str]) -> String {
    let name = tool
        .file_name()
        .unwrap_or_else(|| OsStr::new("?"))
        .to_string_lossy();
    std::iter::once(name.as_ref())
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{EXIT_FAILED, EXIT_NO_NET_ADMIN};

    // Captured from iptables v1.8.9 run without CAP_NET_ADMIN.
    const NFT_DENIED: &str = "iptables-nft-save v1.8.9 (nf_tables): Could not fetch rule set \
                              generation id: Permission denied (you must be root)\n";
    const LEGACY_DENIED: &str =
        "iptables-save v1.8.9 (legacy): Cannot initialize: Permission denied (you must be root)\n";
    const LEGACY_RESTORE_DENIED: &str = "iptables-restore v1.8.9 (legacy): iptables-restore: \
        unable to initialize table 'nat'\nError occurred at line: 1\nTry `iptables-restore -h' \
        or 'iptables-restore --help' for more information.\n";

    #[test]
    fn permission_errors_ask_for_net_admin() {
        for stderr in [
            NFT_DENIED,
            LEGACY_DENIED,
            "setsockopt: Operation not permitted",
        ] {
            let err = classify("iptables-nft-save -t nat", "exit status 4", stderr);
            assert_eq!(err.exit_code(), EXIT_NO_NET_ADMIN, "{stderr}");
            let text = err.to_string();
            assert!(
                text.contains("needs CAP_NET_ADMIN in the pod's network namespace"),
                "{text}"
            );
        }
    }

    #[test]
    fn other_failures_keep_the_tool_output() {
        let err = classify(
            "iptables-restore --noflush",
            "exit status 2",
            LEGACY_RESTORE_DENIED,
        );
        assert_eq!(err.exit_code(), EXIT_FAILED);
        let text = err.to_string();
        assert!(text.contains("unable to initialize table 'nat'"), "{text}");
        assert!(text.contains("Error occurred at line: 1"), "{text}");
        assert!(!text.contains("Try `"), "{text}");
    }

    #[test]
    fn lock_contention_is_named() {
        let err = classify(
            "iptables-legacy-restore",
            "exit status 4",
            "Another app is currently holding the xtables lock. Stopped waiting after 5s.",
        );
        assert!(matches!(err, InitError::LockBusy { .. }));
    }

    #[test]
    fn runs_a_tool_and_returns_stdout() {
        let out = run(
            Path::new("/bin/sh"),
            &["-c", "cat; echo done"],
            Some("in\n"),
        )
        .unwrap();
        assert_eq!(out, "in\ndone\n");
    }

    #[test]
    fn failing_tool_reports_status_and_stderr() {
        let err = run(Path::new("/bin/sh"), &["-c", "echo boom >&2; exit 3"], None).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("exit status 3"), "{text}");
        assert!(text.contains("boom"), "{text}");
    }

    #[test]
    fn missing_binary_is_a_spawn_error() {
        let err = run(Path::new("/nonexistent/iptables-restore"), &[], None).unwrap_err();
        assert!(matches!(err, InitError::Spawn { .. }));
    }
}
