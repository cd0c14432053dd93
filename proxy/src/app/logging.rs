//! Installs the process-wide `tracing` subscriber: text or JSON lines on
//! stderr, filtered with `RUST_LOG`-style directives.

use std::io::IsTerminal as _;
use std::sync::{Arc, Mutex, OnceLock};

use tracing_subscriber::filter::{EnvFilter, ParseError};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{fmt, reload, Layer as _};

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

/// The process's log filter, read and changed at runtime through the admin
/// server's `/log-level` (a debug level for a minute, without a restart).
#[derive(Clone)]
pub(crate) struct LogLevel {
    current: Arc<Mutex<String>>,
    apply: Arc<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>,
}

impl LogLevel {
    /// A level whose changes go to `apply`, starting at `current`.
    pub(crate) fn new(
        current: &str,
        apply: impl Fn(EnvFilter) -> Result<(), String> + Send + Sync + 'static,
    ) -> LogLevel {
        LogLevel {
            current: Arc::new(Mutex::new(current.to_string())),
            apply: Arc::new(apply),
        }
    }

    /// The filter in force.
    pub(crate) fn current(&self) -> String {
        self.current
            .lock()
            .map(|c| c.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Puts `value` (a `RUST_LOG`-style filter) in force, or says why not.
    pub(crate) fn set(&self, value: &str) -> Result<(), String> {
        let parsed = filter(value).map_err(|e| e.to_string())?;
        (self.apply)(parsed)?;
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        *current = value.to_string();
        Ok(())
    }
}

impl std::fmt::Debug for LogLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogLevel")
            .field("current", &self.current())
            .finish_non_exhaustive()
    }
}

/// The level of the subscriber [`init`] installed, if it ran in this process.
static INSTALLED: OnceLock<LogLevel> = OnceLock::new();

/// The installed subscriber's level, for the admin server.
pub(crate) fn installed() -> Option<LogLevel> {
    INSTALLED.get().cloned()
}

/// Installs the global subscriber writing to stderr, its filter reloadable.
pub(crate) fn init(format: LogFormat, value: &str, filter: EnvFilter) -> Result<(), LogError> {
    let (filter, handle) = reload::Layer::new(filter);
    let lines = fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let lines = match format {
        LogFormat::Text => lines.boxed(),
        LogFormat::Json => lines.json().flatten_event(true).boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(lines)
        .try_init()
        .map_err(|err| LogError::Install(err.to_string()))?;
    let level = LogLevel::new(value, move |new: EnvFilter| {
        handle
            .reload(new)
            .map_err(|e| format!("cannot change the log filter: {e}"))
    });
    let _ = INSTALLED.set(level);
    Ok(())
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
    fn a_level_changes_only_to_a_filter_that_parses() {
        let applied = Arc::new(Mutex::new(Vec::new()));
        let seen = applied.clone();
        let level = LogLevel::new("info", move |f: EnvFilter| {
            seen.lock().unwrap().push(f.to_string());
            Ok(())
        });
        assert_eq!(level.current(), "info");
        level.set("pillion_proxy=debug,warn").unwrap();
        assert_eq!(level.current(), "pillion_proxy=debug,warn");
        let err = level.set("pillion_proxy=loud").unwrap_err();
        assert!(err.contains("not a valid filter"), "{err}");
        assert_eq!(level.current(), "pillion_proxy=debug,warn");
        assert_eq!(applied.lock().unwrap().len(), 1);
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
