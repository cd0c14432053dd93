//! The gateway figure (`--gateway`): HTTPS requests per second and latency from a
//! visitor outside the mesh through an edge proxy to the bench application, with
//! the same server certificate at the edge in each row:
//!
//! - **Pillion**: the proxy in its gateway role → mesh TLS as its own identity →
//!   the server pod's Pillion sidecar → the application;
//! - **nginx**: nginx terminating TLS → plain HTTP/1.1 → the server pod's Pillion
//!   sidecar (permissive) → the application.
//!
//! Both rows cross the server's sidecar; Pillion's adds a mutual-TLS hop that
//! nginx's lacks. One worker thread (process) each, on the server pod's CPU; the
//! load on the client pod's CPU. Runs alternate order, and each figure is a spread.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::certs::{Certs, NAMESPACE};
use crate::load::tls::{self, Edge};
use crate::pin::{pin_process_tree, pin_this_thread, Layout};
use crate::server::HTTP_PORT;
use crate::stats::Spread;
use crate::template::render;
use crate::topology::pillion;
use crate::topology::pods::{self, wait_listening};
use crate::workdir::WorkDir;
use pillion_tests::{Cmd, Process};

/// The name both edges serve.
const HOST: &str = "bench.pillion.test";
/// Pillion's gateway listener.
const PILLION_PORT: u16 = 8443;
/// nginx's edge listener.
const NGINX_PORT: u16 = 9443;
/// The proxy user (owner of the gateway's key file).
const PROXY_UID: u32 = pillion_api::defaults::PROXY_UID;

/// One edge's figures over the runs.
#[derive(Debug, Clone, Serialize)]
pub struct GatewayRow {
    /// Which edge.
    pub edge: String,
    /// Requests per second: median, min, max.
    pub per_second: Spread,
    /// p50 latency, ms, per run.
    pub p50_ms: Spread,
    /// p99 latency, ms, per run.
    pub p99_ms: Spread,
    /// Requests that failed, over every run.
    pub errors: u64,
}

/// Everything `--gateway` measured.
#[derive(Debug, Clone, Serialize)]
pub struct GatewayReport {
    /// Keep-alive connections of the load.
    pub connections: usize,
    /// The rows.
    pub rows: Vec<GatewayRow>,
}

/// The gateway workload of the agent's source: `bench.pillion.test` → the bench service.
fn gateway_workload() -> String {
    format!(
        "\x20 - name: gateway\n\
         \x20   namespace: {NAMESPACE}\n\
         \x20   token: bench-gateway-token-0001\n\
         \x20   gateway:\n\
         \x20     hosts:\n\
         \x20       - hostnames: [{HOST}]\n\
         \x20         routes:\n\
         \x20           - name: bench\n\
         \x20             matches: [{{path: {{prefix: /}}}}]\n\
         \x20             backends: [{{service: bench, port: {HTTP_PORT}}}]\n"
    )
}

/// Builds the world and measures; `smoke` runs one short run of each.
pub fn run(binary: &Path, smoke: bool, log_level: &str) -> Result<GatewayReport> {
    let (runs, duration) = if smoke {
        (1, Duration::from_secs(1))
    } else {
        (3, Duration::from_secs(5))
    };
    let conns = 64;
    let work = WorkDir::create()?;
    let certs = Certs::create(&work)?;
    let world = pillion_tests::World::new("bench-gw")?;
    let (client, server, agent, edge, visitor) = (
        world.pod("client")?,
        world.pod("server")?,
        world.pod("agent")?,
        world.pod("edge")?,
        world.pod("visitor")?,
    );
    for pod in [&server, &edge, &visitor] {
        pods::tune(pod)?;
    }
    let layout = Layout::for_cpus(crate::machine::Machine::detect().nproc);
    let _server = pods::start_server(&server, layout.server)?;
    let opts = pillion::PairOpts {
        binary: binary.to_path_buf(),
        workers: 1,
        log_level: log_level.to_string(),
        proxy_binary: None,
        env: Vec::new(),
        tag: "gateway",
        http_routes: String::new(),
        extra_workloads: gateway_workload(),
    };
    let pair = pillion::start(&opts, &client, &server, &agent, &certs, &work)?;
    pin_process_tree(pair.server.proxy().pid(), layout.server)?;
    if let Some(agent) = &pair.agent {
        pin_process_tree(agent.pid(), layout.server)?;
    }

    // One server certificate for both edges.
    let cert = pillion_testkit::pki::EdgeCert::new("bench edge CA", &[HOST])?;
    let tls_dir = edge_files(&work, &cert)?;
    let gateway = start_gateway(&opts, &edge, &agent, &tls_dir, &certs, &work)?;
    pin_process_tree(gateway.pid(), layout.server)?;
    let nginx = start_nginx(&edge, server.ipv4(), &tls_dir, &work)?;
    pin_process_tree(nginx.pid(), layout.server)?;

    let edges = [
        (
            "Pillion gateway → mTLS → Pillion sidecar → app",
            Edge::new(
                SocketAddr::new(edge.ipv4(), PILLION_PORT),
                HOST,
                &cert.ca_pem,
            )?,
        ),
        (
            "nginx edge → plain HTTP → Pillion sidecar → app",
            Edge::new(SocketAddr::new(edge.ipv4(), NGINX_PORT), HOST, &cert.ca_pem)?,
        ),
    ];
    let cpu = layout.client;
    let load = |edge: &Edge, d: Duration| -> Result<(f64, u64, f64, f64)> {
        let edge = edge.clone();
        let (t, h) = visitor.run(move || async move {
            pin_this_thread(cpu)?;
            tls::run(&edge, conns, d, "/").await
        })??;
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Ok((t.per_second(), t.errors, ms(0.50), ms(0.99)))
    };
    // The gateway serves once its view arrived.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match load(&edges[0].1, Duration::from_millis(200)) {
            Ok((per_second, 0, _, _)) if per_second > 0.0 => break,
            _ if std::time::Instant::now() > deadline => {
                anyhow::bail!("the gateway did not serve within 30 s\n{}", gateway.logs())
            }
            _ => std::thread::sleep(Duration::from_millis(300)),
        }
    }
    load(&edges[1].1, Duration::from_millis(500)).context("warming nginx")?;
    let mut measured: Vec<[Vec<f64>; 3]> = vec![Default::default(), Default::default()];
    let mut errors = [0u64; 2];
    for run in 0..runs {
        for i in 0..edges.len() {
            let i = if run % 2 == 0 { i } else { edges.len() - 1 - i };
            let (per_second, errs, p50, p99) = load(&edges[i].1, duration)?;
            eprintln!(
                "  gateway {:<52} {per_second:>8.0} req/s  p50 {p50:.2} ms  p99 {p99:.2} ms",
                edges[i].0
            );
            measured[i][0].push(per_second);
            measured[i][1].push(p50);
            measured[i][2].push(p99);
            errors[i] += errs;
        }
    }
    let spread = |v: &[f64]| {
        Spread::of(v).unwrap_or(Spread {
            median: f64::NAN,
            min: f64::NAN,
            max: f64::NAN,
            runs: 0,
        })
    };
    let rows = edges
        .iter()
        .zip(measured)
        .zip(errors)
        .map(|(((name, _), m), errors)| GatewayRow {
            edge: name.to_string(),
            per_second: spread(&m[0]),
            p50_ms: spread(&m[1]),
            p99_ms: spread(&m[2]),
            errors,
        })
        .collect();
    drop(nginx);
    drop(gateway);
    Ok(GatewayReport {
        connections: conns,
        rows,
    })
}

/// `tls.crt` and `tls.key` (0600, the proxy user's) in a directory of the run.
fn edge_files(work: &WorkDir, cert: &pillion_testkit::pki::EdgeCert) -> Result<std::path::PathBuf> {
    use std::os::unix::fs::{chown, PermissionsExt};
    work.subdir("edge-tls")?;
    let chain = work.write("edge-tls/tls.crt", &cert.chain_pem)?;
    let key = work.write("edge-tls/tls.key", &cert.key_pem)?;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    let dir = chain
        .parent()
        .context("the edge files' directory")?
        .to_path_buf();
    for path in [&dir, &chain, &key] {
        chown(path, Some(PROXY_UID), Some(PROXY_UID))?;
    }
    Ok(dir)
}

/// Pillion's gateway in `pod`, one worker thread, as workload `bench/gateway`.
fn start_gateway(
    opts: &pillion::PairOpts,
    pod: &pillion_tests::Pod,
    agent: &pillion_tests::Pod,
    tls_dir: &Path,
    certs: &Certs,
    work: &WorkDir,
) -> Result<Process> {
    let cmd = pillion::proxy_opts(opts, agent, certs, work, "gateway")?
        .proxy_args([
            "--gateway-https".to_string(),
            format!("0.0.0.0:{PILLION_PORT}"),
            "--gateway-certs".into(),
            tls_dir.display().to_string(),
        ])
        .proxy_cmd();
    let process = pod.spawn(cmd)?;
    wait_listening(
        pod,
        SocketAddr::from(([127, 0, 0, 1], PILLION_PORT)),
        "the gateway",
        &process,
    )?;
    Ok(process)
}

/// nginx as the edge in `pod`, to the application at `server`.
fn start_nginx(
    pod: &pillion_tests::Pod,
    server: std::net::IpAddr,
    tls_dir: &Path,
    work: &WorkDir,
) -> Result<Process> {
    let prefix = work.subdir("nginx-edge")?;
    let p = |path: &Path| path.display().to_string();
    let config = render(
        include_str!("../configs/nginx-edge.conf.tmpl"),
        &[
            ("prefix", p(&prefix)),
            ("server", server.to_string()),
            ("app_http", HTTP_PORT.to_string()),
            ("listen", format!("0.0.0.0:{NGINX_PORT}")),
            ("host", HOST.to_string()),
            ("cert", p(&tls_dir.join("tls.crt"))),
            ("key", p(&tls_dir.join("tls.key"))),
        ],
    )
    .context("rendering the nginx edge template")?;
    let path = work.write("nginx-edge/nginx.conf", &config)?;
    let base = |c: Cmd| {
        c.arg("-p")
            .arg(&prefix)
            .arg("-e")
            .arg(prefix.join("error.log"))
            .arg("-c")
            .arg(&path)
    };
    let out = pod.exec_cmd(
        &base(Cmd::new("nginx")).arg("-t").arg("-q"),
        Duration::from_secs(30),
    )?;
    pillion_tests::process::output_ok(out, "checking the nginx edge config")?;
    let process = pod.spawn(base(Cmd::new("nginx")).args(["-g", "daemon off;"]))?;
    wait_listening(
        pod,
        SocketAddr::from(([127, 0, 0, 1], NGINX_PORT)),
        "nginx",
        &process,
    )?;
    Ok(process)
}

/// The markdown table.
pub fn table(report: &GatewayReport) -> String {
    let mut out = format!(
        "{} keep-alive HTTPS connections (TLS 1.3, HTTP/1.1), `GET /`, one worker each.\n\n\
         | edge | req/s (median) | min–max | p50 ms | p99 ms (median) | p99 min–max | errors |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
        report.connections
    );
    for r in &report.rows {
        out.push_str(&format!(
            "| {} | {:.0} | {:.0}–{:.0} | {:.2} | {:.2} | {:.2}–{:.2} | {} |\n",
            r.edge,
            r.per_second.median,
            r.per_second.min,
            r.per_second.max,
            r.p50_ms.median,
            r.p99_ms.median,
            r.p99_ms.min,
            r.p99_ms.max,
            r.errors
        ));
    }
    out
}
