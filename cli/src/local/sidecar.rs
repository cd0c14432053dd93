//! Putting the mesh into a pod the way Kubernetes would: run `init` as root, then
//! start the proxy as its own user and wait until its admin server says `/ready`.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::process::Output;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pillion_api::defaults::{ADMIN_PORT, PROXY_GID, PROXY_UID};

use crate::local::http::{self, HttpResponse};
use crate::local::metrics::{self, Samples};
use crate::local::pod::Pod;
use crate::local::process::{Cmd, Process, EXEC_TIMEOUT};

/// How a sidecar is installed: which multicall binary, as which user, extra flags.
#[derive(Debug, Clone)]
pub struct SidecarOpts {
    /// A binary that runs `<binary> init …` and `<binary> proxy …` (see
    /// [`programs`](crate::programs)).
    pub binary: PathBuf,
    /// Uid the proxy runs as (and init exempts).
    pub proxy_uid: u32,
    /// Gid the proxy runs as.
    pub proxy_gid: u32,
    /// Extra flags for `init`.
    pub init_args: Vec<OsString>,
    /// Extra flags for `proxy`.
    pub proxy_args: Vec<OsString>,
    /// Extra environment for the proxy.
    pub proxy_env: Vec<(OsString, OsString)>,
    /// Port of the proxy's admin server (must stay in init's skipped inbound ports).
    pub admin_port: u16,
    /// How long the proxy may take to answer `/ready` with 200.
    pub ready_timeout: Duration,
    /// A dedicated proxy binary (e.g. the shipped `pillion-proxy`) run instead of
    /// `<binary> proxy`, to measure exactly what ships.
    pub proxy_binary: Option<PathBuf>,
}

impl SidecarOpts {
    /// The mesh defaults, run from `binary`.
    pub fn new(binary: impl Into<PathBuf>) -> SidecarOpts {
        SidecarOpts {
            binary: binary.into(),
            proxy_uid: PROXY_UID,
            proxy_gid: PROXY_GID,
            init_args: Vec::new(),
            proxy_args: Vec::new(),
            proxy_env: Vec::new(),
            admin_port: ADMIN_PORT,
            ready_timeout: Duration::from_secs(30),
            proxy_binary: None,
        }
    }

    /// Runs the proxy from `binary` (which takes the proxy's flags directly).
    pub fn proxy_binary(mut self, binary: impl Into<PathBuf>) -> SidecarOpts {
        self.proxy_binary = Some(binary.into());
        self
    }

    /// Adds flags for `init` (e.g. `["--skip-outbound-ports", "7001"]`).
    pub fn init_args<I, S>(mut self, args: I) -> SidecarOpts
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.init_args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Adds flags for `proxy` (e.g. `["--drain-timeout", "10s"]`).
    pub fn proxy_args<I, S>(mut self, args: I) -> SidecarOpts
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.proxy_args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable for the proxy (e.g. a log filter).
    pub fn proxy_env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> SidecarOpts {
        self.proxy_env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// The `init` command these options describe (run as root).
    pub fn init_cmd(&self) -> Cmd {
        Cmd::new(&self.binary)
            .arg("init")
            .arg("--proxy-uid")
            .arg(self.proxy_uid.to_string())
            .arg("--proxy-gid")
            .arg(self.proxy_gid.to_string())
            .args(&self.init_args)
    }

    /// The `proxy` command these options describe (run as the proxy user).
    pub fn proxy_cmd(&self) -> Cmd {
        let cmd = match &self.proxy_binary {
            Some(binary) => Cmd::new(binary),
            None => Cmd::new(&self.binary).arg("proxy"),
        };
        let mut cmd = cmd
            .args(&self.proxy_args)
            .user(self.proxy_uid, self.proxy_gid);
        for (k, v) in &self.proxy_env {
            cmd = cmd.env(k, v);
        }
        cmd
    }
}

/// A pod's installed sidecar: the running proxy and what init printed.
#[derive(Debug)]
pub struct Sidecar {
    pod: Pod,
    proxy: Process,
    admin_port: u16,
    /// How the proxy was started, to start it again.
    proxy_cmd: Cmd,
    ready_timeout: Duration,
    /// Output of the `init` run.
    pub init_output: Output,
}

impl Sidecar {
    /// The proxy process (signal it, wait for it, read its logs).
    pub fn proxy(&self) -> &Process {
        &self.proxy
    }

    /// Gives up the sidecar, keeping only the proxy's guard.
    pub fn into_proxy(self) -> Process {
        self.proxy
    }

    /// The pod it is installed in.
    pub fn pod(&self) -> &Pod {
        &self.pod
    }

    /// Scrapes the proxy's `/metrics` (from the node, like Prometheus).
    pub fn metrics(&self) -> Result<Samples> {
        metrics::scrape(&self.pod, self.admin_port)
            .with_context(|| format!("scraping pod {}\n{}", self.pod.name(), self.proxy.logs()))
    }

    /// Sends a bodiless request to the admin server from the node.
    pub fn admin(&self, method: &str, path: &str) -> Result<HttpResponse> {
        admin_request(&self.pod, self.admin_port, method, path)
    }

    /// Stops the proxy (SIGTERM: it drains; SIGKILL after `grace`); start it again
    /// with [`Sidecar::start_again`].
    pub fn stop_proxy(&self, grace: Duration) -> Option<std::process::ExitStatus> {
        self.proxy.stop(grace)
    }

    /// Starts the proxy again as it was first started and waits for `/ready`, as a
    /// restarted container in a pod: init's rules are still in place, so it does not
    /// run again. A running proxy is stopped first.
    pub fn start_again(&mut self) -> Result<()> {
        self.proxy.stop(Duration::from_secs(10));
        let proxy = self.pod.spawn(self.proxy_cmd.clone())?;
        wait_ready(&self.pod, &proxy, self.admin_port, self.ready_timeout)?;
        self.proxy = proxy;
        Ok(())
    }
}

impl Pod {
    /// Runs `init` as root, starts the proxy as its user and waits for `/ready`.
    pub fn install_sidecar(&self, opts: &SidecarOpts) -> Result<Sidecar> {
        let init_output = self.exec_cmd(&opts.init_cmd(), EXEC_TIMEOUT)?;
        if !init_output.status.success() {
            bail!(
                "init in pod {} failed ({}):\n{}{}",
                self.name(),
                init_output.status,
                String::from_utf8_lossy(&init_output.stdout),
                String::from_utf8_lossy(&init_output.stderr)
            );
        }
        let proxy_cmd = opts.proxy_cmd();
        let proxy = self.spawn(proxy_cmd.clone())?;
        wait_ready(self, &proxy, opts.admin_port, opts.ready_timeout)?;
        Ok(Sidecar {
            pod: self.clone(),
            proxy,
            admin_port: opts.admin_port,
            proxy_cmd,
            ready_timeout: opts.ready_timeout,
            init_output,
        })
    }
}

/// A bodiless request to a pod's admin port, sent from the node.
pub fn admin_request(pod: &Pod, port: u16, method: &str, path: &str) -> Result<HttpResponse> {
    let addr = pod.addr_v4(port);
    let (method, path) = (method.to_string(), path.to_string());
    pod.run_in_node(move || async move { http::request(addr, &method, &path).await })?
}

/// Polls `GET /ready` until it answers 200; fails early if the proxy exits.
pub fn wait_ready(pod: &Pod, proxy: &Process, port: u16, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = proxy.try_status() {
            bail!(
                "proxy in pod {} exited ({status}) before it was ready\n{}",
                pod.name(),
                proxy.logs()
            );
        }
        let last = match admin_request(pod, port, "GET", "/ready") {
            Ok(resp) if resp.status == 200 => return Ok(()),
            Ok(resp) => format!("status {}", resp.status),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!(
                "proxy in pod {} not ready after {timeout:?} ({last})\n{}",
                pod.name(),
                proxy.logs()
            );
        }
        thread::sleep(Duration::from_millis(25));
    }
}
