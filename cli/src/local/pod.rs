//! A [`Pod`]: one named network namespace inside a world, with its addresses and the
//! ways to run things in it (short commands, long-running processes, in-process async
//! code).

use std::ffi::OsStr;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

use crate::local::addr::{pod_v4, pod_v6};
use crate::local::netns::Task;
use crate::local::process::{output_ok, Cmd, Process, EXEC_TIMEOUT};
use crate::local::world::{self, WorldShared};

/// One pod of a world. Cheap to clone; every clone refers to the same namespace, which
/// lives as long as the [`World`](crate::local::World).
#[derive(Debug, Clone)]
pub struct Pod {
    world: Arc<WorldShared>,
    name: String,
    netns: String,
    host: u8,
}

impl Pod {
    pub(crate) fn new(world: Arc<WorldShared>, name: String, netns: String, host: u8) -> Pod {
        Pod {
            world,
            name,
            netns,
            host,
        }
    }

    /// The pod's short name, as given to [`World::pod`](crate::local::World::pod).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name of the pod's netns inside the world (carries the world's prefix).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The pod's IPv4 address on the bridge (198.18.0.x).
    pub fn ipv4(&self) -> IpAddr {
        IpAddr::V4(pod_v4(self.host))
    }

    /// The pod's IPv6 address on the bridge (2001:2::x).
    pub fn ipv6(&self) -> IpAddr {
        IpAddr::V6(pod_v6(self.host))
    }

    /// `ipv4():port`.
    pub fn addr_v4(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.ipv4(), port)
    }

    /// `[ipv6()]:port`.
    pub fn addr_v6(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.ipv6(), port)
    }

    /// The path of the pod's netns file as this process sees it.
    pub fn netns_path(&self) -> PathBuf {
        self.world.netns_path(&self.netns)
    }

    /// Runs a short command as root in the pod, bounded to 30 s; returns its output
    /// whatever its exit status.
    pub fn exec<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut args = args.into_iter();
        let program = args
            .next()
            .map(|p| p.as_ref().to_owned())
            .unwrap_or_default();
        self.exec_cmd(&Cmd::new(program).args(args), EXEC_TIMEOUT)
    }

    /// Like [`Pod::exec`], but stdout on success and an error with stderr otherwise.
    pub fn exec_ok<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let what = format!("{:?} in pod {}", args, self.name);
        output_ok(self.exec(args)?, &what)
    }

    /// Runs a short [`Cmd`] (which may set a user and environment) to completion.
    pub fn exec_cmd(&self, cmd: &Cmd, timeout: Duration) -> Result<Output> {
        self.world.exec_pod(&self.netns, cmd, timeout)
    }

    /// Starts a long-running process in the pod; stdout and stderr go to log files.
    /// The returned guard stops it on drop.
    pub fn spawn(&self, cmd: Cmd) -> Result<Process> {
        self.world.spawn_pod(&self.name, &self.netns, &cmd)
    }

    /// Runs async code to completion on a thread inside the pod's network namespace
    /// (real tokio sockets in the pod); a panic inside comes back as an error.
    pub fn run<F, Fut, T>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        world::run_in_pod(&self.world, &self.netns, f)
    }

    /// Starts async code in the background inside the pod; the [`Task`] stops it.
    pub fn background<F, Fut, T>(&self, f: F) -> Result<Task<T>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        world::spawn_in_pod(&self.world, &self.netns, f)
    }

    /// Runs async code in the world's node namespace (handy for probes and scrapes,
    /// which come from outside the pod like a kubelet's would).
    pub fn run_in_node<F, Fut, T>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        world::run_in_node(&self.world, f)
    }
}
