//! Bad flags: both programs say clearly what is wrong and exit non-zero, touching
//! nothing.

use std::time::Duration;

use pillion_tests::{Cmd, World};

use crate::common::testbin;

#[test]
fn bad_flags_give_a_clear_message_and_a_non_zero_exit() {
    let world = World::new("bad_flags").unwrap();
    let pod = world.pod("a").unwrap();
    let cases: &[(&str, &[&str], &[&str])] = &[
        (
            "init",
            &["--outbound-port", "notaport"],
            &["--outbound-port", "notaport"],
        ),
        (
            "init",
            &["--inbound-port", "70000"],
            &["--inbound-port", "70000"],
        ),
        ("init", &["--backend", "bogus"], &["--backend", "bogus"]),
        (
            "init",
            &["--skip-outbound-cidrs", "198.18.1.0/33"],
            &["198.18.1.0/33"],
        ),
        (
            "init",
            &["--skip-inbound-ports", "15020,x"],
            &["--skip-inbound-ports"],
        ),
        ("init", &["--no-such-flag"], &["--no-such-flag"]),
        (
            "proxy",
            &["--connect-timeout", "banana"],
            &["--connect-timeout", "banana"],
        ),
        (
            "proxy",
            &["--connect-timeout", "0s"],
            &["--connect-timeout"],
        ),
        (
            "proxy",
            &["--outbound-addrs", "nowhere"],
            &["--outbound-addrs", "nowhere"],
        ),
        ("proxy", &["--log-format", "xml"], &["--log-format", "xml"]),
        ("proxy", &["--no-such-flag"], &["--no-such-flag"]),
    ];
    for (program, args, expected) in cases {
        let mut cmd = Cmd::new(testbin()).arg(program).args(args.iter());
        if *program == "proxy" {
            cmd = cmd.user(2580, 2580);
        }
        let out = pod.exec_cmd(&cmd, Duration::from_secs(20)).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{program} {args:?} succeeded: {stderr}"
        );
        assert_ne!(out.status.code(), Some(0));
        for needle in *expected {
            assert!(
                stderr.contains(needle),
                "{program} {args:?}: message lacks {needle:?}:\n{stderr}"
            );
        }
        assert!(
            stderr.contains(&format!("pillion-{program}")) || stderr.contains("error"),
            "{program} {args:?}: message does not say who or what failed:\n{stderr}"
        );
    }
    // Nothing was installed by the failed inits.
    for save in [
        "iptables-save",
        "ip6tables-save",
        "iptables-legacy-save",
        "ip6tables-legacy-save",
    ] {
        let rules = pod.exec_ok([save]).unwrap();
        assert!(!rules.contains("PILLION"), "{save}:\n{rules}");
    }

    // The multicall binary itself: an unknown program is a usage error.
    let out = pod
        .exec_cmd(&Cmd::new(testbin()).arg("nope"), Duration::from_secs(20))
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("usage: pillion-testbin <init|proxy|agent|inject>"));
}
