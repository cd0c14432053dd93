//! The `pillion-agent` binary: everything lives in the library's `cli` module.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    pillion_agent::cli::main_with_args(std::env::args_os().collect())
}
