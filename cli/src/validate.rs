//! `pillion validate PATH…`: the agent's YAML source checked offline, with the
//! agent's own reader, so a file that passes here is one the agent takes.

use std::path::PathBuf;
use std::process::ExitCode;

/// Checks each path and prints what it holds or its problems; fails if any has one.
pub fn run(paths: &[PathBuf], trust_domain: &str) -> ExitCode {
    let mut failed = false;
    for path in paths {
        match pillion_agent::source::check(path, trust_domain) {
            Ok(held) => println!(
                "✔ {}: {} file(s), {} workload(s), {} service(s)",
                path.display(),
                held.files,
                held.workloads,
                held.services
            ),
            Err(problems) => {
                failed = true;
                for problem in problems {
                    println!("✗ {problem}");
                }
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
