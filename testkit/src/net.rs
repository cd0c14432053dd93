//! Loopback addresses: every `127.0.0.<k>` is a host of its own, so one test can
//! run several "pods" on the same port.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// `127.0.0.<k>:<port>`.
pub fn lo(k: u8, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, k)), port)
}

/// A port that is free on `127.0.0.1` now, for binding on several `127.0.0.<k>`.
pub async fn common_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free loopback port");
    listener.local_addr().expect("a bound address").port()
}
