#![forbid(unsafe_code)]
//! The `pillion-proxy` binary; all of it lives in [`pillion_proxy::cli`].

fn main() -> std::process::ExitCode {
    pillion_proxy::main_with_args(std::env::args_os().collect())
}
