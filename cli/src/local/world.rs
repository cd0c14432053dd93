//! A [`World`]: one private "node" (the holder's namespaces, with the bridge) plus the
//! pods created in it. Dropping it kills everything it started and with the holder
//! every namespace, veth, bridge and iptables rule inside it disappears.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::local::addr::{
    pod_v4, pod_v6, BRIDGE, BRIDGE_V4, BRIDGE_V6, FIRST_POD_HOST, LAST_POD_HOST, PREFIX_V4,
    PREFIX_V6,
};
use crate::local::enter::Enter;
use crate::local::marker::{self, LOG_ROOT};
use crate::local::netns::{self, Task};
use crate::local::pod::Pod;
use crate::local::process::{self, output_ok, Cmd, ProcInner, Process, EXEC_TIMEOUT};

/// State shared by a world and its pods.
#[derive(Debug)]
pub(crate) struct WorldShared {
    name: String,
    prefix: String,
    marker: String,
    enter: Enter,
    holder_pid: u32,
    holder: Mutex<Option<Child>>,
    /// Read-held while a command is being started; write-held (and set false) by the
    /// teardown, so no command can target the holder's PID after it was reaped.
    alive: RwLock<bool>,
    procs: Mutex<Vec<Arc<ProcInner>>>,
    pods: Mutex<(u8, HashSet<String>)>,
    log_dir: PathBuf,
    next_log: AtomicU64,
}

impl WorldShared {
    fn alive(&self) -> Result<RwLockReadGuard<'_, bool>> {
        let guard = self.alive.read().unwrap_or_else(|e| e.into_inner());
        if !*guard {
            bail!("world {} has been torn down", self.name);
        }
        Ok(guard)
    }

    /// Runs a short command in the node namespace.
    pub(crate) fn exec_node<I, S>(
        &self,
        program: &str,
        args: I,
        timeout: Duration,
    ) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let _alive = self.alive()?;
        let mut cmd = self.enter.command(program);
        cmd.args(args);
        process::run_bounded(cmd, timeout)
    }

    /// Runs a short command as root in pod namespace `netns`.
    pub(crate) fn exec_pod(&self, netns: &str, cmd: &Cmd, timeout: Duration) -> Result<Output> {
        let _alive = self.alive()?;
        let mut base = self.enter.pod_command(netns);
        cmd.apply_to(&mut base);
        process::run_bounded(base, timeout)
    }

    /// Starts a long-running process in pod namespace `netns`; the world kills it on
    /// teardown if it is still running then.
    pub(crate) fn spawn_pod(&self, pod: &str, netns: &str, cmd: &Cmd) -> Result<Process> {
        let _alive = self.alive()?;
        let mut base = self.enter.pod_command(netns);
        cmd.apply_to(&mut base);
        let label = format!("{pod}/{}", cmd.label());
        let n = self.next_log.fetch_add(1, Ordering::Relaxed);
        let log_base = self
            .log_dir
            .join(format!("{n:03}-{pod}-{}", sanitize(&cmd.label())));
        let process = Process::start(base, &label, log_base)?;
        self.procs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(process.shared());
        Ok(process)
    }

    /// The path of a pod's named netns as the test process sees it: through the
    /// holder's root, which resolves in the world's mount namespace.
    pub(crate) fn netns_path(&self, netns: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root/run/netns/{netns}", self.holder_pid))
    }

    /// The path of the node's network namespace.
    pub(crate) fn node_netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.holder_pid))
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Kills every process the world started, then the holder. Idempotent.
    fn teardown(&self) {
        let mut alive = self.alive.write().unwrap_or_else(|e| e.into_inner());
        if !*alive {
            return;
        }
        *alive = false;
        let procs = std::mem::take(&mut *self.procs.lock().unwrap_or_else(|e| e.into_inner()));
        for p in &procs {
            p.stop(Duration::ZERO);
        }
        if let Some(mut holder) = self.holder.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = holder.kill();
            let _ = holder.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "world {}: keeping logs in {} (a panic is unwinding)",
                self.name,
                self.log_dir.display()
            );
        } else {
            let _ = fs::remove_dir_all(&self.log_dir);
        }
    }
}

/// One test's private cluster: a node namespace holding a bridge, and pods joined to it.
/// Build one per test with [`World::new`]; drop it (also by panicking) to remove it all.
#[derive(Debug)]
pub struct World {
    shared: Arc<WorldShared>,
}

impl World {
    /// Builds a fresh world for the test `test_name` (used in names and log paths).
    ///
    /// The first world of a test process first sweeps leftovers of dead test runs. The
    /// world must be dropped on the thread that created it or later: its holder dies
    /// with the thread that started it (`PR_SET_PDEATHSIG`).
    pub fn new(test_name: &str) -> Result<World> {
        if !nix::unistd::geteuid().is_root() {
            bail!("a test world needs root (network and mount namespaces, iptables)");
        }
        marker::sweep_once();
        let marker = marker::new_marker();
        let name = sanitize(test_name);
        let log_dir = std::env::temp_dir()
            .join(LOG_ROOT)
            .join(format!("{marker}-{name}"));
        fs::create_dir_all(&log_dir)
            .with_context(|| format!("creating log dir {}", log_dir.display()))?;
        let holder = crate::local::holder::start(&marker, &log_dir.join("holder.stderr"))?;
        let holder_pid = holder.id();
        let prefix = format!("pt{}", marker.replace('-', "w"));
        Ok(World {
            shared: Arc::new(WorldShared {
                name,
                prefix,
                enter: Enter::new(holder_pid, marker.clone()),
                marker,
                holder_pid,
                holder: Mutex::new(Some(holder)),
                alive: RwLock::new(true),
                procs: Mutex::new(Vec::new()),
                pods: Mutex::new((FIRST_POD_HOST, HashSet::new())),
                log_dir,
                next_log: AtomicU64::new(0),
            }),
        })
    }

    /// Creates pod `name` (lowercase letters, digits and `-`): a named netns joined to
    /// the bridge by a veth, with the next IPv4 and IPv6 addresses and default routes.
    pub fn pod(&self, name: &str) -> Result<Pod> {
        validate_pod_name(name)?;
        let host = {
            let mut pods = self.shared.pods.lock().unwrap_or_else(|e| e.into_inner());
            if pods.1.contains(name) {
                bail!("pod {name} already exists");
            }
            if pods.0 > LAST_POD_HOST {
                bail!(
                    "a world holds at most {} pods",
                    LAST_POD_HOST - FIRST_POD_HOST + 1
                );
            }
            let host = pods.0;
            pods.0 += 1;
            pods.1.insert(name.to_string());
            host
        };
        let netns = format!("{}-{name}", self.shared.prefix);
        let script = pod_script(&netns, host);
        let out = self.shared.exec_node("sh", ["-c", &script], EXEC_TIMEOUT)?;
        output_ok(out, &format!("creating pod {name}"))?;
        Ok(Pod::new(
            Arc::clone(&self.shared),
            name.to_string(),
            netns,
            host,
        ))
    }

    /// Runs a short command in the node namespace (where the bridge lives).
    pub fn exec_node<I, S>(&self, program: &str, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.shared.exec_node(program, args, EXEC_TIMEOUT)
    }

    /// Runs async code to completion on a thread inside the node namespace (where a
    /// kubelet or Prometheus would sit: it reaches every pod over the bridge).
    pub fn run_in_node<F, Fut, T>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        run_in_node(&self.shared, f)
    }

    /// PID of the holder, whose namespaces are the node.
    pub fn holder_pid(&self) -> u32 {
        self.shared.holder_pid
    }

    /// The marker every process of this world carries in `PILLION_TEST_WORLD`.
    pub fn marker(&self) -> &str {
        &self.shared.marker
    }

    /// The unique prefix of this world's netns names.
    pub fn prefix(&self) -> &str {
        self.shared.prefix()
    }

    /// Where the world's processes write their logs (removed on a clean drop).
    pub fn log_dir(&self) -> &Path {
        &self.shared.log_dir
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.shared.teardown();
    }
}

/// Runs async code on a thread inside the node namespace of the world `shared`.
pub(crate) fn run_in_node<F, Fut, T>(shared: &WorldShared, f: F) -> Result<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    run_at(
        shared,
        WorldShared::node_netns_path,
        format!("{}-node", shared.prefix),
        f,
    )
}

/// Starts async code in the background inside pod namespace `netns`.
pub(crate) fn spawn_in_pod<F, Fut, T>(shared: &WorldShared, netns: &str, f: F) -> Result<Task<T>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let _alive = shared.alive()?;
    netns::spawn_in(shared.netns_path(netns), netns.to_string(), f)
}

/// Runs async code to completion inside pod namespace `netns`.
pub(crate) fn run_in_pod<F, Fut, T>(shared: &WorldShared, netns: &str, f: F) -> Result<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    run_at(shared, |s| s.netns_path(netns), netns.to_string(), f)
}

/// Runs async code to completion in the namespace `path` picks, named `name`, while
/// the world is alive.
fn run_at<F, Fut, T>(
    shared: &WorldShared,
    path: impl FnOnce(&WorldShared) -> PathBuf,
    name: String,
    f: F,
) -> Result<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let path = {
        let _alive = shared.alive()?;
        path(shared)
    };
    netns::run_in(path, name, f)
}

/// The node-side commands that create one pod. Only validated names and numbers go in.
fn pod_script(netns: &str, host: u8) -> String {
    let (v4, v6) = (pod_v4(host), pod_v6(host));
    let (outer, inner) = (format!("v{host}"), format!("p{host}"));
    let n = format!("ip -n {netns}");
    [
        "set -e".to_string(),
        format!("ip netns add {netns}"),
        format!("ip link add {outer} type veth peer name {inner}"),
        format!("ip link set {inner} netns {netns}"),
        format!("ip link set {outer} master {BRIDGE}"),
        format!("ip link set {outer} up"),
        format!("{n} link set lo up"),
        format!("{n} link set {inner} name eth0"),
        format!("{n} addr add {v4}/{PREFIX_V4} dev eth0"),
        format!("{n} -6 addr add {v6}/{PREFIX_V6} dev eth0 nodad"),
        format!("{n} link set eth0 up"),
        format!("{n} route add default via {BRIDGE_V4}"),
        format!("{n} -6 route add default via {BRIDGE_V6}"),
    ]
    .join("\n")
}

fn validate_pod_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 24
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(anyhow!(
            "bad pod name {name:?}: use 1-24 of a-z, 0-9 and '-'"
        ))
    }
}

/// Keeps letters, digits, `-` and `_` of a name (for paths and labels).
fn sanitize(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(48)
        .collect();
    if s.is_empty() {
        "world".into()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_names() {
        assert!(validate_pod_name("a").is_ok());
        assert!(validate_pod_name("client-1").is_ok());
        assert!(validate_pod_name("").is_err());
        assert!(validate_pod_name("A").is_err());
        assert!(validate_pod_name("a;rm").is_err());
        assert!(validate_pod_name(&"x".repeat(25)).is_err());
    }

    #[test]
    fn pod_script_uses_short_interface_names() {
        let s = pod_script("pt1w0-a", 254);
        assert!(s.contains("ip link add v254 type veth peer name p254"));
        assert!(s.contains("198.18.0.254/24"));
        assert!(s.contains("2001:2::fe/64 dev eth0 nodad"));
        for word in s.split_whitespace() {
            if word.starts_with('v') || word.starts_with('p') {
                assert!(word.len() <= 15 || word.starts_with("pt1w0"), "{word}");
            }
        }
    }

    #[test]
    fn sanitized_names() {
        assert_eq!(sanitize("tests::two pods"), "tests__two_pods");
        assert_eq!(sanitize(""), "world");
    }
}
