//! Helpers shared by the end-to-end test files (each file uses a subset).
#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use pillion_tests::{Process, SidecarOpts};

/// The multicall binary (`pillion-testbin init|proxy …`) that pods run.
pub fn testbin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pillion-testbin"))
}

/// Sidecar options with the mesh defaults, run from the test binary; a short drain so
/// teardown is quick.
pub fn sidecar_opts() -> SidecarOpts {
    SidecarOpts::new(testbin()).proxy_args(["--drain-timeout", "5s"])
}

/// Awaits `fut` for at most `limit`, panicking with `what` if it takes longer.
pub async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(out) => out,
        Err(_) => panic!("{what} did not finish within {limit:?}"),
    }
}

/// Prints the logs of the given processes (for a failing assertion's context).
pub fn dump(procs: &[&Process]) -> String {
    procs.iter().map(|p| p.logs().to_string()).collect()
}

/// MiB per second of `bytes` moved in `elapsed`.
pub fn mib_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64()
}
