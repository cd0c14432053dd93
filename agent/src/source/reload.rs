//! Polls the source file and publishes a new catalog version when it changes for the
//! better; a broken file is logged and the last good catalog keeps being served.

use super::catalog::{Catalog, Snapshot};
use super::file::{parse_source, source_text, SourceError};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Files modified this recently are re-read on every tick even if their size and
/// mtime look unchanged, since coarse mtimes can hide a quick same-size rewrite.
const RECENT: Duration = Duration::from_secs(2);
/// Re-read at least every this many ticks, whatever the metadata says.
const FORCE_READ_EVERY: u32 = 10;

/// What the poller last saw of the file, to skip work when nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

/// The polling loop's state for one source file.
pub(crate) struct Poller {
    pub(crate) path: PathBuf,
    pub(crate) trust_domain: String,
    pub(crate) interval: Duration,
    pub(crate) snapshots: watch::Sender<Snapshot>,
    pub(crate) errors: watch::Sender<Option<SourceError>>,
    stamp: Option<Stamp>,
    content: Option<ring::digest::Digest>,
    ticks: u32,
}

impl Poller {
    /// A poller that starts from the text that was loaded at start.
    pub(crate) fn new(
        path: PathBuf,
        trust_domain: String,
        interval: Duration,
        initial_text: &str,
        snapshots: watch::Sender<Snapshot>,
        errors: watch::Sender<Option<SourceError>>,
    ) -> Self {
        let stamp = std::fs::metadata(&path).ok().map(|m| Stamp {
            modified: m.modified().ok(),
            len: m.len(),
        });
        Self {
            path,
            trust_domain,
            interval,
            snapshots,
            errors,
            stamp,
            content: Some(hash(initial_text)),
            ticks: 0,
        }
    }

    /// Polls until `shutdown` fires.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => self.poll_once().await,
            }
        }
        tracing::debug!(file = %self.path.display(), "source poller stopped");
    }

    /// One look at the file: re-read it if it may have changed, publish if it did.
    async fn poll_once(&mut self) {
        let name = self.path.display().to_string();
        let text = match self.read_if_changed(&name).await {
            Ok(Some(text)) => text,
            Ok(None) => return,
            Err(e) => {
                self.forget();
                self.fail(e);
                return;
            }
        };
        let digest = hash(&text);
        if self
            .content
            .as_ref()
            .is_some_and(|d| d.as_ref() == digest.as_ref())
        {
            return;
        }
        self.content = Some(digest);
        match parse_source(&name, &text, &self.trust_domain) {
            Ok(catalog) => self.publish(catalog),
            Err(e) => self.fail(e),
        }
    }

    /// The file's text if it may have changed since the last look (another size or
    /// mtime, a recent write, or the periodic forced re-read); `None` skips this tick.
    async fn read_if_changed(&mut self, name: &str) -> Result<Option<String>, SourceError> {
        let meta = tokio::fs::metadata(&self.path)
            .await
            .map_err(|e| SourceError::unreadable(name, &e))?;
        let stamp = Stamp {
            modified: meta.modified().ok(),
            len: meta.len(),
        };
        let recent = stamp
            .modified
            .and_then(|m| m.elapsed().ok())
            .is_none_or(|age| age < RECENT);
        self.ticks += 1;
        if Some(stamp) == self.stamp && !recent && self.ticks < FORCE_READ_EVERY {
            return Ok(None);
        }
        self.ticks = 0;
        self.stamp = Some(stamp);
        source_text(name, tokio::fs::read(&self.path).await).map(Some)
    }

    /// Publishes a good catalog as the next version, unless nothing effective changed.
    fn publish(&mut self, catalog: Catalog) {
        self.errors.send_if_modified(|e| e.take().is_some());
        let current = self.snapshots.borrow().clone();
        if current.catalog.same_content(&catalog) {
            tracing::debug!(file = %self.path.display(), "source changed without effect");
            return;
        }
        let version = current.version + 1;
        self.snapshots.send_replace(Snapshot {
            version,
            catalog: Arc::new(catalog),
            published: std::time::Instant::now(),
        });
        tracing::info!(file = %self.path.display(), version, "source reloaded");
    }

    /// Logs a refused source (once per distinct problem) and keeps the last good one.
    fn fail(&mut self, e: SourceError) {
        let serving = self.snapshots.borrow().version;
        let is_new = self.errors.borrow().as_ref() != Some(&e);
        if is_new {
            tracing::error!(
                file = %e.file,
                line = e.position.map(|p| p.0),
                column = e.position.map(|p| p.1),
                reason = %e.reason,
                serving_version = serving,
                "source file refused, keeping the last good config: {e}"
            );
            self.errors.send_replace(Some(e));
        }
    }

    /// Forgets what was seen, so the file is parsed again once it is back.
    fn forget(&mut self) {
        self.stamp = None;
        self.content = None;
    }
}

fn hash(text: &str) -> ring::digest::Digest {
    ring::digest::digest(&ring::digest::SHA256, text.as_bytes())
}
