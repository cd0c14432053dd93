//! `pillion-inject`: adds the Pillion sidecar to the workloads in Kubernetes YAML; all
//! of it lives in [`pillion_inject::cli`].
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    pillion_inject::cli::main_with_args(std::env::args_os().collect())
}
