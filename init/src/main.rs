#![forbid(unsafe_code)]
//! The `pillion-init` binary: everything lives in [`pillion_init::cli`].

use std::process::ExitCode;

fn main() -> ExitCode {
    pillion_init::cli::main_with_args(std::env::args_os().collect())
}
