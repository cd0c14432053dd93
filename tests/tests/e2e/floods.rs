//! Bounded under floods: past its connection budget the proxy refuses new
//! connections at accept (closed at once, counted, logged) instead of running out
//! of descriptors, and the connections it already holds keep working.

use std::time::Duration;

use pillion_tests::mesh::{MeshWorld, PERMISSIVE_PORT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{sidecar_opts, testbin, ALL_ROUTES};

const BUDGET: usize = 20;
const FLOOD: usize = 30;

#[test]
fn past_the_budget_new_connections_are_refused_and_open_ones_keep_working() {
    let opts = sidecar_opts().proxy_args(["--max-connections", &BUDGET.to_string()]);
    let m = MeshWorld::start("floods_budget", &testbin(), &opts, &[]).unwrap();
    let target = m.b.addr_v4(PERMISSIVE_PORT);
    let (kept, refused, still_echoes, after) =
        m.c.run(move || async move {
            // One working connection first, then a flood of idle ones.
            let mut first = TcpStream::connect(target).await.unwrap();
            first.write_all(b"before").await.unwrap();
            let mut buf = [0u8; 6];
            first.read_exact(&mut buf).await.unwrap();
            // The budget fills, and its crowded newcomers' second to speak passes
            // (on this opaque port they are relayed then, so none can be pushed
            // out): the rest of the flood finds no room.
            let mut flood = Vec::new();
            for _ in 0..BUDGET - 1 {
                flood.push(TcpStream::connect(target).await.unwrap());
            }
            tokio::time::sleep(Duration::from_millis(1500)).await;
            for _ in BUDGET - 1..FLOOD {
                flood.push(TcpStream::connect(target).await.unwrap());
            }
            // A refused connection is closed at once; a kept one stays silent.
            let (mut kept, mut refused) = (0, 0);
            for s in &mut flood {
                let mut one = [0u8; 1];
                match tokio::time::timeout(Duration::from_millis(500), s.read(&mut one)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => refused += 1,
                    Ok(Ok(_)) => panic!("an idle connection got bytes"),
                    Err(_) => kept += 1,
                }
            }
            first.write_all(b"during").await.unwrap();
            first.read_exact(&mut buf).await.unwrap();
            let still_echoes = &buf == b"during";
            // Once the flood is gone, the budget is back.
            drop(flood);
            tokio::time::sleep(Duration::from_millis(500)).await;
            let mut after = TcpStream::connect(target).await.unwrap();
            after.write_all(b"after!").await.unwrap();
            let echoed = tokio::time::timeout(Duration::from_secs(5), after.read_exact(&mut buf))
                .await
                .is_ok_and(|r| r.is_ok())
                && &buf == b"after!";
            (kept, refused, still_echoes, echoed)
        })
        .unwrap();
    assert_eq!(
        (kept, refused),
        (BUDGET - 1, FLOOD - (BUDGET - 1)),
        "{}",
        m.dump()
    );
    assert!(still_echoes, "the open connection stopped working");
    assert!(after, "no connection was taken after the flood closed");
    let metrics = m.sb.metrics().unwrap();
    let over = metrics.value("pillion_tcp_over_budget_total", &[("direction", "inbound")]);
    assert_eq!(over, (FLOOD - (BUDGET - 1)) as f64, "{metrics}");
    assert!(
        m.sb.proxy()
            .logs()
            .to_string()
            .contains("connection budget spent"),
        "no log line says why connections were refused"
    );
}

/// Connections that say nothing useful are closed: an HTTP/2 client that sends its
/// preface and then nothing gets GOAWAY once the header-read timeout (30 s) passes,
/// and an HTTP/1 client that trickles its head a byte every 2 s is cut off by then
/// too, on an HTTP-only port and on one without policy. The application sees none.
#[test]
fn slow_and_silent_http_clients_are_closed() {
    use pillion_testkit::h2frames::{self, Frame};
    use pillion_tests::http_mesh::{HttpWorld, APP_PORT};
    use std::net::SocketAddr;
    use std::time::Instant;

    let routes = "- name: all\n  matches: [{path: {prefix: /}}]\n";
    let inbound = "mode: permissive\nroutes:\n  - name: all\n    matches: [{path: {prefix: /}}]\n";
    let w = HttpWorld::start("floods_slow", &testbin(), &sidecar_opts(), routes, inbound).unwrap();
    let b1 = SocketAddr::new(w.pods.b1.ipv4(), APP_PORT);
    let requests_before = w.apps[0]
        .stats
        .counters
        .requests
        .load(std::sync::atomic::Ordering::SeqCst);
    let h2 = {
        let c = w.pods.c.clone();
        std::thread::spawn(move || {
            c.run(move || async move {
                let started = Instant::now();
                let mut s = TcpStream::connect(b1).await.unwrap();
                s.write_all(&h2frames::connection(&[Frame::settings(&[])]))
                    .await
                    .unwrap();
                let mut got = Vec::new();
                let _ =
                    tokio::time::timeout(Duration::from_secs(50), s.read_to_end(&mut got)).await;
                let goaway = h2frames::parse(&got)
                    .iter()
                    .any(|f| f.kind == h2frames::kind::GOAWAY);
                (started.elapsed(), goaway)
            })
            .unwrap()
        })
    };
    let h1 = w
        .pods
        .c
        .run(move || async move {
            let started = Instant::now();
            let mut s = TcpStream::connect(b1).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: web\r\n")
                .await
                .unwrap();
            // One header byte every 2 s, for at most 50 s.
            for b in b"x-slow: ".iter().cycle().take(25) {
                tokio::time::sleep(Duration::from_secs(2)).await;
                if s.write_all(&[*b]).await.is_err() {
                    break;
                }
            }
            let mut rest = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
            (
                started.elapsed(),
                String::from_utf8_lossy(&rest).into_owned(),
            )
        })
        .unwrap();
    let (h2_after, goaway) = h2.join().unwrap();
    assert!(
        goaway,
        "no GOAWAY for an idle HTTP/2 connection\n{}",
        w.dump()
    );
    assert!(
        h2_after >= Duration::from_secs(29) && h2_after < Duration::from_secs(45),
        "idle HTTP/2 closed after {h2_after:?}"
    );
    assert!(
        h1.0 < Duration::from_secs(45),
        "a slow HTTP/1 head lasted {:?}: {}",
        h1.0,
        h1.1
    );
    assert_eq!(
        w.apps[0]
            .stats
            .counters
            .requests
            .load(std::sync::atomic::Ordering::SeqCst),
        requests_before
    );
}

/// What became of one connection of a flood within the watch.
#[derive(Debug)]
enum Fate {
    /// Closed without a byte (refused at accept, or pushed out for a newcomer).
    Refused,
    /// Answered (the proxy's status line) and closed, after this long.
    Answered(String, Duration),
    /// Still open when the watch ended.
    Open,
}

/// Past half its budget the proxy is crowded: a newcomer gets a second, not the
/// header-read timeout (30 s), to send its request, so a silent flood gives its
/// permits back within seconds. And a spent budget is no wall: a real client that
/// comes while the flood holds every permit takes the one of the oldest silent
/// crowded newcomer, and each of the flood's own newcomers pushes out another.
#[test]
fn crowded_newcomers_get_a_second_to_speak() {
    use pillion_tests::http_mesh::{HttpWorld, APP_PORT};
    use std::net::SocketAddr;
    use std::sync::atomic::Ordering;
    use std::time::Instant;

    let opts = sidecar_opts().proxy_args(["--max-connections", &BUDGET.to_string()]);
    let inbound = format!("mode: permissive\nroutes:\n{ALL_ROUTES}");
    let w = HttpWorld::start("floods_crowded", &testbin(), &opts, ALL_ROUTES, &inbound).unwrap();
    let b1 = SocketAddr::new(w.pods.b1.ipv4(), APP_PORT);
    let requests = || w.apps[0].stats.counters.requests.load(Ordering::SeqCst);
    let before = requests();
    let (fates, status) = w
        .pods
        .c
        .run(move || async move {
            let mut flood = Vec::new();
            for _ in 0..BUDGET {
                flood.push(TcpStream::connect(b1).await.unwrap());
            }
            // Every permit is held by the flood now, within its first second.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let during = get(b1).await;
            // The rest of the flood, each newcomer silent before the next comes.
            for _ in BUDGET..FLOOD {
                flood.push(TcpStream::connect(b1).await.unwrap());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let watches = flood.iter_mut().map(|s| async move {
                let started = Instant::now();
                let mut got = Vec::new();
                match tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut got)).await {
                    Err(_) => Fate::Open,
                    Ok(_) if got.is_empty() => Fate::Refused,
                    Ok(_) => Fate::Answered(
                        String::from_utf8_lossy(&got).into_owned(),
                        started.elapsed(),
                    ),
                }
            });
            let fates = futures::future::join_all(watches).await;
            // The flood's first half is still open, and a real request gets in.
            let after = get(b1).await;
            drop(flood);
            (fates, [during, after])
        })
        .unwrap();
    let refused = fates.iter().filter(|f| matches!(f, Fate::Refused)).count();
    let open = fates.iter().filter(|f| matches!(f, Fate::Open)).count();
    let answered: Vec<_> = fates
        .iter()
        .filter_map(|f| match f {
            Fate::Answered(text, after) => Some((text, *after)),
            _ => None,
        })
        .collect();
    // Pushed out: the oldest crowded one by the real request; its permit came back
    // when it was answered, so the flood's first newcomer found room and each of
    // the nine after it pushed out the next oldest.
    let pushed_out = FLOOD - BUDGET;
    assert_eq!(refused, pushed_out, "{fates:?}\n{}", w.dump());
    // Accepted while the budget was not crowded: the usual header-read timeout.
    assert_eq!(open, BUDGET / 2, "{fates:?}\n{}", w.dump());
    // Accepted while it was, and never pushed out: a 408 within about a second.
    assert_eq!(answered.len(), FLOOD - BUDGET / 2 - pushed_out, "{fates:?}");
    for (text, after) in &answered {
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(*after < Duration::from_millis(2500), "408 after {after:?}");
    }
    for status in &status {
        assert!(
            status.starts_with("HTTP/1.1 200"),
            "got {status:?}\n{}",
            w.dump()
        );
    }
    assert_eq!(
        requests() - before,
        2,
        "the application saw a flood connection"
    );
    let metrics = w.sidecars[2].metrics().unwrap();
    let inbound = [("direction", "inbound")];
    let over = metrics.value("pillion_tcp_over_budget_total", &inbound);
    let evicted = metrics.value("pillion_tcp_evicted_total", &inbound);
    assert_eq!((over, evicted), (0.0, pushed_out as f64), "{metrics}");
}

/// One `GET /` on a new connection; the status line, or "" if none came in 5 s.
async fn get(addr: std::net::SocketAddr) -> String {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return String::new();
    };
    let head = b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n";
    if s.write_all(head).await.is_err() {
        return String::new();
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}
