//! Where the agent's knowledge comes from: a YAML file (re-read on change) or the
//! embedded default that serves the local demo.

pub mod catalog;
pub mod file;
mod locate;
pub mod model;
pub mod path;
mod reload;
pub mod routes;
pub mod validate;

pub use catalog::{Catalog, Snapshot, Workload};
pub use file::{parse_source, read_source, SourceError};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The embedded default source: the local demo world (see the file's comments).
pub const EMBEDDED_DEFAULT: &str = include_str!("default.yaml");
/// What error messages call the embedded default.
pub const EMBEDDED_NAME: &str = "<embedded default>";

/// Which source the agent serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// The default compiled into the binary; never changes.
    Embedded,
    /// A YAML file, polled for changes.
    File(PathBuf),
}

/// The live source: the published snapshots and the last refusal, if any.
#[derive(Debug)]
pub struct SourceHandle {
    snapshots: watch::Receiver<Snapshot>,
    errors: watch::Receiver<Option<SourceError>>,
    poller: Option<JoinHandle<()>>,
    /// Keeps an embedded source's channel open: it never changes, but a closed
    /// channel would end every view stream right after its first line.
    _unchanging: Option<watch::Sender<Snapshot>>,
}

/// Loads the source (a broken one is a fatal error here) and, for a file, starts
/// polling it every `interval` until `shutdown` fires.
pub fn start(
    spec: &SourceSpec,
    trust_domain: &str,
    interval: Duration,
    shutdown: CancellationToken,
) -> Result<SourceHandle, SourceError> {
    let (name, text) = match spec {
        SourceSpec::Embedded => (EMBEDDED_NAME.to_string(), EMBEDDED_DEFAULT.to_string()),
        SourceSpec::File(path) => (path.display().to_string(), read_source(path)?),
    };
    let catalog = parse_source(&name, &text, trust_domain)?;
    let (snap_tx, snapshots) = watch::channel(Snapshot {
        version: 1,
        catalog: Arc::new(catalog),
        published: std::time::Instant::now(),
    });
    let (err_tx, errors) = watch::channel(None);
    let (poller, unchanging) = match spec {
        SourceSpec::Embedded => (None, Some(snap_tx)),
        SourceSpec::File(path) => {
            let poller = reload::Poller::new(
                path.clone(),
                trust_domain.to_string(),
                interval,
                &text,
                snap_tx,
                err_tx,
            );
            (Some(tokio::spawn(poller.run(shutdown))), None)
        }
    };
    tracing::info!(source = %name, workloads = snapshots.borrow().catalog.workloads().len(),
        services = snapshots.borrow().catalog.services().len(), "source loaded");
    Ok(SourceHandle {
        snapshots,
        errors,
        poller,
        _unchanging: unchanging,
    })
}

impl SourceHandle {
    /// A receiver that sees every published snapshot, starting with the current one.
    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.snapshots.clone()
    }

    /// The snapshot being served now.
    pub fn current(&self) -> Snapshot {
        self.snapshots.borrow().clone()
    }

    /// A receiver of the refusals: the newest file's problem, `None` once a good
    /// one is back.
    pub fn subscribe_errors(&self) -> watch::Receiver<Option<SourceError>> {
        self.errors.clone()
    }

    /// Why the newest version of the file was refused, until a good one arrives.
    pub fn last_error(&self) -> Option<SourceError> {
        self.errors.borrow().clone()
    }

    /// Waits for the poller to stop (after the shutdown token fired).
    pub async fn stopped(&mut self) {
        if let Some(task) = self.poller.take() {
            let _ = task.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_parses_and_validates() {
        let catalog = parse_source(EMBEDDED_NAME, EMBEDDED_DEFAULT, "cluster.local")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(catalog.workloads().len(), 2);
        assert_eq!(catalog.services().len(), 1);
    }
}
