//! The inbound stack (listener 15006): connections to this pod go to the local
//! application on loopback at the original port, and never anywhere else.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::accept::{Accepted, Stack};
use crate::metrics::Direction;
use crate::relay::Relay;

/// Serves connections from elsewhere to the local application.
#[derive(Clone, Debug)]
pub struct Inbound {
    relay: Relay,
}

impl Inbound {
    /// An inbound stack that relays through `relay`.
    pub fn new(relay: Relay) -> Self {
        Self { relay }
    }

    /// Where an inbound connection goes: loopback of the same family at the
    /// original port, whatever address the caller aimed at.
    pub fn target(orig_dst: SocketAddr) -> SocketAddr {
        let ip = match orig_dst.ip().to_canonical() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        };
        SocketAddr::new(ip, orig_dst.port())
    }
}

impl Stack for Inbound {
    fn direction(&self) -> Direction {
        Direction::Inbound
    }

    async fn serve(&self, conn: Accepted) {
        let target = Self::target(conn.orig_dst);
        self.relay.relay(conn, target).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_loopback_at_the_original_port() {
        let t = |s: &str| Inbound::target(s.parse().unwrap()).to_string();
        assert_eq!(t("198.18.0.7:8080"), "127.0.0.1:8080");
        assert_eq!(t("[2001:2::7]:8080"), "[::1]:8080");
        assert_eq!(t("[::ffff:198.18.0.7]:80"), "127.0.0.1:80");
        assert_eq!(t("203.0.113.9:22"), "127.0.0.1:22");
    }
}
