//! Certificate rotation with the real agent issuing 10-second leaves: a long-lived
//! mesh connection crosses several renewals unbroken, while new connections see
//! new server certificates.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use pillion_tests::mesh::{self, spiffe_id, MeshWorld, PERMISSIVE_PORT};
use pillion_tests::Sidecar;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{sidecar_opts, testbin};

const RENEWALS: &str = "pillion_identity_renewals_total";
/// How long the long-lived connection runs: with 10 s leaves renewed at 70 % ±10 %
/// (6.3–7.7 s), at least three renewals fall inside it.
const RUN: Duration = Duration::from_secs(26);

fn renewals(s: &Sidecar) -> f64 {
    s.metrics().unwrap().value(RENEWALS, &[("result", "ok")])
}

#[test]
fn a_long_lived_connection_survives_three_renewals_and_new_connections_see_new_serials() {
    let m = MeshWorld::start(
        "mesh_rotation",
        &testbin(),
        &sidecar_opts(),
        &["--leaf-lifetime", "10s"],
    )
    .unwrap();
    let (a0, b0) = (renewals(&m.sa), renewals(&m.sb));

    // One connection, a message every 500 ms, each echo checked.
    let target = m.b.addr_v4(PERMISSIVE_PORT);
    let long =
        m.a.background(move || async move {
            let mut s = TcpStream::connect(target).await?;
            let deadline = Instant::now() + RUN;
            let mut sent = 0usize;
            while Instant::now() < deadline {
                let msg = format!("message {sent:06}\n");
                s.write_all(msg.as_bytes()).await?;
                let mut back = vec![0u8; msg.len()];
                tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
                    .await
                    .map_err(|_| std::io::Error::other(format!("no echo for message {sent}")))??;
                if back != msg.as_bytes() {
                    return Err(std::io::Error::other(format!(
                        "message {sent} came back wrong"
                    )));
                }
                sent += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Ok::<usize, std::io::Error>(sent)
        })
        .unwrap();

    // Meanwhile a client with a certificate of its own (workload `probe`) opens new
    // mesh connections to b's inbound and records the serial b presents.
    let agent = m.agent.addr();
    let anchors = std::fs::read_to_string(m.agent.anchors()).unwrap();
    let token = m.probe_token.clone();
    let mut serials = Vec::new();
    let started = Instant::now();
    while started.elapsed() < RUN {
        let (anchors, token) = (anchors.clone(), token.clone());
        let (serial, answer) =
            m.c.run(move || async move {
                let store = mesh::fetch_identity(agent, &anchors, &token, "probe").await?;
                mesh::mesh_exchange(target, store, &spiffe_id("server"), b"probe").await
            })
            .unwrap()
            .unwrap_or_else(|e| panic!("probe: {e:#}\n{}", m.dump()));
        assert_eq!(answer, b"probe");
        serials.push(serial);
        std::thread::sleep(Duration::from_secs(2));
    }

    let sent = long
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("the long-lived connection broke: {e}\n{}", m.dump()));
    assert!(sent >= 40, "only {sent} messages in {RUN:?}");
    let (a1, b1) = (renewals(&m.sa), renewals(&m.sb));
    assert!(a1 - a0 >= 3.0, "a renewed {} times", a1 - a0);
    assert!(b1 - b0 >= 3.0, "b renewed {} times", b1 - b0);
    let distinct: BTreeSet<&String> = serials.iter().collect();
    assert!(
        distinct.len() >= 3,
        "b presented only {} serials over {} connections: {serials:?}",
        distinct.len(),
        serials.len()
    );
    assert_eq!(
        m.sb.metrics()
            .unwrap()
            .value("pillion_identity_renewals_total", &[("result", "error")]),
        0.0
    );
    eprintln!(
        "[mesh] rotation: {sent} messages on one connection; renewals a +{}, b +{}; serials seen {distinct:?}",
        a1 - a0,
        b1 - b0
    );
}
