#![forbid(unsafe_code)]
//! The multicall binary the end-to-end tests run in pods: `pillion-testbin init …` and
//! `pillion-testbin proxy …` (see `pillion_tests::multicall`), plus the test-only
//! `pillion-testbin probe <addr> <message>` client (see `pillion_tests::probe`).

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<_> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "probe") {
        return pillion_tests::probe::main_with_args(args[1..].to_vec());
    }
    match pillion_tests::multicall::dispatch(args) {
        Some(code) => code,
        None => {
            eprintln!("{}", pillion_tests::multicall::usage("pillion-testbin"));
            ExitCode::from(2)
        }
    }
}
