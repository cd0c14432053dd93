//! The whole `pillion-init` binary: parse, validate, then dry-run, install or clean up.
//!
//! Exit codes: 0 done (also: cleanup with nothing installed), 1 iptables failed,
//! 2 invalid flags or `PILLION_*` values (nothing touched), 3 iptables not installed,
//! 4 CAP_NET_ADMIN missing in the pod's network namespace.

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use crate::apply;
use crate::config::Args;
use crate::error::{InitError, EXIT_OK};
use crate::logging;
use crate::plan::{Mode, Settings};

/// Runs `pillion-init` with `args` (the program name first) and returns its exit code.
pub fn main_with_args(args: Vec<OsString>) -> ExitCode {
    let parsed = match Args::try_parse_from(args) {
        Ok(parsed) => parsed,
        Err(error) => {
            // --help and --version land here too, with exit code 0.
            let code = error.exit_code();
            // Nothing better to do if stderr itself is gone.
            let _ = error.print();
            return ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX));
        }
    };
    logging::init(parsed.log_format);
    let outcome = parsed
        .validate()
        .map_err(InitError::from)
        .and_then(|settings| run(&settings));
    match outcome {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(error) => {
            tracing::error!(error = %error, code = error.exit_code(), "pillion-init failed");
            ExitCode::from(error.exit_code())
        }
    }
}

fn run(settings: &Settings) -> Result<(), InitError> {
    let plan = &settings.plan;
    tracing::info!(
        mode = ?settings.mode,
        dry_run = settings.dry_run,
        backend = ?settings.backend,
        outbound_port = plan.outbound_port,
        inbound_port = plan.inbound_port,
        proxy_uid = plan.proxy_uid,
        proxy_gid = ?plan.proxy_gid,
        skip_inbound_ports = ?plan.skip_inbound_ports,
        skip_outbound_ports = ?plan.skip_outbound_ports,
        skip_outbound_cidrs = ?plan.skip_outbound_cidrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        families = ?plan.families,
        "starting"
    );
    if settings.dry_run {
        let text = apply::preview(plan, settings.mode);
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush())
            .map_err(InitError::Output)?;
        return Ok(());
    }
    let changes = match settings.mode {
        Mode::Install => apply::install(plan, settings.backend)?,
        Mode::Cleanup => apply::cleanup(plan, settings.backend)?,
    };
    let changed = changes.iter().filter(|change| change.changed).count();
    tracing::info!(mode = ?settings.mode, families_changed = changed, "done");
    Ok(())
}
