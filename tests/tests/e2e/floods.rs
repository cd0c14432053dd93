//! Bounded under floods: past its connection budget the proxy refuses new
//! connections at accept (closed at once, counted, logged) instead of running out
//! of descriptors, and the connections it already holds keep working.

use std::time::Duration;

use pillion_tests::mesh::{MeshWorld, PERMISSIVE_PORT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{sidecar_opts, testbin};

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
            let mut flood = Vec::new();
            for _ in 0..FLOOD {
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
