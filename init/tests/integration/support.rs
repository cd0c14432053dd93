//! Runs integration tests inside a fresh network + mount namespace, never in the
//! machine's own one.
//!
//! Each test is a pair: an outer `#[test]` that spawns
//! `unshare --net --mount --propagation private` and, inside it, re-executes this test
//! binary to run the `#[ignore]`d inner half. The inner half refuses to run unless its
//! network namespace differs from the outer test's, so iptables, links and routes are
//! only ever changed in a namespace the test made itself. Inside, `/run` is a private
//! tmpfs, so even the xtables lock is the namespace's own.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::process::Command;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_pillion-init");

/// Carries the outer test's network namespace to the inner half, which compares.
const OUTER_NETNS_ENV: &str = "PILLION_INIT_TEST_OUTER_NETNS";

/// Shell prelude run by `unshare` before the inner test: refuse unless the namespace is
/// new, hide the host's `/run` (xtables lock) behind a tmpfs, bring up loopback.
const PRELUDE: &str = r#"set -e
here="$(readlink /proc/self/ns/net)"
if [ "$here" = "$PILLION_INIT_TEST_OUTER_NETNS" ]; then
  echo "refusing: not in a fresh network namespace" >&2
  exit 99
fi
mount -t tmpfs pillion-init-test /run
ip link set lo up
exec "$@"
"#;

/// Defines a test whose body runs inside a fresh network namespace.
macro_rules! netns_test {
    ($($(#[doc = $doc:expr])* fn $name:ident() $body:block)*) => {$(
        $(#[doc = $doc])*
        #[test]
        fn $name() {
            $crate::support::run_inside(&$crate::support::test_path(
                module_path!(),
                concat!(stringify!($name), "::inner"),
            ));
        }

        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[test]
            #[ignore = "runs only inside the fresh network namespace its outer test makes"]
            fn inner() {
                if !$crate::support::entered() {
                    return;
                }
                $body
            }
        }
    )*};
}

fn own_netns() -> OsString {
    std::fs::read_link("/proc/self/ns/net")
        .expect("read /proc/self/ns/net")
        .into_os_string()
}

/// The harness's name of test `name` in module `module` (`module_path!()`, whose
/// first segment is the crate, which test names leave out).
pub fn test_path(module: &str, name: &str) -> String {
    match module.split_once("::") {
        Some((_crate, path)) => format!("{path}::{name}"),
        None => name.to_string(),
    }
}

/// Spawns the inner test `name` of this binary in a fresh namespace and fails with its
/// output if it fails (or if it did not actually run).
pub fn run_inside(name: &str) {
    let exe = std::env::current_exe().expect("current test binary");
    let output = Command::new("unshare")
        .args(["--net", "--mount", "--propagation", "private", "--"])
        .args(["sh", "-c", PRELUDE, "sh"])
        .arg(exe)
        .args([
            name,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(OUTER_NETNS_ENV, own_netns())
        .output()
        .expect("spawn unshare (util-linux)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "inner test {name} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
}

/// True inside the fresh namespace; false when an inner test is run by hand (it then
/// does nothing). Panics if asked to run in the outer test's own namespace.
pub fn entered() -> bool {
    let Some(outer) = std::env::var_os(OUTER_NETNS_ENV) else {
        eprintln!("skipped: this half only runs when spawned by its outer test");
        return false;
    };
    assert_ne!(
        own_netns(),
        outer,
        "refusing to touch iptables outside a fresh network namespace"
    );
    true
}

/// What a finished command left.
#[derive(Debug)]
pub struct Run {
    /// Exit code (-1 for a signal).
    pub code: i32,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
}

/// Runs a command to completion.
pub fn run(command: &mut Command) -> Run {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs `pillion-init` with `args`.
pub fn init(args: &[&str]) -> Run {
    run(Command::new(BIN).args(args))
}

/// Runs `pillion-init` and insists it succeeds.
pub fn init_ok(args: &[&str]) -> Run {
    let out = init(args);
    assert_eq!(out.code, 0, "pillion-init {args:?} failed: {out:?}");
    out
}

/// Runs a bash script and returns its stdout, failing the test if it fails.
pub fn sh(script: &str) -> String {
    let out = run(Command::new("bash").args(["-c", script]));
    assert_eq!(out.code, 0, "script failed: {script}\n{out:?}");
    out.stdout
}

/// `<tool>` output without comments or counters, so two dumps compare by content.
pub fn save(tool: &str, args: &[&str]) -> String {
    let out = run(Command::new(tool).args(args));
    assert_eq!(out.code, 0, "{tool} {args:?} failed: {out:?}");
    normalize(&out.stdout)
}

/// Every table of one backend and family, normalized, e.g. `dump("iptables", "nft")`.
pub fn dump(prefix: &str, backend: &str) -> String {
    save(&format!("{prefix}-{backend}-save"), &[])
}

/// Only the nat table, normalized.
pub fn dump_nat(prefix: &str, backend: &str) -> String {
    save(&format!("{prefix}-{backend}-save"), &["-t", "nat"])
}

/// Drops `#` lines and zeroes the `[packets:bytes]` counters of chain declarations.
pub fn normalize(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        if line.starts_with(':') && line.ends_with(']') {
            let head = line.rsplit_once(' ').map_or(line, |(head, _)| head);
            out.push_str(head);
            out.push_str(" [0:0]");
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// Number of lines exactly equal to `line`.
pub fn count_lines(text: &str, line: &str) -> usize {
    text.lines().filter(|l| *l == line).count()
}

/// The `-A PILLION_*` rules of a dump, grouped by chain (rule order kept), so dumps that
/// list chains in different orders compare equal.
pub fn pillion_rules(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut chains: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("-A PILLION_") {
            let (chain, rule) = rest.split_once(' ').unwrap_or((rest, ""));
            chains
                .entry(format!("PILLION_{chain}"))
                .or_default()
                .push(rule.to_owned());
        }
    }
    chains
}

/// Splits `--dry-run` output into its IPv4 and IPv6 parts.
pub fn dry_run_parts(stdout: &str) -> (String, String) {
    let marker = "\n# pillion-init --dry-run";
    let split = stdout.find(marker).expect("two families in dry-run output");
    (stdout[..split].to_owned(), stdout[split..].to_owned())
}
