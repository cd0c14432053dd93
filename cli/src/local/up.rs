//! `pillion up`: a two-pod world (`client` → `server`) with init + proxy in both, the
//! agent on its embedded default in a pod of its own, an echo app and an HTTP app, one
//! real request of each a second and the proxies' counters every few seconds, until
//! Ctrl-C or a set duration; then an orderly teardown.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pillion_api::defaults::env::{OTLP_ENDPOINT, OTLP_PROTOCOL};
use tokio::signal::unix::{signal, SignalKind};

use crate::local::apps;
use crate::local::bridge::CollectorBridge;
use crate::local::gateway::{self, EdgeDemo, EdgeTally};
use crate::local::metrics::Samples;
use crate::local::pod::Pod;
use crate::local::sidecar::{Sidecar, SidecarOpts};
use crate::local::world::World;
use crate::local::Task;

/// Port of the echo app in the `server` pod.
pub const ECHO_PORT: u16 = 7000;
/// Time between two client requests.
const REQUEST_EVERY: Duration = Duration::from_secs(1);
/// Time between two counter reports.
const REPORT_EVERY: Duration = Duration::from_secs(3);

/// How `pillion up` runs.
#[derive(Debug, Clone)]
pub struct UpOpts {
    /// The binary that runs `init`, `proxy` and `agent` (`pillion` itself, re-executed).
    pub binary: PathBuf,
    /// Stop after this long instead of waiting for Ctrl-C.
    pub duration: Option<Duration>,
    /// A collector outside the world (e.g. Jaeger's `http://127.0.0.1:4317`) the
    /// proxies export spans to, through a [`CollectorBridge`].
    pub otlp_endpoint: Option<String>,
    /// `grpc` (default) or `http`.
    pub otlp_protocol: Option<String>,
}

/// Bridges `endpoint` (`http://host[:port]`, outside the world) into `world`;
/// answers the bridge and the endpoint the proxies inside should use.
fn bridge_collector(
    world: &World,
    endpoint: &str,
    protocol: &str,
) -> Result<(CollectorBridge, String)> {
    let uri: http::Uri = endpoint
        .parse()
        .with_context(|| format!("--otlp-endpoint {endpoint:?} is not a URL"))?;
    let host = uri
        .host()
        .with_context(|| format!("--otlp-endpoint {endpoint:?} has no host"))?;
    let default_port = if protocol == "http" { 4318 } else { 4317 };
    let port = uri.port_u16().unwrap_or(default_port);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let outside = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let bridge = CollectorBridge::start(world, port, outside)?;
    let inside = format!("http://{}", bridge.inside());
    println!("spans go to {endpoint} ({protocol}), bridged into the world at {inside}");
    Ok((bridge, inside))
}

/// What the client achieved, for the exit status of a bounded (CI) run.
#[derive(Debug, Default)]
pub struct UpReport {
    /// Requests whose echo came back intact.
    pub ok: u64,
    /// Requests that failed.
    pub failed: u64,
    /// Connections the client's proxy opened outbound, at the end.
    pub proxied: f64,
    /// Visitor rounds through the gateway where every answer was the expected one.
    pub edge_ok: u64,
    /// Rounds where one was not.
    pub edge_failed: u64,
}

#[derive(Debug, Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
}

/// Whether users other than the owner (the proxy's uid) can execute `path`: the file
/// and every directory above it need the "others" execute bit.
fn executable_by_others(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.ancestors().all(|p| {
        p.as_os_str().is_empty()
            || std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o001 != 0)
    })
}

/// A copy of the binary that the proxy's uid may execute, removed on drop.
struct SharedCopy(PathBuf);

impl Drop for SharedCopy {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// `binary` itself if the proxy's uid can run it (e.g. not under a 0700 home
/// directory), else a 0755 copy in a fresh temp directory.
fn binary_for_proxy(binary: &Path) -> Result<(PathBuf, Option<SharedCopy>)> {
    use std::os::unix::fs::PermissionsExt;
    if executable_by_others(binary) {
        return Ok((binary.to_path_buf(), None));
    }
    let dir = std::env::temp_dir().join(format!("pillion-up-{}", std::process::id()));
    std::fs::create_dir_all(&dir).context("creating a directory for the binary copy")?;
    let copy = SharedCopy(dir.join("pillion"));
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    std::fs::copy(binary, &copy.0).context("copying the binary")?;
    std::fs::set_permissions(&copy.0, std::fs::Permissions::from_mode(0o755))?;
    println!(
        "{} is not executable by the proxy's uid; using a copy in {}",
        binary.display(),
        dir.display()
    );
    Ok((copy.0.clone(), Some(copy)))
}

/// Builds the world, runs the traffic until Ctrl-C / SIGTERM / the duration, tears
/// everything down and reports.
pub fn run(opts: &UpOpts) -> Result<UpReport> {
    let (binary, _copy) = binary_for_proxy(&opts.binary)?;
    let world = World::new("up")?;
    let client = world.pod("client")?;
    let server = world.pod("server")?;
    println!(
        "world up: node = holder pid {}, pods client {} / {}, server {} / {}",
        world.holder_pid(),
        client.ipv4(),
        client.ipv6(),
        server.ipv4(),
        server.ipv6()
    );
    let mut sidecar_opts = SidecarOpts::new(&binary).proxy_args(["--drain-timeout", "5s"]);
    let _bridge = match &opts.otlp_endpoint {
        Some(endpoint) => {
            let protocol = opts.otlp_protocol.as_deref().unwrap_or("grpc");
            let (bridge, inside) = bridge_collector(&world, endpoint, protocol)?;
            sidecar_opts = sidecar_opts
                .proxy_env(OTLP_ENDPOINT, inside)
                .proxy_env(OTLP_PROTOCOL, protocol);
            Some(bridge)
        }
        None => None,
    };
    // The mesh: the agent on its embedded default view (certificates, discovery,
    // policy) and an HTTP app, so traffic is mTLS between the two identities.
    let traced = Some(TracedMesh::start(&world, &server)?);
    let side_opts = |sa: &str| match &traced {
        Some(mesh) => mesh.sidecar_opts(&sidecar_opts, sa),
        None => sidecar_opts.clone(),
    };
    let server_side = server
        .install_sidecar(&side_opts("server"))
        .context("server sidecar")?;
    let client_side = client
        .install_sidecar(&side_opts("client"))
        .context("client sidecar")?;
    println!(
        "sidecars ready: init ran as root, proxies run as uid {} (pids {} and {})",
        sidecar_opts.proxy_uid,
        client_side.proxy().pid(),
        server_side.proxy().pid()
    );
    // The edge: a gateway in front of the echo service, and a visitor outside the mesh.
    let (gateway, visitor) = match &traced {
        Some(mesh) => {
            let gateway_pod = world.pod("gateway")?;
            let visitor_pod = world.pod("visitor")?;
            let gateway = (mesh.edge).start_gateway(
                &gateway_pod,
                &mesh.gateway_opts(&sidecar_opts),
                &mesh.dir.0,
            )?;
            let admin = pillion_api::defaults::ADMIN_PORT;
            crate::local::sidecar::wait_ready(
                &gateway_pod,
                &gateway,
                admin,
                Duration::from_secs(30),
            )
            .context("the gateway did not get ready")?;
            let edge_tally = Arc::new(EdgeTally::default());
            let visitor = mesh.edge.visitor(gateway_pod.addr_v4(gateway::HTTPS_PORT));
            let tally = Arc::clone(&edge_tally);
            let task = visitor_pod.background(move || visitor.run(tally))?;
            println!(
                "gateway in pod gateway ({}) serves https://{}:{} (a certificate from this run's CA; \
                 /private needs a token); a visitor outside the mesh calls it once a second",
                gateway_pod.ipv4(),
                gateway::HOST,
                gateway::HTTPS_PORT
            );
            (
                Some((gateway, gateway_pod, visitor_pod)),
                Some((task, edge_tally)),
            )
        }
        None => (None, None),
    };
    let echo = apps::spawn_echo(&server, ECHO_PORT)?;
    let target = server.addr_v4(ECHO_PORT);
    println!("echo app on {target}; the client sends one request a second");
    match opts.duration {
        Some(d) => println!("running for {d:?}"),
        None => println!("press Ctrl-C to stop"),
    }

    let tally = Arc::new(Tally::default());
    let client_task = {
        let tally = Arc::clone(&tally);
        let http_target = traced.as_ref().map(|_| TracedMesh::http_target());
        if let Some(t) = http_target {
            println!(
                "and one HTTP GET http://{t}/hello a second, each a trace (see docs/telemetry.md)"
            );
        }
        client.background(move || client_loop(target, http_target, tally))?
    };

    wait_and_report(opts.duration, &client_side, &server_side)?;

    println!("stopping: client, echo app, proxies (SIGTERM, drain), then the world");
    drop(client_task);
    let (edge_ok, edge_failed) = match visitor {
        Some((task, tally)) => {
            drop(task);
            (
                tally.ok.load(Ordering::Relaxed),
                tally.failed.load(Ordering::Relaxed),
            )
        }
        None => (0, 0),
    };
    if let Some((proxy, _, _)) = &gateway {
        match proxy.stop(Duration::from_secs(10)) {
            Some(status) => println!("gateway exited: {status}"),
            None => println!("gateway did not exit"),
        }
    }
    drop(gateway);
    drop(echo);
    let last = client_side.metrics().unwrap_or_default();
    print_counters(&client_side, &server_side);
    for side in [client_side, server_side] {
        let name = side.pod().name().to_string();
        let proxy = side.into_proxy();
        match proxy.stop(Duration::from_secs(10)) {
            Some(status) => println!("proxy in {name} exited: {status}"),
            None => println!("proxy in {name} did not exit"),
        }
    }
    drop(world);
    println!("world removed");
    Ok(UpReport {
        ok: tally.ok.load(Ordering::Relaxed),
        failed: tally.failed.load(Ordering::Relaxed),
        proxied: last.value(
            "pillion_tcp_connections_opened_total",
            &[("direction", "outbound")],
        ),
        edge_ok,
        edge_failed,
    })
}

/// Blocks until Ctrl-C, SIGTERM or `duration`, printing counters on the way.
fn wait_and_report(duration: Option<Duration>, client: &Sidecar, server: &Sidecar) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the runtime")?;
    rt.block_on(async {
        let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let end = async {
            match duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(end);
        // Half a second off the request ticks, so report and request lines do not mix.
        let mut report = tokio::time::interval_at(
            tokio::time::Instant::now() + REPORT_EVERY + Duration::from_millis(500),
            REPORT_EVERY,
        );
        loop {
            tokio::select! {
                _ = int.recv() => { println!("\nSIGINT"); return Ok(()); }
                _ = term.recv() => { println!("SIGTERM"); return Ok(()); }
                () = &mut end => return Ok(()),
                _ = report.tick() => {
                    for side in [client, server] {
                        if let Some(status) = side.proxy().try_status() {
                            bail!("the proxy in {} exited ({status})\n{}", side.pod().name(), side.proxy().logs());
                        }
                    }
                    print_counters(client, server);
                }
            }
        }
    })
}

/// One request a second from the client pod, each on a new connection; with
/// `http_target`, also one traced HTTP request.
async fn client_loop(
    target: std::net::SocketAddr,
    http_target: Option<std::net::SocketAddr>,
    tally: Arc<Tally>,
) {
    let mut tick = tokio::time::interval(REQUEST_EVERY);
    for n in 1u64.. {
        tick.tick().await;
        if let Some(http_target) = http_target {
            traced_get(http_target, n).await;
        }
        let msg = format!("hello #{n} from the client pod");
        let start = Instant::now();
        let outcome = tokio::time::timeout(
            Duration::from_secs(5),
            echo_roundtrip(target, msg.as_bytes()),
        )
        .await;
        match outcome {
            Ok(Ok(back)) if back == msg.as_bytes() => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
                println!(
                    "client → {target}: {msg:?} echoed in {:.1?}",
                    start.elapsed()
                );
            }
            Ok(Ok(back)) => {
                tally.failed.fetch_add(1, Ordering::Relaxed);
                println!("client → {target}: wrong echo ({} bytes)", back.len());
            }
            Ok(Err(e)) => {
                tally.failed.fetch_add(1, Ordering::Relaxed);
                println!("client → {target}: {e:#}");
            }
            Err(_) => {
                tally.failed.fetch_add(1, Ordering::Relaxed);
                println!("client → {target}: timed out");
            }
        }
    }
}

/// Sends `data`, half-closes and reads the echo to its end.
async fn echo_roundtrip(target: std::net::SocketAddr, data: &[u8]) -> Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(target)
        .await
        .with_context(|| format!("connecting to {target}"))?;
    stream.write_all(data).await.context("sending")?;
    stream.shutdown().await.context("half-closing")?;
    let mut back = Vec::with_capacity(data.len());
    stream
        .read_to_end(&mut back)
        .await
        .context("reading the echo")?;
    Ok(back)
}

/// One direction's TCP counters, printable.
struct Counters(Samples, &'static str);

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dir = [("direction", self.1)];
        let v = |name: &str| self.0.value(name, &dir);
        write!(
            f,
            "{} opened {} open {} closed {} sent {} B received {} B connect-failures {} loops {}",
            self.1,
            v("pillion_tcp_connections_opened_total"),
            v("pillion_tcp_connections_open"),
            v("pillion_tcp_connections_closed_total"),
            v("pillion_tcp_sent_bytes_total"),
            v("pillion_tcp_received_bytes_total"),
            v("pillion_tcp_connect_failures_total"),
            v("pillion_tcp_loops_refused_total"),
        )?;
        // Mesh TLS connections by the peer's verified SPIFFE id.
        for sample in self.0.iter().filter(|s| {
            s.name == "pillion_tls_connections_total"
                && s.labels
                    .iter()
                    .any(|(k, v)| k == "direction" && v == self.1)
        }) {
            let peer = sample
                .labels
                .iter()
                .find(|(k, _)| k == "peer_identity")
                .map_or("?", |(_, v)| v.as_str());
            write!(
                f,
                "\n      mTLS {} with peer {peer}: {}",
                self.1, sample.value
            )?;
        }
        Ok(())
    }
}

fn print_counters(client: &Sidecar, server: &Sidecar) {
    for (side, dir) in [(client, "outbound"), (server, "inbound")] {
        match side.metrics() {
            Ok(samples) => println!("  [{} proxy] {}", side.pod().name(), Counters(samples, dir)),
            Err(e) => println!("  [{} proxy] metrics unavailable: {e:#}", side.pod().name()),
        }
    }
}

/// `--duration`: a humane duration ([`pillion_api::duration`]) above zero.
pub fn parse_duration(text: &str) -> Result<Duration> {
    let d = pillion_api::duration::parse(text)?;
    if d.is_zero() {
        bail!("the duration must be more than zero");
    }
    Ok(d)
}

/// The mesh `pillion up` runs besides the proxies: the agent serving its embedded
/// demo view (this very world: `client` 198.18.0.2, `server` 198.18.0.3, service
/// `echo` at 198.18.0.100 with HTTP on 8080) in pod `agent`, the files the proxies
/// read, and an HTTP app on the server's port 8080.
struct TracedMesh {
    agent_addr: std::net::SocketAddr,
    dir: MeshFiles,
    edge: EdgeDemo,
    _agent: Task<()>,
    _app: Task<()>,
}

/// The proxies' files (trust anchors, tokens), removed on drop.
struct MeshFiles(PathBuf);

impl Drop for MeshFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Port of the HTTP app (service `echo`'s HTTP port in the agent's default).
const HTTP_PORT: u16 = 8080;

impl TracedMesh {
    fn start(world: &World, server: &Pod) -> Result<TracedMesh> {
        use std::os::unix::fs::PermissionsExt;
        let agent_pod = world.pod("agent")?;
        let dir =
            MeshFiles(std::env::temp_dir().join(format!("pillion-up-mesh-{}", std::process::id())));
        std::fs::create_dir_all(&dir.0)?;
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755))?;
        // The agent's source: its embedded default, and the demo gateway as a second
        // part (its issuer's keys are made for this run, never compiled in).
        let edge = EdgeDemo::create(&dir.0)?;
        let source = dir.0.join("source");
        std::fs::create_dir_all(&source)?;
        std::fs::write(
            source.join("mesh.yaml"),
            pillion_agent::source::EMBEDDED_DEFAULT,
        )?;
        std::fs::write(source.join("gateway.yaml"), &edge.source_part)?;
        let (tx, rx) = std::sync::mpsc::channel::<Result<String, String>>();
        let agent = agent_pod.background(move || async move {
            let mut config =
                pillion_agent::AgentConfig::new(pillion_agent::SourceSpec::File(source));
            config.listen =
                std::net::SocketAddr::from(([0, 0, 0, 0], pillion_api::defaults::AGENT_PORT));
            match pillion_agent::Agent::start(config).await {
                Ok(running) => {
                    let _ = tx.send(Ok(running.trust_anchor_pem().to_owned()));
                    std::future::pending::<()>().await;
                    drop(running);
                }
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                }
            }
        })?;
        let pem = rx
            .recv_timeout(Duration::from_secs(30))
            .context("the agent did not start")?
            .map_err(|e| anyhow::anyhow!("the agent cannot start: {e}"))?;
        // The embedded view's demo tokens (public: they exist for this demo only).
        for (name, text) in [
            ("anchors.pem", pem.as_str()),
            ("client.token", "demo-client-token"),
            ("server.token", "demo-server-token"),
            ("gateway.token", "demo-gateway-token"),
        ] {
            let path = dir.0.join(name);
            std::fs::write(&path, text)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
        }
        let app = apps::spawn_hello(server, HTTP_PORT)?;
        println!(
            "agent in pod agent ({}), HTTP app on the server's port {HTTP_PORT}",
            agent_pod.ipv4()
        );
        Ok(TracedMesh {
            agent_addr: agent_pod.addr_v4(pillion_api::defaults::AGENT_PORT),
            dir,
            edge,
            _agent: agent,
            _app: app,
        })
    }

    /// `base` plus the flags that make the proxy workload `edge/gateway`.
    fn gateway_opts(&self, base: &SidecarOpts) -> SidecarOpts {
        self.workload_opts(base, "edge", "gateway")
    }

    /// `base` plus the flags that put workload `sa` (namespace `demo`) in the mesh.
    fn sidecar_opts(&self, base: &SidecarOpts, sa: &str) -> SidecarOpts {
        self.workload_opts(base, "demo", sa)
    }

    /// `base` plus the flags that make the proxy workload `ns/sa` of the demo (its
    /// token in `<sa>.token`).
    fn workload_opts(&self, base: &SidecarOpts, ns: &str, sa: &str) -> SidecarOpts {
        let path = |name: &str| self.dir.0.join(name).display().to_string();
        base.clone().proxy_args([
            "--agent-addr".to_owned(),
            self.agent_addr.to_string(),
            "--trust-anchors".to_owned(),
            path("anchors.pem"),
            "--token-file".to_owned(),
            path(&format!("{sa}.token")),
            "--namespace".to_owned(),
            ns.to_owned(),
            "--service-account".to_owned(),
            sa.to_owned(),
            "--pod-name".to_owned(),
            sa.to_owned(),
        ])
    }

    /// The service's HTTP address the client calls.
    fn http_target() -> std::net::SocketAddr {
        std::net::SocketAddr::from(([198, 18, 0, 100], HTTP_PORT))
    }
}

/// One HTTP GET to `target` as an instrumented app would send it: with its own
/// `traceparent`, whose trace id it prints so the trace is easy to find in Jaeger.
async fn traced_get(target: std::net::SocketAddr, n: u64) {
    let trace: u128 = rand_id();
    let parent = u64::try_from(trace >> 64).unwrap_or(1) | 1;
    let traceparent = format!("00-{trace:032x}-{parent:016x}-01");
    let outcome = tokio::time::timeout(Duration::from_secs(5), async {
        let stream = tokio::net::TcpStream::connect(target).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = hyper::Request::get(format!("/hello/{n}"))
            .header(hyper::header::HOST, "echo.demo:8080")
            .header("traceparent", &traceparent)
            .body(http_body_util::Empty::<bytes::Bytes>::new())?;
        let resp = sender.send_request(req).await?;
        anyhow::Ok(resp.status().as_u16())
    })
    .await;
    match outcome {
        Ok(Ok(status)) => {
            println!("client → http://{target}/hello/{n}: {status}, trace {trace:032x}")
        }
        Ok(Err(e)) => println!("client → http://{target}/hello/{n}: {e:#}"),
        Err(_) => println!("client → http://{target}/hello/{n}: timed out"),
    }
}

/// A random, non-zero 128-bit id (time and a counter through a mixer: good enough
/// for demo trace ids).
fn rand_id() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    let a = h.finish();
    h.write_u64(a);
    (u128::from(a) << 64 | u128::from(h.finish())) | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn others_may_run_system_binaries() {
        assert!(executable_by_others(Path::new("/bin/sh")));
        assert!(!executable_by_others(Path::new("/nonexistent/x")));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1d").unwrap(), Duration::from_secs(86_400));
        assert!(parse_duration("7").is_err(), "a bare number has no unit");
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("10 parsecs").is_err());
    }
}
