//! The proxies' trust follows the mesh's roots while they run: an agent that comes
//! back with a new root (its CA lived in an emptyDir) is trusted once the new root
//! reaches the proxies' trust anchor file, with no proxy restarted and no open
//! connection dropped. Before, the proxies read the file once and never trusted the
//! new agent again (`UnknownIssuer`).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
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

/// Writes `text` to `dir/name` whole, by rename, as a Secret volume update lands.
fn replace(dir: &std::path::Path, name: &str, text: &str) {
    pillion_tests::mesh::replace_file(dir, name, text).unwrap();
}

/// The three steps of a rotation, under traffic: a second root joins the bundle,
/// the issuer switches to one under it (every proxy renews), the old root leaves.
/// No new connection fails, no handshake is refused, no proxy restarts, and a
/// connection opened before the rotation echoes after it.
#[test]
fn the_issuer_and_the_root_rotate_under_traffic_without_a_failed_connection() {
    let dir = std::env::temp_dir().join(format!("pillion-rotate-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let issuer_dir = dir.join("identity");
    pillion_identity::ca::init_issuer_dir(&issuer_dir, "cluster.local", Duration::from_secs(3600))
        .unwrap();
    let issuer_flag = issuer_dir.display().to_string();
    let flags = ["--issuer-dir", &issuer_flag, "--leaf-lifetime", "6s"];
    let m = MeshWorld::start("mesh_trust_rotate", &testbin(), &sidecar_opts(), &flags).unwrap();
    let strict = m.b.addr_v4(STRICT_PORT);
    let pids = (m.sa.proxy().pid(), m.sb.proxy().pid());
    let long = LongLived::open(&m.a, strict);

    // New mesh connections all along, one every 20 ms; `done` counts the good ones
    // so each step can show it ran under traffic.
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let done = Arc::new(AtomicU32::new(0));
    let counted = done.clone();
    let traffic =
        m.a.background(move || async move {
            let (mut ok, mut failed, mut first_failure) = (0u32, 0u32, None);
            loop {
                let once = async {
                    let mut s = TcpStream::connect(strict).await?;
                    s.write_all(b"rotate!\n").await?;
                    let mut back = [0u8; 8];
                    s.read_exact(&mut back).await?;
                    Ok::<bool, std::io::Error>(&back == b"rotate!\n")
                };
                match tokio::time::timeout(Duration::from_secs(3), once).await {
                    Ok(Ok(true)) => {
                        ok += 1;
                        counted.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        failed += 1;
                        first_failure.get_or_insert_with(|| format!("{other:?}"));
                    }
                }
                tokio::select! {
                    _ = &mut stopped => return (ok, failed, first_failure),
                    () = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
        })
        .unwrap();
    let roots = |s: &Sidecar| value(s, "pillion_identity_trust_bundle_roots", &[]);
    let renewed = |s: &Sidecar| value(s, "pillion_identity_renewals_total", &[("result", "ok")]);
    std::thread::sleep(Duration::from_secs(1));
    let mut marks = vec![done.load(Ordering::Relaxed)];

    // Step 1: the new root joins the bundle; both proxies trust both.
    let r1 = std::fs::read_to_string(issuer_dir.join("ca.crt")).unwrap();
    let r2 = pillion_identity::Ca::generate("cluster.local").unwrap();
    replace(
        &issuer_dir,
        "ca.crt",
        &format!("{r1}{}", r2.trust_bundle_pem()),
    );
    let both = eventually(Duration::from_secs(10), || {
        roots(&m.sa) == 2.0 && roots(&m.sb) == 2.0
    });
    assert!(both, "the new root did not reach the proxies\n{}", m.dump());
    std::thread::sleep(Duration::from_secs(1));
    marks.push(done.load(Ordering::Relaxed));

    // Step 2: the issuer switches to one under the new root; every proxy renews
    // twice after it (6 s leaves), so every leaf in use is under the new root.
    let (issuer, key) = r2.issue_intermediate(Duration::from_secs(3600)).unwrap();
    replace(&issuer_dir, "tls.key", &key);
    replace(&issuer_dir, "tls.crt", &issuer);
    let switched = (renewed(&m.sa), renewed(&m.sb));
    let renewed_twice = eventually(Duration::from_secs(20), || {
        renewed(&m.sa) >= switched.0 + 2.0 && renewed(&m.sb) >= switched.1 + 2.0
    });
    assert!(renewed_twice, "the proxies did not renew\n{}", m.dump());
    std::thread::sleep(Duration::from_secs(1));
    marks.push(done.load(Ordering::Relaxed));

    // Step 3: the old root leaves the bundle. No restart: the agent closes its
    // connections from before the change, the proxies reconnect on its new chain,
    // and both drop the old root.
    replace(&issuer_dir, "ca.crt", &r2.trust_bundle_pem());
    let one = eventually(Duration::from_secs(15), || {
        roots(&m.sa) == 1.0 && roots(&m.sb) == 1.0
    });
    assert!(one, "the old root was not removed\n{}", m.dump());
    std::thread::sleep(Duration::from_secs(1));
    marks.push(done.load(Ordering::Relaxed));

    let _ = stop.send(());
    let (ok, failed, first_failure) = traffic.join().unwrap();
    assert_eq!(
        failed,
        0,
        "{failed} of {} connections failed, first: {first_failure:?}\n{}",
        ok + failed,
        m.dump()
    );
    // Each step ran under traffic: new connections succeeded while it took effect
    // and in the second after it.
    let per_step: Vec<u32> = marks.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        marks[0] > 0 && per_step.iter().all(|&n| n >= 5),
        "connections before and during the steps: {} then {per_step:?}",
        marks[0]
    );
    for s in [&m.sa, &m.sb] {
        assert_eq!(
            value(s, "pillion_tls_handshake_failures_total", &[]),
            0.0,
            "{}",
            s.metrics().unwrap()
        );
    }
    assert_eq!((m.sa.proxy().pid(), m.sb.proxy().pid()), pids);
    long.flowing("after the rotation");
    let n = long
        .finish()
        .unwrap_or_else(|e| panic!("the long-lived connection broke: {e}\n{}", m.dump()));
    eprintln!("[mesh] rotation under traffic: {ok} new connections ({per_step:?} during the steps), 0 failed; {n} echoes on one connection");
    let _ = std::fs::remove_dir_all(&dir);
}
