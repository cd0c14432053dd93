//! Traffic that must not go through the proxy: skipped outbound ports and CIDRs,
//! skipped inbound ports, the proxy's own connections and anything its uid sends.

use std::net::SocketAddr;
use std::time::Duration;

use pillion_tests::apps::{self, App};
use pillion_tests::metrics::{self, Samples};
use pillion_tests::{Cmd, Pod, Sidecar, World};

use crate::common::{m, raw_exchange, sidecar_opts, status_code, testbin, within};

/// One small echo exchange from `client` to `target`; panics if it fails.
fn exchange(client: &Pod, target: SocketAddr) {
    let msg = format!("hello {target}");
    let back = client
        .run(move || async move {
            within(
                Duration::from_secs(20),
                "exchange",
                apps::echo_roundtrip(target, msg.as_bytes()),
            )
            .await
        })
        .unwrap()
        .unwrap_or_else(|e| panic!("exchange with {target}: {e:#}"));
    assert_eq!(back, format!("hello {target}").as_bytes());
}

/// (connections opened, bytes sent) in one direction.
fn traffic(s: &Samples, dir: &[(&str, &str)]) -> (f64, f64) {
    (s.value(m::OPENED, dir), s.value(m::SENT, dir))
}

fn outbound(side: &Sidecar) -> (f64, f64) {
    traffic(&side.metrics().unwrap(), m::OUT)
}

fn inbound(side: &Sidecar) -> (f64, f64) {
    traffic(&side.metrics().unwrap(), m::IN)
}

/// Waits briefly for a counter pair to move away from `before` (counters may be
/// updated as a connection closes).
fn moved(read: impl Fn() -> (f64, f64), before: (f64, f64)) -> bool {
    crate::common::eventually(Duration::from_secs(5), || {
        let now = read();
        now.0 > before.0 && now.1 > before.1
    })
}

#[test]
fn skipped_ports_and_cidrs_bypass_the_proxy() {
    let world = World::new("skips").unwrap();
    let a = world.pod("a").unwrap();
    let b = world.pod("b").unwrap();
    let c = world.pod("c").unwrap();
    let skip_cidrs = format!("{}/32,{}/128", c.ipv4(), c.ipv6());
    let sa = a
        .install_sidecar(&sidecar_opts().init_args([
            "--skip-outbound-ports",
            "7001",
            "--skip-outbound-cidrs",
            &skip_cidrs,
        ]))
        .unwrap();
    // The admin port must stay skipped, or probes and scrapes would hit the proxy.
    let sb = b
        .install_sidecar(&sidecar_opts().init_args(["--skip-inbound-ports", "15020,7002"]))
        .unwrap();
    let mut servers = Vec::new();
    for port in [7000, 7001, 7002] {
        servers.push(apps::spawn_server(&b, port, App::Echo).unwrap());
    }
    servers.push(apps::spawn_server(&c, 7000, App::Echo).unwrap());

    let a_out = outbound(&sa);
    let b_in = inbound(&sb);

    // Skipped outbound port: a's proxy sees nothing (b's inbound side may).
    exchange(&a, b.addr_v4(7001));
    exchange(&a, b.addr_v6(7001));
    // Skipped outbound CIDRs, both families.
    exchange(&a, c.addr_v4(7000));
    exchange(&a, c.addr_v6(7000));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        outbound(&sa),
        a_out,
        "a's proxy saw skipped outbound traffic"
    );

    // Skipped inbound port on b: b's proxy sees nothing, a's outbound side does.
    let b_in = {
        let now = inbound(&sb);
        assert!(
            now.0 >= b_in.0 + 2.0,
            "b's inbound did see port 7001: {now:?}"
        );
        now
    };
    exchange(&a, b.addr_v4(7002));
    exchange(&a, b.addr_v6(7002));
    assert!(
        moved(|| outbound(&sa), a_out),
        "a's proxy is in the path to b:7002"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        inbound(&sb),
        b_in,
        "b's proxy saw traffic to a skipped inbound port"
    );

    // And the unskipped port goes through both.
    let a_out = outbound(&sa);
    exchange(&a, b.addr_v4(7000));
    assert!(moved(|| outbound(&sa), a_out));
    assert!(moved(|| inbound(&sb), b_in));
}

#[test]
fn the_proxy_never_loops_and_its_uid_bypasses_it() {
    const N: usize = 5;
    let world = World::new("no_loops").unwrap();
    let a = world.pod("a").unwrap();
    let b = world.pod("b").unwrap();
    let sa = a.install_sidecar(&sidecar_opts()).unwrap();
    let sb = b.install_sidecar(&sidecar_opts()).unwrap();
    let _server = apps::spawn_server(&b, 7000, App::Echo).unwrap();

    for i in 0..N {
        let target = if i % 2 == 0 {
            b.addr_v4(7000)
        } else {
            b.addr_v6(7000)
        };
        exchange(&a, target);
    }
    // Exactly one proxied connection per client connection on each side: had the
    // proxies' own upstream connections been redirected again, they would count
    // twice (or be refused as loops).
    let settled = crate::common::eventually(Duration::from_secs(5), || {
        let (ma, mb) = (sa.metrics().unwrap(), sb.metrics().unwrap());
        ma.value(m::OPENED, m::OUT) == N as f64
            && mb.value(m::OPENED, m::IN) == N as f64
            && ma.value(m::CLOSED, m::OUT) == N as f64
            && mb.value(m::CLOSED, m::IN) == N as f64
    });
    let (ma, mb) = (sa.metrics().unwrap(), sb.metrics().unwrap());
    assert!(settled, "a:\n{ma}\nb:\n{mb}");
    for (s, dir) in [(&ma, m::OUT), (&ma, m::IN), (&mb, m::OUT), (&mb, m::IN)] {
        assert_eq!(s.value(m::LOOPS, dir), 0.0, "loop refused {dir:?}:\n{s}");
    }
    assert_eq!(
        ma.value(m::OPENED, m::IN),
        0.0,
        "a received nothing inbound"
    );
    assert_eq!(
        mb.value(m::OPENED, m::OUT),
        0.0,
        "b's echo replies are not new connections"
    );

    // The pod talking to itself over loopback (here: scraping its own admin port)
    // stays off the proxy.
    let before = outbound(&sa);
    let from_inside = metrics::scrape_in_pod(&a, 15020).unwrap();
    assert_eq!(traffic(&from_inside, m::OUT), before);
    assert_eq!(
        outbound(&sa),
        before,
        "loopback traffic went through the proxy"
    );

    // A client process running as the proxy's uid in pod a goes straight out.
    for target in [b.addr_v4(7000), b.addr_v6(7000)] {
        let probe = Cmd::new(testbin())
            .args(["probe", &target.to_string(), "as-2580"])
            .user(2580, 2580);
        let out = a.exec_cmd(&probe, Duration::from_secs(20)).unwrap();
        assert!(
            out.status.success(),
            "probe as uid 2580 to {target}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "as-2580");
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        outbound(&sa),
        before,
        "uid 2580's connections went through the proxy"
    );

    // The same probe as root is intercepted (so the check above means something).
    let probe = Cmd::new(testbin()).args(["probe", &b.addr_v4(7000).to_string(), "as-root"]);
    let out = a.exec_cmd(&probe, Duration::from_secs(20)).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(moved(|| outbound(&sa), before));
    assert_eq!(sa.metrics().unwrap().value(m::LOOPS, m::OUT), 0.0);
}

/// One bodiless HTTP/1.1 request from `client` to `target`; the status code, or 0
/// when the connection closed without an answer.
fn raw_status(client: &Pod, target: SocketAddr, method: &str, path: &str) -> std::io::Result<u16> {
    let req = format!("{method} {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n");
    let reply = raw_exchange(client, target, Duration::ZERO, req.into_bytes())?;
    Ok(status_code(&reply))
}

/// A user's inbound skip list adds to the admin port, never replaces it: with
/// `--skip-inbound-ports 22` an off-pod caller still reaches the admin server
/// directly (so it is refused as non-loopback), not through the inbound proxy
/// from 127.0.0.1, where `/shutdown` would obey.
#[test]
fn an_inbound_skip_list_cannot_expose_admin_shutdown() {
    let world = World::new("admin_skip").unwrap();
    let a = world.pod("a").unwrap();
    let b = world.pod("b").unwrap();
    let sb = b
        .install_sidecar(&sidecar_opts().init_args(["--skip-inbound-ports", "22"]))
        .unwrap();
    let before = inbound(&sb);
    let v4 = b.addr_v4(15020);
    assert_eq!(raw_status(&a, v4, "GET", "/ready").unwrap(), 200);
    assert_eq!(raw_status(&a, v4, "POST", "/shutdown").unwrap(), 403);
    // The admin server listens on IPv4 only: over IPv6 nothing answers, where a
    // redirect would have handed the connection to the inbound proxy.
    let v6 = b.addr_v6(15020);
    let err = raw_status(&a, v6, "POST", "/shutdown").unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    // Still serving, and none of it went through the inbound proxy.
    assert_eq!(inbound(&sb), before);
    assert!(sb.metrics().is_ok());
}
