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
    /// Measure the flood figure instead of the others.
    pub flood: bool,
    /// Measure the discovery figure instead of the others.
    pub discovery: bool,
    /// Connections the flood opens per second (0: as fast as it can).
    pub flood_open_rate: u32,
    /// `--flood-same-priority`: the flood client is not SCHED_IDLE.
    pub flood_same_priority: bool,
    /// Extra environment of the Pillion row's proxies only.
    pub proxy_env: Vec<(String, String)>,
    /// Extra environment of the baseline row's proxies only.
    pub baseline_proxy_env: Vec<(String, String)>,
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
    if opts.flood {
        plan = plan.with_flood(opts.flood_open_rate, !opts.flood_same_priority);
    }
    if opts.discovery {
        plan = plan.with_discovery();
    }
    let mut work = WorkDir::create()?;
    if opts.keep_workdir {
        work.keep();
    }
    let certs = Certs::create(&work)?;
    let topo_opts = TopologyOpts {
        binary: opts.binary.clone(),
        workers: opts.workers,
        layout,
        log_level: opts.log_level.clone(),
        proxy_binary: opts.proxy_binary.clone(),
        baseline_proxy_binary: opts.baseline_proxy_binary.clone(),
        proxy_env: opts.proxy_env.clone(),
        baseline_proxy_env: opts.baseline_proxy_env.clone(),
        // The flood and discovery figures are the Pillion pairs' only.
        peers: !opts.flood && !opts.discovery,
    };
    let build = |work: &WorkDir| -> Result<Topology> {
        let mut topo = Topology::build(&topo_opts, &certs, work)?;
        if !opts.rows.is_empty() {
            topo.contenders
                .retain(|c| opts.rows.contains(&RowName::of(c.kind)));
        } else if opts.flood {
            topo.contenders
                .retain(|c| c.server_proxy.is_some() || c.kind == Kind::Direct);
        } else if opts.discovery {
            topo.contenders.retain(|c| c.view.is_some());
        }
        Ok(topo)
    };
    let mut topo = build(&work).map_err(|e| {
        work.keep();
        e.context(format!(
            "building the topology (configs and logs kept in {})",
            work.path().display()
        ))
    })?;
    eprintln!(
        "measuring {} rows, about {:?} each ({} mode); {}",
        topo.contenders.len(),
        plan.estimate_per_row(),
        plan.mode,
        layout.describe()
    );
    let (collected, flood_traces, figures, mut notes) = match (&plan.flood, &plan.discovery) {
        (None, Some(discovery)) => {
            let mut collected = crate::discovery::collectors(&topo.contenders, discovery);
            for run in 1..=plan.runs {
                if run > 1 {
                    // Every run meets proxies that have never seen the large mesh.
                    drop(topo);
                    topo = build(&work).context("rebuilding the topology for the next run")?;
                }
                crate::discovery::run(&topo.contenders, discovery, layout.client, &mut collected);
            }
            let notes = vec![crate::discovery::NOTE.to_string()];
            (collected, Vec::new(), figures::discovery(discovery), notes)
        }
        (Some(flood), _) => {
            let mut collected = crate::flood::collectors(&topo.contenders, flood);
            let mut traces = Vec::new();
            for run in 1..=plan.runs {
                if run > 1 {
                    // Every run meets proxies that have never seen a flood.
                    drop(topo);
                    topo = build(&work).context("rebuilding the topology for the next run")?;
                }
                let pod = &topo.flood_from;
                let run = crate::flood::Run::new(run, plan.runs, &opts.binary, &layout);
                run.all(
                    &topo.contenders,
                    pod,
                    flood,
                    plan.h1_conns,
                    &mut collected,
                    &mut traces,
                );
            }
            (collected, traces, figures::flood(flood), flood_notes(&plan))
        }
        (None, None) => (
            measure::all(&topo.contenders, &plan, &layout),
            Vec::new(),
            figures::all(&plan),
            base_notes(&plan),
        ),
    };
    machine.finish();
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
        proxy_env_line(opts),
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
        flood_traces,
    })
}

/// The set-up line naming the extra environment each Pillion row's proxies ran with.
fn proxy_env_line(opts: &Opts) -> String {
    let show = |env: &[(String, String)]| {
        if env.is_empty() {
            "nothing extra".to_string()
        } else {
            env.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        }
    };
    let mut line = format!("Pillion proxies' environment: {}", show(&opts.proxy_env));
    if opts.baseline_proxy_binary.is_some() {
        line.push_str(&format!(
            "; baseline row: {}",
            show(&opts.baseline_proxy_env)
        ));
    }
    line
}

/// What the flood figure's report says about its method.
fn flood_notes(plan: &Plan) -> Vec<String> {
    let Some(f) = &plan.flood else {
        return Vec::new();
    };
    vec![
        format!(
            "flood: {} idle connections (nothing sent) and {} slow-header ones (`GET / \
             HTTP/1.1`, `Host`, then one byte of a header every {:?}) from a process of \
             their own in the unmeshed client pod (pinned to the client pod's CPU, {}), \
             at the server pod's service port: each meets the server pod's inbound proxy \
             (iptables redirect) as a plaintext caller; at most 256 connects in flight, 5 s \
             each, {}. Only the server-side proxy's memory and descriptors are read; the \
             direct row floods the server itself (no proxy: the floor).",
            f.idle,
            f.slow,
            f.drip,
            if f.idle_priority {
                "at SCHED_IDLE priority: it takes only CPU the load generator leaves"
            } else {
                "at the load generator's priority (--flood-same-priority)"
            },
            match f.open_rate {
                0 => "opened as fast as the client can".to_string(),
                rate => format!("{rate} opened per second"),
            }
        ),
        format!(
            "traffic: open loop at {} req/s over {} keep-alive connections from the meshed \
             client pod through both proxies, coordinated omission corrected: {:?} alone \
             (steady p99), then {:?} starting {:?} before the flood (p99 during; the flood \
             is closed when it ends).",
            f.rate,
            plan.h1_conns,
            f.steady,
            f.during,
            crate::flood::LEAD
        ),
        format!(
            "memory: VmRSS of the server-side proxy idle (before the steady traffic), the \
             highest of its samples every 0.5 s during the flood, and {:?} after every flood \
             connection was closed (the JSON keeps every sample). Closed by the proxy: flood \
             connections the proxy closed or reset before the client closed them; refused: \
             connects that failed or took over 5 s. Rows alternate their order run by run.",
            f.after
        ),
    ]
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
             a VIP with one meshed endpoint (a proxy with --discovery full takes them all, a few \
             MB of view; one with on-demand discovery, the default, takes none of them: its \
             workload calls none, and the push is checked by resolving the last one); a \
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
