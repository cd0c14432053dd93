//! The local demo: a two-pod world (`client` → `server`) with init + proxy in both, an
//! echo app, one real request a second and the proxies' counters every few seconds,
//! until Ctrl-C or a set duration; then an orderly teardown.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pillion_api::defaults::env::{OTLP_ENDPOINT, OTLP_PROTOCOL};
use tokio::signal::unix::{signal, SignalKind};

use crate::apps::{self, App};
use crate::metrics::Samples;
use crate::otlp::CollectorBridge;
use crate::sidecar::{Sidecar, SidecarOpts};
use crate::world::World;

/// Port of the demo's echo app in the `server` pod.
pub const ECHO_PORT: u16 = 7000;
/// Time between two client requests.
const REQUEST_EVERY: Duration = Duration::from_secs(1);
/// Time between two counter reports.
const REPORT_EVERY: Duration = Duration::from_secs(3);

/// How the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOpts {
    /// The binary that runs `init` and `proxy` (the demo itself, re-executed).
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
pub struct DemoReport {
    /// Requests whose echo came back intact.
    pub ok: u64,
    /// Requests that failed.
    pub failed: u64,
    /// Connections the client's proxy opened outbound, at the end.
    pub proxied: f64,
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

/// A copy of the demo binary that the proxy's uid may execute, removed on drop.
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
    let dir = std::env::temp_dir().join(format!("pillion-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).context("creating a directory for the binary copy")?;
    let copy = SharedCopy(dir.join("pillion-demo"));
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    std::fs::copy(binary, &copy.0).context("copying the demo binary")?;
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
pub fn run(opts: &DemoOpts) -> Result<DemoReport> {
    let (binary, _copy) = binary_for_proxy(&opts.binary)?;
    let world = World::new("demo")?;
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
    let client_side = client
        .install_sidecar(&sidecar_opts)
        .context("client sidecar")?;
    let server_side = server
        .install_sidecar(&sidecar_opts)
        .context("server sidecar")?;
    println!(
        "sidecars ready: init ran as root, proxies run as uid {} (pids {} and {})",
        sidecar_opts.proxy_uid,
        client_side.proxy().pid(),
        server_side.proxy().pid()
    );
    let echo = apps::spawn_server(&server, ECHO_PORT, App::Echo)?;
    let target = server.addr_v4(ECHO_PORT);
    println!("echo app on {target}; the client sends one request a second");
    match opts.duration {
        Some(d) => println!("running for {d:?}"),
        None => println!("press Ctrl-C to stop"),
    }

    let tally = Arc::new(Tally::default());
    let client_task = {
        let tally = Arc::clone(&tally);
        client.background(move || client_loop(target, tally))?
    };

    wait_and_report(opts.duration, &client_side, &server_side)?;

    println!("stopping: client, echo app, proxies (SIGTERM, drain), then the world");
    drop(client_task);
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
    Ok(DemoReport {
        ok: tally.ok.load(Ordering::Relaxed),
        failed: tally.failed.load(Ordering::Relaxed),
        proxied: last.value(
            "pillion_tcp_connections_opened_total",
            &[("direction", "outbound")],
        ),
    })
}

/// Blocks until Ctrl-C, SIGTERM or `duration`, printing counters on the way.
fn wait_and_report(duration: Option<Duration>, client: &Sidecar, server: &Sidecar) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the demo's runtime")?;
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

/// One request a second from the client pod, each on a new connection.
async fn client_loop(target: std::net::SocketAddr, tally: Arc<Tally>) {
    let mut tick = tokio::time::interval(REQUEST_EVERY);
    for n in 1u64.. {
        tick.tick().await;
        let msg = format!("hello #{n} from the client pod");
        let start = Instant::now();
        let outcome = tokio::time::timeout(
            Duration::from_secs(5),
            apps::echo_roundtrip(target, msg.as_bytes()),
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
        )
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

/// Parses `500ms`, `10s`, `2m`, `1h` (or bare seconds).
pub fn parse_duration(text: &str) -> Result<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .with_context(|| format!("bad duration {text:?}: expected e.g. 10s, 500ms, 2m"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => bail!("bad duration unit in {text:?}: use ms, s, m or h"),
    };
    if d.is_zero() {
        bail!("the duration must be more than zero");
    }
    Ok(d)
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
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("10 parsecs").is_err());
    }
}
