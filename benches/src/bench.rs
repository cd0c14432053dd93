//! One benchmark run end to end: set-up (tools, certificates, topology), the
//! measurements, and the report with the notes a reader needs to read it honestly.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

use crate::certs::Certs;
use crate::cli::RowName;
use crate::figures;
use crate::install;
use crate::machine::Machine;
use crate::measure;
use crate::pin::Layout;
use crate::plan::Plan;
use crate::report::{self, Report, Row};
use crate::topology::{self, Kind, Topology, TopologyOpts};
use crate::workdir::WorkDir;

/// What the command line asked for.
#[derive(Debug, Clone)]
pub struct Opts {
    /// The short plan instead of the full one.
    pub smoke: bool,
    /// Runs per figure, overriding the plan's.
    pub runs: Option<usize>,
    /// Tokio worker threads per Pillion proxy.
    pub workers: usize,
    /// This program (it runs init, proxy and agent in the pods).
    pub binary: PathBuf,
    /// Keep the scratch directory (configs, logs) after the run.
    pub keep_workdir: bool,
    /// Log filter of the Pillion proxies and the agent.
    pub log_level: String,
    /// Rows to measure; empty means all.
    pub rows: Vec<RowName>,
    /// The shipped proxy binary for the Pillion pair (default: this program's `proxy`).
    pub proxy_binary: Option<PathBuf>,
    /// A proxy binary for a second, baseline Pillion row.
    pub baseline_proxy_binary: Option<PathBuf>,
}

/// Runs the benchmark and returns its report (not yet written anywhere).
pub fn run(opts: &Opts) -> Result<Report> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "needs root: it builds network namespaces and iptables rules (all inside its own \
             private namespaces). Run: sudo cargo run --release -p pillion-benches"
        );
    }
    install::ensure_tools()?;
    raise_open_files();
    let mut machine = Machine::detect();
    let layout = Layout::for_cpus(machine.nproc);
    let mut plan = if opts.smoke {
        Plan::smoke()
    } else {
        Plan::full()
    };
    if let Some(runs) = opts.runs {
        plan.runs = runs.max(1);
    }
    let mut work = WorkDir::create()?;
    if opts.keep_workdir {
        work.keep();
    }
    let certs = Certs::create(&work)?;
    let mut topo = Topology::build(
        &TopologyOpts {
            binary: opts.binary.clone(),
            workers: opts.workers,
            layout,
            log_level: opts.log_level.clone(),
            proxy_binary: opts.proxy_binary.clone(),
            baseline_proxy_binary: opts.baseline_proxy_binary.clone(),
        },
        &certs,
        &work,
    )
    .map_err(|e| {
        work.keep();
        e.context(format!(
            "building the topology (configs and logs kept in {})",
            work.path().display()
        ))
    })?;
    if !opts.rows.is_empty() {
        topo.contenders
            .retain(|c| opts.rows.contains(&RowName::of(c.kind)));
    }
    eprintln!(
        "measuring {} rows, about {:?} each ({} mode); {}",
        topo.contenders.len(),
        plan.estimate_per_row(),
        plan.mode,
        layout.describe()
    );
    let collected = measure::all(&topo.contenders, &plan, &layout);
    machine.finish();
    let figures = figures::all(&plan);
    let mut notes = base_notes(&plan);
    notes.extend(topo.pillion.notes.iter().cloned());
    let mut rows: Vec<Row> = topo
        .contenders
        .iter()
        .zip(&collected)
        .map(|(c, acc)| Row {
            name: c.name.clone(),
            path: c.path.clone(),
            cells: figures
                .iter()
                .map(|f| (f.id.clone(), acc.cell(&f.id)))
                .collect(),
        })
        .collect();
    let pairs = [
        (Kind::Pillion, "Pillion", Some(&topo.pillion)),
        (
            Kind::PillionBaseline,
            "Pillion baseline",
            topo.baseline.as_ref(),
        ),
    ];
    for (kind, name, pair) in pairs {
        let (Some(i), Some(pair)) = (topo.contenders.iter().position(|c| c.kind == kind), pair)
        else {
            continue;
        };
        match topology::pillion_label(name, pair) {
            Ok((label, note)) => {
                rows[i].name = label;
                notes.extend(note);
            }
            Err(e) => {
                rows[i].name = format!("{name} (mesh TLS unknown)");
                notes.push(format!("could not read the {name} proxy's metrics: {e:#}"));
            }
        }
    }
    let ratios = report::ratios(&figures, &rows);
    let setup = vec![
        layout.describe(),
        format!(
            "one worker per proxy: Pillion TOKIO_WORKER_THREADS={}, nginx worker_processes 1, \
             HAProxy nbthread 1; load generator and server: one thread each",
            opts.workers
        ),
        "mesh hop: TLS 1.3 with a client certificate for every proxied row, one CA \
         (Pillion's own, pillion_identity::Ca) for all"
            .into(),
        match &opts.proxy_binary {
            Some(binary) => format!(
                "Pillion proxies: the shipped binary {}{}",
                binary.display(),
                opts.baseline_proxy_binary
                    .as_ref()
                    .map_or_else(String::new, |b| format!("; baseline row: {}", b.display()))
            ),
            None => "Pillion proxies: this program's built-in proxy (the multicall binary is \
                     larger than pillion-proxy, so its RSS reads higher; --proxy-binary \
                     target/release/pillion-proxy measures what ships)"
                .into(),
        },
    ];
    drop(topo);
    Ok(Report {
        finished_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        machine,
        setup,
        plan,
        figures,
        rows,
        ratios,
        notes,
    })
}

/// Raises the open-files soft limit to the hard limit (the memory figure holds a
/// thousand connections in this process).
fn raise_open_files() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

/// What every report says about method, so no figure is read for more than it is.
fn base_notes(plan: &Plan) -> Vec<String> {
    vec![
        "Pillion's client dials the server pod's address and iptables redirects it into \
         the proxy; the nginx and HAProxy clients dial 127.0.0.1 of their own pod's proxy \
         (explicit outbound), as those products are deployed as sidecars without a \
         transparent redirect. The redirect's cost is therefore in Pillion's figures only."
            .into(),
        "nginx does not verify the server pod's certificate on the mesh hop (it checks a DNS \
         name whenever it verifies, and the mesh leaves carry only a SPIFFE URI SAN); HAProxy \
         verifies its chain without a name; Pillion verifies the chain and the SPIFFE id. The \
         inbound side of each pair requires and verifies the client certificate's chain."
            .into(),
        "All three pairs pool the mesh hop's keep-alive connections for HTTP (Pillion keeps the \
         client's HTTP version on that hop by default), so in the new-connection figure only the \
         client's side makes a new TCP connection per request; Pillion's also passes iptables' \
         redirect (a new conntrack + NAT entry) for each."
            .into(),
        "HTTP/2: the client speaks h2c with prior knowledge to every row. Pillion and direct \
         carry HTTP/2 end to end; nginx and HAProxy end it at the outbound proxy and use \
         HTTP/1.1 on the mesh hop and to the app (nginx's proxy module has no HTTP/2 upstream; \
         HAProxy is configured the same way as nginx)."
            .into(),
        format!(
            "latency: open loop at a fixed rate over {} keep-alive connections; each request is \
             timed from its intended send time (coordinated omission corrected, HdrHistogram), \
             so a stall counts against every request it delayed.",
            plan.h1_conns
        ),
        "memory: VmRSS summed over both sides' proxy processes (nginx: master and worker); \
         peak is the sum of each process's VmHWM. CPU: utime + stime of the same processes \
         during the HTTP/1.1 max-rate runs, per 10,000 requests. Packet processing in \
         softirq is billed to no process, so the machine figure (all of /proc/stat but \
         idle, same runs) is the one that cannot hide work: a row's extra over direct is \
         what its proxies really cost."
            .into(),
        format!(
            "open connections: {} client connections each with one request, so the whole path \
             exists; each concurrent HTTP/1.1 request holds a mesh-hop connection of its own in \
             every pair (Pillion's --mesh-protocol http2 would hold one).",
            plan.hold_conns
        ),
        format!(
            "view push (Pillion rows, measured last): the agent's source gains {} services, each \
             a VIP with one meshed endpoint (the client proxy's whole view grows to a few MB); a \
             probe at {} req/s over {} connections runs {:?} before the push (its p99 is the \
             steady figure) and {:?} across it; the figure is the probe's longest answer \
             (coordinated omission corrected), i.e. how long the push paused traffic. The small \
             view is restored after each run, unmeasured.",
            plan.push_services,
            plan.push_rate,
            plan.h1_conns,
            plan.push_window,
            plan.push_window * 2
        ),
    ]
}

/// The default output directory: `target/bench` of the workspace.
pub fn default_out() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(
            || PathBuf::from("target/bench"),
            |ws| ws.join("target/bench"),
        )
}

/// Writes the report and prints the markdown.
pub fn publish(report: &Report, out: &std::path::Path) -> Result<()> {
    let (md, json) = report.write(out).context("writing the report")?;
    println!("{}", report::markdown(report));
    eprintln!("wrote {} and {}", md.display(), json.display());
    Ok(())
}
