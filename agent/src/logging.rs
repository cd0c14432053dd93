//! Sets up `tracing` output for the binary: text or JSON lines on stderr.

use crate::config::LogFormat;
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Filter used when the one given cannot be parsed.
const FALLBACK_FILTER: &str = "info";

/// Installs the global subscriber. A bad filter falls back to `info` and is
/// reported as an error, so it is never silently ignored.
pub fn init(format: LogFormat, filter: &str) -> Result<(), String> {
    let (env_filter, bad) = match EnvFilter::try_new(filter) {
        Ok(f) => (f, None),
        Err(e) => (EnvFilter::new(FALLBACK_FILTER), Some(e.to_string())),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // A subscriber may already be installed (several agents in one test process).
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    match bad {
        None => Ok(()),
        Some(e) => Err(format!(
            "`{filter}` is not a valid log filter ({e}); use a level like `info` or directives like `pillion_agent=debug,info`"
        )),
    }
}
