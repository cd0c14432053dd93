#![forbid(unsafe_code)]
//! The multicall binary the end-to-end tests run in pods: `pillion-testbin init …` and
//! `pillion-testbin proxy …` (see `pillion_tests::multicall`).

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<_> = std::env::args_os().collect();
    match pillion_tests::multicall::dispatch(args) {
        Some(code) => code,
        None => {
            eprintln!("{}", pillion_tests::multicall::usage("pillion-testbin"));
            ExitCode::from(2)
        }
    }
}
