//! Where the agent's knowledge comes from: a YAML file (re-read on change) or the
//! embedded default that serves the local demo.

pub mod catalog;
mod cow_map;
pub mod file;
pub mod jwt;
mod locate;
pub mod model;
pub mod parts;
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
    /// A YAML file, or a directory of them (each `*.yaml`/`*.yml` file one part of
    /// the mesh), polled for changes.
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

/// Loads the source (a broken one is a fatal error here) and, for a file or a
/// directory, starts polling it every `interval` until `shutdown` fires.
pub fn start(
    spec: &SourceSpec,
    trust_domain: &str,
    interval: Duration,
    shutdown: CancellationToken,
) -> Result<SourceHandle, SourceError> {
    /// What was loaded: a source that never changes, or one to poll.
    enum Loaded {
        Fixed,
        Polled(reload::Layout, Box<parts::Parts>),
    }
    let (name, catalog, loaded) = match spec {
        SourceSpec::Embedded => {
            let catalog = parse_source(EMBEDDED_NAME, EMBEDDED_DEFAULT, trust_domain)?;
            (EMBEDDED_NAME.to_string(), catalog, Loaded::Fixed)
        }
        SourceSpec::File(path) => {
            let layout = reload::Layout::of(path);
            let parts = reload::load(&layout, trust_domain)?;
            let catalog = parts.catalog().clone();
            let name = path.display().to_string();
            (name, catalog, Loaded::Polled(layout, Box::new(parts)))
        }
    };
    tracing::info!(source = %name, workloads = catalog.workloads().len(),
        services = catalog.services().len(), "source loaded");
    let (snap_tx, snapshots) = watch::channel(Snapshot {
        version: 1,
        catalog: Arc::new(catalog),
        published: std::time::Instant::now(),
    });
    let (err_tx, errors) = watch::channel(None);
    let (poller, unchanging) = match loaded {
        Loaded::Fixed => (None, Some(snap_tx)),
        Loaded::Polled(layout, parts) => {
            let poller = reload::Poller::new(
                layout,
                trust_domain.to_string(),
                interval,
                *parts,
                snap_tx,
                err_tx,
            );
            (Some(tokio::spawn(poller.run(shutdown))), None)
        }
    };
    Ok(SourceHandle {
        snapshots,
        errors,
        poller,
        _unchanging: unchanging,
    })
}

/// What a source holds, as [`check`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// Files read (one for a file, each `*.yaml`/`*.yml` of a directory).
    pub files: usize,
    /// Workloads across them.
    pub workloads: usize,
    /// Services across them.
    pub services: usize,
}

/// Reads a source (a file, or a directory of them) as the agent would at start,
/// without serving it: what it holds, or every file's own problem (each file
/// parsed on its own) and then the first problem between files.
pub fn check(path: &std::path::Path, trust_domain: &str) -> Result<Checked, Vec<SourceError>> {
    reload::check(&reload::Layout::of(path), trust_domain)
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
