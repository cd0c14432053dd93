//! Mutual TLS between sidecars with the real agent: encrypted on the wire, peer
//! identities in the metrics, strict and permissive ports, the agent refusing a
//! CSR for another identity, and the cost of it all (handshake time, throughput).

use std::sync::Arc;
use std::time::{Duration, Instant};

use pillion_proxy::control::AgentError;
use pillion_tests::apps::{self, App};
use pillion_tests::mesh::{
    self, capture_on_bridge, contains, spiffe_id, MeshWorld, PERMISSIVE_PORT, STRICT_PORT,
};
use pillion_tests::Pod;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{eventually, mib_per_s, sidecar_opts, testbin, within};

const TLS_CONNECTIONS: &str = "pillion_tls_connections_total";
const DENIED: &str = "pillion_inbound_denied_total";

fn start(test: &str) -> MeshWorld {
    MeshWorld::start(test, &testbin(), &sidecar_opts(), &[]).unwrap()
}

/// Echoes `data` to `target` from `pod`; the echo, or an error.
fn echo_from(pod: &Pod, target: std::net::SocketAddr, data: Vec<u8>) -> anyhow::Result<Vec<u8>> {
    pod.run(move || async move {
        within(
            Duration::from_secs(30),
            "echo",
            apps::echo_roundtrip(target, &data),
        )
        .await
    })?
}

#[test]
fn mesh_traffic_is_encrypted_on_the_wire_and_carries_identities() {
    let m = start("mesh_encrypted");
    let client = spiffe_id("client").to_string();
    let server = spiffe_id("server").to_string();

    // Meshed: a → b. The marker must never cross the bridge in the clear.
    let marker = b"PILLION-SECRET-MARKER-4b1d";
    let payload = marker.repeat(2000);
    let capture = capture_on_bridge(&m.a, Duration::from_secs(3), 64 << 20);
    let back = echo_from(&m.a, m.b.addr_v4(PERMISSIVE_PORT), payload.clone())
        .unwrap_or_else(|e| panic!("{e:#}\n{}", m.dump()));
    assert_eq!(back, payload);
    let frames = capture.join().unwrap().unwrap();
    assert!(
        !contains(&frames, marker),
        "the plaintext marker crossed the bridge"
    );
    assert!(
        contains(&frames, &[0x17, 0x03, 0x03]),
        "no TLS application-data record was captured ({} bytes seen)",
        frames.len()
    );

    // Control: plaintext from the pod without a sidecar is visible to the same
    // capture, so the capture does see payloads.
    let visible = b"PILLION-VISIBLE-MARKER-9e2c";
    let capture = capture_on_bridge(&m.c, Duration::from_secs(3), 64 << 20);
    let back = echo_from(&m.c, m.b.addr_v4(PERMISSIVE_PORT), visible.repeat(10)).unwrap();
    assert_eq!(back, visible.repeat(10));
    let frames = capture.join().unwrap().unwrap();
    assert!(
        contains(&frames, visible),
        "the capture misses plaintext payloads"
    );

    // B's inbound metrics carry A's SPIFFE id; A's outbound carry B's.
    let mut last = String::new();
    let counted = eventually(Duration::from_secs(5), || {
        let (ma, mb) = (m.sa.metrics().unwrap(), m.sb.metrics().unwrap());
        let inbound = mb.value(
            TLS_CONNECTIONS,
            &[("direction", "inbound"), ("peer_identity", &client)],
        );
        let outbound = ma.value(
            TLS_CONNECTIONS,
            &[("direction", "outbound"), ("peer_identity", &server)],
        );
        last = format!("b inbound from client: {inbound}, a outbound to server: {outbound}\n{mb}");
        inbound >= 1.0 && outbound >= 1.0
    });
    assert!(counted, "{last}");
    let mb = m.sb.metrics().unwrap();
    assert!(
        mb.value("pillion_tcp_passthrough_total", &[("direction", "inbound")]) >= 1.0,
        "the plaintext connection from c was not counted as passthrough"
    );
    assert!(mb.value("pillion_identity_cert_expiry_timestamp_seconds", &[]) > 1.6e9);
    assert_eq!(mb.value("pillion_agent_connected", &[]), 1.0);
}

#[test]
fn strict_ports_refuse_plaintext_and_permissive_ports_accept_it() {
    let m = start("mesh_strict");
    let data = b"hello over plaintext".to_vec();
    // From the pod without a proxy: strict refuses, permissive accepts.
    let refused = echo_from(&m.c, m.b.addr_v4(STRICT_PORT), data.clone());
    assert!(
        refused.as_ref().map_or(true, |back| back.is_empty()),
        "plaintext reached the app on the strict port: {refused:?}"
    );
    assert_eq!(
        echo_from(&m.c, m.b.addr_v4(PERMISSIVE_PORT), data.clone()).unwrap(),
        data
    );
    // A meshed client from the allowed namespace gets through the strict port.
    assert_eq!(
        echo_from(&m.a, m.b.addr_v4(STRICT_PORT), data.clone())
            .unwrap_or_else(|e| panic!("{e:#}\n{}", m.dump())),
        data
    );
    let denied = eventually(Duration::from_secs(5), || {
        m.sb.metrics()
            .unwrap()
            .value(DENIED, &[("reason", "plaintext")])
            >= 1.0
    });
    assert!(denied, "{}", m.sb.metrics().unwrap());
}

#[test]
fn the_agent_refuses_a_csr_for_an_identity_the_token_does_not_prove() {
    let m = start("mesh_csr_403");
    let agent = m.agent.addr();
    let anchors = std::fs::read_to_string(m.agent.anchors()).unwrap();
    let token = m.client_token.clone();
    let (other, own) =
        m.c.run(move || async move {
            let (_key, csr) = pillion_identity::csr::generate(&spiffe_id("server")).unwrap();
            let other = mesh::request_certificate(agent, &anchors, &token, csr).await;
            let (_key, csr) = pillion_identity::csr::generate(&spiffe_id("client")).unwrap();
            let own = mesh::request_certificate(agent, &anchors, &token, csr).await;
            (other, own)
        })
        .unwrap();
    match other {
        Err(AgentError::Refused { status, code, .. }) => {
            assert_eq!(status.as_u16(), 403);
            assert_eq!(code, "identity_mismatch");
        }
        other => panic!("a CSR for the server with the client's token: {other:?}"),
    }
    let own = own.unwrap_or_else(|e| panic!("the client's own CSR: {e}"));
    assert!(own.chain_pem.contains("BEGIN CERTIFICATE"));
}

/// Median time from `connect` to the first echoed byte over new connections.
async fn first_byte_median(target: std::net::SocketAddr, n: usize) -> Duration {
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let start = Instant::now();
        let exchange = async {
            let mut s = TcpStream::connect(target).await?;
            // A byte that cannot start an HTTP request: no detection waits on it.
            s.write_all(b"\0").await?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await?;
            Ok::<_, std::io::Error>(())
        };
        within(Duration::from_secs(10), "a first byte", exchange)
            .await
            .unwrap_or_else(|e| panic!("connection {i} to {target}: {e}"));
        times.push(start.elapsed());
    }
    times.sort();
    times[n / 2]
}

#[test]
fn mesh_handshake_time_and_throughput_against_direct() {
    const BULK: usize = 64 << 20;
    let m = start("mesh_perf");
    // A direct pair without sidecars for the baseline.
    let d = m.world.pod("d").unwrap();
    let e = m.world.pod("e").unwrap();
    let _echo_e = apps::spawn_server(&e, PERMISSIVE_PORT, App::Echo).unwrap();

    let mesh_target = m.b.addr_v4(PERMISSIVE_PORT);
    let direct_target = e.addr_v4(PERMISSIVE_PORT);
    let mesh_hs =
        m.a.run(move || first_byte_median(mesh_target, 100))
            .unwrap();
    let direct_hs = d
        .run(move || first_byte_median(direct_target, 100))
        .unwrap();

    let data = Arc::new(apps::random_bytes(BULK, 64));
    let sum = apps::checksum(&data);
    let timed = |pod: &Pod, target| {
        let data = Arc::clone(&data);
        pod.run(move || async move {
            let start = Instant::now();
            let back = within(
                Duration::from_secs(300),
                "64 MiB echo",
                apps::echo_roundtrip(target, &data),
            )
            .await
            .unwrap();
            (apps::checksum(&back), start.elapsed())
        })
        .unwrap()
    };
    let (mesh_sum, mesh_time) = timed(&m.a, mesh_target);
    let (direct_sum, direct_time) = timed(&d, direct_target);
    assert_eq!(mesh_sum, sum, "the echo through mutual TLS was corrupted");
    assert_eq!(direct_sum, sum);
    let client = spiffe_id("client").to_string();
    let tls = m.sb.metrics().unwrap().value(
        TLS_CONNECTIONS,
        &[("direction", "inbound"), ("peer_identity", &client)],
    );
    assert!(tls >= 101.0, "only {tls} mesh connections counted");

    let moved = 2 * BULK as u64;
    eprintln!(
        "[mesh] new connection to first echoed byte (median of 100; TLS sessions resumed after the first): mTLS {:.2?}, direct {:.2?}",
        mesh_hs, direct_hs
    );
    eprintln!(
        "[mesh] 64 MiB echo (128 MiB moved): mTLS {:.2?} = {:.0} MiB/s; direct {:.2?} = {:.0} MiB/s; ratio {:.2}",
        mesh_time,
        mib_per_s(moved, mesh_time),
        direct_time,
        mib_per_s(moved, direct_time),
        mesh_time.as_secs_f64() / direct_time.as_secs_f64()
    );
}
