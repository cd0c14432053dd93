#![forbid(unsafe_code)]
//! `pillion-benches`: see the library docs. Also runs `init`, `proxy` and `agent` for
//! the pods it builds.

fn main() -> std::process::ExitCode {
    pillion_benches::cli::main_with_args(std::env::args_os().collect())
}
