//! Self-tests of the test world: pods reach each other, the root namespace is never
//! touched, and nothing outlives a world.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Duration;

use pillion_tests::apps::{self, App};
use pillion_tests::marker::{self, MARKER_VAR};
use pillion_tests::{rules, Cmd, Signal, World};

use crate::common::within;

const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn two_pods_reach_each_other_over_ipv4_and_ipv6() {
    let world = World::new("two_pods").unwrap();
    let a = world.pod("a").unwrap();
    let b = world.pod("b").unwrap();
    assert_eq!(a.ipv4().to_string(), "198.18.0.2");
    assert_eq!(b.ipv6().to_string(), "2001:2::3");
    let addrs = a
        .exec_ok(["ip", "-o", "addr", "show", "dev", "eth0"])
        .unwrap();
    assert!(
        addrs.contains("198.18.0.2/24") && addrs.contains("2001:2::2/64"),
        "{addrs}"
    );

    let _server = apps::spawn_server(&b, 7000, App::Echo).unwrap();
    let data = apps::random_bytes(1 << 20, 42);
    for target in [b.addr_v4(7000), b.addr_v6(7000)] {
        let sent = data.clone();
        let back = a
            .run(move || async move {
                within(LIMIT, "round trip", apps::echo_roundtrip(target, &sent)).await
            })
            .unwrap()
            .unwrap();
        assert_eq!(back.len(), data.len(), "to {target}");
        assert_eq!(apps::checksum(&back), apps::checksum(&data), "to {target}");
    }
}

#[test]
fn in_process_code_and_processes_land_in_the_pod() {
    let world = World::new("lands_in_pod").unwrap();
    let a = world.pod("a").unwrap();
    let pod_ns = fs::metadata(a.netns_path()).unwrap().ino();
    let root_ns = fs::metadata("/proc/self/ns/net").unwrap().ino();
    assert_ne!(pod_ns, root_ns);

    let thread_ns = a
        .run(|| async { fs::metadata("/proc/thread-self/ns/net").map(|m| m.ino()) })
        .unwrap()
        .unwrap();
    assert_eq!(thread_ns, pod_ns);
    // The calling thread never moved.
    assert_eq!(
        fs::metadata("/proc/thread-self/ns/net").unwrap().ino(),
        root_ns
    );

    let cmd = Cmd::new("sh")
        .args(["-c", "id -u; id -G; echo to-stderr >&2; exec sleep 60"])
        .env("EXTRA", "1")
        .user(2580, 2581);
    let p = a.spawn(cmd).unwrap();
    let mut logs = p.logs();
    for _ in 0..200 {
        if logs.stderr.contains("to-stderr") {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
        logs = p.logs();
    }
    assert_eq!(logs.stdout, "2580\n2581\n", "{logs}");
    let proc_ns = fs::metadata(format!("/proc/{}/ns/net", p.pid()))
        .unwrap()
        .ino();
    assert_eq!(
        proc_ns, pod_ns,
        "the spawned PID is the program, in the pod"
    );
    let environ = fs::read(format!("/proc/{}/environ", p.pid())).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(environ.contains(&format!("{MARKER_VAR}={}", world.marker())));
    assert!(environ.contains("EXTRA=1"));

    p.signal(Signal::SIGTERM).unwrap();
    let status = p
        .wait_timeout(Duration::from_secs(5))
        .expect("sleep exits on SIGTERM");
    assert!(!status.success());
    assert!(p.signal(Signal::SIGTERM).is_err(), "no signals after exit");
}

/// What the harness could possibly create, as seen from one namespace.
#[derive(Debug, PartialEq, Eq)]
struct Footprint {
    links: BTreeSet<String>,
    addrs: BTreeSet<String>,
    routes: BTreeSet<String>,
    rules: BTreeSet<String>,
}

fn is_ours(line: &str) -> bool {
    let l = line.to_ascii_lowercase();
    ["198.18.", "2001:2:", "15001", "15006", "pillion"]
        .iter()
        .any(|needle| l.contains(needle))
}

fn is_our_link(line: &str) -> bool {
    // "7: v2@if3: <...>" -> "v2"
    let name = line.split(':').nth(1).unwrap_or("").trim();
    let name = name.split('@').next().unwrap_or("");
    let numbered = |p: char| {
        name.strip_prefix(p)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    name == "br0" || numbered('v') || numbered('p')
}

/// `run(program, args)` returns stdout; the same probe works on the host and in a pod.
fn footprint(run: &dyn Fn(&str, &[&str]) -> String) -> Footprint {
    let lines = |prog: &str, args: &[&str], keep: &dyn Fn(&str) -> bool| -> BTreeSet<String> {
        run(prog, args)
            .lines()
            .filter(|l| keep(l))
            .map(|l| l.trim().to_string())
            .collect()
    };
    let mut rules = BTreeSet::new();
    for save in [
        "iptables-save",
        "ip6tables-save",
        "iptables-legacy-save",
        "ip6tables-legacy-save",
    ] {
        rules.extend(
            rules::normalize_save(&run(save, &[]))
                .lines()
                .filter(|l| is_ours(l))
                .map(|l| format!("{save}: {l}")),
        );
    }
    Footprint {
        links: lines("ip", &["-o", "link"], &is_our_link),
        addrs: lines("ip", &["-o", "addr"], &is_ours),
        routes: lines("ip", &["route", "show", "table", "all"], &is_ours)
            .into_iter()
            .chain(lines(
                "ip",
                &["-6", "route", "show", "table", "all"],
                &is_ours,
            ))
            .collect(),
        rules,
    }
}

/// Reads the root namespace (read-only commands).
fn host_footprint() -> (Footprint, BTreeSet<String>) {
    let run = |prog: &str, args: &[&str]| {
        Command::new(prog)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let mut netns: BTreeSet<String> = fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("pt"))
                .collect()
        })
        .unwrap_or_default();
    // Named-netns mounts (and the /run/netns bind `ip netns` makes) in our mount table.
    netns.extend(
        fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("/run/netns") || l.contains(" nsfs "))
            .map(|l| format!("mount: {l}")),
    );
    (footprint(&run), netns)
}

#[test]
fn the_root_namespace_is_never_touched() {
    let before = host_footprint();
    {
        let world = World::new("root_untouched").unwrap();
        let a = world.pod("a").unwrap();
        let b = world.pod("b").unwrap();
        // Rules of both backends, like init would write, inside pod a.
        for tool in [
            "iptables",
            "ip6tables",
            "iptables-legacy",
            "ip6tables-legacy",
        ] {
            let rule = "-t nat -A OUTPUT -p tcp --dport 15001 -m comment --comment pillion-selftest -j RETURN";
            a.exec_ok(std::iter::once(tool).chain(rule.split(' ')))
                .unwrap();
        }
        let _server = apps::spawn_server(&b, 7000, App::Echo).unwrap();
        let target = b.addr_v4(7000);
        a.run(move || async move { apps::echo_roundtrip(target, b"ping").await })
            .unwrap()
            .unwrap();

        // The probe does see all of that from inside the world...
        let in_pod = footprint(&|prog, args| {
            let mut argv = vec![prog];
            argv.extend_from_slice(args);
            String::from_utf8_lossy(&a.exec(argv).unwrap().stdout).into_owned()
        });
        assert!(
            in_pod.addrs.iter().any(|l| l.contains("198.18.0.2/24")),
            "{in_pod:?}"
        );
        assert!(
            in_pod.addrs.iter().any(|l| l.contains("2001:2::2/64")),
            "{in_pod:?}"
        );
        assert!(in_pod
            .routes
            .iter()
            .any(|l| l.contains("default via 198.18.0.1")));
        assert_eq!(in_pod.rules.len(), 4, "{:?}", in_pod.rules);
        let in_node = footprint(&|prog, args| {
            String::from_utf8_lossy(&world.exec_node(prog, args).unwrap().stdout).into_owned()
        });
        assert!(
            in_node.links.iter().any(|l| l.contains("br0")),
            "{in_node:?}"
        );
        assert!(
            in_node.links.iter().any(|l| l.contains(" v2@")),
            "{in_node:?}"
        );
        let node_netns = world.exec_node("ls", ["/run/netns"]).unwrap();
        assert!(String::from_utf8_lossy(&node_netns.stdout).contains(a.netns()));

        // ...while the host sees none of it, during the world's life...
        assert_eq!(host_footprint(), before);
    }
    // ...and after.
    assert_eq!(host_footprint(), before);
}

#[test]
fn dropping_a_world_removes_its_processes() {
    let world = World::new("drop_kills").unwrap();
    let a = world.pod("a").unwrap();
    let sleeper = a.spawn(Cmd::new("sleep").arg("600")).unwrap();
    let marker_value = world.marker().to_string();
    let holder = world.holder_pid();
    let log_dir = world.log_dir().to_path_buf();
    // /proc/<pid>/environ is briefly unreadable while the spawn's exec chain
    // (setpriv, nsenter, ip netns exec, sleep) runs, so poll.
    let mut ours = Vec::new();
    let listed = crate::common::eventually(Duration::from_secs(5), || {
        ours = marker::processes_with_marker(&marker_value);
        ours.contains(&holder) && ours.contains(&sleeper.pid())
    });
    assert!(
        listed,
        "{ours:?} lacks holder {holder} or sleeper {}",
        sleeper.pid()
    );
    assert!(log_dir.exists());

    drop(world);
    assert_eq!(
        marker::processes_with_marker(&marker_value),
        Vec::<u32>::new()
    );
    assert!(!marker::pid_alive(holder));
    assert!(!log_dir.exists());
    // The guard outlived the world; it knows its process is gone.
    assert!(sleeper.try_status().is_some());
    assert!(a.exec(["true"]).is_err(), "a dead world runs nothing");
    drop(sleeper);
}

#[test]
fn the_sweep_kills_leftovers_of_dead_test_processes_only() {
    // A PID that certainly belonged to a process that is gone now.
    let mut gone = Command::new("true").spawn().unwrap();
    let dead_pid = gone.id();
    gone.wait().unwrap();
    assert!(!marker::pid_alive(dead_pid));

    let mut orphan = Command::new("sleep")
        .arg("600")
        .env(MARKER_VAR, format!("{dead_pid}-0"))
        .spawn()
        .unwrap();
    let mut ours = Command::new("sleep")
        .arg("600")
        .env(MARKER_VAR, marker::new_marker())
        .spawn()
        .unwrap();
    let mut stranger = Command::new("sleep")
        .arg("600")
        .env_remove(MARKER_VAR)
        .spawn()
        .unwrap();

    let report = marker::sweep();
    assert!(report.killed >= 1, "{report:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(s) = orphan.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the orphan survived the sweep"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(!status.success());
    assert!(
        ours.try_wait().unwrap().is_none(),
        "our own process was swept"
    );
    assert!(
        stranger.try_wait().unwrap().is_none(),
        "an unmarked process was swept"
    );
    for p in [&mut ours, &mut stranger] {
        p.kill().unwrap();
        p.wait().unwrap();
    }
}

#[test]
fn a_panicking_test_still_removes_its_world() {
    let seen = std::sync::Mutex::new(None);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let world = World::new("panics").unwrap();
        let a = world.pod("a").unwrap();
        let _sleeper = a.spawn(Cmd::new("sleep").arg("600")).unwrap();
        *seen.lock().unwrap() = Some((world.marker().to_string(), world.log_dir().to_path_buf()));
        panic!("deliberate");
    }));
    assert!(result.is_err());
    let (marker_value, log_dir) = seen.into_inner().unwrap().unwrap();
    assert_eq!(
        marker::processes_with_marker(&marker_value),
        Vec::<u32>::new()
    );
    // Logs are kept for the failing test to be debugged; clean them up here.
    assert!(log_dir.exists());
    fs::remove_dir_all(log_dir).unwrap();
}
