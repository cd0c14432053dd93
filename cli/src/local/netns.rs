//! Running in-process async code inside a network namespace: a std thread joins the
//! namespace with `setns(CLONE_NEWNET)`, builds a current-thread tokio runtime and runs
//! the future there, so every socket it opens lives in that namespace.

use std::any::Any;
use std::fs::File;
use std::future::Future;
use std::path::PathBuf;
use std::thread::{self, JoinHandle};

use anyhow::{anyhow, Context, Result};
use nix::sched::{setns, CloneFlags};
use tokio::sync::oneshot;

/// Runs `f()`'s future to completion on a new thread inside the namespace at `path`.
pub(crate) fn run_in<F, Fut, T>(path: PathBuf, label: String, f: F) -> Result<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let handle = thread::Builder::new()
        .name(label.clone())
        .spawn(move || -> Result<T> {
            let rt = enter(&path)?;
            Ok(rt.block_on(f()))
        })
        .context("spawning an in-namespace thread")?;
    join(handle, &label)
}

/// Starts `f()`'s future on a new thread inside the namespace at `path` and returns at
/// once; the [`Task`] stops it (or waits for it).
pub(crate) fn spawn_in<F, Fut, T>(path: PathBuf, label: String, f: F) -> Result<Task<T>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let thread = thread::Builder::new()
        .name(label.clone())
        .spawn(move || -> Result<Option<T>> {
            let rt = enter(&path)?;
            Ok(rt.block_on(async move {
                tokio::select! {
                    out = f() => Some(out),
                    // Sent or dropped: either way, stop.
                    _ = stop_rx => None,
                }
            }))
        })
        .context("spawning an in-namespace thread")?;
    Ok(Task {
        label,
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

/// Joins the namespace at `path` (this thread only) and builds the thread's runtime.
fn enter(path: &PathBuf) -> Result<tokio::runtime::Runtime> {
    let ns = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    setns(&ns, CloneFlags::CLONE_NEWNET).with_context(|| format!("setns {}", path.display()))?;
    drop(ns);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building a tokio runtime")
}

fn join<T>(handle: JoinHandle<Result<T>>, label: &str) -> Result<T> {
    match handle.join() {
        Ok(result) => result,
        Err(panic) => Err(anyhow!("{label} panicked: {}", panic_message(&panic))),
    }
}

/// The text of a panic payload.
pub(crate) fn panic_message(panic: &Box<dyn Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic)".to_string()
    }
}

/// In-process async code running in the background inside a namespace (a server, a
/// slow client). Dropping it stops the code and joins its thread.
#[derive(Debug)]
pub struct Task<T> {
    label: String,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<Option<T>>>>,
}

impl<T> Task<T> {
    /// Whether the code has finished by itself (or failed to start).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Stops the code and returns its output if it had finished before the stop.
    pub fn shutdown(mut self) -> Result<Option<T>> {
        drop(self.stop.take());
        self.join_thread()
    }

    /// Waits for the code to finish by itself and returns its output. Bound the
    /// future itself in time; this waits as long as it runs.
    pub fn join(mut self) -> Result<T> {
        let stop = self.stop.take();
        let out = self.join_thread();
        drop(stop);
        out?.ok_or_else(|| anyhow!("{} was stopped", self.label))
    }

    fn join_thread(&mut self) -> Result<Option<T>> {
        match self.thread.take() {
            Some(handle) => join(handle, &self.label),
            None => Err(anyhow!("{} was already joined", self.label)),
        }
    }
}

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(handle) = self.thread.take() {
            let _ = handle.join();
        }
    }
}
