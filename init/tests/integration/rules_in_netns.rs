//! The real `pillion-init` binary against real iptables (nft and legacy), each test in
//! a fresh network namespace of its own (see `support`).

use std::process::Command;

use crate::support::{
    count_lines, dry_run_parts, dump, dump_nat, init, init_ok, pillion_rules, run, sh,
};

/// Flags that exercise every kind of rule.
const FULL_FLAGS: &[&str] = &[
    "--skip-outbound-cidrs",
    "198.18.0.0/24,2001:2::/48",
    "--skip-outbound-ports",
    "5432,6379",
    "--skip-inbound-ports",
    "15020,22",
    "--proxy-gid",
    "2581",
];

const JUMP_IN: &str = "-A PREROUTING -p tcp -j PILLION_INBOUND";
const JUMP_OUT: &str = "-A OUTPUT -p tcp -j PILLION_OUTPUT";

/// Rules of someone else's that must survive install and cleanup untouched.
fn add_foreign_rules(backend: &str) {
    sh(&format!(
        "set -e
         iptables-{backend} -t nat -A OUTPUT -d 198.18.7.7/32 -p tcp -j RETURN
         iptables-{backend} -t nat -N FOREIGN
         iptables-{backend} -t nat -A FOREIGN -p udp -j RETURN
         iptables-{backend} -t nat -A PREROUTING -p udp -j FOREIGN
         iptables-{backend} -t filter -A INPUT -s 198.18.9.9/32 -j ACCEPT
         ip6tables-{backend} -t nat -A OUTPUT -d 2001:2::7/128 -p tcp -j RETURN"
    ));
}

fn with(backend: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["--backend".to_owned(), backend.to_owned()];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

fn init_ok_owned(args: &[String]) -> crate::support::Run {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    init_ok(&args)
}

fn install_twice_then_cleanup(backend: &str) {
    let other = if backend == "nft" { "legacy" } else { "nft" };
    add_foreign_rules(backend);
    let before4 = dump("iptables", backend);
    let before6 = dump("ip6tables", backend);
    let other_before = dump("iptables", other);

    let install = with(backend, FULL_FLAGS);
    init_ok_owned(&install);
    let first4 = dump_nat("iptables", backend);
    let first6 = dump_nat("ip6tables", backend);
    for (family, text) in [("IPv4", &first4), ("IPv6", &first6)] {
        assert_eq!(count_lines(text, JUMP_IN), 1, "{family}:\n{text}");
        assert_eq!(count_lines(text, JUMP_OUT), 1, "{family}:\n{text}");
        for chain in ["INBOUND", "REDIRECT_IN", "OUTPUT", "REDIRECT_OUT"] {
            assert_eq!(
                count_lines(text, &format!(":PILLION_{chain} - [0:0]")),
                1,
                "{family}:\n{text}"
            );
        }
    }
    assert!(
        first4.contains("-A PREROUTING -p udp -j FOREIGN"),
        "{first4}"
    );
    assert!(first4.contains("-A PILLION_OUTPUT -d 198.18.0.0/24 -j RETURN"));
    assert!(first4.contains("-A PILLION_OUTPUT -m owner --gid-owner 2581 -j RETURN"));
    assert!(first4.contains("-A OUTPUT -d 198.18.7.7/32 -p tcp -j RETURN"));
    assert!(!first4.contains("2001:2::"), "{first4}");
    assert!(first6.contains("-A PILLION_OUTPUT -d 2001:2::/48 -j RETURN"));
    assert!(!first6.contains("198.18.0.0"), "{first6}");

    // What the kernel holds is exactly what --dry-run shows, rule for rule.
    let mut preview = install.clone();
    preview.push("--dry-run".to_owned());
    let dry = init_ok_owned(&preview).stdout;
    let (dry4, dry6) = dry_run_parts(&dry);
    assert_eq!(pillion_rules(&first4), pillion_rules(&dry4));
    assert_eq!(pillion_rules(&first6), pillion_rules(&dry6));

    // A second identical run changes nothing and leaves exactly one copy.
    let second = init_ok_owned(&install);
    assert!(
        second.stderr.contains("nothing to change"),
        "{}",
        second.stderr
    );
    assert_eq!(dump_nat("iptables", backend), first4);
    assert_eq!(dump_nat("ip6tables", backend), first6);

    // A changed plan refills our chains in place, still with one jump each.
    let changed = with(backend, &["--skip-outbound-ports", "9999"]);
    init_ok_owned(&changed);
    let third4 = dump_nat("iptables", backend);
    assert_eq!(count_lines(&third4, JUMP_IN), 1, "{third4}");
    assert_eq!(count_lines(&third4, JUMP_OUT), 1, "{third4}");
    assert!(third4.contains("-A PILLION_OUTPUT -p tcp -m tcp --dport 9999 -j RETURN"));
    assert!(!third4.contains("5432"), "{third4}");
    assert!(!third4.contains("198.18.0.0/24"), "{third4}");

    // Cleanup puts every table back exactly as it was; a second cleanup is a no-op.
    init_ok_owned(&with(backend, &["--cleanup"]));
    assert_eq!(dump("iptables", backend), before4);
    assert_eq!(dump("ip6tables", backend), before6);
    let again = init_ok_owned(&with(backend, &["--cleanup"]));
    assert!(
        again.stderr.contains("nothing to change"),
        "{}",
        again.stderr
    );
    assert_eq!(dump("iptables", backend), before4);

    // The other flavour was never touched.
    assert_eq!(dump("iptables", other), other_before);
}

fn without_net_admin(args: &[&str]) -> crate::support::Run {
    run(Command::new("setpriv")
        .args(["--inh-caps=-net_admin", "--bounding-set=-net_admin", "--"])
        .arg(crate::support::BIN)
        .args(args))
}

netns_test! {
    /// nft: install, re-install, change, cleanup, with foreign rules around.
    fn install_twice_then_cleanup_nft() {
        install_twice_then_cleanup("nft");
    }

    /// legacy: install, re-install, change, cleanup, with foreign rules around.
    fn install_twice_then_cleanup_legacy() {
        install_twice_then_cleanup("legacy");
    }

    /// Auto picks nft in an empty namespace, legacy where legacy already has rules, and
    /// auto cleanup finds the rules wherever they are.
    fn auto_backend_follows_the_namespace() {
        // Cleanup with nothing installed succeeds, and detection creates no tables.
        let out = init_ok(&["--cleanup"]);
        assert!(out.stderr.contains("nothing to clean up"), "{}", out.stderr);
        assert_eq!(dump("iptables", "legacy"), "");
        assert_eq!(dump("ip6tables", "legacy"), "");

        init_ok(&[]);
        assert!(dump_nat("iptables", "nft").contains(JUMP_OUT));
        assert!(dump_nat("ip6tables", "nft").contains(JUMP_OUT));
        assert!(!dump("iptables", "legacy").contains("PILLION"));
        init_ok(&["--cleanup"]);
        assert!(!dump("iptables", "nft").contains("PILLION"));

        sh("iptables-legacy -t nat -A OUTPUT -d 198.18.7.7/32 -p tcp -j RETURN");
        let legacy_before = dump("iptables", "legacy");
        let out = init_ok(&[]);
        assert!(out.stderr.contains("backend=legacy"), "{}", out.stderr);
        assert!(dump_nat("iptables", "legacy").contains(JUMP_OUT));
        assert!(!dump("iptables", "nft").contains("PILLION"));

        // Both flavours holding our chains: auto cleanup removes both.
        init_ok(&["--backend", "nft"]);
        init_ok(&["--cleanup"]);
        assert!(!dump("iptables", "nft").contains("PILLION"));
        assert!(!dump("ip6tables", "nft").contains("PILLION"));
        assert_eq!(dump("iptables", "legacy"), legacy_before);
        assert!(!dump("ip6tables", "legacy").contains("PILLION"));
    }

    /// Every flag can come from its PILLION_* variable.
    fn environment_configures_the_run() {
        let out = run(Command::new(crate::support::BIN)
            .env("PILLION_BACKEND", "legacy")
            .env("PILLION_NO_IPV6", "true")
            .env("PILLION_OUTBOUND_PORT", "16001")
            .env("PILLION_INBOUND_PORT", "16006")
            .env("PILLION_PROXY_UID", "3000")
            .env("PILLION_PROXY_GID", "3001")
            .env("PILLION_SKIP_INBOUND_PORTS", "")
            .env("PILLION_SKIP_OUTBOUND_PORTS", "5432")
            .env("PILLION_SKIP_OUTBOUND_CIDRS", "198.18.4.0/24")
            .env("PILLION_LOG_FORMAT", "json"));
        assert_eq!(out.code, 0, "{out:?}");
        assert!(out.stderr.lines().all(|l| l.starts_with('{')), "{}", out.stderr);
        let v4 = dump_nat("iptables", "legacy");
        for rule in [
            "-A PILLION_REDIRECT_OUT -p tcp -j REDIRECT --to-ports 16001",
            "-A PILLION_REDIRECT_IN -p tcp -j REDIRECT --to-ports 16006",
            "-A PILLION_OUTPUT -m owner --uid-owner 3000 -j RETURN",
            "-A PILLION_OUTPUT -m owner --gid-owner 3001 -j RETURN",
            "-A PILLION_OUTPUT -p tcp -m tcp --dport 5432 -j RETURN",
            "-A PILLION_OUTPUT -d 198.18.4.0/24 -j RETURN",
        ] {
            assert_eq!(count_lines(&v4, rule), 1, "{rule}\n{v4}");
        }
        // An empty list still skips the admin port: lists add to it.
        let admin = "-A PILLION_INBOUND -p tcp -m tcp --dport 15020 -j RETURN";
        assert_eq!(count_lines(&v4, admin), 1, "{v4}");
        assert!(!dump("ip6tables", "legacy").contains("PILLION"));
        assert!(!dump("iptables", "nft").contains("PILLION"));

        let out = run(Command::new(crate::support::BIN)
            .env("PILLION_BACKEND", "legacy")
            .env("PILLION_CLEANUP", "1"));
        assert_eq!(out.code, 0, "{out:?}");
        assert!(!dump("iptables", "legacy").contains("PILLION"));
    }

    /// --dry-run prints both families, needs neither privileges nor iptables, and
    /// changes nothing.
    fn dry_run_changes_nothing() {
        init_ok(&["--backend", "legacy", "--skip-outbound-ports", "7"]);
        let dumps = || {
            ["nft", "legacy"].map(|b| format!("{}{}", dump("iptables", b), dump("ip6tables", b)))
        };
        let before = dumps();
        // No CAP_NET_ADMIN and no iptables in PATH: the dry run needs neither.
        let out = without_net_admin(&[
            "--dry-run",
            "--skip-outbound-cidrs",
            "198.18.0.0/15,2001:2::/48",
        ]);
        assert_eq!(out.code, 0, "{out:?}");
        let out = run(Command::new(crate::support::BIN)
            .args(["--dry-run", "--skip-outbound-cidrs", "198.18.0.0/15,2001:2::/48"])
            .env("PATH", "/nonexistent"));
        assert_eq!(out.code, 0, "{out:?}");
        let (v4, v6) = dry_run_parts(&out.stdout);
        assert!(v4.contains("IPv4 nat rules"), "{v4}");
        assert!(v4.contains("-A PILLION_OUTPUT -d 198.18.0.0/15 -j RETURN"), "{v4}");
        assert!(v4.contains(JUMP_IN) && v4.contains(JUMP_OUT), "{v4}");
        assert!(v6.contains("IPv6 nat rules"), "{v6}");
        assert!(v6.contains("-A PILLION_OUTPUT -d 2001:2::/48 -j RETURN"), "{v6}");
        let cleanup = init_ok(&["--dry-run", "--cleanup"]);
        assert!(cleanup.stdout.contains("-X PILLION_OUTPUT"), "{}", cleanup.stdout);
        assert_eq!(dumps(), before);
    }

    /// Invalid flags are refused with a message naming the fix, before anything runs.
    fn bad_flags_change_nothing() {
        init_ok(&["--backend", "nft"]);
        let before = format!("{}{}", dump("iptables", "nft"), dump("ip6tables", "nft"));
        let cases: &[(&[&str], &str)] = &[
            (&["--outbound-port", "0"], "0 is out of range; use a TCP port from 1 to 65535"),
            (&["--outbound-port=70000"], "70000 is out of range"),
            (&["--skip-outbound-cidrs", "10.0.0.0/33"], "prefix length must be 0 to 32"),
            (&["--skip-outbound-cidrs", "198.18.0.1/24"], "write 198.18.0.0/24 instead"),
            (&["--proxy-uid", "proxy"], "'proxy' is not a numeric id"),
            (&["--outbound-port", "15006"], "--outbound-port and --inbound-port are both 15006"),
            (&["--skip-inbound-ports", "15020,15006"], "--skip-inbound-ports contains 15006"),
            (&["--skip-outbound-ports", "15001"], "--skip-outbound-ports contains 15001"),
            (&["--backend", "iptables"], "invalid value 'iptables' for '--backend"),
            (&["--cleanup", "--inbound-port", "0"], "0 is out of range"),
        ];
        for (args, message) in cases {
            let out = init(args);
            assert_eq!(out.code, 2, "{args:?}: {out:?}");
            assert!(out.stderr.contains(message), "{args:?}: want {message:?} in {}", out.stderr);
        }
        let out = run(Command::new(crate::support::BIN).env("PILLION_PROXY_UID", "nobody"));
        assert_eq!(out.code, 2, "{out:?}");
        assert!(out.stderr.contains("'nobody' is not a numeric id"), "{}", out.stderr);
        assert_eq!(format!("{}{}", dump("iptables", "nft"), dump("ip6tables", "nft")), before);
    }

    /// No iptables in PATH: a clear error, exit code 3, for every backend choice.
    fn missing_iptables_is_explained() {
        std::fs::create_dir_all("/run/empty-path").unwrap();
        for args in [&[][..], &["--backend", "nft"], &["--backend", "legacy"], &["--cleanup"]] {
            let out = run(Command::new(crate::support::BIN).args(args).env("PATH", "/run/empty-path"));
            assert_eq!(out.code, 3, "{args:?}: {out:?}");
            assert!(out.stderr.contains("iptables is missing"), "{}", out.stderr);
            assert!(out.stderr.contains("/run/empty-path"), "{}", out.stderr);
        }
    }

    /// Without CAP_NET_ADMIN: exit code 4 and the capability named, rules untouched.
    fn missing_net_admin_is_explained() {
        init_ok(&["--backend", "legacy"]);
        let before = dump("iptables", "legacy");
        for args in [&[][..], &["--backend", "nft"], &["--backend", "legacy"], &["--cleanup"]] {
            let out = without_net_admin(args);
            assert_eq!(out.code, 4, "{args:?}: {out:?}");
            assert!(
                out.stderr.contains("needs CAP_NET_ADMIN in the pod's network namespace"),
                "{}",
                out.stderr
            );
        }
        assert_eq!(dump("iptables", "legacy"), before);
    }

    /// When the IPv6 transaction fails after IPv4 was committed, IPv4 is put back.
    fn failed_ipv6_rolls_back_ipv4() {
        add_foreign_rules("legacy");
        init_ok(&["--backend", "legacy", "--skip-outbound-ports", "7"]);
        let before4 = dump("iptables", "legacy");
        let before6 = dump("ip6tables", "legacy");
        // PATH with the real tools, except an ip6tables-legacy-restore that passes
        // --test but fails the real commit.
        sh("set -e
            mkdir -p /run/fakebin
            for tool in iptables-legacy-save iptables-legacy-restore ip6tables-legacy-save; do
              ln -s \"$(command -v $tool)\" /run/fakebin/$tool
            done");
        let real = sh("command -v ip6tables-legacy-restore");
        let fake = format!(
            "#!/bin/sh\n\
             for arg in \"$@\"; do [ \"$arg\" = --test ] && exec {} \"$@\"; done\n\
             echo 'ip6tables-restore: line 7 failed (simulated)' >&2\n\
             exit 1\n",
            real.trim()
        );
        std::fs::write("/run/fakebin/ip6tables-legacy-restore", fake).unwrap();
        sh("chmod 755 /run/fakebin/ip6tables-legacy-restore");
        let out = run(Command::new(crate::support::BIN)
            .args(["--backend", "legacy", "--skip-outbound-ports", "8"])
            .env("PATH", "/run/fakebin"));
        assert_eq!(out.code, 1, "{out:?}");
        assert!(out.stderr.contains("applying the IPv6 rules failed"), "{}", out.stderr);
        assert!(out.stderr.contains("simulated"), "{}", out.stderr);
        assert!(
            out.stderr.contains("the IPv4 (legacy) rules were rolled back"),
            "{}",
            out.stderr
        );
        assert_eq!(dump("iptables", "legacy"), before4);
        assert_eq!(dump("ip6tables", "legacy"), before6);
    }

    /// With IPv6 left out, ip6tables is neither needed nor touched.
    fn no_ipv6_leaves_ip6tables_alone() {
        let before = dump("ip6tables", "nft");
        init_ok(&["--backend", "nft", "--no-ipv6", "--skip-outbound-cidrs", "2001:2::/48"]);
        assert!(dump_nat("iptables", "nft").contains(JUMP_OUT));
        assert_eq!(dump("ip6tables", "nft"), before);
        init_ok(&["--backend", "nft", "--no-ipv6", "--cleanup"]);
        assert!(!dump("iptables", "nft").contains("PILLION"));
    }
}
