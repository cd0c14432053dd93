#![forbid(unsafe_code)]
//! `pillion-demo`: Pillion on one machine. Builds a two-pod world in private
//! namespaces, meshes both pods, sends traffic and prints the proxies' counters until
//! Ctrl-C (or `--duration`). Re-executes itself as `pillion-demo init|proxy …` for the
//! sidecars. Needs root.

use std::process::ExitCode;

use clap::Parser;
use pillion_tests::demo::{self, DemoOpts};

/// Pillion's local demo: two pods, init + proxy in each, live traffic and counters.
#[derive(Debug, Parser)]
#[command(name = "pillion-demo")]
struct Args {
    /// Stop by itself after this long (e.g. 10s, 2m) instead of waiting for Ctrl-C.
    #[arg(long, value_parser = demo::parse_duration)]
    duration: Option<std::time::Duration>,

    /// Export the proxies' spans to this OTLP collector outside the demo's world,
    /// e.g. Jaeger's http://127.0.0.1:4317 (see docs/telemetry.md).
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,

    /// OTLP transport of --otlp-endpoint.
    #[arg(long, value_parser = ["grpc", "http"], default_value = "grpc")]
    otlp_protocol: String,
}

fn main() -> ExitCode {
    let argv: Vec<_> = std::env::args_os().collect();
    // The sidecars: `pillion-demo init …` / `pillion-demo proxy …`.
    if let Some(code) = pillion_tests::multicall::dispatch(argv.clone()) {
        return code;
    }
    let args = Args::parse_from(argv);
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "pillion-demo: needs root, to create network namespaces and iptables rules \
             (all inside its own private namespaces).\n  \
             run: sudo cargo run -p pillion-tests --bin pillion-demo"
        );
        return ExitCode::from(2);
    }
    let binary = match std::env::current_exe() {
        Ok(path) => path,
        Err(e) => {
            eprintln!("pillion-demo: cannot find my own executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    match demo::run(&DemoOpts {
        binary,
        duration: args.duration,
        otlp_endpoint: args.otlp_endpoint,
        otlp_protocol: Some(args.otlp_protocol),
    }) {
        Ok(report) => {
            println!(
                "requests: {} ok, {} failed; the client's proxy carried {} connection(s)",
                report.ok, report.failed, report.proxied
            );
            if report.ok > 0 && report.failed == 0 && report.proxied >= report.ok as f64 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("pillion-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}
