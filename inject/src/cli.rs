//! The `pillion-inject` command line (also `pillion inject`): adds the Pillion sidecar
//! to the workloads in Kubernetes YAML. `pillion-inject -f deploy.yaml | kubectl apply -f -`

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use crate::offline::inject_manifests_with_report;
use crate::{Decision, InjectArgs};
use anyhow::Context;
use clap::Parser;

/// Command line of `pillion-inject`.
#[derive(Debug, Parser)]
#[command(
    name = "pillion-inject",
    version,
    about = "Adds the Pillion sidecar to every workload (Pod, Deployment, StatefulSet, \
             DaemonSet, ReplicaSet, Job, CronJob) in Kubernetes YAML and prints the result. \
             Other documents pass through unchanged; pods annotated \
             pillion.io/inject: disabled are left alone."
)]
struct Cli {
    /// File to read, or `-` for standard input.
    #[arg(short = 'f', long = "filename", value_name = "FILE|-")]
    filename: PathBuf,
    /// Print nothing on standard error unless something went wrong.
    #[arg(short, long)]
    quiet: bool,
    #[command(flatten)]
    inject: InjectArgs,
}

fn read_input(path: &PathBuf) -> anyhow::Result<String> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading standard input")?;
        Ok(text)
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.inject.into_config()?;
    let input = read_input(&cli.filename)?;
    let output = inject_manifests_with_report(&input, &config)?;
    std::io::stdout()
        .lock()
        .write_all(output.yaml.as_bytes())
        .context("writing standard output")?;
    let mut stderr = std::io::stderr().lock();
    for report in &output.reports {
        let what = format!(
            "document {} ({} {})",
            report.index, report.kind, report.name
        );
        for warning in &report.warnings {
            writeln!(stderr, "{what}: {warning}")?;
        }
        if !cli.quiet {
            let verdict = match &report.decision {
                Decision::Inject => "injected".to_owned(),
                Decision::AlreadyInjected => "already injected".to_owned(),
                Decision::Skip(reason) => format!("skipped: {reason}"),
            };
            writeln!(stderr, "{what}: {verdict}")?;
        }
    }
    Ok(())
}

/// The whole command: parses `args` (program name first), runs, returns the exit code.
pub fn main_with_args(args: Vec<OsString>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return ExitCode::from(u8::try_from(err.exit_code()).unwrap_or(2));
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PILLION_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .try_init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pillion-inject: {e:#}");
            ExitCode::FAILURE
        }
    }
}
