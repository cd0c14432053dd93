//! The mesh when the agent goes away and comes back, and when its source file
//! breaks: the proxies keep serving on their cached certificate and view, follow
//! the agent again once it returns, and never take a broken file.

use std::time::{Duration, Instant};

use pillion_tests::mesh::{source_yaml, MeshWorld, PERMISSIVE_PORT, STRICT_PORT};
use pillion_tests::{apps, Pod, Sidecar};

use crate::common::{eventually, sidecar_opts, testbin, LongLived};

const CONNECTED: &str = "pillion_agent_connected";

fn start(test: &str) -> MeshWorld {
    MeshWorld::start(test, &testbin(), &sidecar_opts(), &[]).unwrap()
}

fn connected(s: &Sidecar) -> f64 {
    s.metrics().unwrap().value(CONNECTED, &[])
}

/// True when an echo of `data` from `pod` to `target` comes back whole.
fn echoes(pod: &Pod, target: std::net::SocketAddr, data: &[u8]) -> bool {
    let data = data.to_vec();
    pod.run(move || async move {
        match tokio::time::timeout(Duration::from_secs(10), apps::echo_roundtrip(target, &data))
            .await
        {
            Ok(Ok(back)) => back == data,
            _ => false,
        }
    })
    .unwrap_or(false)
}

#[test]
fn the_mesh_outlives_the_agent_and_follows_it_when_it_returns() {
    let mut m = start("mesh_agent_down");
    let strict = m.b.addr_v4(STRICT_PORT);
    let permissive = m.b.addr_v4(PERMISSIVE_PORT);

    // A long-lived mesh connection that exchanges a message every 200 ms until told
    // to stop; echoes keep coming in each phase: before, without and after the agent.
    let long = LongLived::open(&m.a, strict);
    let flowing = |phase: &str| long.flowing(phase);
    flowing("before the agent left");

    m.agent.stop();
    let gone = eventually(Duration::from_secs(15), || {
        connected(&m.sa) == 0.0 && connected(&m.sb) == 0.0
    });
    assert!(
        gone,
        "the proxies did not notice the agent leave\n{}",
        m.dump()
    );

    // New mesh connections work on the cached certificate and view: the strict
    // port takes the meshed client and still refuses plaintext.
    for i in 0..5 {
        assert!(
            echoes(&m.a, strict, format!("while away {i}").as_bytes()),
            "a new mesh connection failed without the agent\n{}",
            m.dump()
        );
    }
    assert!(!echoes(&m.c, strict, b"plaintext while away"));
    assert!(echoes(&m.c, permissive, b"plaintext while away"));
    flowing("while the agent was away");

    // The agent returns with the same CA; the proxies reconnect.
    m.agent.restart().unwrap();
    let back = eventually(Duration::from_secs(15), || {
        connected(&m.sa) == 1.0 && connected(&m.sb) == 1.0
    });
    assert!(back, "the proxies did not reconnect\n{}", m.dump());

    // A change to the file reaches the proxies within 2 s: 7000 turns strict.
    m.write_source(&source_yaml(&m.a, &m.b, &[PERMISSIVE_PORT, STRICT_PORT]))
        .unwrap();
    let changed = Instant::now();
    let mut refused_after = None;
    while changed.elapsed() < Duration::from_secs(5) {
        if !echoes(&m.c, permissive, b"plaintext after the change") {
            refused_after = Some(changed.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = refused_after
        .unwrap_or_else(|| panic!("port {PERMISSIVE_PORT} never turned strict\n{}", m.dump()));
    assert!(
        took <= Duration::from_secs(2),
        "the change took {took:?} to reach the proxy"
    );
    // The meshed client still gets through the newly strict port.
    assert!(echoes(&m.a, permissive, b"meshed after the change"));
    flowing("after the agent returned");

    let exchanged = long
        .finish()
        .unwrap_or_else(|e| panic!("the long-lived connection broke: {e}\n{}", m.dump()));
    assert!(exchanged >= 6, "only {exchanged} messages");
    eprintln!(
        "[mesh] agent away and back: {exchanged} messages on one connection; a source change reached the proxy in {took:?}"
    );
}

#[test]
fn a_broken_source_is_refused_with_its_line_and_the_last_view_still_serves() {
    let m = start("mesh_agent_broken");
    let strict = m.b.addr_v4(STRICT_PORT);
    let permissive = m.b.addr_v4(PERMISSIVE_PORT);
    let good = source_yaml(&m.a, &m.b, &[STRICT_PORT]);
    // Break one port number (out of range) and remember its line.
    let needle = format!("      - port: {STRICT_PORT}");
    let line = good
        .lines()
        .position(|l| l == needle)
        .expect("the source lists the strict port")
        + 1;
    let broken = good.replace(&needle, "      - port: 70001");
    m.write_source(&broken).unwrap();

    let want = format!("source.yaml:{line}:");
    let logged = eventually(Duration::from_secs(5), || {
        let logs = m.agent.logs();
        logs.contains("source file refused") && logs.contains(&want)
    });
    assert!(
        logged,
        "the agent did not report line {line}\n{}",
        m.agent.logs()
    );

    // The last good view is still served: connected, mesh works, strict still strict.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(connected(&m.sa), 1.0);
    assert_eq!(connected(&m.sb), 1.0);
    assert!(echoes(&m.a, strict, b"meshed"), "{}", m.dump());
    assert!(echoes(&m.a, permissive, b"meshed"));
    assert!(!echoes(&m.c, strict, b"plaintext"));
    assert!(echoes(&m.c, permissive, b"plaintext"));
}
