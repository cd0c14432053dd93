//! On-demand discovery: a proxy learns a service when its workload first connects
//! to one of the service's addresses, instead of carrying the whole mesh.
//!
//! A proxy that watches its view with [`ON_DEMAND_QUERY`] gets a view with only
//! its workload's own services (those with an endpoint at one of its addresses,
//! whose declared protocols guard its inbound ports), with its inbound policy,
//! trust bundle and issuer as before. For each
//! original destination it has not seen it opens `GET /v1/resolve?ip=IP&port=P`,
//! which streams [`Resolution`]s as newline-delimited JSON: the answer at once,
//! then a new line whenever that answer changes. `service` is the whole service the
//! address belongs to (as a VIP:port or as one of its endpoints), or `null` when
//! no service has it: the destination is outside the mesh and passes through as
//! plain TCP. `backends` are the other services the service's routes send to (a
//! canary split to `echo-v2`), so a route never lacks its backends. The proxy keeps the stream open while the destination is in use,
//! keeps the last answer while the agent is away, and closes it when idle.
//!
//! ```json
//! {"version": 7, "address": "198.18.0.100:8080", "service": {"name": "echo", ...}}
//! {"version": 8, "address": "192.0.2.9:443", "service": null}
//! ```

use crate::view::Service;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};

/// Most destinations a proxy follows at once, each one stream: the agent lets one
/// HTTP/2 connection carry this many streams and a few more (the view watch and
/// certificate requests), instead of hyper's default 200.
pub const MAX_DESTINATIONS: usize = 10_000;
/// Concurrent streams the agent allows on one connection.
pub const MAX_STREAMS_PER_CONNECTION: u32 = MAX_DESTINATIONS as u32 + 32;

/// Path of the per-destination discovery stream (`GET`).
pub const RESOLVE_PATH: &str = "/v1/resolve";
/// Query of a view watch whose services come by [`RESOLVE_PATH`] instead.
pub const ON_DEMAND_QUERY: &str = "discovery=on-demand";

/// The agent's answer for one destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    /// The agent's source version the answer was made from.
    pub version: u64,
    /// The destination asked about, as asked.
    pub address: SocketAddr,
    /// The service with that address; `None`: outside the mesh.
    #[serde(default)]
    pub service: Option<Service>,
    /// The other services `service`'s routes name as backends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<Service>,
}

/// The query asking about `addr`: `ip=198.18.0.100&port=8080` (an IPv6 address
/// goes bare, so the query holds no brackets to escape).
pub fn resolve_query(addr: SocketAddr) -> String {
    format!("ip={}&port={}", addr.ip().to_canonical(), addr.port())
}

/// The destination a resolve query asks about, or what is wrong with it.
pub fn parse_resolve_query(query: &str) -> Result<SocketAddr, String> {
    let (mut ip, mut port) = (None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("`{pair}` is not key=value"))?;
        let slot = match key {
            "ip" => &mut ip,
            "port" => &mut port,
            _ => return Err(format!("unknown parameter `{key}`; use ip and port")),
        };
        if slot.replace(value).is_some() {
            return Err(format!("`{key}` is given twice"));
        }
    }
    let ip = ip.ok_or("the query names no ip")?;
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| format!("`{ip}` is not an IP address"))?;
    let port = port.ok_or("the query names no port")?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("`{port}` is not a port (1-65535)"))?;
    Ok(SocketAddr::new(ip.to_canonical(), port))
}

/// Whether a watch query asks for an on-demand view.
pub fn wants_on_demand(query: Option<&str>) -> bool {
    query.is_some_and(|q| q.split('&').any(|p| p == ON_DEMAND_QUERY))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_round_trip_and_refuse_what_is_not_one_address() {
        for addr in ["198.18.0.100:8080", "[2001:2::3]:7000"] {
            let addr: SocketAddr = addr.parse().unwrap();
            assert_eq!(parse_resolve_query(&resolve_query(addr)), Ok(addr));
        }
        // A mapped IPv4 address is asked about as IPv4, as the proxy's table keys it.
        let mapped: SocketAddr = "[::ffff:198.18.0.3]:80".parse().unwrap();
        assert_eq!(resolve_query(mapped), "ip=198.18.0.3&port=80");
        for bad in [
            "",
            "ip=198.18.0.1",
            "port=80",
            "ip=198.18.0.1&port=0",
            "ip=198.18.0.1&port=65536",
            "ip=198.18.0.1&port=80&port=81",
            "ip=host&port=80",
            "ip=198.18.0.1&port=80&x=1",
            "ip",
        ] {
            assert!(parse_resolve_query(bad).is_err(), "{bad}");
        }
        assert!(wants_on_demand(Some("a=1&discovery=on-demand")));
        assert!(!wants_on_demand(Some("discovery=full")));
        assert!(!wants_on_demand(None));
    }

    #[test]
    fn a_negative_answer_reads_as_null() {
        let r: Resolution =
            serde_json::from_str(r#"{"version": 3, "address": "192.0.2.9:443", "service": null}"#)
                .unwrap();
        assert_eq!(r.service, None);
        let line = serde_json::to_string(&r).unwrap();
        assert!(line.contains(r#""service":null"#), "{line}");
    }
}
