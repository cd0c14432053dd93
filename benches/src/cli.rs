//! The binary's edge: the pods' programs (`init`, `proxy`, `agent`) by first argument,
//! otherwise the benchmark's flags, the run, the report and the exit code.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use crate::bench::{self, Opts};
use crate::load::flood;
use crate::topology::{Kind, Peer};

/// Pillion side by side: direct, the Pillion pair, an nginx pair and an HAProxy pair,
/// in private network namespaces. Needs root.
#[derive(Debug, Parser)]
#[command(name = "pillion-benches")]
pub struct Args {
    /// One short run of each figure (seconds in all), for tests and CI.
    #[arg(long)]
    pub smoke: bool,
    /// Where bench.md and bench.json go (default: the workspace's target/bench).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Runs per figure (default: 3, or 1 with --smoke).
    #[arg(long)]
    pub runs: Option<usize>,
    /// Tokio worker threads of each Pillion proxy (nginx and HAProxy run one worker).
    #[arg(long, default_value_t = 1)]
    pub proxy_workers: usize,
    /// Log filter of the Pillion proxies and the agent (RUST_LOG syntax); `warn` keeps
    /// logging out of the figures.
    #[arg(long, default_value = "warn")]
    pub proxy_log_level: String,
    /// Keep the scratch directory (certificates, configs, peer logs) after the run.
    #[arg(long)]
    pub keep_workdir: bool,
    /// Measure only these rows (comma-separated: direct, pillion, nginx, haproxy), e.g.
    /// for a quick before/after of one proxy or a profile; the default is all four.
    #[arg(long, value_delimiter = ',', value_name = "ROW")]
    pub rows: Vec<RowName>,
    /// Run the Pillion pair's proxies from this binary (the shipped
    /// target/release/pillion-proxy) instead of this program's built-in `proxy`; the
    /// report says which ran.
    #[arg(long, value_name = "PATH")]
    pub proxy_binary: Option<PathBuf>,
    /// Add a second Pillion row run from this proxy binary (e.g. the build before a
    /// change), so before and after are measured in one run on the same machine.
    #[arg(long, value_name = "PATH")]
    pub baseline_proxy_binary: Option<PathBuf>,
    /// Measure the flood figure instead of the others (Pillion rows, and direct as the
    /// floor): 10,000 idle and 1,000 slow-header connections at the server pod while
    /// traffic runs through the pair; the server-side proxy's RSS, descriptors and the
    /// traffic's p99 before, during and 30 s after (about 70 s per row and run; tiny
    /// with --smoke).
    #[arg(long)]
    pub flood: bool,
    /// Open the flood's connections at this many per second (default 0: as fast as
    /// the flood client can, 256 connects in flight), e.g. to tell the proxy's share
    /// of a stall from the flood client's own, which shares the client pod's CPU.
    #[arg(long, value_name = "PER_SECOND", default_value_t = 0)]
    pub flood_open_rate: u32,
    /// Run the flood client at the load generator's priority. By default it runs
    /// SCHED_IDLE: an attacker's CPU is not the victim's, and on a small machine the
    /// flood client shares a CPU with the load generator, whose delays would
    /// otherwise be counted as the proxy's (the direct row shows that floor).
    #[arg(long)]
    pub flood_same_priority: bool,
    /// Measure the discovery figure instead of the others (Pillion rows): the mesh
    /// grows to 20,000 services (300 with --smoke), the client calls 10 of them; the
    /// client proxy's RSS, and the first and second request to 200 more. Compare
    /// on-demand with full in one run: --baseline-proxy-binary (the same binary)
    /// --baseline-proxy-env PILLION_DISCOVERY=full.
    #[arg(long, conflicts_with = "flood")]
    pub discovery: bool,
    /// Measure the control plane instead: the agent in a pod against simulated
    /// proxies (a TLS connection, an on-demand watch and 10 answer streams each),
    /// at 10 / 1,000 / 20,000 / 100,000 services and 10 / 1,000 proxies (with
    /// --smoke: 10 × 10 and 1,000 × 50): the agent's RSS, its CPU per change and
    /// how long a change takes to reach every proxy. Writes control-plane.md/.json.
    #[arg(long, conflicts_with_all = ["flood", "discovery"])]
    pub control_plane: bool,
    /// Run the fault soak instead: 1,000 req/s over three services with retry routes
    /// for 10 minutes (with --smoke: 300 req/s for 60 s) while backend apps, an agent
    /// and a backend pod are killed and come back, the issuer rotates and the policy
    /// is rewritten every 3 s; fails unless no request failed, no process exited by
    /// itself, every leaf was renewed in time and memory stayed flat. Writes
    /// soak.md/.json.
    #[arg(long, conflicts_with_all = ["flood", "discovery", "control_plane"])]
    pub soak: bool,
    /// Measure the end-user token check instead, in process: the proxy's per-request
    /// cost for a token seen before (the cache; target ≤ 2 µs) and for tokens seen
    /// the first time, per algorithm. Writes jwt.md/.json.
    #[arg(long, conflicts_with_all = ["flood", "discovery", "control_plane", "soak"])]
    pub jwt: bool,
    /// Measure the response cache instead, through one Pillion pair: requests per
    /// second of hits, of misses (a cached route whose answers cannot be kept) and
    /// of the default route, then the client proxy's memory as 4× its cache bound
    /// of distinct answers goes through, twice. Writes cache.md/.json.
    #[arg(long, conflicts_with_all = ["flood", "discovery", "control_plane", "soak", "jwt"])]
    pub cache: bool,
    /// Measure the gateway instead: HTTPS requests per second and latency from a
    /// visitor outside the mesh through Pillion's gateway (then mTLS to the server's
    /// sidecar) and through nginx as the edge with the same certificate. Writes
    /// gateway.md/.json.
    #[arg(long, conflicts_with_all = ["flood", "discovery", "control_plane", "soak", "jwt", "cache"])]
    pub gateway: bool,
    /// The soak's length instead of 10 minutes (or 60 s), e.g. 30m.
    #[arg(long, value_name = "DURATION", value_parser = pillion::local::up::parse_duration)]
    pub soak_duration: Option<std::time::Duration>,
    /// The soak's requests per second instead of 1,000 (or 300).
    #[arg(long, value_name = "PER_SECOND")]
    pub soak_rate: Option<u32>,
    /// The soak's fault schedule seed (printed by every run), to replay one.
    #[arg(long, value_name = "SEED")]
    pub soak_seed: Option<u64>,
    /// KEY=VALUE in the Pillion row's proxies' environment only (repeatable), e.g.
    /// GLIBC_TUNABLES=glibc.malloc.trim_threshold=131072; the benchmark itself does not
    /// run with it.
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_env)]
    pub proxy_env: Vec<(String, String)>,
    /// KEY=VALUE in the baseline row's proxies' environment only (repeatable).
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_env)]
    pub baseline_proxy_env: Vec<(String, String)>,
}

/// `KEY=VALUE` split at the first `=`; the key must be non-empty.
fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

/// A row the command line can pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RowName {
    /// No proxy.
    Direct,
    /// The Pillion pair.
    Pillion,
    /// The baseline Pillion pair (--baseline-proxy-binary).
    Baseline,
    /// The nginx pair.
    Nginx,
    /// The HAProxy pair.
    Haproxy,
}

/// Runs the program named by `args[1]` if it is one the pods use (or the flood
/// client); `None` otherwise.
pub fn dispatch_program(args: &[OsString]) -> Option<ExitCode> {
    if args.get(1).is_some_and(|a| a == flood::PROGRAM) {
        return Some(flood::main_with_args(args[1..].to_vec()));
    }
    pillion::programs::dispatch(args.to_vec())
}

impl RowName {
    /// The name of a row of the topology.
    pub fn of(kind: Kind) -> RowName {
        match kind {
            Kind::Direct => RowName::Direct,
            Kind::Pillion => RowName::Pillion,
            Kind::PillionBaseline => RowName::Baseline,
            Kind::Peer(Peer::Nginx) => RowName::Nginx,
            Kind::Peer(Peer::Haproxy) => RowName::Haproxy,
        }
    }
}

/// The whole binary.
pub fn main_with_args(args: Vec<OsString>) -> ExitCode {
    if let Some(code) = dispatch_program(&args) {
        return code;
    }
    let parsed = match Args::try_parse_from(&args) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let binary = match std::env::current_exe() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("pillion-benches: cannot find my own executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The pods run them from elsewhere (as the proxy user): absolute paths, checked now.
    let proxy_binary = match absolute("--proxy-binary", parsed.proxy_binary.as_deref()) {
        Ok(path) => path,
        Err(code) => return code,
    };
    let baseline_proxy_binary = match absolute(
        "--baseline-proxy-binary",
        parsed.baseline_proxy_binary.as_deref(),
    ) {
        Ok(path) => path,
        Err(code) => return code,
    };
    let opts = Opts {
        smoke: parsed.smoke,
        runs: parsed.runs,
        workers: parsed.proxy_workers.max(1),
        keep_workdir: parsed.keep_workdir,
        log_level: parsed.proxy_log_level,
        rows: parsed.rows,
        proxy_binary,
        baseline_proxy_binary,
        binary,
        flood: parsed.flood,
        discovery: parsed.discovery,
        flood_open_rate: parsed.flood_open_rate,
        flood_same_priority: parsed.flood_same_priority,
        proxy_env: parsed.proxy_env,
        baseline_proxy_env: parsed.baseline_proxy_env,
    };
    let out = parsed.out.unwrap_or_else(bench::default_out);
    if parsed.control_plane {
        return control_plane(&opts, &out);
    }
    if parsed.jwt {
        return jwt(opts.smoke, &out);
    }
    if parsed.cache {
        return cache(&opts, &out);
    }
    if parsed.gateway {
        return gateway(&opts, &out);
    }
    if parsed.soak {
        let seed = parsed.soak_seed.unwrap_or_else(crate::soak::clock_seed);
        let mut plan = if opts.smoke {
            crate::soak::SoakPlan::smoke(seed)
        } else {
            crate::soak::SoakPlan::full(seed)
        };
        plan.duration = parsed.soak_duration.unwrap_or(plan.duration);
        plan.rate = parsed.soak_rate.unwrap_or(plan.rate);
        return soak(&opts, &plan, &out);
    }
    let report = match bench::run(&opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pillion-benches: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = bench::publish(&report, &out) {
        eprintln!("pillion-benches: {e:#}");
        return ExitCode::FAILURE;
    }
    if report.has_failures() {
        eprintln!("pillion-benches: some figures failed (see the table)");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// The control-plane figure: measured, printed, written to `out`.
fn control_plane(opts: &Opts, out: &std::path::Path) -> ExitCode {
    let measured = crate::control_plane::run(&opts.binary, opts.smoke, &opts.log_level);
    let sizes = match measured {
        Ok(sizes) => sizes,
        Err(e) => {
            eprintln!("pillion-benches: the control-plane figure failed: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let mut meshes: Vec<usize> = sizes.iter().map(|s| s.services).collect();
    meshes.dedup();
    let kubernetes = match crate::kube_translate::run(&meshes) {
        Ok(kubernetes) => kubernetes,
        Err(e) => {
            eprintln!("pillion-benches: the Kubernetes translation figure failed: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let table = format!(
        "{}\n{}",
        crate::control_plane::table(&sizes),
        crate::kube_translate::table(&kubernetes)
    );
    println!("{table}");
    let value = serde_json::json!({"agent": sizes, "kubernetes": kubernetes});
    match write_both(out, "control-plane", &table, &value) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pillion-benches: writing to {}: {e}", out.display());
            ExitCode::FAILURE
        }
    }
}

/// The token figure: measured, printed, written to `out`.
fn jwt(smoke: bool, out: &std::path::Path) -> ExitCode {
    let rows = match crate::jwt::run(smoke) {
        Ok(rows) => rows,
        Err(e) => {
            eprintln!("pillion-benches: the token figure failed: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let table = crate::jwt::table(&rows);
    println!("{table}");
    match write_both(out, "jwt", &table, &rows) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pillion-benches: writing to {}: {e}", out.display());
            ExitCode::FAILURE
        }
    }
}

/// The cache figure: measured, printed, written to `out`; fails below the target.
fn cache(opts: &Opts, out: &std::path::Path) -> ExitCode {
    let report = match crate::cache::run(&opts.binary, opts.smoke, &opts.log_level) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("pillion-benches: the cache figure failed: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let table = crate::cache::table(&report);
    println!("{table}");
    if let Err(e) = write_both(out, "cache", &table, &report) {
        eprintln!("pillion-benches: writing to {}: {e}", out.display());
        return ExitCode::FAILURE;
    }
    if report.hit_over_miss >= crate::cache::HIT_OVER_MISS_TARGET {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "pillion-benches: a hit is not {}× a miss",
            crate::cache::HIT_OVER_MISS_TARGET
        );
        ExitCode::FAILURE
    }
}

/// The gateway figure: measured, printed, written to `out`; fails if a request failed.
fn gateway(opts: &Opts, out: &std::path::Path) -> ExitCode {
    let report = match crate::gateway::run(&opts.binary, opts.smoke, &opts.log_level) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("pillion-benches: the gateway figure failed: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let table = crate::gateway::table(&report);
    println!("{table}");
    if let Err(e) = write_both(out, "gateway", &table, &report) {
        eprintln!("pillion-benches: writing to {}: {e}", out.display());
        return ExitCode::FAILURE;
    }
    if report.rows.iter().all(|r| r.errors == 0) {
        ExitCode::SUCCESS
    } else {
        eprintln!("pillion-benches: requests through an edge failed");
        ExitCode::FAILURE
    }
}

/// The fault soak: run, printed, written to `out`; fails unless everything held.
fn soak(opts: &Opts, plan: &crate::soak::SoakPlan, out: &std::path::Path) -> ExitCode {
    eprintln!(
        "soak: {} s at {} req/s, seed {}",
        plan.duration.as_secs(),
        plan.rate,
        plan.seed
    );
    let report = match crate::soak::run(&opts.binary, plan, &opts.log_level) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("pillion-benches: the soak failed to run: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let table = crate::soak::table(plan, &report);
    println!("{table}");
    if let Err(e) = write_both(out, "soak", &table, &report) {
        eprintln!("pillion-benches: writing to {}: {e}", out.display());
        return ExitCode::FAILURE;
    }
    if report.problems.is_empty() {
        return ExitCode::SUCCESS;
    }
    for (name, logs) in &report.logs {
        let file = out.join(format!("soak-{}.log", name.replace([' ', '(', ')'], "")));
        let _ = std::fs::write(file, logs);
    }
    eprintln!(
        "pillion-benches: the soak did not hold (see NOT MET; the logs are in {})",
        out.display()
    );
    ExitCode::FAILURE
}

/// Writes `name`.md and `name`.json into `out`.
fn write_both(
    out: &std::path::Path,
    name: &str,
    table: &str,
    value: &impl serde::Serialize,
) -> std::io::Result<()> {
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join(format!("{name}.md")), table)?;
    let json = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
    std::fs::write(out.join(format!("{name}.json")), json)?;
    eprintln!("wrote {}/{name}.md and .json", out.display());
    Ok(())
}

/// `path` made absolute, or the exit code after saying what is wrong with it.
fn absolute(flag: &str, path: Option<&std::path::Path>) -> Result<Option<PathBuf>, ExitCode> {
    match path.map(std::fs::canonicalize) {
        None => Ok(None),
        Some(Ok(path)) => Ok(Some(path)),
        Some(Err(e)) => {
            eprintln!(
                "pillion-benches: {flag} {}: {e} (build it with cargo build --release -p pillion-proxy)",
                path.unwrap_or(std::path::Path::new("")).display()
            );
            Err(ExitCode::from(2))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn runs_the_pods_programs() {
        for program in ["agent", "proxy", "init"] {
            assert_eq!(
                dispatch_program(&os(&["bench", program, "--help"])),
                Some(ExitCode::SUCCESS),
                "{program}"
            );
        }
        assert_eq!(dispatch_program(&os(&["bench", "--smoke"])), None);
        assert_eq!(
            dispatch_program(&os(&["bench", "flood-client", "--help"])),
            Some(ExitCode::SUCCESS)
        );
    }

    #[test]
    fn flags() {
        let a = Args::try_parse_from(["b", "--smoke", "--out", "/x", "--runs", "5"]).unwrap();
        assert!(a.smoke);
        assert_eq!(a.runs, Some(5));
        assert_eq!(a.proxy_workers, 1);
        assert!(a.rows.is_empty());
        let a = Args::try_parse_from(["b", "--rows", "pillion,direct"]).unwrap();
        assert_eq!(a.rows, vec![RowName::Pillion, RowName::Direct]);
        assert!(Args::try_parse_from(["b", "--rows", "envoy"]).is_err());
        let a = Args::try_parse_from(["b", "--proxy-binary", "/p"]).unwrap();
        assert_eq!(a.proxy_binary, Some(PathBuf::from("/p")));
        assert!(Args::try_parse_from(["b", "--bogus"]).is_err());
        let a = Args::try_parse_from([
            "b",
            "--flood",
            "--proxy-env",
            "GLIBC_TUNABLES=glibc.malloc.arena_max=2:glibc.malloc.trim_threshold=0",
            "--baseline-proxy-env",
            "A=",
        ])
        .unwrap();
        assert!(a.flood);
        assert_eq!(
            a.proxy_env,
            vec![(
                "GLIBC_TUNABLES".to_string(),
                "glibc.malloc.arena_max=2:glibc.malloc.trim_threshold=0".to_string()
            )]
        );
        assert_eq!(a.baseline_proxy_env, vec![("A".into(), String::new())]);
        assert!(Args::try_parse_from(["b", "--proxy-env", "=x"]).is_err());
    }
}
