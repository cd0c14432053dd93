//! Requests per second at 64 client connections: straight to the application, and
//! through an outbound proxy, mesh TLS (one multiplexed HTTP/2 connection) and an
//! inbound proxy, in the same run on loopback. Prints both numbers; run in release
//! for meaningful ones:
//!
//! ```text
//! PILLION_LOAD_SECS=5 cargo test --release -p pillion-proxy --test http_load -- --nocapture
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use super::*;
use pillion_proxy::Settings;
use serde_json::json;

const CONNECTIONS: usize = 64;

/// `CONNECTIONS` workers, each on its own keep-alive connection, for `secs`;
/// (requests per second, errors).
async fn run(addr: SocketAddr, secs: f64) -> (f64, u64) {
    pillion_testkit::http::rate(addr, "/", CONNECTIONS, Duration::from_secs_f64(secs)).await
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_per_second_through_the_mtls_pair_and_direct() {
    let secs: f64 = std::env::var("PILLION_LOAD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let fleet = Fleet::start(
        vec![(named("app", Duration::ZERO), "v1")],
        json!([]),
        json!({}),
        Settings::default(),
    )
    .await;
    let (direct, direct_errors) = run(fleet.apps[0].addr, secs).await;
    let (meshed, meshed_errors) = run(fleet.outbound.addr, secs).await;
    println!(
        "load ({CONNECTIONS} connections, {secs} s each, {} build): direct {direct:.0} req/s, \
         through the mTLS pair {meshed:.0} req/s ({:.0} % of direct)",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        meshed / direct * 100.0
    );
    assert_eq!(direct_errors, 0);
    assert_eq!(meshed_errors, 0);
    assert!(meshed > 0.0 && direct > 0.0);
}
