//! The benchmark's smoke mode end to end, through the real binary, as CI runs it (root,
//! debug build): every row set up, every figure measured once, the report written.
//! nginx and HAProxy must be installed or installable (apt-get); otherwise this fails
//! with the binary's message naming the packages.
#![allow(clippy::unwrap_used)] // A test: a panic with its reason is the report.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Bound of the whole smoke run; it normally takes well under a minute.
const LIMIT: Duration = Duration::from_secs(240);

/// Runs the benchmark binary with `args` (plus `--out DIR`) within [`LIMIT`]: its
/// stdout, and the output folder; panics with its log if it fails.
fn bench(tag: &str, args: &[&str]) -> (String, std::path::PathBuf) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the benchmark smoke test needs root (network namespaces, iptables); CI runs as root"
    );
    let out = std::env::temp_dir().join(format!("pillion-bench-{tag}-{}", std::process::id()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_pillion-benches"))
        .args(args)
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting pillion-benches");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for pillion-benches") {
            break status;
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("pillion-benches {args:?} took over {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let printed = out_reader.join().unwrap_or_default();
    let log = err_reader.join().unwrap_or_default();
    assert!(
        status.success(),
        "pillion-benches {args:?} failed ({status}):\n{log}\n{printed}"
    );
    (printed, out)
}

/// The JSON file `name` the run wrote into `out`, parsed.
fn written_json(out: &std::path::Path, name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(out.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} does not parse: {e}"))
}

#[test]
fn smoke_mode_measures_every_row() {
    let (printed, out) = bench("smoke", &["--smoke"]);
    assert!(
        printed.contains("| figure |"),
        "no table printed:\n{printed}"
    );

    let report = written_json(&out, "bench.json");
    let rows = report["rows"].as_array().expect("rows");
    let names: Vec<&str> = rows.iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(names.len(), 4, "{names:?}");
    assert_eq!(names[0], "direct");
    assert!(names[1].starts_with("Pillion ("), "{names:?}");
    assert_eq!(&names[2..], ["nginx (mTLS)", "HAProxy (mTLS)"]);
    for row in rows {
        let rps = &row["cells"]["http1_rps"];
        assert_eq!(rps["status"], "ok", "{}: {rps}", row["name"]);
        assert!(rps["median"].as_f64().unwrap_or(0.0) > 0.0, "{row}");
        for (id, cell) in row["cells"].as_object().expect("cells") {
            assert_ne!(cell["status"], "failed", "{} {id}: {cell}", row["name"]);
        }
    }
    assert!(report["machine"]["nproc"].as_u64().unwrap_or(0) >= 1);
    assert!(!report["ratios"].as_array().expect("ratios").is_empty());
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn the_discovery_figure_measures_the_pillion_row() {
    let (printed, out) = bench("discovery", &["--discovery", "--smoke"]);
    assert!(
        printed.contains("| figure |"),
        "no table printed:\n{printed}"
    );
    let report = written_json(&out, "bench.json");
    let rows = report["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 1, "the Pillion row only: {rows:?}");
    let cells = rows[0]["cells"].as_object().expect("cells");
    for id in [
        "discovery_client_proxy_rss_mib",
        "discovery_first_request_p99_ms",
        "discovery_known_request_p99_ms",
    ] {
        assert_eq!(cells[id]["status"], "ok", "{id}: {}", cells[id]);
        assert!(cells[id]["median"].as_f64().unwrap_or(0.0) > 0.0, "{id}");
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn the_control_plane_figure_measures_every_size() {
    let (printed, out) = bench("control-plane", &["--control-plane", "--smoke"]);
    assert!(
        printed.contains("| services | proxies |"),
        "no table:\n{printed}"
    );
    let figure = written_json(&out, "control-plane.json");
    let sizes = figure["agent"].as_array().expect("a list of sizes");
    assert_eq!(sizes.len(), 2);
    for size in sizes {
        assert!(
            size["agent_rss_watched_mib"].as_f64().unwrap_or(0.0) > 1.0,
            "{size}"
        );
        let p99 = size["push_p99_ms"].as_f64().unwrap_or(f64::NAN);
        assert!(p99 > 0.0 && p99 < 60_000.0, "{size}");
        // Each mesh size once: a real proxy, ready, in both discovery modes.
        for mode in ["proxy_rss_on_demand_mib", "proxy_rss_full_mib"] {
            assert!(size[mode].as_f64().unwrap_or(0.0) > 1.0, "{mode}: {size}");
        }
    }
    // The Kubernetes source's translation per change, at each mesh size.
    let kubernetes = figure["kubernetes"]
        .as_array()
        .expect("the Kubernetes sizes");
    assert_eq!(kubernetes.len(), 2, "{figure}");
    for size in kubernetes {
        let ms = size["per_change_p50_ms"].as_f64().unwrap_or(f64::NAN);
        assert!(ms > 0.0 && ms < 1_000.0, "{size}");
    }
    assert!(printed.contains("one EndpointSlice change"), "{printed}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn the_token_figure_measures_repeats_and_first_sights() {
    let (printed, out) = bench("jwt", &["--jwt", "--smoke"]);
    assert!(printed.contains("| case |"), "no table:\n{printed}");
    let rows = written_json(&out, "jwt.json");
    let rows = rows.as_array().expect("a list of cases");
    assert_eq!(rows.len(), 8, "{rows:?}");
    for row in rows {
        let ns = row["ns_per_request"].as_f64().unwrap_or(f64::NAN);
        assert!(ns > 0.0 && ns < 10_000_000.0, "{row}");
    }
    // A repeat is served from the cache: far cheaper than a signature.
    let ns = |case: &str| {
        rows.iter()
            .find(|r| r["case"].as_str().is_some_and(|c| c.contains(case)))
            .and_then(|r| r["ns_per_request"].as_f64())
            .unwrap_or(f64::NAN)
    };
    assert!(
        ns("seen before (ES256") * 5.0 < ns("first time (ES256)"),
        "{rows:?}"
    );
    // So is an opaque token the endpoint judged once.
    assert!(
        ns("opaque token seen before") < ns("opaque token the first time"),
        "{rows:?}"
    );
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn the_soak_smoke_fails_no_request_through_a_minute_of_faults() {
    let (printed, out) = bench("soak", &["--soak", "--smoke"]);
    let report = written_json(&out, "soak.json");
    assert_eq!(report["failed"], 0, "{printed}");
    assert!(report["ok"].as_u64().unwrap_or(0) > 3_000, "{printed}");
    assert_eq!(
        report["problems"].as_array().map(Vec::len),
        Some(0),
        "{printed}"
    );
    for fault in ["kill-app", "kill-agent", "rotate-issuer", "restart-pod"] {
        assert!(
            report["faults"][fault].as_u64().unwrap_or(0) >= 1,
            "no {fault}\n{printed}"
        );
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn the_gateway_figure_measures_both_edges() {
    let (printed, out) = bench("gateway", &["--gateway", "--smoke"]);
    assert!(printed.contains("| edge |"), "no table:\n{printed}");
    let report = written_json(&out, "gateway.json");
    let rows = report["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 2, "{rows:?}");
    for row in rows {
        let per_second = row["per_second"]["median"].as_f64().unwrap_or(f64::NAN);
        assert!(per_second > 0.0, "{row}");
        assert_eq!(row["errors"], 0, "{row}");
        let p99 = row["p99_ms"]["median"].as_f64().unwrap_or(f64::NAN);
        assert!(p99 > 0.0 && p99 < 5_000.0, "{row}");
    }
    let _ = std::fs::remove_dir_all(&out);
}
