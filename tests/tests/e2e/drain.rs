//! SIGTERM: the proxy stops accepting at once, lets open connections finish their
//! transfer, then exits 0.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use pillion_tests::apps;
use pillion_tests::apps::App;
use pillion_tests::{Pod, SidecarOpts, Signal, Task, World};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::common::within;

const CHUNK: usize = 128 * 1024;
const CHUNKS: usize = 16;
const PER_CLIENT: usize = 3;

/// One connection: first chunk echoed, then report `ready`, wait for `go`, send the
/// rest slowly and check the whole echo.
async fn slow_echo(
    target: SocketAddr,
    seed: u64,
    ready: mpsc::Sender<()>,
    mut go: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let data = apps::random_bytes(CHUNK * CHUNKS, seed);
    let stream = TcpStream::connect(target).await?;
    let (mut r, mut w) = stream.into_split();
    w.write_all(&data[..CHUNK]).await?;
    let mut back = vec![0; CHUNK];
    r.read_exact(&mut back).await?;
    let _ = ready.send(());
    go.wait_for(|go| *go).await?;
    let writer = async {
        for chunk in data[CHUNK..].chunks(CHUNK) {
            w.write_all(chunk).await?;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        w.shutdown().await
    };
    let reader = r.read_to_end(&mut back);
    let (written, read) = tokio::join!(writer, reader);
    written?;
    read?;
    anyhow::ensure!(
        back.len() == data.len(),
        "echo of {} bytes, sent {}",
        back.len(),
        data.len()
    );
    anyhow::ensure!(
        apps::checksum(&back) == apps::checksum(&data),
        "corrupted echo"
    );
    Ok(())
}

fn start_clients(
    pod: &Pod,
    target: SocketAddr,
    seed: u64,
    ready: &mpsc::Sender<()>,
    go: &watch::Receiver<bool>,
) -> Task<Vec<String>> {
    let (ready, go) = (ready.clone(), go.clone());
    pod.background(move || async move {
        within(
            Duration::from_secs(60),
            "draining connections",
            async move {
                let mut set = tokio::task::JoinSet::new();
                for i in 0..PER_CLIENT {
                    set.spawn(slow_echo(
                        target,
                        seed + i as u64,
                        ready.clone(),
                        go.clone(),
                    ));
                }
                let mut failures = Vec::new();
                while let Some(done) = set.join_next().await {
                    match done {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => failures.push(format!("{e:#}")),
                        Err(e) => failures.push(e.to_string()),
                    }
                }
                failures
            },
        )
        .await
    })
    .unwrap()
}

/// Waits until a new connection to `target` from `pod` is refused (or reset).
fn refused(pod: &Pod, target: SocketAddr) -> Result<(), String> {
    pod.run(move || async move {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match TcpStream::connect(target).await {
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::ConnectionRefused | ErrorKind::ConnectionReset
                    ) =>
                {
                    return Ok(());
                }
                Err(e) => return Err(format!("unexpected error: {e}")),
                Ok(stream) => {
                    drop(stream);
                    if Instant::now() >= deadline {
                        return Err("new connections are still accepted".into());
                    }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            }
        }
    })
    .map_err(|e| e.to_string())?
}

#[test]
fn sigterm_drains_open_connections_and_refuses_new_ones() {
    let world = World::new("drain").unwrap();
    let a = world.pod("a").unwrap();
    let b = world.pod("b").unwrap();
    let c = world.pod("c").unwrap();
    let opts = SidecarOpts::new(crate::common::testbin()).proxy_args(["--drain-timeout", "30s"]);
    let sa = a.install_sidecar(&opts).unwrap();
    let sb = b.install_sidecar(&opts).unwrap();
    let _server = apps::spawn_server(&b, 7000, App::Echo).unwrap();

    // a -> b crosses both proxies; c -> b only b's inbound side.
    let (ready_tx, ready_rx) = mpsc::channel();
    let (go_tx, go_rx) = watch::channel(false);
    let from_a = start_clients(&a, b.addr_v4(7000), 100, &ready_tx, &go_rx);
    let from_c = start_clients(&c, b.addr_v6(7000), 200, &ready_tx, &go_rx);
    for _ in 0..2 * PER_CLIENT {
        ready_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("every connection got its first echo");
    }

    sa.proxy().signal(Signal::SIGTERM).unwrap();
    sb.proxy().signal(Signal::SIGTERM).unwrap();
    let logs = || crate::common::dump(&[sa.proxy(), sb.proxy()]);
    refused(&a, b.addr_v4(7000)).unwrap_or_else(|e| panic!("a's outbound: {e}\n{}", logs()));
    refused(&c, b.addr_v4(7000)).unwrap_or_else(|e| panic!("b's inbound: {e}\n{}", logs()));
    assert!(
        sa.proxy().try_status().is_none(),
        "a's proxy quit with connections open"
    );
    assert!(
        sb.proxy().try_status().is_none(),
        "b's proxy quit with connections open"
    );

    // The open connections finish their whole transfer through draining proxies.
    let _ = go_tx.send(true);
    let failures: Vec<String> = [from_a, from_c]
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert!(failures.is_empty(), "{failures:?}\n{}", logs());

    for side in [&sa, &sb] {
        let status = side
            .proxy()
            .wait_timeout(Duration::from_secs(20))
            .unwrap_or_else(|| panic!("proxy still running after its drain\n{}", logs()));
        assert!(status.success(), "proxy exit {status}\n{}", logs());
    }
}
