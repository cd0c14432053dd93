//! The proxies' trust follows the mesh's roots while they run: an agent that comes
//! back with a new root (its CA lived in an emptyDir) is trusted once the new root
//! reaches the proxies' trust anchor file, with no proxy restarted and no open
//! connection dropped. Before, the proxies read the file once and never trusted the
//! new agent again (`UnknownIssuer`).

use std::time::Duration;

use pillion_tests::mesh::{MeshWorld, STRICT_PORT};
use pillion_tests::Sidecar;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{eventually, sidecar_opts, testbin, LongLived};

fn value(s: &Sidecar, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.metrics().map_or(-1.0, |m| m.value(name, labels))
}

#[test]
fn an_agent_back_with_a_new_root_is_trusted_without_restarting_a_proxy() {
    let mut m = MeshWorld::start("mesh_trust_new_root", &testbin(), &sidecar_opts(), &[]).unwrap();
    let strict = m.b.addr_v4(STRICT_PORT);
    let pids = (m.sa.proxy().pid(), m.sb.proxy().pid());
    let old_root = std::fs::read_to_string(m.agent.anchors()).unwrap();
    let renewed = |s: &Sidecar| value(s, "pillion_identity_renewals_total", &[("result", "ok")]);
    let before = (renewed(&m.sa), renewed(&m.sb));

    // A mesh connection opened under the old root, echoing every 200 ms.
    let long = LongLived::open(&m.a, strict);
    long.flowing("under the old root");

    m.agent.restart_with_new_ca().unwrap();
    let new_root = std::fs::read_to_string(m.agent.anchors()).unwrap();
    assert_ne!(new_root, old_root, "the agent kept its root");

    // The proxies see the new anchors, trust the new agent, reconnect and renew
    // under it.
    let back = eventually(Duration::from_secs(20), || {
        [&m.sa, &m.sb]
            .iter()
            .all(|s| value(s, "pillion_agent_connected", &[]) == 1.0)
            && renewed(&m.sa) > before.0
            && renewed(&m.sb) > before.1
    });
    assert!(
        back,
        "the proxies did not follow the new root\n{}",
        m.dump()
    );
    for s in [&m.sa, &m.sb] {
        let installed = value(
            s,
            "pillion_identity_trust_bundle_updates_total",
            &[("source", "file"), ("result", "installed")],
        );
        assert!(installed >= 1.0, "{}", s.metrics().unwrap());
        assert_eq!(value(s, "pillion_identity_trust_bundle_roots", &[]), 1.0);
    }
    // New mesh connections work under the new root, both leaves from the new agent.
    let works = eventually(Duration::from_secs(10), || {
        m.a.run(move || async move {
            let mut s = TcpStream::connect(strict).await.ok()?;
            s.write_all(b"new root\n").await.ok()?;
            let mut back = [0u8; 9];
            tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
                .await
                .ok()?
                .ok()?;
            Some(&back == b"new root\n")
        })
        .ok()
        .flatten()
            == Some(true)
    });
    assert!(works, "no mesh connection under the new root\n{}", m.dump());

    // Nothing restarted, and the connection from before kept echoing throughout.
    assert_eq!((m.sa.proxy().pid(), m.sb.proxy().pid()), pids);
    long.flowing("under the new root");
    let n = long
        .finish()
        .unwrap_or_else(|e| panic!("the long-lived connection broke: {e}\n{}", m.dump()));
    assert!(n >= 10, "only {n} echoes on the long-lived connection");
}
