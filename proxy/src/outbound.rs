//! The outbound stack (listener 15001): the local application's connections go
//! to their original destination. Discovery, TLS and routing slot in here later.

use std::net::SocketAddr;

use crate::accept::{Accepted, Stack};
use crate::metrics::Direction;
use crate::relay::Relay;

/// Serves connections the local application made to somewhere else.
#[derive(Clone, Debug)]
pub struct Outbound {
    relay: Relay,
}

impl Outbound {
    /// An outbound stack that relays through `relay`.
    pub fn new(relay: Relay) -> Self {
        Self { relay }
    }

    /// Where an outbound connection goes: exactly where the application aimed it.
    pub fn target(orig_dst: SocketAddr) -> SocketAddr {
        orig_dst
    }
}

impl Stack for Outbound {
    fn direction(&self) -> Direction {
        Direction::Outbound
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
    fn targets_the_original_destination() {
        let dst: SocketAddr = "198.18.0.1:7000".parse().unwrap();
        assert_eq!(Outbound::target(dst), dst);
    }
}
