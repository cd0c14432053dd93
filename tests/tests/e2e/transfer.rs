//! Data through a pair of sidecars: bulk transfers (IPv4, IPv6) with checksums, byte
//! counters and throughput against a direct connection; half-close; 1,000 concurrent
//! connections.

use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use pillion_tests::apps::{self, App};
use pillion_tests::{Pod, World};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{eventually, m, mib_per_s, sidecar_opts, within};

const BULK: usize = 64 << 20;
const PORT: u16 = 7000;

/// Echoes `data` through `target` from `client`; returns (checksum of the echo, its
/// length, time taken).
fn timed_echo(
    client: &Pod,
    target: std::net::SocketAddr,
    data: Arc<Vec<u8>>,
) -> (u64, usize, Duration) {
    client
        .run(move || async move {
            let start = Instant::now();
            let back = within(
                Duration::from_secs(120),
                "64 MiB echo",
                apps::echo_roundtrip(target, &data),
            )
            .await
            .expect("echo round trip");
            (apps::checksum(&back), back.len(), start.elapsed())
        })
        .expect("client thread")
}

fn bulk_transfer(ipv6: bool) {
    let family = if ipv6 { "IPv6" } else { "IPv4" };
    let world = World::new(&format!("bulk_{family}")).unwrap();
    let (a, b) = (world.pod("a").unwrap(), world.pod("b").unwrap());
    let (c, d) = (world.pod("c").unwrap(), world.pod("d").unwrap());
    let sa = a.install_sidecar(&sidecar_opts()).unwrap();
    let sb = b.install_sidecar(&sidecar_opts()).unwrap();
    let _echo_b = apps::spawn_server(&b, PORT, App::Echo).unwrap();
    let _echo_d = apps::spawn_server(&d, PORT, App::Echo).unwrap();
    let addr = |p: &Pod| {
        if ipv6 {
            p.addr_v6(PORT)
        } else {
            p.addr_v4(PORT)
        }
    };

    let data = Arc::new(apps::random_bytes(BULK, if ipv6 { 6 } else { 4 }));
    let sum = apps::checksum(&data);

    let (mesh_sum, mesh_len, mesh_time) = timed_echo(&a, addr(&b), Arc::clone(&data));
    assert_eq!(
        mesh_len,
        BULK,
        "{}",
        crate::common::dump(&[sa.proxy(), sb.proxy()])
    );
    assert_eq!(mesh_sum, sum, "echo through the sidecars was corrupted");

    let (direct_sum, direct_len, direct_time) = timed_echo(&c, addr(&d), data);
    assert_eq!((direct_sum, direct_len), (sum, BULK));

    // Both proxies count at least 64 MiB each way (counters may land as the
    // connection closes, so poll briefly).
    let want = BULK as f64;
    let mut last = String::new();
    let counted = eventually(Duration::from_secs(5), || {
        let (ma, mb) = (sa.metrics().unwrap(), sb.metrics().unwrap());
        let got = [
            ma.value(m::SENT, m::OUT),
            ma.value(m::RECEIVED, m::OUT),
            mb.value(m::SENT, m::IN),
            mb.value(m::RECEIVED, m::IN),
        ];
        last = format!("a outbound sent/received, b inbound sent/received: {got:?}");
        got.iter().all(|v| *v >= want)
    });
    assert!(counted, "byte counters below 64 MiB: {last}");

    let moved = 2 * BULK as u64; // each way
    eprintln!(
        "[{family}] 64 MiB echo (128 MiB moved): through sidecars {:.2?} = {:.0} MiB/s; direct {:.2?} = {:.0} MiB/s; ratio {:.2}",
        mesh_time,
        mib_per_s(moved, mesh_time),
        direct_time,
        mib_per_s(moved, direct_time),
        mesh_time.as_secs_f64() / direct_time.as_secs_f64()
    );
}

#[test]
fn bulk_64_mib_ipv4_through_sidecars() {
    bulk_transfer(false);
}

#[test]
fn bulk_64_mib_ipv6_through_sidecars() {
    bulk_transfer(true);
}

#[test]
fn half_close_reply_after_eof() {
    let world = World::new("half_close").unwrap();
    let (a, b) = (world.pod("a").unwrap(), world.pod("b").unwrap());
    let sa = a.install_sidecar(&sidecar_opts()).unwrap();
    let sb = b.install_sidecar(&sidecar_opts()).unwrap();
    let _server = apps::spawn_server(&b, PORT, App::ReplyAfterEof).unwrap();
    let data = Arc::new(apps::random_bytes(4 << 20, 3));
    for target in [b.addr_v4(PORT), b.addr_v6(PORT)] {
        let sent = Arc::clone(&data);
        let reply = a
            .run(move || async move {
                within(
                    Duration::from_secs(30),
                    "half-closed exchange",
                    apps::send_then_read_reply(target, &sent),
                )
                .await
            })
            .unwrap()
            .unwrap_or_else(|e| {
                panic!("{e:#}\n{}", crate::common::dump(&[sa.proxy(), sb.proxy()]))
            });
        assert_eq!(
            apps::decode_reply(&reply),
            Some((data.len() as u64, apps::checksum(&data))),
            "the server saw EOF only after all the data, and its reply came back ({target})"
        );
    }
}

#[test]
fn a_thousand_concurrent_connections() {
    const N: usize = 1000;
    let limit = apps::raise_nofile_limit().unwrap();
    assert!(
        limit >= 4 * N as u64 + 200,
        "open-files limit {limit} too low for this test"
    );
    let world = World::new("thousand").unwrap();
    let (a, b) = (world.pod("a").unwrap(), world.pod("b").unwrap());
    let sa = a.install_sidecar(&sidecar_opts()).unwrap();
    let sb = b.install_sidecar(&sidecar_opts()).unwrap();
    let _server = apps::spawn_server(&b, PORT, App::Echo).unwrap();
    let target = b.addr_v4(PORT);

    // Every connection does a round trip, then all wait together (so N are open at
    // once), then close when the test says so.
    let (all_open_tx, all_open_rx) = mpsc::channel::<usize>();
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let clients = a
        .background(move || async move {
            within(Duration::from_secs(120), "1000 connections", async move {
                let barrier = Arc::new(tokio::sync::Barrier::new(N));
                let mut set = tokio::task::JoinSet::new();
                for i in 0..N {
                    let barrier = Arc::clone(&barrier);
                    let mut release = release_rx.clone();
                    let all_open = all_open_tx.clone();
                    set.spawn(async move {
                        let msg = format!("hello from connection {i:05}");
                        let conn = async {
                            let mut s = TcpStream::connect(target).await?;
                            s.write_all(msg.as_bytes()).await?;
                            let mut back = vec![0; msg.len()];
                            s.read_exact(&mut back).await?;
                            anyhow::ensure!(back == msg.as_bytes(), "wrong echo on {i}");
                            Ok(s)
                        }
                        .await;
                        // Failed connections still meet the barrier, so nobody hangs.
                        if barrier.wait().await.is_leader() {
                            let _ = all_open.send(i);
                        }
                        let _ = release.wait_for(|go| *go).await;
                        let mut s = conn?;
                        s.shutdown().await?;
                        let mut rest = Vec::new();
                        s.read_to_end(&mut rest).await?;
                        anyhow::ensure!(rest.is_empty(), "extra bytes on {i}");
                        Ok(())
                    });
                }
                let mut failures = Vec::new();
                while let Some(joined) = set.join_next().await {
                    match joined {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => failures.push(format!("{e:#}")),
                        Err(e) => failures.push(e.to_string()),
                    }
                }
                failures
            })
            .await
        })
        .unwrap();

    all_open_rx
        .recv_timeout(Duration::from_secs(120))
        .expect("all connections reached the barrier");
    let (ma, mb) = (sa.metrics().unwrap(), sb.metrics().unwrap());
    let open = (ma.value(m::OPEN, m::OUT), mb.value(m::OPEN, m::IN));
    let _ = release_tx.send(true);
    let failures = clients.join().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {N} connections failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(
        open,
        (N as f64, N as f64),
        "open connections while all were open"
    );
    let settled = eventually(Duration::from_secs(10), || {
        let (ma, mb) = (sa.metrics().unwrap(), sb.metrics().unwrap());
        ma.value(m::OPEN, m::OUT) == 0.0
            && mb.value(m::OPEN, m::IN) == 0.0
            && ma.value(m::OPENED, m::OUT) == N as f64
            && mb.value(m::OPENED, m::IN) == N as f64
            && ma.value(m::CLOSED, m::OUT) == N as f64
            && mb.value(m::CLOSED, m::IN) == N as f64
    });
    assert!(
        settled,
        "counters after close: a {} b {}",
        sa.metrics().unwrap(),
        sb.metrics().unwrap()
    );
    assert_eq!(
        sa.metrics().unwrap().value(m::CONNECT_FAILURES, m::OUT),
        0.0
    );
}
