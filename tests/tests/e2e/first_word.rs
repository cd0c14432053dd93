//! Who speaks first, on ports nobody declared. A server that speaks first (SMTP,
//! MySQL, SSH) used to wait out detection twice through the mesh — the client-side
//! proxy's 10 s, then the server side's 10 s — and 10 s from an unmeshed caller.
//! Now the client's proxy opens the upstream after a short silence and tells the
//! server's proxy, in its ALPN, that the bytes are opaque, so the greeting arrives
//! in well under a second with no configuration. A connection on which nobody says
//! anything is closed by the server's proxy at its detection deadline (the client's
//! hands it on undecided at its own) instead of becoming an idle relay.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pillion_tests::apps::{self, App, GREETING};
use pillion_tests::mesh::{self, MeshWorld};
use pillion_tests::Pod;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{eventually, sidecar_opts, testbin};

/// The greeter's port on `b`, under the service VIP with no declared protocol.
const GREETER_PORT: u16 = 7300;
/// An echo server's port on `b` (speaks only when spoken to), also undeclared.
const QUIET_PORT: u16 = 7301;
/// The service VIP (`mesh::source_yaml`'s `echo` service).
const VIP: &str = "198.18.1.100";
const SILENT: &str = "pillion_tcp_silent_closed_total";

/// Connects from `pod` to `target`, reads the first bytes the far side sends (or
/// fails after 15 s), then checks the connection still echoes; answers the time to
/// the first byte and what it was.
fn first_bytes(pod: &Pod, target: SocketAddr) -> anyhow::Result<(Duration, Vec<u8>)> {
    pod.run(move || async move {
        let started = Instant::now();
        let mut s = TcpStream::connect(target).await?;
        let mut got = vec![0u8; GREETING.len()];
        tokio::time::timeout(Duration::from_secs(15), s.read_exact(&mut got)).await??;
        let ttfb = started.elapsed();
        s.write_all(b"ping").await?;
        let mut back = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back)).await??;
        anyhow::ensure!(&back == b"ping", "no echo after the greeting");
        Ok((ttfb, got))
    })?
}

/// Connects from `pod` to `target`, says nothing, and answers how long until the
/// far side closed (or `None` if it still had not after 30 s).
fn closed_after(pod: &Pod, target: SocketAddr) -> anyhow::Result<Option<Duration>> {
    pod.run(move || async move {
        let started = Instant::now();
        let mut s = TcpStream::connect(target).await?;
        let mut buf = [0u8; 16];
        match tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => Ok(Some(started.elapsed())),
            Ok(Ok(n)) => anyhow::bail!("a silent peer got {n} bytes"),
            Err(_) => Ok(None),
        }
    })?
}

/// The median of `samples`.
fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

#[test]
fn a_server_that_speaks_first_is_heard_within_a_second_and_silence_is_closed() {
    let m = MeshWorld::start("first_word", &testbin(), &sidecar_opts(), &[]).unwrap();
    let _greeter = apps::spawn_server(&m.b, GREETER_PORT, App::Greeter).unwrap();
    let _quiet = apps::spawn_server(&m.b, QUIET_PORT, App::Echo).unwrap();
    // Both ports join the service with no protocol: the proxies must find out.
    let source = mesh::source_yaml(&m.a, &m.b, &[mesh::STRICT_PORT]);
    let (workloads, services) = source.split_at(source.find("services:").unwrap());
    let ports = format!("    ports:\n      - port: {GREETER_PORT}\n      - port: {QUIET_PORT}\n");
    let source = format!(
        "{workloads}{}",
        services.replacen("    ports:\n", &ports, 1)
    );
    m.write_source(&source).unwrap();
    let greeter_vip: SocketAddr = format!("{VIP}:{GREETER_PORT}").parse().unwrap();
    let quiet_vip: SocketAddr = format!("{VIP}:{QUIET_PORT}").parse().unwrap();

    // Silence is measured beside the rest: each waits out the 10 s detection deadline.
    let silent = {
        let (a, c, b) = (m.a.clone(), m.c.clone(), m.b.addr_v4(QUIET_PORT));
        std::thread::spawn(move || {
            // The view with the new ports reaches a's proxy within a second or two.
            std::thread::sleep(Duration::from_secs(3));
            (
                closed_after(&a, quiet_vip).unwrap(),
                closed_after(&c, b).unwrap(),
            )
        })
    };

    // Meshed: a → VIP → b. Wait for the view to carry the port (a connection before
    // it passes through unmeshed), then measure.
    assert!(
        eventually(Duration::from_secs(20), || first_bytes(&m.a, greeter_vip)
            .is_ok()),
        "the greeter never answered through the mesh\n{}",
        m.dump()
    );
    let tls = "pillion_tls_connections_total";
    let inbound = [("direction", "inbound")];
    let mtls_before = m.sb.metrics().unwrap().value(tls, &inbound);
    let mut meshed = Vec::new();
    for _ in 0..5 {
        let (ttfb, greeting) =
            first_bytes(&m.a, greeter_vip).unwrap_or_else(|e| panic!("{e:#}\n{}", m.dump()));
        assert_eq!(greeting, GREETING);
        meshed.push(ttfb);
    }
    let mtls = m.sb.metrics().unwrap().value(tls, &inbound) - mtls_before;
    assert!(
        mtls >= 5.0,
        "the greetings did not cross the mesh: {mtls} connections"
    );
    // Unmeshed caller c → b's address: the server's proxy alone.
    let mut plain = Vec::new();
    for _ in 0..5 {
        let (ttfb, greeting) = first_bytes(&m.c, m.b.addr_v4(GREETER_PORT))
            .unwrap_or_else(|e| panic!("{e:#}\n{}", m.dump()));
        assert_eq!(greeting, GREETING);
        plain.push(ttfb);
    }
    let (meshed, plain) = (median(meshed), median(plain));
    println!("server-first time to first byte: meshed {meshed:?}, unmeshed caller {plain:?} (median of 5)");
    assert!(meshed < Duration::from_secs(1), "meshed: {meshed:?}");
    assert!(plain < Duration::from_secs(1), "unmeshed: {plain:?}");

    let (meshed_silence, plain_silence) = silent.join().unwrap();
    println!(
        "silent connections closed after: meshed {meshed_silence:?}, unmeshed {plain_silence:?}"
    );
    // The client's proxy hands a silent connection on undecided at its deadline
    // (a late first byte must still meet the server's policy); the server's proxy
    // closes it at its own. An unmeshed caller meets only the server's.
    for (what, after, from, to) in [
        ("meshed", meshed_silence, 19, 25),
        ("unmeshed", plain_silence, 9, 15),
    ] {
        let after =
            after.unwrap_or_else(|| panic!("a silent {what} connection stayed open\n{}", m.dump()));
        assert!(
            after >= Duration::from_secs(from) && after < Duration::from_secs(to),
            "{what}: {after:?}"
        );
    }
    let closed =
        m.sb.metrics()
            .unwrap()
            .value(SILENT, &[("direction", "inbound")]);
    assert!(
        closed >= 2.0,
        "silent closes on the server's proxy: {closed}"
    );
}
