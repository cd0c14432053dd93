//! Two agents, one mesh: both sign with the issuer from one directory (the shared
//! Secret in Kubernetes); the proxies name both replicas. The replica they use is
//! killed under traffic: no connection fails, the proxies reconnect to the other
//! within seconds, and renewals and policy pushes go on through it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pillion_tests::apps::{self, spawn_server, App};
use pillion_tests::mesh::{
    mesh_sidecar_opts, source_yaml, MeshAgent, MeshDir, CLIENT_TOKEN, NAMESPACE, PERMISSIVE_PORT,
    SERVER_TOKEN, STRICT_PORT,
};
use pillion_tests::{Pod, Sidecar, Signal, World};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{eventually, sidecar_opts, testbin};

fn value(s: &Sidecar, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.metrics().map_or(-1.0, |m| m.value(name, labels))
}

/// One echo on a new connection to `target`, within 3 s.
async fn echo_once(target: std::net::SocketAddr) -> bool {
    let once = apps::echo_roundtrip(target, b"replica!");
    matches!(
        tokio::time::timeout(Duration::from_secs(3), once).await,
        Ok(Ok(back)) if back == b"replica!"
    )
}

fn plaintext_echoes(pod: &Pod, target: std::net::SocketAddr) -> bool {
    pod.run(move || echo_once(target)).unwrap_or(false)
}

#[test]
fn killing_the_agent_in_use_fails_nothing_and_the_other_replica_takes_over() {
    let world = World::new("mesh_ha").unwrap();
    let (a, b, c) = (
        world.pod("a").unwrap(),
        world.pod("b").unwrap(),
        world.pod("c").unwrap(),
    );
    let (pod1, pod2) = (world.pod("agent1").unwrap(), world.pod("agent2").unwrap());
    let dir = MeshDir::new("mesh_ha").unwrap();
    let issuer = dir.path().join("identity");
    pillion_identity::ca::init_issuer_dir(&issuer, "cluster.local", Duration::from_secs(3600))
        .unwrap();
    let source = dir
        .write("source.yaml", &source_yaml(&a, &b, &[STRICT_PORT]))
        .unwrap();
    let issuer_flag = issuer.display().to_string();
    let flags = [
        "--issuer-dir",
        issuer_flag.as_str(),
        "--leaf-lifetime",
        "6s",
    ];
    let agent1 = MeshAgent::start(&pod1, &testbin(), &dir, &source, &flags).unwrap();
    let agent2 = MeshAgent::start(&pod2, &testbin(), &dir, &source, &flags).unwrap();
    let _apps = [
        spawn_server(&b, PERMISSIVE_PORT, App::Echo).unwrap(),
        spawn_server(&b, STRICT_PORT, App::Echo).unwrap(),
    ];
    let replicas = format!("{},{}", agent1.addr(), agent2.addr());
    let sidecar = |pod: &Pod, token: &str, sa: &str| {
        let token = dir.write(&format!("{sa}.token"), token).unwrap();
        let opts = mesh_sidecar_opts(
            sidecar_opts(),
            &replicas,
            agent1.anchors(),
            &token,
            NAMESPACE,
            sa,
        );
        pod.install_sidecar(&opts).unwrap()
    };
    let sa = sidecar(&a, CLIENT_TOKEN, "client");
    let sb = sidecar(&b, SERVER_TOKEN, "server");
    let dump = || {
        format!(
            "{}{}{}{}",
            sa.proxy().logs(),
            sb.proxy().logs(),
            agent1.logs(),
            agent2.logs()
        )
    };
    let strict = b.addr_v4(STRICT_PORT);

    // New mesh connections all along, four at a time; and requests at about
    // 1,000/s over 8 mesh connections held open (an echo every 8 ms on each).
    let (ok, failed) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let (answered, unanswered) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let traffic = {
        let (ok, failed) = (ok.clone(), failed.clone());
        let (answered, unanswered) = (answered.clone(), unanswered.clone());
        a.background(move || async move {
            let held = (0..8).map(|_| {
                let (answered, unanswered) = (answered.clone(), unanswered.clone());
                let mut stopped = stopped.clone();
                tokio::spawn(async move {
                    let Ok(mut conn) = TcpStream::connect(strict).await else {
                        unanswered.fetch_add(1, Ordering::Relaxed);
                        return;
                    };
                    let mut tick = tokio::time::interval(Duration::from_millis(8));
                    while !*stopped.borrow_and_update() {
                        tick.tick().await;
                        let once = async {
                            conn.write_all(b"request!").await?;
                            let mut back = [0u8; 8];
                            conn.read_exact(&mut back).await?;
                            Ok::<bool, std::io::Error>(&back == b"request!")
                        };
                        let good = matches!(
                            tokio::time::timeout(Duration::from_secs(3), once).await,
                            Ok(Ok(true))
                        );
                        let counter = if good { &answered } else { &unanswered };
                        counter.fetch_add(1, Ordering::Relaxed);
                        if !good {
                            return;
                        }
                    }
                })
            });
            let held: Vec<_> = held.collect();
            let workers = (0..4).map(|_| {
                let (ok, failed, mut stopped) = (ok.clone(), failed.clone(), stopped.clone());
                tokio::spawn(async move {
                    while !*stopped.borrow_and_update() {
                        let counter = if echo_once(strict).await {
                            &ok
                        } else {
                            &failed
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                })
            });
            for w in workers.collect::<Vec<_>>().into_iter().chain(held) {
                let _ = w.await;
            }
        })
        .unwrap()
    };
    let connected = |s: &Sidecar| value(s, "pillion_agent_connected", &[]);
    let renewed = |s: &Sidecar| value(s, "pillion_identity_renewals_total", &[("result", "ok")]);
    std::thread::sleep(Duration::from_secs(1));
    assert!(ok.load(Ordering::Relaxed) > 0, "no traffic\n{}", dump());

    // The replica in use (the first named) dies at once.
    agent1.process().unwrap().signal(Signal::SIGKILL).unwrap();
    let before = (renewed(&sa), renewed(&sb));
    let moved = eventually(Duration::from_secs(10), || {
        connected(&sa) == 1.0 && connected(&sb) == 1.0
    });
    assert!(
        moved,
        "the proxies did not reach the other replica\n{}",
        dump()
    );
    // Renewals go on (6 s leaves) through the replica left.
    let renewing = eventually(Duration::from_secs(20), || {
        renewed(&sa) >= before.0 + 2.0 && renewed(&sb) >= before.1 + 2.0
    });
    assert!(renewing, "renewals stopped\n{}", dump());
    // They had been on the killed one: their view streams broke and came back.
    for s in [&sa, &sb] {
        let logs = s.proxy().logs().to_string();
        assert!(logs.contains("keeping the last good view"), "{logs}");
    }

    // So do pushes: the permissive port turns strict and refuses plaintext.
    let permissive = b.addr_v4(PERMISSIVE_PORT);
    assert!(plaintext_echoes(&c, permissive));
    dir.write(
        "source.yaml",
        &source_yaml(&a, &b, &[PERMISSIVE_PORT, STRICT_PORT]),
    )
    .unwrap();
    let pushed = eventually(Duration::from_secs(10), || {
        !plaintext_echoes(&c, permissive)
    });
    assert!(
        pushed,
        "the change did not arrive through the other replica\n{}",
        dump()
    );

    let _ = stop.send(true);
    traffic.join().unwrap();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(
        failed,
        0,
        "{failed} of {} connections failed\n{}",
        ok + failed,
        dump()
    );
    let (answered, unanswered) = (
        answered.load(Ordering::Relaxed),
        unanswered.load(Ordering::Relaxed),
    );
    assert_eq!(unanswered, 0, "{unanswered} requests failed\n{}", dump());
    assert!(
        answered > 1000,
        "only {answered} requests on held connections"
    );
    for s in [&sa, &sb] {
        assert_eq!(
            value(s, "pillion_tls_handshake_failures_total", &[]),
            0.0,
            "{}",
            s.metrics().unwrap()
        );
    }
    eprintln!(
        "[mesh] agent failover under traffic: {ok} new connections and {answered} requests \
         on held ones, 0 failed"
    );
}
