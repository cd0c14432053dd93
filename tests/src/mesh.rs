//! The mesh in a world: the real agent (`<bin> agent …`) in a pod of its own, its
//! YAML source and token files written by the test, sidecars that get their
//! certificates and views from it, and a raw packet capture on the node's bridge.
//!
//! The agent's pod has no sidecar, so nothing intercepts its traffic; the proxies
//! reach it as uid 2580, which init exempts from redirection.

use std::fs;
use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use pillion_api::certs::CertificateResponse;
use pillion_api::defaults::{AGENT_NAMESPACE, AGENT_PORT, AGENT_SERVICE_ACCOUNT, TRUST_DOMAIN};
use pillion_identity::{CertStore, SpiffeId};
use pillion_proxy::control::ControlConfig;
use pillion_proxy::control::{AgentClient, AgentError};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::apps::{spawn_server, App};
use pillion::local::process::{Cmd, Process};
use pillion::local::sidecar::{Sidecar, SidecarOpts};
use pillion::local::Pod;
use pillion::local::Task;
use pillion::local::World;

/// How long the agent may take to write its trust anchor and accept connections.
const AGENT_START_TIMEOUT: Duration = Duration::from_secs(20);

/// A directory for one test's mesh files, removed on drop. World-readable, so the
/// proxy (uid 2580) can read anchors and tokens.
#[derive(Debug)]
pub struct MeshDir(PathBuf);

impl MeshDir {
    /// A fresh directory under the temp dir, named after `test`.
    pub fn new(test: &str) -> Result<MeshDir> {
        let dir = std::env::temp_dir().join(format!(
            "pillion-mesh-{}-{test}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
        Ok(MeshDir(dir))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `name` (mode 0644) and returns its path.
    pub fn write(&self, name: &str, text: &str) -> Result<PathBuf> {
        replace_file(&self.0, name, text)
    }
}

/// Writes `dir/name` (mode 0644) as a whole: write-then-rename, so a reader (the
/// agent's poller) never sees half a file. Returns its path.
pub fn replace_file(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644))?;
    fs::rename(&tmp, &path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(path)
}

impl Drop for MeshDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// The agent running in its own pod, restartable with the same CA.
#[derive(Debug)]
pub struct MeshAgent {
    pod: Pod,
    binary: PathBuf,
    args: Vec<String>,
    anchors: PathBuf,
    ca_dir: PathBuf,
    process: Option<Process>,
}

impl MeshAgent {
    /// The pod the agent runs in.
    pub fn pod(&self) -> &Pod {
        &self.pod
    }

    /// Starts `<binary> agent` in `pod` with the source `config`, its CA in
    /// `dir/ca` and its trust anchor written to `dir/anchors.pem`; `extra` adds
    /// flags (e.g. `--leaf-lifetime 10s`). Returns once it accepts connections.
    pub fn start(
        pod: &Pod,
        binary: &Path,
        dir: &MeshDir,
        config: &Path,
        extra: &[&str],
    ) -> Result<MeshAgent> {
        let anchors = dir.path().join("anchors.pem");
        let ca_dir = dir.path().join("ca");
        // An issuer directory in `extra` replaces the CA directory.
        let ca_flags = if extra.contains(&"--issuer-dir") {
            Vec::new()
        } else {
            vec!["--ca-dir".to_string(), ca_dir.display().to_string()]
        };
        let mut args = vec![
            "agent".to_string(),
            "--config".into(),
            config.display().to_string(),
            "--listen".into(),
            pod.addr_v4(AGENT_PORT).to_string(),
        ];
        args.extend(ca_flags);
        args.extend([
            "--trust-anchor-out".into(),
            anchors.display().to_string(),
            "--reload-interval".into(),
            "100ms".into(),
        ]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut agent = MeshAgent {
            pod: pod.clone(),
            binary: binary.to_path_buf(),
            args,
            anchors,
            ca_dir,
            process: None,
        };
        agent.restart()?;
        Ok(agent)
    }

    /// host:port of the agent's API.
    pub fn addr(&self) -> SocketAddr {
        self.pod.addr_v4(AGENT_PORT)
    }

    /// The trust anchor file the agent wrote (PEM roots).
    pub fn anchors(&self) -> &Path {
        &self.anchors
    }

    /// The running process, if any.
    pub fn process(&self) -> Option<&Process> {
        self.process.as_ref()
    }

    /// Everything the agent (its current run) logged so far.
    pub fn logs(&self) -> String {
        self.process
            .as_ref()
            .map(|p| p.logs().to_string())
            .unwrap_or_default()
    }

    /// Stops the agent (SIGTERM, then SIGKILL after a grace period).
    pub fn stop(&mut self) {
        if let Some(p) = self.process.take() {
            p.stop(Duration::from_secs(5));
        }
    }

    /// Starts the agent again with a CA it makes anew, as an agent whose CA lived in
    /// an emptyDir does: a new root, written to its trust anchor file.
    pub fn restart_with_new_ca(&mut self) -> Result<()> {
        self.stop();
        fs::remove_dir_all(&self.ca_dir)
            .with_context(|| format!("removing {}", self.ca_dir.display()))?;
        self.restart()
    }

    /// Starts the agent again (stopping a running one first), same flags, same CA.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        let cmd = Cmd::new(&self.binary)
            .args(&self.args)
            .env("PILLION_LOG_LEVEL", "info");
        let process = self.pod.spawn(cmd)?;
        let addr = self.addr();
        let deadline = Instant::now() + AGENT_START_TIMEOUT;
        loop {
            if let Some(status) = process.try_status() {
                bail!(
                    "the agent exited ({status}) while starting\n{}",
                    process.logs()
                );
            }
            let up = self.anchors.exists()
                && self
                    .pod
                    .run(move || async move { tokio::net::TcpStream::connect(addr).await.is_ok() })
                    .unwrap_or(false);
            if up {
                break;
            }
            if Instant::now() >= deadline {
                bail!("the agent did not come up on {addr}\n{}", process.logs());
            }
            thread::sleep(Duration::from_millis(50));
        }
        self.process = Some(process);
        Ok(())
    }
}

/// Sidecar options that join the mesh: the agent at `agent` (host:port, or several
/// replicas' separated by commas), verified with `anchors`, proving
/// `namespace/service_account` with the token in `token_file`.
pub fn mesh_sidecar_opts(
    base: SidecarOpts,
    agent: impl std::fmt::Display,
    anchors: &Path,
    token_file: &Path,
    namespace: &str,
    service_account: &str,
) -> SidecarOpts {
    base.proxy_args([
        "--agent-addr".to_string(),
        agent.to_string(),
        "--trust-anchors".into(),
        anchors.display().to_string(),
        "--token-file".into(),
        token_file.display().to_string(),
        "--namespace".into(),
        namespace.into(),
        "--service-account".into(),
        service_account.into(),
    ])
}

/// Services in the view of `pod`'s proxy, from its loopback-only `/config` on
/// `admin_port` (asked from inside the pod).
pub fn view_services(pod: &Pod, admin_port: u16) -> Result<usize> {
    let answer = pod.run(move || async move {
        let addr = SocketAddr::from(([127, 0, 0, 1], admin_port));
        crate::http::request(addr, "GET", "/config").await
    })??;
    let config: serde_json::Value =
        serde_json::from_str(&answer.body).context("the /config answer is not JSON")?;
    Ok(config["view"]["services"].as_array().map_or(0, Vec::len))
}

/// Captures every frame seen in the node namespace (the bridge and the pods'
/// veths) for `duration`, keeping at most `max_bytes`; runs on its own thread so
/// the test can make traffic meanwhile. Join the handle for the bytes.
pub fn capture_on_bridge(
    pod: &Pod,
    duration: Duration,
    max_bytes: usize,
) -> thread::JoinHandle<Result<Vec<u8>>> {
    let pod = pod.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let handle = thread::spawn(move || {
        pod.run_in_node(move || async move { capture(duration, max_bytes, ready_tx) })?
    });
    // Wait until the socket is open, so no early frame is missed.
    let _ = ready_rx.recv_timeout(Duration::from_secs(10));
    handle
}

/// An AF_PACKET socket for every protocol (`ETH_P_ALL`), read until `duration` passes.
fn capture(
    duration: Duration,
    max_bytes: usize,
    ready: std::sync::mpsc::Sender<()>,
) -> Result<Vec<u8>> {
    const ETH_P_ALL: u16 = 0x0003;
    let socket = Socket::new(
        Domain::PACKET,
        Type::RAW,
        Some(Protocol::from(i32::from(ETH_P_ALL.to_be()))),
    )
    .context("opening a packet socket (needs CAP_NET_RAW)")?;
    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    let _ = socket.set_recv_buffer_size(8 << 20);
    let _ = ready.send(());
    let deadline = Instant::now() + duration;
    let mut out = Vec::new();
    let mut frame = vec![0u8; 65536];
    let mut reader = &socket;
    while Instant::now() < deadline && out.len() < max_bytes {
        match reader.read(&mut frame) {
            Ok(n) => out.extend_from_slice(&frame[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => return Err(e).context("reading the packet socket"),
        }
    }
    Ok(out)
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Port of the echo app that the default source leaves permissive.
pub const PERMISSIVE_PORT: u16 = 7000;
/// Port of the echo app that the default source makes strict.
pub const STRICT_PORT: u16 = 7001;
/// Namespace of every workload in [`MeshWorld`].
pub const NAMESPACE: &str = "demo";
/// Tokens of the workloads in the source (test-only values).
pub const CLIENT_TOKEN: &str = "client-token-e2e";
/// The server workload's token.
pub const SERVER_TOKEN: &str = "server-token-e2e";
/// A workload with no pod, for test clients that need a certificate of their own.
pub const PROBE_TOKEN: &str = "probe-token-e2e";

/// The SPIFFE id of service account `sa` in [`NAMESPACE`].
pub fn spiffe_id(sa: &str) -> SpiffeId {
    // The names used here are valid by construction.
    SpiffeId::new(TRUST_DOMAIN, NAMESPACE, sa).unwrap_or_else(|e| panic!("{sa}: {e}"))
}

/// The agent's YAML source for a client pod `a` and a server pod `b`, whose ports
/// in `strict` are strict (allowing the `demo` namespace) and the rest permissive.
pub fn source_yaml(a: &Pod, b: &Pod, strict: &[u16]) -> String {
    let mut lines: Vec<String> = vec![
        "# Written by the mesh end-to-end tests.".into(),
        "workloads:".into(),
        "  - name: client".into(),
        format!("    namespace: {NAMESPACE}"),
        format!("    token: {CLIENT_TOKEN}"),
        format!("    addresses: [{}, \"{}\"]", a.ipv4(), a.ipv6()),
        "  - name: server".into(),
        format!("    namespace: {NAMESPACE}"),
        format!("    token: {SERVER_TOKEN}"),
        format!("    addresses: [{}, \"{}\"]", b.ipv4(), b.ipv6()),
        "    inbound:".into(),
        "      default_mode: permissive".into(),
    ];
    if strict.is_empty() {
        lines.push("      ports: {}".into());
    } else {
        lines.push("      ports:".into());
        for port in strict {
            lines.push(format!("        {port}:"));
            lines.push("          mode: strict".into());
            lines.push(format!(
                "          allow: [\"spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/*\"]"
            ));
        }
    }
    lines.extend([
        "  - name: probe".into(),
        format!("    namespace: {NAMESPACE}"),
        format!("    token: {PROBE_TOKEN}"),
        "services:".into(),
        "  - name: echo".into(),
        format!("    namespace: {NAMESPACE}"),
        "    addresses: [198.18.1.100]".into(),
        "    ports:".into(),
        format!("      - port: {PERMISSIVE_PORT}"),
        "        protocol: opaque".into(),
        format!("      - port: {STRICT_PORT}"),
        "        protocol: opaque".into(),
        "    endpoints:".into(),
        "      - workload: server".into(),
    ]);
    lines.join("\n") + "\n"
}

/// A world with the mesh: client pod `a` and server pod `b` with sidecars, the
/// agent in pod `agent`, a pod `c` without a sidecar, echo apps on `b`'s
/// [`PERMISSIVE_PORT`] and [`STRICT_PORT`]. Dropping it tears everything down.
pub struct MeshWorld {
    /// Client pod (workload `client`).
    pub a: Pod,
    /// Server pod (workload `server`).
    pub b: Pod,
    /// A pod without a sidecar (plaintext clients, probes).
    pub c: Pod,
    /// `a`'s sidecar.
    pub sa: Sidecar,
    /// `b`'s sidecar.
    pub sb: Sidecar,
    /// The agent.
    pub agent: MeshAgent,
    /// Where the source file lives (rewrite it to change the mesh).
    pub source: PathBuf,
    /// Token files, by workload.
    pub client_token: PathBuf,
    /// The server's token file.
    pub server_token: PathBuf,
    /// The probe's token file.
    pub probe_token: PathBuf,
    _apps: Vec<Task<()>>,
    /// The mesh files (kept after a panic for debugging).
    pub dir: MeshDir,
    /// The world; declared last so it goes after everything in it.
    pub world: World,
}

impl std::fmt::Debug for MeshWorld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshWorld")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl MeshWorld {
    /// Builds the world for `test`, running programs from `binary` with sidecar
    /// options `base`; `agent_flags` go to the agent (e.g. `--leaf-lifetime 10s`).
    pub fn start(
        test: &str,
        binary: &Path,
        base: &SidecarOpts,
        agent_flags: &[&str],
    ) -> Result<MeshWorld> {
        let world = World::new(test)?;
        let a = world.pod("a")?;
        let b = world.pod("b")?;
        let agent_pod = world.pod("agent")?;
        let c = world.pod("c")?;
        let dir = MeshDir::new(test)?;
        let source = dir.write("source.yaml", &source_yaml(&a, &b, &[STRICT_PORT]))?;
        let client_token = dir.write("client.token", CLIENT_TOKEN)?;
        let server_token = dir.write("server.token", SERVER_TOKEN)?;
        let probe_token = dir.write("probe.token", PROBE_TOKEN)?;
        let agent = MeshAgent::start(&agent_pod, binary, &dir, &source, agent_flags)?;
        let apps = vec![
            spawn_server(&b, PERMISSIVE_PORT, App::Echo)?,
            spawn_server(&b, STRICT_PORT, App::Echo)?,
        ];
        let opts = |token: &Path, sa: &str| {
            mesh_sidecar_opts(
                base.clone(),
                agent.addr(),
                agent.anchors(),
                token,
                NAMESPACE,
                sa,
            )
        };
        let sa = a
            .install_sidecar(&opts(&client_token, "client"))
            .with_context(|| format!("client sidecar\n{}", agent.logs()))?;
        let sb = b
            .install_sidecar(&opts(&server_token, "server"))
            .with_context(|| format!("server sidecar\n{}", agent.logs()))?;
        Ok(MeshWorld {
            a,
            b,
            c,
            sa,
            sb,
            agent,
            source,
            client_token,
            server_token,
            probe_token,
            _apps: apps,
            dir,
            world,
        })
    }

    /// The logs of both proxies and the agent, for failure messages.
    pub fn dump(&self) -> String {
        format!(
            "{}{}{}",
            self.sa.proxy().logs(),
            self.sb.proxy().logs(),
            self.agent.logs()
        )
    }

    /// Rewrites the agent's source file.
    pub fn write_source(&self, text: &str) -> Result<()> {
        self.dir.write("source.yaml", text).map(drop)
    }
}

/// Asks the agent at `agent` for a certificate for `csr_pem` with the token in
/// `token_file`, the way a proxy does (HTTPS, HTTP/2, the agent verified by
/// `anchors_pem` and its default SPIFFE id). Run inside a pod.
pub async fn request_certificate(
    agent: SocketAddr,
    anchors_pem: &str,
    token_file: &Path,
    csr_pem: String,
) -> std::result::Result<CertificateResponse, AgentError> {
    let config = ControlConfig {
        agent_addr: agent.to_string(),
        agent_identity: SpiffeId::new(TRUST_DOMAIN, AGENT_NAMESPACE, AGENT_SERVICE_ACCOUNT)
            .unwrap_or_else(|e| panic!("agent id: {e}")),
        trust_anchors_pem: anchors_pem.to_string(),
        trust_anchors_path: None,
        token_file: token_file.to_path_buf(),
        workload: spiffe_id("probe"),
        pod_name: None,
        discovery: pillion_proxy::control::Discovery::Full,
    };
    let client = AgentClient::new(&config).unwrap_or_else(|e| panic!("agent client: {e}"));
    client.request_certificate(csr_pem).await
}

/// A certificate store for `sa` holding a fresh certificate from the agent.
pub async fn fetch_identity(
    agent: SocketAddr,
    anchors_pem: &str,
    token_file: &Path,
    sa: &str,
) -> Result<Arc<CertStore>> {
    let id = spiffe_id(sa);
    let (key, csr) = pillion_identity::csr::generate(&id)?;
    let answer = request_certificate(agent, anchors_pem, token_file, csr).await?;
    let store = Arc::new(CertStore::new(id));
    store.set_trust_bundle(&answer.trust_bundle_pem)?;
    store.set_leaf(&answer.chain_pem, &key)?;
    Ok(store)
}

/// Opens mesh TLS (ALPN `pillion/1`, the client certificate in `store`) to `addr`,
/// which must prove `expected`; sends `msg`, half-closes and reads the answer.
/// Returns the serial (lowercase hex) of the server's certificate and the answer.
pub async fn mesh_exchange(
    addr: SocketAddr,
    store: Arc<CertStore>,
    expected: &SpiffeId,
    msg: &[u8],
) -> Result<(String, Vec<u8>)> {
    // A fresh config per call: no session resumption, so the server always shows
    // its current certificate.
    let config = pillion_identity::tls::client_config(store)?;
    let name = pillion_identity::tls::server_name_for(expected)?;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .with_context(|| format!("mesh TLS to {addr}"))?;
    let der = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .context("the server sent no certificate")?
        .to_vec();
    tls.write_all(msg).await?;
    tls.shutdown().await?;
    let mut answer = Vec::new();
    tls.read_to_end(&mut answer).await?;
    Ok((serial_hex(&der)?, answer))
}

/// The serial number of a DER certificate, lowercase hex without leading zeros.
pub fn serial_hex(der: &[u8]) -> Result<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| anyhow::anyhow!("parsing a certificate: {e}"))?;
    let raw = cert.raw_serial();
    let start = raw.iter().position(|b| *b != 0).unwrap_or(raw.len());
    Ok(raw[start..].iter().map(|b| format!("{b:02x}")).collect())
}
