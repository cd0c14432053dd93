//! The address plan of a world: the bridge takes `.1` / `::1` of the test ranges and
//! pods take the following host numbers in creation order.

use std::net::{Ipv4Addr, Ipv6Addr};

/// IPv4 address of the bridge in the node namespace (the pods' default gateway).
pub const BRIDGE_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// IPv6 address of the bridge in the node namespace (the pods' default gateway).
pub const BRIDGE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 1);
/// Prefix length of the pods' IPv4 subnet, 198.18.0.0/24.
pub const PREFIX_V4: u8 = 24;
/// Prefix length of the pods' IPv6 subnet, 2001:2::/64.
pub const PREFIX_V6: u8 = 64;
/// Host number of the first pod (the bridge holds 1).
pub const FIRST_POD_HOST: u8 = 2;
/// Host number of the last pod a world can hold.
pub const LAST_POD_HOST: u8 = 254;
/// Name of the bridge in the node namespace.
pub const BRIDGE: &str = "br0";

/// IPv4 address of the pod with this host number.
pub fn pod_v4(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, host)
}

/// IPv6 address of the pod with this host number.
pub fn pod_v6(host: u8) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, u16::from(host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan() {
        assert_eq!(pod_v4(FIRST_POD_HOST).to_string(), "198.18.0.2");
        assert_eq!(pod_v6(FIRST_POD_HOST).to_string(), "2001:2::2");
        assert_eq!(pod_v6(200).to_string(), "2001:2::c8");
        assert_eq!(BRIDGE_V6.to_string(), "2001:2::1");
    }
}
