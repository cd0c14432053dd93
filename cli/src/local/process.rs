//! Processes the harness starts: the description of one ([`Cmd`]), the guard that owns
//! a long-running one ([`Process`]) and the bounded runner for short commands.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, File};
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long [`Process`]'s drop waits after SIGTERM before it sends SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(3);
/// Default bound of a short command run with `exec`.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(30);

const POLL: Duration = Duration::from_millis(5);

/// What to run in a pod: program, arguments, environment and an optional user.
#[derive(Debug, Clone)]
pub struct Cmd {
    pub(crate) program: OsString,
    pub(crate) args: Vec<OsString>,
    pub(crate) env: Vec<(OsString, OsString)>,
    pub(crate) user: Option<(u32, u32)>,
}

impl Cmd {
    /// A command running `program` (a path, or a name looked up in `PATH`).
    pub fn new(program: impl AsRef<OsStr>) -> Cmd {
        Cmd {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            user: None,
        }
    }

    /// Adds one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Cmd {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Adds several arguments.
    pub fn args<I, S>(mut self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable for the program.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Cmd {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Runs the program as this uid and gid, with no supplementary groups.
    pub fn user(mut self, uid: u32, gid: u32) -> Cmd {
        self.user = Some((uid, gid));
        self
    }

    /// A short name for logs: the program's file name.
    pub fn label(&self) -> String {
        PathBuf::from(&self.program)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "process".into())
    }

    /// Appends `[setpriv ...] program args` and the environment to `base`, which
    /// already enters the right namespaces.
    pub(crate) fn apply_to(&self, base: &mut Command) {
        if let Some((uid, gid)) = self.user {
            base.arg("setpriv")
                .arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .args(["--clear-groups", "--pdeathsig", "KILL", "--"]);
        }
        base.arg(&self.program).args(&self.args);
        for (k, v) in &self.env {
            base.env(k, v);
        }
    }
}

/// The captured output of a process, for printing when a test fails.
#[derive(Debug, Clone, Default)]
pub struct Logs {
    /// What the process is (its label and PID).
    pub name: String,
    /// Everything it wrote to stdout so far.
    pub stdout: String,
    /// Everything it wrote to stderr so far.
    pub stderr: String,
}

impl fmt::Display for Logs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "----- {} stdout -----", self.name)?;
        writeln!(f, "{}", self.stdout.trim_end())?;
        writeln!(f, "----- {} stderr -----", self.name)?;
        writeln!(f, "{}", self.stderr.trim_end())
    }
}

/// The shared state of one started process; the world keeps a handle too, so it can
/// kill what is still running when it is torn down.
#[derive(Debug)]
pub(crate) struct ProcInner {
    pid: u32,
    name: String,
    child: Mutex<Child>,
    status: Mutex<Option<ExitStatus>>,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl ProcInner {
    fn child(&self) -> MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The exit status if the process has exited (reaping it if needed).
    fn try_status(&self) -> Option<ExitStatus> {
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        if status.is_none() {
            if let Ok(Some(s)) = self.child().try_wait() {
                *status = Some(s);
            }
        }
        *status
    }

    /// Sends a signal unless the process has already been reaped (so its PID cannot
    /// belong to anybody else).
    fn signal(&self, sig: Signal) -> Result<()> {
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        let mut child = self.child();
        if status.is_none() {
            if let Ok(Some(s)) = child.try_wait() {
                *status = Some(s);
            }
        }
        if status.is_some() {
            bail!("{} has already exited", self.name);
        }
        kill(Pid::from_raw(self.pid as i32), sig)
            .with_context(|| format!("sending {sig} to {}", self.name))
    }

    fn wait_timeout(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(POLL);
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; returns the exit status.
    pub(crate) fn stop(&self, grace: Duration) -> Option<ExitStatus> {
        if let Some(s) = self.try_status() {
            return Some(s);
        }
        if !grace.is_zero() {
            let _ = self.signal(Signal::SIGTERM);
            if let Some(s) = self.wait_timeout(grace) {
                return Some(s);
            }
        }
        let _ = self.signal(Signal::SIGKILL);
        self.wait_timeout(Duration::from_secs(10))
    }

    fn logs(&self) -> Logs {
        Logs {
            name: self.name.clone(),
            stdout: fs::read_to_string(&self.stdout).unwrap_or_default(),
            stderr: fs::read_to_string(&self.stderr).unwrap_or_default(),
        }
    }
}

/// A long-running process in a pod. Dropping it stops the process: SIGTERM, then
/// SIGKILL after [`STOP_GRACE`].
#[derive(Debug)]
pub struct Process {
    inner: Arc<ProcInner>,
}

impl Process {
    /// Starts `cmd` with stdout and stderr going to files `<log_base>.stdout|.stderr`.
    pub(crate) fn start(mut cmd: Command, label: &str, log_base: PathBuf) -> Result<Process> {
        let stdout = log_base.with_extension("stdout");
        let stderr = log_base.with_extension("stderr");
        cmd.stdout(File::create(&stdout).context("creating a stdout log")?)
            .stderr(File::create(&stderr).context("creating a stderr log")?);
        let child = cmd.spawn().with_context(|| format!("starting {label}"))?;
        let pid = child.id();
        Ok(Process {
            inner: Arc::new(ProcInner {
                pid,
                name: format!("{label}[{pid}]"),
                child: Mutex::new(child),
                status: Mutex::new(None),
                stdout,
                stderr,
            }),
        })
    }

    /// Another handle on the same process, for the world's teardown list.
    pub(crate) fn shared(&self) -> Arc<ProcInner> {
        Arc::clone(&self.inner)
    }

    /// The process id (of the program itself: nsenter, ip netns exec and setpriv all
    /// exec in place).
    pub fn pid(&self) -> u32 {
        self.inner.pid
    }

    /// Sends a signal; an error if the process has already exited.
    pub fn signal(&self, sig: Signal) -> Result<()> {
        self.inner.signal(sig)
    }

    /// The exit status, if it has exited.
    pub fn try_status(&self) -> Option<ExitStatus> {
        self.inner.try_status()
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<ExitStatus> {
        self.inner.wait_timeout(timeout)
    }

    /// Stops the process now: SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&self, grace: Duration) -> Option<ExitStatus> {
        self.inner.stop(grace)
    }

    /// What the process has written so far.
    pub fn logs(&self) -> Logs {
        self.inner.logs()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.inner.stop(STOP_GRACE);
    }
}

/// Runs a short command to completion, capturing its output; kills it and fails if it
/// takes longer than `timeout`. A non-zero exit is not an error here.
pub(crate) fn run_bounded(mut cmd: Command, timeout: Duration) -> Result<Output> {
    let what = format!("{:?}", cmd.get_args().collect::<Vec<_>>());
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("starting {what}"))?;
    let out_reader = child.stdout.take().map(reader_thread);
    let err_reader = child.stderr.take().map(reader_thread);
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for a command")? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("command timed out after {timeout:?}: {what}");
        }
        thread::sleep(POLL);
    };
    let join = |h: Option<thread::JoinHandle<Vec<u8>>>| {
        h.map(|h| h.join().unwrap_or_default()).unwrap_or_default()
    };
    Ok(Output {
        status,
        stdout: join(out_reader),
        stderr: join(err_reader),
    })
}

fn reader_thread(mut source: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = source.read_to_end(&mut buf);
        buf
    })
}

/// Turns an [`Output`] into its stdout, or an error carrying stderr when it failed.
pub fn output_ok(output: Output, what: &str) -> Result<String> {
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        bail!(
            "{what} failed ({}):\nstdout: {}\nstderr: {}",
            output.status,
            String::from_utf8_lossy(&output.stdout).trim_end(),
            String::from_utf8_lossy(&output.stderr).trim_end()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setpriv_prefix_only_with_a_user() {
        let mut base = Command::new("x");
        Cmd::new("/bin/prog").arg("a").apply_to(&mut base);
        let args: Vec<_> = base.get_args().collect();
        assert_eq!(args, ["/bin/prog", "a"]);

        let mut base = Command::new("x");
        Cmd::new("prog").user(2580, 2581).apply_to(&mut base);
        let args: Vec<_> = base.get_args().map(|a| a.to_string_lossy()).collect();
        assert_eq!(
            args,
            [
                "setpriv",
                "--reuid=2580",
                "--regid=2581",
                "--clear-groups",
                "--pdeathsig",
                "KILL",
                "--",
                "prog"
            ]
        );
    }

    #[test]
    fn bounded_runs_and_times_out() {
        let out = run_bounded(Command::new("echo"), Duration::from_secs(5)).unwrap();
        assert!(out.status.success());
        let mut slow = Command::new("sleep");
        slow.arg("5");
        let err = run_bounded(slow, Duration::from_millis(100)).unwrap_err();
        assert!(err.to_string().contains("timed out"), "{err}");
    }
}
