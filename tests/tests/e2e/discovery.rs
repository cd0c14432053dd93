//! On-demand discovery, from outside: a proxy learns a service when its workload
//! first connects to it, holds nothing else of a larger mesh, follows changes of
//! what it learned, forgets what went unused, passes an address the agent places
//! outside the mesh through, and refuses a destination it cannot ask about.

use std::net::SocketAddr;
use std::time::Duration;

use pillion_api::defaults::ADMIN_PORT;
use pillion_tests::apps::{self, spawn_server, App};
use pillion_tests::mesh::{source_yaml, view_services, MeshWorld, STRICT_PORT};
use pillion_tests::{Pod, Sidecar};

use crate::common::{eventually, sidecar_opts, testbin};

/// A port on the unmeshed pod `c`, outside the mesh.
const OUTSIDE_PORT: u16 = 7300;

fn value(s: &Sidecar, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.metrics().map_or(-1.0, |m| m.value(name, labels))
}

fn destinations(s: &Sidecar) -> f64 {
    value(s, "pillion_discovery_destinations", &[])
}

fn answers(s: &Sidecar, answer: &str) -> f64 {
    value(
        s,
        "pillion_discovery_resolutions_total",
        &[("answer", answer)],
    )
}

/// True when an echo of `data` from `pod` to `target` comes back whole.
fn echoes(pod: &Pod, target: SocketAddr, data: &[u8]) -> bool {
    let data = data.to_vec();
    pod.run(move || async move {
        let roundtrip = apps::echo_roundtrip(target, &data);
        matches!(tokio::time::timeout(Duration::from_secs(10), roundtrip).await,
            Ok(Ok(back)) if back == data)
    })
    .unwrap_or(false)
}

/// The mesh's source plus `n` services nobody calls (VIPs on 198.19.0.0/16,
/// endpoints never dialled).
fn big_source(m: &MeshWorld, n: usize) -> String {
    let mut yaml = source_yaml(&m.a, &m.b, &[STRICT_PORT]);
    for i in 0..n {
        yaml.push_str(&format!(
            "  - name: idle-{i}\n    namespace: demo\n    addresses: [198.19.0.{}]\n    \
             ports: [{{port: 80}}]\n    endpoints:\n      - addresses: [198.19.1.{}]\n        \
             identity: spiffe://cluster.local/ns/demo/sa/idle-{i}\n",
            i % 250 + 1,
            i % 250 + 1
        ));
    }
    yaml
}

fn start(test: &str) -> MeshWorld {
    let opts = sidecar_opts().proxy_args(["--discovery-idle", "3s"]);
    MeshWorld::start(test, &testbin(), &opts, &[]).unwrap()
}

#[test]
fn a_proxy_learns_what_its_workload_uses_and_forgets_it_when_unused() {
    let m = start("discovery_learn");
    m.write_source(&big_source(&m, 200)).unwrap();
    let _outside_app = spawn_server(&m.c, OUTSIDE_PORT, App::Echo).unwrap();
    let strict = m.b.addr_v4(STRICT_PORT);
    let outside = m.c.addr_v4(OUTSIDE_PORT);

    // The first connection to the server's strict port is resolved, meshed (the
    // strict port takes nothing else) and echoed.
    assert!(echoes(&m.a, strict, b"first"), "{}", m.dump());
    assert_eq!(answers(&m.sa, "service"), 1.0, "{}", m.dump());
    // An address no service has passes through, asked about once.
    assert!(echoes(&m.a, outside, b"outside"), "{}", m.dump());
    assert!(echoes(&m.a, outside, b"outside again"));
    assert_eq!(answers(&m.sa, "outside"), 1.0);
    assert_eq!(destinations(&m.sa), 2.0);
    // The 200 services nobody calls are in no proxy: the client's view holds none
    // (it backs no service), the server's only its own.
    assert_eq!(view_services(&m.a, ADMIN_PORT).unwrap(), 0);
    assert_eq!(view_services(&m.b, ADMIN_PORT).unwrap(), 1);

    // Unused for the idle time, both are forgotten; the next use asks again.
    let forgotten = eventually(Duration::from_secs(15), || destinations(&m.sa) == 0.0);
    assert!(forgotten, "{}", m.sa.metrics().unwrap());
    assert!(echoes(&m.a, strict, b"after"), "{}", m.dump());
    assert_eq!(answers(&m.sa, "service"), 2.0);
}

#[test]
fn a_learned_service_follows_the_source_and_an_unaskable_one_is_refused() {
    let mut m = start("discovery_follow");
    let _outside_app = spawn_server(&m.c, OUTSIDE_PORT, App::Echo).unwrap();
    let strict = m.b.addr_v4(STRICT_PORT);
    let outside = m.c.addr_v4(OUTSIDE_PORT);
    assert!(echoes(&m.a, strict, b"meshed"), "{}", m.dump());

    // The service loses the server: the strict port is outside the mesh now, so
    // the client's proxy sends plaintext, which the strict port refuses. The
    // answer reached the running proxy without a new question.
    let passthrough = |s: &Sidecar| {
        value(
            s,
            "pillion_tcp_passthrough_total",
            &[("direction", "outbound")],
        )
    };
    assert_eq!(passthrough(&m.sa), 0.0);
    let mut without = source_yaml(&m.a, &m.b, &[STRICT_PORT]);
    without = without.replace(
        "      - workload: server\n",
        "      - addresses: [198.19.9.9]\n",
    );
    m.write_source(&without).unwrap();
    let followed = eventually(Duration::from_secs(10), || !echoes(&m.a, strict, b"plain"));
    assert!(followed, "the change did not reach the proxy\n{}", m.dump());
    assert_eq!(answers(&m.sa, "service"), 1.0, "one question only");
    assert!(passthrough(&m.sa) >= 1.0, "{}", m.sa.metrics().unwrap());
    m.write_source(&source_yaml(&m.a, &m.b, &[STRICT_PORT]))
        .unwrap();
    let back = eventually(Duration::from_secs(10), || echoes(&m.a, strict, b"again"));
    assert!(back, "{}", m.dump());

    // The agent goes away: what was learned keeps working; a destination never
    // asked about is refused, not passed through in plaintext.
    m.agent.stop();
    assert!(echoes(&m.a, strict, b"while away"), "{}", m.dump());
    assert!(
        !echoes(&m.a, outside, b"unasked"),
        "an unresolved destination passed through\n{}",
        m.dump()
    );
    assert_eq!(answers(&m.sa, "failed"), 1.0, "{}", m.sa.metrics().unwrap());
    m.agent.restart().unwrap();
    let asked = eventually(Duration::from_secs(15), || echoes(&m.a, outside, b"asked"));
    assert!(asked, "{}", m.dump());
}
