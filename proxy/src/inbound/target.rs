//! Where an inbound connection goes: the application at the address the caller
//! aimed at, which must be one of this pod's own. A server bound only to loopback
//! therefore stays as private as it was without the mesh; a port the operator names
//! (`--inbound-loopback-ports`) is the one way in to such a server.
//!
//! The redirect accepts a packet for any destination that reaches the pod, so the
//! original destination is checked: a connection aimed at an address the pod does
//! not own, or at loopback from off the pod, has nowhere to go and is refused.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

use crate::transport::accept::ConnInfo;

/// The application's address for a connection, or `None` when the connection was
/// not aimed at this pod.
pub(crate) fn app_target(info: &ConnInfo, loopback_ports: &[u16]) -> Option<SocketAddr> {
    let aimed = info.orig_dst.ip().to_canonical();
    let arrived = info.local.ip().to_canonical();
    let owned = if aimed.is_loopback() {
        // Only a connection that arrived on loopback may aim at it.
        arrived.is_loopback()
    } else {
        aimed == arrived || is_own_address(aimed)
    };
    if !owned {
        return None;
    }
    let port = info.orig_dst.port();
    let ip = if loopback_ports.contains(&port) {
        loopback_of(aimed)
    } else {
        aimed
    };
    Some(SocketAddr::new(ip, port))
}

/// Loopback of the same family as `ip`.
fn loopback_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    }
}

/// True when `ip` is an address of this network namespace: only then may a socket
/// bind to it (the slow path, for an address other than the one the redirect chose,
/// e.g. a second address on the pod's interface).
fn is_own_address(ip: IpAddr) -> bool {
    !ip.is_unspecified() && !ip.is_multicast() && UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(local: &str, orig_dst: &str) -> ConnInfo {
        ConnInfo {
            client: "198.18.0.9:40000".parse().unwrap(),
            local: local.parse().unwrap(),
            orig_dst: orig_dst.parse().unwrap(),
            crowded: false,
        }
    }

    fn target(local: &str, orig_dst: &str, loopback_ports: &[u16]) -> Option<String> {
        app_target(&info(local, orig_dst), loopback_ports).map(|t| t.to_string())
    }

    #[test]
    fn the_application_is_reached_where_the_caller_aimed() {
        let t = |local, orig| target(local, orig, &[]);
        assert_eq!(
            t("198.18.0.7:15006", "198.18.0.7:8080").unwrap(),
            "198.18.0.7:8080"
        );
        assert_eq!(
            t("[2001:2::7]:15006", "[2001:2::7]:8080").unwrap(),
            "[2001:2::7]:8080"
        );
        assert_eq!(
            t("[::ffff:198.18.0.7]:15006", "[::ffff:198.18.0.7]:80").unwrap(),
            "198.18.0.7:80"
        );
        // Tests and embedders that run on loopback aim at loopback.
        assert_eq!(
            t("127.0.0.1:15006", "127.0.0.1:8080").unwrap(),
            "127.0.0.1:8080"
        );
    }

    #[test]
    fn a_loopback_port_is_reached_on_loopback_only_when_named() {
        let t = |local, orig| target(local, orig, &[9090]);
        assert_eq!(
            t("198.18.0.7:15006", "198.18.0.7:9090").unwrap(),
            "127.0.0.1:9090"
        );
        assert_eq!(
            t("[2001:2::7]:15006", "[2001:2::7]:9090").unwrap(),
            "[::1]:9090"
        );
        assert_eq!(
            t("198.18.0.7:15006", "198.18.0.7:8080").unwrap(),
            "198.18.0.7:8080"
        );
    }

    #[test]
    fn a_connection_not_aimed_at_this_pod_has_nowhere_to_go() {
        // 192.0.2.0/24 (TEST-NET-1) is never an address of the test host.
        assert_eq!(target("198.18.0.7:15006", "192.0.2.1:8080", &[]), None);
        assert_eq!(target("198.18.0.7:15006", "192.0.2.1:9090", &[9090]), None);
        // Loopback aimed at from off the pod: its servers stay private.
        assert_eq!(target("198.18.0.7:15006", "127.0.0.1:8080", &[]), None);
        assert_eq!(target("198.18.0.7:15006", "127.0.0.1:9090", &[9090]), None);
        assert_eq!(target("[2001:2::7]:15006", "[::1]:8080", &[]), None);
        assert_eq!(target("198.18.0.7:15006", "0.0.0.0:8080", &[]), None);
        assert_eq!(target("198.18.0.7:15006", "224.0.0.1:8080", &[]), None);
    }

    #[test]
    fn a_second_address_of_this_host_is_its_own() {
        // All of 127/8 is bound to `lo`: 127.0.0.2 is an address of this host other
        // than the one the connection arrived on.
        assert_eq!(
            target("198.18.0.7:15006", "127.0.0.2:8080", &[]),
            None,
            "loopback from off the host"
        );
        assert!(is_own_address("127.0.0.2".parse().unwrap()));
        assert!(!is_own_address("192.0.2.1".parse().unwrap()));
        assert_eq!(
            target("127.0.0.1:15006", "127.0.0.2:8080", &[]).unwrap(),
            "127.0.0.2:8080"
        );
    }
}
