#![forbid(unsafe_code)]
//! `pillion`: `pillion up` runs the mesh on this machine; `pillion init|proxy|agent|
//! inject …` runs one of the mesh's programs (see [`pillion::programs`]).

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use pillion::local::up::{self, UpOpts};

/// Pillion, the transparent sidecar mesh.
#[derive(Debug, Parser)]
#[command(
    name = "pillion",
    version,
    after_help = "The mesh's programs run as `pillion init|proxy|agent|inject [flags…]`, \
                  exactly as pillion-init, pillion-proxy, pillion-agent and pillion-inject."
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the mesh on this machine: a private world of network namespaces with the
    /// agent on its embedded default and two pods with init and proxy, live traffic
    /// between them and the proxies' counters, until Ctrl-C. Needs root.
    Up {
        /// Stop by itself after this long (e.g. 10s, 2m) instead of waiting for Ctrl-C.
        #[arg(long, value_parser = up::parse_duration)]
        duration: Option<Duration>,

        /// Export the proxies' spans to this OTLP collector outside the world, e.g.
        /// Jaeger's http://127.0.0.1:4317 (see docs/telemetry.md).
        #[arg(long, value_name = "URL")]
        otlp_endpoint: Option<String>,

        /// OTLP transport of --otlp-endpoint.
        #[arg(long, value_parser = ["grpc", "http"], default_value = "grpc")]
        otlp_protocol: String,
    },
    /// Checks the agent's YAML source offline, as the agent reads it: each PATH a
    /// file or a directory of them. Prints what each holds, or every problem as
    /// file:line:column: reason; exits 1 if any PATH has one.
    Validate {
        /// The agent's source: a file, or a directory of *.yaml files.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<std::path::PathBuf>,

        /// Trust domain the identities are checked against.
        #[arg(long, default_value = pillion_api::defaults::TRUST_DOMAIN)]
        trust_domain: String,
    },
    /// Shows what a proxy acts on (its configuration, certificate and view), from
    /// its admin server: in its pod, or through a port-forward.
    ProxyConfig {
        /// The proxy's admin address.
        #[arg(default_value = "127.0.0.1:15020")]
        admin: std::net::SocketAddr,
    },
    /// Shows a proxy's log filter, or changes it without a restart (e.g.
    /// `info,pillion_proxy=debug`), through its admin server.
    LogLevel {
        /// The proxy's admin address.
        admin: std::net::SocketAddr,
        /// The new filter; without it, the one in force is shown.
        filter: Option<String>,
    },
    /// The mesh's certificate authority.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Makes a new root (the trust anchor) and an issuer under it in a new
    /// directory, as the files of the Secret the agents sign with, and says how to
    /// create that Secret. Run it once, outside the cluster.
    Init {
        /// The new directory to write ca.crt, tls.crt, tls.key and root.key into.
        #[arg(long, value_name = "DIR")]
        out: std::path::PathBuf,

        #[command(flatten)]
        issuer: IssuerArgs,
    },
    /// Makes the next issuer under the root that `init` made (its ca.crt and
    /// root.key) in a new directory, and says how to update the Secret with it.
    Issuer {
        /// The directory `pillion ca init` wrote (ca.crt and root.key).
        #[arg(long, value_name = "DIR")]
        root_dir: std::path::PathBuf,

        /// The new directory to write ca.crt, tls.crt and tls.key into.
        #[arg(long, value_name = "DIR")]
        out: std::path::PathBuf,

        #[command(flatten)]
        issuer: IssuerArgs,
    },
}

/// What every issuer the CLI makes is made for, and for how long.
#[derive(Debug, clap::Args)]
struct IssuerArgs {
    /// Trust domain of the mesh.
    #[arg(long, default_value = pillion_api::defaults::TRUST_DOMAIN)]
    trust_domain: String,

    /// Lifetime of the issuer (never past its root's, ten years for a new one), e.g.
    /// 365d.
    #[arg(long, value_parser = up::parse_duration, default_value = "365d")]
    issuer_lifetime: Duration,
}

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    // The pods' programs: `pillion init …`, `pillion proxy …`, ...
    if let Some(code) = pillion::programs::dispatch(argv.clone()) {
        return code;
    }
    let (duration, otlp_endpoint, otlp_protocol) = match Args::parse_from(argv).command {
        Command::Up {
            duration,
            otlp_endpoint,
            otlp_protocol,
        } => (duration, otlp_endpoint, otlp_protocol),
        Command::Validate {
            paths,
            trust_domain,
        } => return pillion::validate::run(&paths, &trust_domain),
        Command::ProxyConfig { admin } => return pillion::admin::call(admin, "GET", "/config", ""),
        Command::LogLevel { admin, filter } => {
            return match filter {
                Some(filter) => pillion::admin::call(admin, "PUT", "/log-level", &filter),
                None => pillion::admin::call(admin, "GET", "/log-level", ""),
            }
        }
        Command::Ca { command } => {
            let (what, done) = match command {
                CaCommand::Init { out, issuer } => (
                    "init",
                    pillion::ca::init(&out, &issuer.trust_domain, issuer.issuer_lifetime),
                ),
                CaCommand::Issuer {
                    root_dir,
                    out,
                    issuer,
                } => (
                    "issuer",
                    pillion::ca::next_issuer(
                        &root_dir,
                        &out,
                        &issuer.trust_domain,
                        issuer.issuer_lifetime,
                    ),
                ),
            };
            return match done {
                Ok(next) => {
                    println!("{next}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("pillion ca {what}: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
    };
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "pillion up: needs root, to create network namespaces and iptables rules \
             (all inside its own private namespaces).\n  \
             run: sudo cargo run -p pillion -- up"
        );
        return ExitCode::from(2);
    }
    let binary = match std::env::current_exe() {
        Ok(path) => path,
        Err(e) => {
            eprintln!("pillion up: cannot find my own executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    match up::run(&UpOpts {
        binary,
        duration,
        otlp_endpoint,
        otlp_protocol: Some(otlp_protocol),
    }) {
        Ok(report) => {
            println!(
                "requests: {} ok, {} failed; the client's proxy carried {} connection(s); \
                 visitor rounds through the gateway: {} ok, {} failed",
                report.ok, report.failed, report.proxied, report.edge_ok, report.edge_failed
            );
            let edge = report.edge_ok > 0 && report.edge_failed == 0;
            if edge && report.ok > 0 && report.failed == 0 && report.proxied >= report.ok as f64 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("pillion up: {e:#}");
            ExitCode::FAILURE
        }
    }
}
