//! `pillion-init` on a real kernel: installing twice leaves exactly one copy of the
//! rules, and `--cleanup` gives back exactly the tables that were there before, for
//! both address families and both iptables backends.

use std::time::Duration;

use pillion_tests::{rules, Cmd, Pod, World};

use crate::common::testbin;

/// Rules a user (or another tool) had in the pod before Pillion came.
fn seed(pod: &Pod, tool: &str) {
    let seeds: [&[&str]; 4] = [
        &["-t", "nat", "-N", "USER_NAT"],
        &[
            "-t", "nat", "-A", "USER_NAT", "-p", "tcp", "--dport", "9999", "-j", "RETURN",
        ],
        &["-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-j", "USER_NAT"],
        &[
            "-t", "filter", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT",
        ],
    ];
    for args in seeds {
        let mut argv = vec![tool];
        argv.extend_from_slice(args);
        pod.exec_ok(argv).unwrap();
    }
}

/// Normalised `<family>-<backend>-save` output of the pod, per family.
fn saves(pod: &Pod, backend: &str) -> [String; 2] {
    ["iptables", "ip6tables"].map(|family| {
        rules::normalize_save(&pod.exec_ok([format!("{family}-{backend}-save")]).unwrap())
    })
}

fn init(pod: &Pod, args: &[&str]) {
    let cmd = Cmd::new(testbin())
        .args(["init", "--proxy-uid", "2580", "--proxy-gid", "2580"])
        .args(args);
    let out = pod.exec_cmd(&cmd, Duration::from_secs(30)).unwrap();
    assert!(
        out.status.success(),
        "init {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn count(save: &str, pred: impl Fn(&str) -> bool) -> usize {
    save.lines().filter(|l| pred(l)).count()
}

fn install_twice_then_clean_up(backend: &str) {
    let world = World::new(&format!("init_rules_{backend}")).unwrap();
    let pod = world.pod("a").unwrap();
    for family in ["iptables", "ip6tables"] {
        seed(&pod, &format!("{family}-{backend}"));
    }
    let before = saves(&pod, backend);
    let backend_flag = if backend == "nft" { "auto" } else { "legacy" };

    init(&pod, &["--backend", backend_flag]);
    let once = saves(&pod, backend);
    for (family, save) in ["IPv4", "IPv6"].iter().zip(&once) {
        let jumps_out = count(save, |l| {
            l.starts_with("-A OUTPUT ") && l.contains("PILLION")
        });
        let jumps_pre = count(save, |l| {
            l.starts_with("-A PREROUTING ") && l.contains("PILLION")
        });
        let to_out = count(save, |l| {
            l.contains("REDIRECT") && l.contains("--to-ports 15001")
        });
        let to_in = count(save, |l| {
            l.contains("REDIRECT") && l.contains("--to-ports 15006")
        });
        assert_eq!(
            (jumps_out, jumps_pre, to_out, to_in),
            (1, 1, 1, 1),
            "{family} after one install:\n{save}"
        );
        assert!(save.contains("--uid-owner 2580"), "{family}:\n{save}");
        // The user's rules are still there, and still first in OUTPUT.
        let output: Vec<&str> = save
            .lines()
            .filter(|l| l.starts_with("-A OUTPUT "))
            .collect();
        assert_eq!(
            output.first(),
            Some(&"-A OUTPUT -p tcp -j USER_NAT"),
            "{family}:\n{save}"
        );
        assert!(save.contains("--dport 22 -j ACCEPT"), "{family}:\n{save}");
    }

    init(&pod, &["--backend", backend_flag]);
    let twice = saves(&pod, backend);
    assert_eq!(twice, once, "a second install changed the tables");

    init(&pod, &["--backend", backend_flag, "--cleanup"]);
    let cleaned = saves(&pod, backend);
    assert_eq!(cleaned[0], before[0], "IPv4 tables after cleanup");
    assert_eq!(cleaned[1], before[1], "IPv6 tables after cleanup");

    // A second cleanup finds nothing to do and succeeds.
    init(&pod, &["--backend", backend_flag, "--cleanup"]);
    assert_eq!(saves(&pod, backend), before);
}

#[test]
fn init_is_idempotent_and_cleanup_restores_nft() {
    install_twice_then_clean_up("nft");
}

#[test]
fn init_is_idempotent_and_cleanup_restores_legacy() {
    install_twice_then_clean_up("legacy");
}
