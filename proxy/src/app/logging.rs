//! Installs the process-wide `tracing` subscriber: text or JSON lines on
//! stderr, filtered with `RUST_LOG`-style directives.

use std::io::IsTerminal as _;

use tracing_subscriber::filter::{EnvFilter, ParseError};

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// Logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LogError {
    /// The filter does not parse.
    #[error("--log-level {value:?} is not a valid filter ({source}); use e.g. info, debug or pillion_proxy=debug,warn")]
    Filter {
        /// The filter given.
        value: String,
        /// The parser's reason.
        #[source]
        source: ParseError,
    },
    /// A global subscriber was already installed.
    #[error("cannot install the log subscriber: {0}")]
    Install(String),
}

/// Parses a `RUST_LOG`-style filter such as `info` or `pillion_proxy=debug,warn`.
pub(crate) fn filter(value: &str) -> Result<EnvFilter, LogError> {
    EnvFilter::try_new(value).map_err(|source| LogError::Filter {
        value: value.to_owned(),
        source,
    })
}

/// Installs the global subscriber writing to stderr.
pub(crate) fn init(format: LogFormat, filter: EnvFilter) -> Result<(), LogError> {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|err| LogError::Install(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_rust_log_style_filters() {
        for ok in ["info", "debug", "pillion_proxy=debug,warn", "off"] {
            filter(ok).unwrap();
        }
    }

    #[test]
    fn rejects_a_bad_level_naming_the_flag() {
        let err = filter("pillion_proxy=loud").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("--log-level \"pillion_proxy=loud\""),
            "{err}"
        );
    }
}
