//! Polls the source (one file, or every `*.yaml`/`*.yml` file of a directory) and
//! publishes a new catalog version when it changes for the better. A broken file is
//! logged and keeps its last good content in force; the other files go on.
//!
//! Each file is one part ([`super::parts`]): a change re-reads, parses and checks
//! only the files that changed (and those that use a name they define), so in a
//! directory of many files a change costs what changed, not the mesh.

use super::catalog::Snapshot;
use super::file::{parse_file, source_text, SourceError};
use super::parts::{Applied, Changes, Parsed, Parts};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Files modified this recently are re-read on every tick even if their size and
/// mtime look unchanged, since coarse mtimes can hide a quick same-size rewrite.
const RECENT: Duration = Duration::from_secs(2);
/// Re-read a file at least this often, whatever its metadata says.
const FORCE_READ_AFTER: Duration = Duration::from_secs(5);

/// Where the source's files are.
#[derive(Debug, Clone)]
pub(crate) enum Layout {
    /// One file; it missing is a problem, not an empty mesh.
    File(PathBuf),
    /// Every `*.yaml` and `*.yml` file directly in it (hidden ones aside), by name.
    Dir(PathBuf),
}

impl Layout {
    /// The layout of `path`: a directory's files, or the one file.
    pub(crate) fn of(path: &Path) -> Self {
        if path.is_dir() {
            Layout::Dir(path.to_path_buf())
        } else {
            Layout::File(path.to_path_buf())
        }
    }

    /// The source's files now, by part name (their path), in order.
    fn files(&self) -> Result<Vec<(Arc<str>, PathBuf)>, SourceError> {
        let dir = match self {
            Layout::File(path) => return Ok(vec![(part_of(path), path.clone())]),
            Layout::Dir(dir) => dir,
        };
        let name = dir.display().to_string();
        let entries = std::fs::read_dir(dir).map_err(|e| SourceError::unreadable(&name, &e))?;
        let mut files: Vec<(Arc<str>, PathBuf)> = Vec::new();
        for entry in entries {
            // A listing that fails part way is no listing: nothing is taken as gone.
            let entry = entry.map_err(|e| SourceError::unreadable(&name, &e))?;
            if is_source_file(&entry) {
                files.push((part_of(&entry.path()), entry.path()));
            }
        }
        // Names compared as strings: one directory, so this is file-name order.
        files.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        if files.is_empty() {
            return Err(SourceError {
                file: name,
                position: None,
                reason: "the source directory has no *.yaml or *.yml file".into(),
            });
        }
        Ok(files)
    }
}

/// A visible `*.yaml`/`*.yml` regular file, or a symlink by that name (as a
/// ConfigMap mount's are): one whose target is missing for a moment is a file that
/// cannot be read (its last good content stays), not a file removed. The directory
/// entry's type spares a `stat`.
fn is_source_file(entry: &std::fs::DirEntry) -> bool {
    let name = entry.file_name();
    let Some(name) = name.to_str() else {
        return false;
    };
    let visible_yaml =
        !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"));
    visible_yaml
        && match entry.file_type() {
            Ok(t) => t.is_file() || (t.is_symlink() && !entry.path().is_dir()),
            Err(_) => false,
        }
}

/// What errors call a file, and the name of its part.
fn part_of(path: &Path) -> Arc<str> {
    Arc::from(path.display().to_string())
}

/// Reads and parses every file of the source: the parts, and each file's problem.
fn read_all(layout: &Layout) -> (Changes, Vec<SourceError>) {
    let files = match layout.files() {
        Ok(files) => files,
        Err(e) => return (Changes::new(), vec![e]),
    };
    let mut changes = Changes::new();
    let mut problems = Vec::new();
    for (name, path) in files {
        match source_text(&name, std::fs::read(&path)).and_then(|t| parse(name.clone(), t)) {
            Ok(parsed) => {
                changes.insert(name, Some(parsed));
            }
            Err(e) => problems.push(e),
        }
    }
    (changes, problems)
}

/// Loads every file of the source at start; any problem refuses the whole source.
pub(crate) fn load(layout: &Layout, trust_domain: &str) -> Result<Parts, SourceError> {
    let (changes, problems) = read_all(layout);
    if let Some(first) = problems.into_iter().next() {
        return Err(first);
    }
    Ok(Parts::default().apply(&changes, trust_domain)?.parts)
}

/// Every file of the source parsed, each problem kept, then all applied together.
pub(crate) fn check(
    layout: &Layout,
    trust_domain: &str,
) -> Result<super::Checked, Vec<SourceError>> {
    let (changes, problems) = read_all(layout);
    if !problems.is_empty() {
        return Err(problems);
    }
    let parts = Parts::default()
        .apply(&changes, trust_domain)
        .map_err(|e| vec![e])?
        .parts;
    let catalog = parts.catalog();
    let checked = super::Checked {
        files: changes.len(),
        workloads: catalog.workloads().len(),
        services: catalog.services().len(),
    };
    Ok(checked)
}

/// One file's text parsed into a part.
pub(crate) fn parse(name: Arc<str>, text: String) -> Result<Arc<Parsed>, SourceError> {
    let file = parse_file(&name, &text)?;
    Ok(Arc::new(Parsed { name, text, file }))
}

/// What the poller last saw of a file's metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

/// What the poller knows of one file.
#[derive(Debug, Default)]
struct Seen {
    stamp: Option<Stamp>,
    read: Option<Instant>,
    content: Option<ring::digest::Digest>,
    /// A change not in force yet: new content, or `None` for a file that is gone.
    pending: Option<Option<Arc<Parsed>>>,
    /// The generation of the parts when `pending` was last refused.
    refused_at: Option<u64>,
    /// Why the file's newest content is not in force.
    problem: Option<SourceError>,
}

/// The polling loop's state for one source.
pub(crate) struct Poller {
    layout: Layout,
    trust_domain: String,
    interval: Duration,
    snapshots: watch::Sender<Snapshot>,
    errors: watch::Sender<Option<SourceError>>,
    parts: Parts,
    /// By part name (the file's path).
    seen: BTreeMap<Arc<str>, Seen>,
    /// Grows with every change put in force: a refused change is tried again only
    /// when its own file or the parts in force have changed since.
    generation: u64,
}

impl Poller {
    /// A poller that starts from the parts loaded at start.
    pub(crate) fn new(
        layout: Layout,
        trust_domain: String,
        interval: Duration,
        parts: Parts,
        snapshots: watch::Sender<Snapshot>,
        errors: watch::Sender<Option<SourceError>>,
    ) -> Self {
        let now = Instant::now();
        let files = layout.files().unwrap_or_default();
        let mut seen: BTreeMap<Arc<str>, Seen> = (files.into_iter().enumerate())
            .map(|(i, (part, path))| {
                let meta = std::fs::metadata(&path).ok();
                let applied = parts.applied(&part);
                let seen = Seen {
                    stamp: meta.map(|m| stamp(&m)),
                    // Forced re-reads spread over the period, not all at once.
                    read: now.checked_sub(FORCE_READ_AFTER.mul_f64((i % 10) as f64 / 10.0)),
                    content: applied.map(|p| hash(&p.text)),
                    ..Seen::default()
                };
                (part, seen)
            })
            .collect();
        // A part in force whose file is gone already: the first poll removes it.
        for part in parts.names() {
            seen.entry(part.clone()).or_default();
        }
        Self {
            layout,
            trust_domain,
            interval,
            snapshots,
            errors,
            parts,
            seen,
            generation: 0,
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
        tracing::debug!(source = ?self.layout, "source poller stopped");
    }

    /// One look at the source: re-read what may have changed, put in force what did.
    async fn poll_once(&mut self) {
        let looks = self.look().await;
        let mut listed: HashSet<Arc<str>> = HashSet::new();
        match looks {
            Err(e) => {
                // The directory itself: nothing changes until it is back.
                if self.errors.borrow().as_ref() != Some(&e) {
                    log_refusal(&e, self.snapshots.borrow().version);
                    self.errors.send_replace(Some(e));
                }
                return;
            }
            Ok(looks) => {
                for (part, look) in looks {
                    listed.insert(part.clone());
                    self.take_look(part, look);
                }
            }
        }
        let gone: Vec<Arc<str>> = (self.seen.keys())
            .filter(|p| !listed.contains(*p))
            .cloned()
            .collect();
        for part in gone {
            let in_force = self.parts.applied(&part).is_some();
            let seen = self.seen.entry(part).or_default();
            // A removal already pending keeps its state (and when it was refused).
            if !matches!(seen.pending, Some(None)) {
                *seen = Seen {
                    pending: in_force.then_some(None),
                    ..Seen::default()
                };
            }
        }
        self.try_pending();
        self.seen.retain(|part, seen| {
            listed.contains(part) || seen.pending.is_some() || seen.problem.is_some()
        });
        let first = self.seen.values().find_map(|s| s.problem.clone());
        self.errors.send_if_modified(|e| {
            let modified = *e != first;
            *e = first;
            modified
        });
    }

    /// Lists the files and reads those that may have changed, off the runtime.
    async fn look(&self) -> Result<Vec<(Arc<str>, Look)>, SourceError> {
        let layout = self.layout.clone();
        let known: HashMap<Arc<str>, (Option<Stamp>, Option<Instant>)> = (self.seen.iter())
            .map(|(p, s)| (p.clone(), (s.stamp, s.read)))
            .collect();
        let looked = tokio::task::spawn_blocking(move || {
            let files = layout.files()?;
            Ok(files
                .into_iter()
                .map(|(part, path)| {
                    let (stamp, read) = known.get(&part).copied().unwrap_or_default();
                    let look = look_at(&path, stamp, read);
                    (part, look)
                })
                .collect())
        })
        .await;
        looked.unwrap_or_else(|e| {
            Err(SourceError {
                file: format!("{:?}", self.layout),
                position: None,
                reason: format!("the source poller failed: {e}"),
            })
        })
    }

    /// Records what one look at a file found: new content becomes pending.
    fn take_look(&mut self, part: Arc<str>, look: Look) {
        let serving = self.snapshots.borrow().version;
        let seen = self.seen.entry(part.clone()).or_default();
        let text = match look {
            Look::Unchanged => return,
            Look::Failed(e) => {
                seen.stamp = None;
                seen.content = None;
                seen.refuse(e, serving);
                return;
            }
            Look::Read { stamp, text } => {
                seen.stamp = Some(stamp);
                seen.read = Some(Instant::now());
                text
            }
        };
        let digest = hash(&text);
        if (seen.content.as_ref()).is_some_and(|d| d.as_ref() == digest.as_ref()) {
            return;
        }
        seen.content = Some(digest);
        seen.refused_at = None;
        match parse(part.clone(), text) {
            Ok(parsed) => {
                let in_force = self.parts.applied(&part);
                seen.pending = match in_force {
                    Some(p) if p.text == parsed.text => None,
                    _ => Some(Some(parsed)),
                };
                seen.problem = None;
            }
            Err(e) => {
                seen.pending = None;
                seen.refuse(e, serving);
            }
        }
    }

    /// Puts pending changes in force when one of them is new or the parts in force
    /// changed since it was refused. Every pending change is tried together, so
    /// changes that only work together (a name moving from one file to another,
    /// seen in two polls) land at once; a refusal drops the file it names and the
    /// rest are tried again, so one broken file holds back only itself.
    fn try_pending(&mut self) {
        let generation = self.generation;
        let eligible =
            (self.seen.values()).any(|s| s.pending.is_some() && s.refused_at != Some(generation));
        if !eligible {
            return;
        }
        let mut changes: Changes = (self.seen.iter())
            .filter_map(|(part, s)| Some((part.clone(), s.pending.clone()?)))
            .collect();
        while !changes.is_empty() {
            let Err(refused) = self.attempt(&changes) else {
                return;
            };
            if changes.remove(refused.file.as_str()).is_none() {
                // It names a file that is not changing but uses what changes: each
                // change on its own, then.
                for (part, change) in std::mem::take(&mut changes) {
                    let one: Changes = [(part, change)].into_iter().collect();
                    let _ = self.attempt(&one);
                }
            }
        }
    }

    /// Applies `changes` or records why not on the files concerned.
    fn attempt(&mut self, changes: &Changes) -> Result<(), SourceError> {
        let result = self.parts.apply(changes, &self.trust_domain);
        let result = match (&self.layout, result) {
            (Layout::Dir(dir), Ok(a)) if a.parts.is_empty() => Err(SourceError {
                file: dir.display().to_string(),
                position: None,
                reason: "the change would leave the source directory with no file; \
                         the mesh is not emptied by removing its files"
                    .into(),
            }),
            (_, result) => result,
        };
        match result {
            Ok(applied) => {
                self.commit(applied, changes);
                Ok(())
            }
            Err(e) => {
                let serving = self.snapshots.borrow().version;
                for part in changes.keys() {
                    if let Some(seen) = self.seen.get_mut(part) {
                        seen.refused_at = Some(self.generation);
                        seen.refuse(e.clone(), serving);
                    }
                }
                Err(e)
            }
        }
    }

    /// Puts applied changes in force and publishes them, unless no proxy would see
    /// a difference.
    fn commit(&mut self, applied: Applied, changes: &Changes) {
        let Applied { parts, changed } = applied;
        self.parts = parts;
        self.generation += 1;
        for part in changes.keys() {
            if let Some(seen) = self.seen.get_mut(part) {
                seen.pending = None;
                seen.problem = None;
                seen.refused_at = None;
            }
        }
        let files: Vec<&str> = changes.keys().map(|p| &**p).collect();
        if !changed {
            tracing::debug!(?files, "source changed without effect");
            return;
        }
        let version = self.snapshots.borrow().version + 1;
        self.snapshots.send_replace(Snapshot {
            version,
            catalog: Arc::new(self.parts.catalog().clone()),
            published: Instant::now(),
        });
        tracing::info!(?files, version, "source reloaded");
    }
}

impl Seen {
    /// Records why the file's newest content is not in force, logging it once.
    fn refuse(&mut self, e: SourceError, serving: u64) {
        if self.problem.as_ref() != Some(&e) {
            log_refusal(&e, serving);
        }
        self.problem = Some(e);
    }
}

/// What one look at a file found.
enum Look {
    /// Its metadata says nothing changed.
    Unchanged,
    /// It was read (it may still hold the same text).
    Read { stamp: Stamp, text: String },
    /// It cannot be read.
    Failed(SourceError),
}

/// Reads `path` if it may have changed since `stamp` (another size or mtime, a
/// recent write, or no read for a while).
fn look_at(path: &Path, seen: Option<Stamp>, read: Option<Instant>) -> Look {
    let name = path.display().to_string();
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) => return Look::Failed(SourceError::unreadable(&name, &e)),
    };
    let now = stamp(&meta);
    let recent = (now.modified)
        .and_then(|m| m.elapsed().ok())
        .is_none_or(|age| age < RECENT);
    let due = read.is_none_or(|r| r.elapsed() >= FORCE_READ_AFTER);
    if Some(now) == seen && !recent && !due {
        return Look::Unchanged;
    }
    match source_text(&name, std::fs::read(path)) {
        Ok(text) => Look::Read { stamp: now, text },
        Err(e) => Look::Failed(e),
    }
}

fn stamp(meta: &std::fs::Metadata) -> Stamp {
    Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
    }
}

/// Logs a refused change; the last good content keeps serving.
fn log_refusal(e: &SourceError, serving: u64) {
    tracing::error!(
        file = %e.file,
        line = e.position.map(|p| p.0),
        column = e.position.map(|p| p.1),
        reason = %e.reason,
        serving_version = serving,
        "source file refused, keeping the last good config: {e}"
    );
}

fn hash(text: &str) -> ring::digest::Digest {
    ring::digest::digest(&ring::digest::SHA256, text.as_bytes())
}
