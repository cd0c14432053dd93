//! The binary's edge: parse flags, set up logging, run the agent until SIGTERM or
//! SIGINT, and turn failures into an exit code.

use crate::agent::Agent;
use crate::config::{AgentArgs, AgentConfig};
use crate::logging;
use clap::Parser;
use std::ffi::OsString;
use std::process::ExitCode;

/// Exit code for a command line that cannot work.
const EXIT_USAGE: u8 = 2;

/// Runs `pillion-agent` with these arguments (the first is the program name).
pub fn main_with_args(args: Vec<OsString>) -> ExitCode {
    let args = match AgentArgs::try_parse_from(args) {
        Ok(args) => args,
        Err(e) => {
            // clap prints help/version to stdout and errors to stderr itself.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    if let Err(e) = logging::init(args.log_format, &args.log_level) {
        tracing::error!("--log-level: {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    let config = match args.to_config() {
        Ok(config) => config,
        Err(e) => {
            tracing::error!(flag = e.flag, "invalid configuration: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Starts the agent and serves until a termination signal arrives.
async fn run(config: AgentConfig) -> anyhow::Result<()> {
    use anyhow::Context;
    use tokio::signal::unix::{signal, SignalKind};

    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let agent = Agent::start(config)
        .await
        .context("the agent cannot start")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, stopping"),
        _ = int.recv() => tracing::info!("SIGINT received, stopping"),
    }
    agent.shutdown().await;
    Ok(())
}
