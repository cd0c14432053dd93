//! Decides whether forwarding a connection would send it straight back into
//! the proxy, which would otherwise spin until file descriptors run out.

use std::net::{IpAddr, SocketAddr};

/// Why a connection was judged a loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LoopReason {
    /// The original destination is the listener itself: nobody redirected the
    /// connection, someone connected to the proxy's port directly.
    NotRedirected,
    /// The target is one of the proxy's own listener ports on a local address.
    OwnListener,
}

impl LoopReason {
    /// The log field value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            LoopReason::NotRedirected => "not redirected",
            LoopReason::OwnListener => "targets a proxy listener",
        }
    }
}

/// Knows the proxy's own listener ports and judges each connection against them.
#[derive(Clone, Debug, Default)]
pub(crate) struct LoopGuard {
    own_ports: Vec<u16>,
}

impl LoopGuard {
    /// A guard for the given listener ports (the ports actually bound).
    pub(crate) fn new(own_ports: impl IntoIterator<Item = u16>) -> Self {
        let mut own_ports: Vec<u16> = own_ports.into_iter().collect();
        own_ports.sort_unstable();
        own_ports.dedup();
        Self { own_ports }
    }

    /// The listener ports this guard protects.
    #[cfg(test)]
    pub(crate) fn own_ports(&self) -> &[u16] {
        &self.own_ports
    }

    /// Checks a connection accepted on `local` whose original destination is
    /// `orig_dst` and which the stack would forward to `target`.
    pub(crate) fn check(
        &self,
        local: SocketAddr,
        orig_dst: SocketAddr,
        target: SocketAddr,
    ) -> Option<LoopReason> {
        if same_addr(orig_dst, local) {
            return Some(LoopReason::NotRedirected);
        }
        for dst in [orig_dst, target] {
            if self.own_ports.contains(&dst.port()) && is_local(dst.ip(), local.ip()) {
                return Some(LoopReason::OwnListener);
            }
        }
        None
    }

    /// [`LoopGuard::check`] for a target known to be an address of this host (the
    /// inbound's): any of the proxy's ports there is a loop.
    pub(crate) fn check_local(
        &self,
        local: SocketAddr,
        orig_dst: SocketAddr,
        target: SocketAddr,
    ) -> Option<LoopReason> {
        self.check(local, orig_dst, target).or_else(|| {
            self.own_ports
                .contains(&target.port())
                .then_some(LoopReason::OwnListener)
        })
    }
}

/// Loopback, unspecified, or the very address the connection arrived on.
fn is_local(ip: IpAddr, local_ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    ip.is_loopback() || ip.is_unspecified() || ip == local_ip.to_canonical()
}

/// Socket addresses equal after mapping IPv4-mapped IPv6 to IPv4.
fn same_addr(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn guard() -> LoopGuard {
        LoopGuard::new([15001, 15006, 15001])
    }

    #[test]
    fn ports_are_deduplicated() {
        assert_eq!(guard().own_ports(), [15001, 15006]);
    }

    #[test]
    fn a_direct_connection_is_a_loop() {
        let local = a("127.0.0.1:15001");
        assert_eq!(
            guard().check(local, local, local),
            Some(LoopReason::NotRedirected)
        );
        let local = a("198.18.0.5:15006");
        assert_eq!(
            guard().check(local, a("[::ffff:198.18.0.5]:15006"), a("127.0.0.1:15006")),
            Some(LoopReason::NotRedirected)
        );
    }

    #[test]
    fn a_local_destination_on_a_proxy_port_is_a_loop() {
        let local = a("127.0.0.1:15001");
        for dst in [
            "127.0.0.1:15006",
            "127.0.0.2:15001",
            "0.0.0.0:15006",
            "[::1]:15001",
            "[::]:15006",
        ] {
            assert_eq!(
                guard().check(local, a(dst), a(dst)),
                Some(LoopReason::OwnListener),
                "{dst}"
            );
        }
        // The pod's own address (the socket's local address) on a proxy port.
        let local = a("198.18.0.5:15006");
        assert_eq!(
            guard().check(local, a("198.18.0.5:15001"), a("127.0.0.1:9999")),
            Some(LoopReason::OwnListener)
        );
    }

    #[test]
    fn an_inbound_target_on_a_proxy_port_is_a_loop() {
        let local = a("198.18.0.5:15006");
        // Inbound maps any original destination to loopback at the same port.
        assert_eq!(
            guard().check(local, a("198.18.0.6:15001"), a("127.0.0.1:15001")),
            Some(LoopReason::OwnListener)
        );
    }

    #[test]
    fn ordinary_destinations_pass() {
        let local = a("127.0.0.1:15001");
        assert_eq!(
            guard().check(local, a("198.18.0.1:7000"), a("198.18.0.1:7000")),
            None
        );
        // A proxy port on a remote host is another pod's proxy, not a loop.
        assert_eq!(
            guard().check(local, a("198.18.0.1:15006"), a("198.18.0.1:15006")),
            None
        );
        assert_eq!(
            guard().check(local, a("127.0.0.1:8080"), a("127.0.0.1:8080")),
            None
        );
        let local = a("198.18.0.5:15006");
        assert_eq!(
            guard().check(local, a("198.18.0.5:8080"), a("127.0.0.1:8080")),
            None
        );
    }
}
