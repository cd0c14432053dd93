//! The Pillion pair: the agent in its own pod (when the proxy can use one), and init +
//! pillion-proxy in the client and server pods, exactly as `install_sidecar` puts them
//! there. Whether the hop really is mesh TLS is read from the proxies' metrics later.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use pillion_api::defaults::AGENT_PORT;
use pillion_tests::{Cmd, Pod, Process, Sidecar, SidecarOpts};

use super::pods::wait_listening;
use crate::certs::{Certs, NAMESPACE};
use crate::server::{HTTP_PORT, SINK_PORT};
use crate::workdir::WorkDir;

/// An unused virtual IP for the bench service (the client dials the pod address).
const SERVICE_VIP: &str = "198.18.1.100";

/// The running pair.
#[derive(Debug)]
pub struct PillionPair {
    /// The client pod's sidecar.
    pub client: Sidecar,
    /// The server pod's sidecar.
    pub server: Sidecar,
    /// The agent, when the proxies use one.
    pub agent: Option<Process>,
    /// Rewrites the agent's source, when there is an agent.
    pub view: Option<ViewControl>,
    /// What the report should know about the set-up.
    pub notes: Vec<String>,
}

/// Makes the agent push a larger view: it rewrites the agent's source with `n` more
/// services (the agent re-reads it and pushes within its reload interval) and reads
/// how many services the client proxy's view holds.
#[derive(Debug, Clone)]
pub struct ViewControl {
    source: PathBuf,
    base: String,
    client: Pod,
    server: Pod,
    admin_port: u16,
}

/// A source written beside the live one, not yet in place.
#[derive(Debug)]
pub struct Prepared {
    tmp: PathBuf,
    source: PathBuf,
}

impl Prepared {
    /// Puts it in place (a rename: the agent sees all of it or none).
    pub fn publish(self) -> Result<()> {
        std::fs::rename(&self.tmp, &self.source)
            .with_context(|| format!("replacing {}", self.source.display()))
    }
}

impl ViewControl {
    /// Rewrites the agent's source as the pair's own plus `n` generated services, each
    /// a VIP with one meshed endpoint (addresses from 198.19.0.0/16, never dialled).
    pub fn push(&self, n: usize) -> Result<()> {
        self.push_served(n, 0)
    }

    /// Like [`ViewControl::push`], but the first `served` services are served by the
    /// server pod (port 80 → its HTTP port): destinations the client can call.
    pub fn push_served(&self, n: usize, served: usize) -> Result<()> {
        self.push_served_generation(n, served, 0)
    }

    /// Like [`ViewControl::push_served`], the served services' endpoints labelled
    /// `generation` (a change of every served service when it differs).
    pub fn push_served_generation(&self, n: usize, served: usize, generation: usize) -> Result<()> {
        self.prepare_served_generation(n, served, generation)?
            .publish()
    }

    /// Renders and writes the source of [`ViewControl::push_served_generation`] beside
    /// the live one, for [`Prepared::publish`] to swap in: a change timed against
    /// traffic then costs the machine a rename, not megabytes of YAML written on
    /// some CPU the traffic uses.
    pub fn prepare_served_generation(
        &self,
        n: usize,
        served: usize,
        generation: usize,
    ) -> Result<Prepared> {
        let mut yaml = self.base.clone();
        for i in 0..served.min(n) {
            let (hi, lo) = (i / 256 % 128, i % 256);
            yaml.push_str(&format!(
                "\x20 - name: svc-{i}\n\
                 \x20   namespace: {NAMESPACE}\n\
                 \x20   addresses: [198.19.{hi}.{lo}]\n\
                 \x20   ports: [{{port: 80, target_port: {HTTP_PORT}}}]\n\
                 \x20   endpoints:\n\
                 \x20     - workload: server\n\
                 \x20       labels: {{generation: \"{generation}\"}}\n"
            ));
        }
        for i in served.min(n)..n {
            let (hi, lo) = (i / 256 % 128, i % 256);
            yaml.push_str(&format!(
                "\x20 - name: svc-{i}\n\
                 \x20   namespace: {NAMESPACE}\n\
                 \x20   addresses: [198.19.{hi}.{lo}]\n\
                 \x20   ports: [{{port: 80}}]\n\
                 \x20   endpoints:\n\
                 \x20     - addresses: [198.19.{}.{lo}]\n\
                 \x20       identity: spiffe://cluster.local/ns/{NAMESPACE}/sa/svc-{i}\n",
                128 + hi
            ));
        }
        // Written whole, then renamed, so the agent never reads half a file.
        let tmp = self.source.with_extension("yaml.new");
        std::fs::write(&tmp, yaml).with_context(|| format!("writing {}", tmp.display()))?;
        Ok(Prepared {
            tmp,
            source: self.source.clone(),
        })
    }

    /// Whether the push of `services` reached the client proxy: with a full view it
    /// holds them all; with on-demand discovery it holds none, so it is asked about
    /// the last pushed service's VIP (a connection opened and dropped) and must
    /// have resolved one more service within 10 s.
    pub fn reached(&self, services: usize) -> Result<()> {
        let seen = self.client_view_services()?;
        if seen >= services {
            return Ok(());
        }
        let resolved = || -> Result<f64> {
            let m = pillion_tests::metrics::scrape(&self.client, self.admin_port)?;
            Ok(m.value(
                "pillion_discovery_resolutions_total",
                &[("answer", "service")],
            ))
        };
        let before = resolved()?;
        let vip = ViewControl::vip(services.saturating_sub(1));
        self.client.run(move || async move {
            if let Ok(conn) = tokio::net::TcpStream::connect(vip).await {
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                drop(conn);
            }
        })?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while resolved()? <= before {
            if std::time::Instant::now() > deadline {
                anyhow::bail!(
                    "the client proxy's view holds {seen} services, not the {services} pushed,                      and it did not resolve the last pushed one ({vip}) on demand"
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Ok(())
    }

    /// Services in the client proxy's view, from its loopback-only `/config`.
    pub fn client_view_services(&self) -> Result<usize> {
        pillion_tests::mesh::view_services(&self.client, self.admin_port)
    }

    /// Services in the server proxy's view: with on-demand discovery, the services
    /// the server pod serves, so it says when a push of served services is loaded.
    pub fn server_view_services(&self) -> Result<usize> {
        pillion_tests::mesh::view_services(&self.server, self.admin_port)
    }

    /// The VIP:port of generated service `i`.
    pub fn vip(i: usize) -> SocketAddr {
        SocketAddr::from(([198, 19, (i / 256 % 128) as u8, (i % 256) as u8], 80))
    }
}

/// How the proxies are set up.
#[derive(Debug, Clone)]
pub struct PairOpts {
    /// The multicall binary (`init`, `proxy`, `agent`).
    pub binary: PathBuf,
    /// Tokio worker threads of each proxy.
    pub workers: usize,
    /// Log filter of the proxies and the agent.
    pub log_level: String,
    /// The shipped proxy binary to run instead of this program's `proxy`.
    pub proxy_binary: Option<PathBuf>,
    /// Extra environment of this pair's proxies (after the forwarded `PILLION_*`).
    pub env: Vec<(String, String)>,
    /// Names this pair's files (several pairs share one scratch directory).
    pub tag: &'static str,
    /// Routes of the bench service's HTTP port, as YAML list items indented for
    /// the agent's source (empty: none, every request takes the default route).
    pub http_routes: String,
    /// More workloads of the agent's source, as YAML list items (e.g. a gateway).
    pub extra_workloads: String,
}

/// Whether this build's proxy takes an agent (`--agent-addr`): if not, it is the plain
/// L4 proxy and no agent is started. `dedicated` is a proxy binary of its own.
pub fn proxy_takes_agent(binary: &Path, dedicated: bool) -> bool {
    let args: &[&str] = if dedicated {
        &["--help"]
    } else {
        &["proxy", "--help"]
    };
    Command::new(binary)
        .args(args)
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--agent-addr"))
}

/// Starts the pair in `client` and `server` (with the agent in `agent_pod` if the
/// proxy takes one).
pub fn start(
    opts: &PairOpts,
    client: &Pod,
    server: &Pod,
    agent_pod: &Pod,
    certs: &Certs,
    work: &WorkDir,
) -> Result<PillionPair> {
    let base = base_opts(opts);
    let takes_agent = match &opts.proxy_binary {
        Some(binary) => proxy_takes_agent(binary, true),
        None => proxy_takes_agent(&opts.binary, false),
    };
    if !takes_agent {
        return Ok(PillionPair {
            client: client.install_sidecar(&base).context("client sidecar")?,
            server: server.install_sidecar(&base).context("server sidecar")?,
            agent: None,
            view: None,
            notes: vec!["this build's proxy takes no agent (no --agent-addr): plain L4".into()],
        });
    }
    let (agent, view) = start_agent(opts, agent_pod, client, server, certs, work)?;
    let agent_addr = SocketAddr::new(agent_pod.ipv4(), AGENT_PORT);
    let mesh = |sa: &str| mesh_opts(&base, opts, agent_addr, certs, work, sa);
    let with_logs = |e: anyhow::Error| e.context(format!("{}", agent.logs()));
    let client_side = client
        .install_sidecar(&mesh("client")?)
        .context("client sidecar (with the agent)")
        .map_err(with_logs)?;
    let server_side = server
        .install_sidecar(&mesh("server")?)
        .context("server sidecar (with the agent)")
        .map_err(with_logs)?;
    Ok(PillionPair {
        client: client_side,
        server: server_side,
        agent: Some(agent),
        view: Some(view),
        notes: Vec::new(),
    })
}

/// The options every proxy of a pair starts with: drain, log level, workers, the
/// shipped binary if one is given, and the `PILLION_*` settings to compare.
fn base_opts(opts: &PairOpts) -> SidecarOpts {
    let base = SidecarOpts::new(&opts.binary)
        .proxy_args(["--drain-timeout", "1s", "--log-level", &opts.log_level])
        .proxy_env("TOKIO_WORKER_THREADS", opts.workers.to_string());
    let base = match &opts.proxy_binary {
        Some(binary) => base.proxy_binary(binary),
        None => base,
    };
    // PILLION_* settings in the bench's own environment reach the proxies, so a
    // setting can be compared run against run (e.g. PILLION_MESH_PROTOCOL=http2).
    let base = std::env::vars_os()
        .filter(|(k, _)| k.to_string_lossy().starts_with("PILLION_"))
        .fold(base, |base, (k, v)| base.proxy_env(k, v));
    // This pair's own settings (e.g. an allocator's tunables), which the benchmark's
    // own process must not run with.
    opts.env
        .iter()
        .fold(base, |base, (k, v)| base.proxy_env(k, v))
}

/// `base` plus the flags that make a proxy workload `bench/<sa>` of the pair's agent
/// at `agent_addr` (its token written for it).
pub fn mesh_opts(
    base: &SidecarOpts,
    opts: &PairOpts,
    agent_addr: SocketAddr,
    certs: &Certs,
    work: &WorkDir,
    sa: &str,
) -> Result<SidecarOpts> {
    let token = work.write(&format!("{}-{sa}.token", opts.tag), &token(sa))?;
    Ok(base.clone().proxy_args([
        "--agent-addr".to_string(),
        agent_addr.to_string(),
        "--trust-anchors".into(),
        certs.bundle.display().to_string(),
        "--token-file".into(),
        token.display().to_string(),
        "--namespace".into(),
        NAMESPACE.into(),
        "--service-account".into(),
        sa.into(),
    ]))
}

/// A proxy of this pair's kind (its options, its agent) as workload `bench/<sa>`.
pub fn proxy_opts(
    opts: &PairOpts,
    agent_pod: &Pod,
    certs: &Certs,
    work: &WorkDir,
    sa: &str,
) -> Result<SidecarOpts> {
    let agent_addr = SocketAddr::new(agent_pod.ipv4(), AGENT_PORT);
    mesh_opts(&base_opts(opts), opts, agent_addr, certs, work, sa)
}

fn token(service_account: &str) -> String {
    format!("bench-{service_account}-token-0001")
}

fn start_agent(
    opts: &PairOpts,
    pod: &Pod,
    client: &Pod,
    server: &Pod,
    certs: &Certs,
    work: &WorkDir,
) -> Result<(Process, ViewControl)> {
    let base = agent_yaml(client, server, &opts.http_routes, &opts.extra_workloads);
    let config = work.write(&format!("{}-agent.yaml", opts.tag), &base)?;
    let view = ViewControl {
        source: config.clone(),
        base,
        client: client.clone(),
        server: server.clone(),
        admin_port: pillion_api::defaults::ADMIN_PORT,
    };
    // SCHED_IDLE: the agent runs on another node in a cluster; here it shares the
    // server's CPU, and yields it to the data path at once whenever that has work.
    let agent = pod.spawn(
        Cmd::new("chrt")
            .args(["--idle", "0"])
            .arg(&opts.binary)
            .arg("agent")
            .arg("--config")
            .arg(config)
            .arg("--ca-dir")
            .arg(&certs.ca_dir)
            .arg("--listen")
            .arg(format!("0.0.0.0:{AGENT_PORT}"))
            .arg("--log-level")
            .arg(&opts.log_level),
    )?;
    let addr = SocketAddr::from(([127, 0, 0, 1], AGENT_PORT));
    wait_listening(pod, addr, "the agent", &agent)?;
    Ok((agent, view))
}

/// The agent's source: the two workloads with their tokens and pod addresses, and the
/// bench service (HTTP port, detected, with `http_routes`; sink port, opaque) served
/// by `server`.
fn agent_yaml(client: &Pod, server: &Pod, http_routes: &str, extra_workloads: &str) -> String {
    let routes = if http_routes.is_empty() {
        String::new()
    } else {
        format!("\x20       routes:\n{http_routes}")
    };
    let addrs = |p: &Pod| format!("[\"{}\", \"{}\"]", p.ipv4(), p.ipv6());
    format!(
        "# Written by pillion-benches for one run.\n\
         workloads:\n\
         \x20 - name: client\n\
         \x20   namespace: {NAMESPACE}\n\
         \x20   token: {client_token}\n\
         \x20   addresses: {client_addrs}\n\
         \x20 - name: server\n\
         \x20   namespace: {NAMESPACE}\n\
         \x20   token: {server_token}\n\
         \x20   addresses: {server_addrs}\n\
         \x20   inbound:\n\
         \x20     default_mode: permissive\n\
         {extra_workloads}\
         services:\n\
         \x20 - name: bench\n\
         \x20   namespace: {NAMESPACE}\n\
         \x20   addresses: [{SERVICE_VIP}]\n\
         \x20   ports:\n\
         \x20     - port: {HTTP_PORT}\n\
         \x20       protocol: auto\n\
         {routes}\
         \x20     - port: {SINK_PORT}\n\
         \x20       protocol: opaque\n\
         \x20   endpoints:\n\
         \x20     - workload: server\n",
        client_token = token("client"),
        server_token = token("server"),
        client_addrs = addrs(client),
        server_addrs = addrs(server),
    )
}

/// The mesh TLS counters of the client's proxy: (connections over mesh TLS, plain
/// passthroughs), outbound.
pub fn mesh_counts(pair: &PillionPair) -> Result<(f64, f64)> {
    let m = pair.client.metrics()?;
    let out = [("direction", "outbound")];
    Ok((
        m.value("pillion_tls_connections_total", &out),
        m.value("pillion_tcp_passthrough_total", &out),
    ))
}

/// The proxies' PIDs, client side first.
pub fn pids(pair: &PillionPair) -> Vec<u32> {
    vec![pair.client.proxy().pid(), pair.server.proxy().pid()]
}

/// Address the client dials for the service: the server pod's own address.
pub fn service_addr(server: &Pod, port: u16) -> SocketAddr {
    SocketAddr::new(server.ipv4(), port)
}

/// Whether an address is one of the bench's (never anything outside 198.18.0.0/15).
pub fn in_bench_range(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            o[0] == 198 && (o[1] & 0xfe) == 18
        }
        IpAddr::V6(v6) => v6.segments()[..2] == [0x2001, 0x0002],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_range() {
        assert!(in_bench_range("198.18.0.3".parse().unwrap()));
        assert!(in_bench_range("198.19.255.1".parse().unwrap()));
        assert!(in_bench_range(SERVICE_VIP.parse().unwrap()));
        assert!(!in_bench_range("198.20.0.1".parse().unwrap()));
        assert!(!in_bench_range("10.0.0.1".parse().unwrap()));
        assert!(in_bench_range("2001:2::3".parse().unwrap()));
    }
}
