//! The data path's flags of the proxy binary (detection, balancing, outlier
//! detection, the mesh hop's protocol, the response cache's bound), as one clap group the CLI flattens in; each
//! has its `PILLION_*` environment variable.

use std::sync::Arc;
use std::time::Duration;

use pillion_api::defaults::{self, env};

use super::settings::{MeshProtocol, Settings};
use crate::policy::balance::p2c::Strategy;
use crate::policy::cache::store::Store;
use crate::policy::outlier::OutlierConfig;
use pillion_api::duration::HumaneDuration;
use pillion_api::lists::PortList;

/// How a backend chooses an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum BalancerFlag {
    /// Power of two choices over peak-EWMA latency.
    P2c,
    /// Each endpoint in turn.
    RoundRobin,
}

/// Protocol detection, load balancing and outlier detection flags.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub(crate) struct DataPathArgs {
    /// Time a new connection may take to show whether it speaks HTTP.
    #[arg(long, env = "PILLION_DETECT_TIMEOUT", default_value_t = HumaneDuration(defaults::DETECT_TIMEOUT))]
    pub detect_timeout: HumaneDuration,

    /// Silence from a new client after which the proxy connects upstream to hear
    /// whether the server speaks first (0s: never, and a server-first protocol on
    /// an undeclared port waits for the detect timeout).
    #[arg(long, env = "PILLION_SERVER_FIRST_AFTER", default_value_t = HumaneDuration(defaults::SERVER_FIRST_AFTER))]
    pub server_first_after: HumaneDuration,

    /// Most connections handled at once across both listeners; past it new ones are
    /// refused at accept, before descriptors run out [default: half the open-files
    /// limit, less a reserve].
    #[arg(long, env = "PILLION_MAX_CONNECTIONS", value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: Option<u64>,

    /// Ports that skip protocol detection, besides the mesh's server-first ports.
    #[arg(long, env = env::OPAQUE_PORTS, value_name = "PORT,…", default_value = "",
          hide_default_value = true, value_parser = PortList::parse)]
    pub opaque_ports: PortList,

    /// Inbound ports whose application listens on loopback only and is meant to be
    /// reached from other pods; every other port reaches the application at the
    /// pod's own address, so a loopback-only server stays private.
    #[arg(long, env = env::INBOUND_LOOPBACK_PORTS, value_name = "PORT,…", default_value = "",
          hide_default_value = true, value_parser = PortList::parse)]
    pub inbound_loopback_ports: PortList,

    /// How a backend picks an endpoint: p2c (peak-EWMA) or round-robin.
    #[arg(long, env = "PILLION_BALANCER", value_enum, default_value_t = BalancerFlag::P2c)]
    pub balancer: BalancerFlag,

    /// Failures in a row that eject an endpoint from load balancing.
    #[arg(long, env = "PILLION_OUTLIER_FAILURES", default_value_t = OutlierConfig::default().consecutive_failures)]
    pub outlier_failures: u32,

    /// HTTP version between proxies: keep (the client's) or http2 (multiplex every
    /// request on one connection per endpoint).
    #[arg(long, env = "PILLION_MESH_PROTOCOL", value_enum, default_value_t = MeshProtocol::Keep)]
    pub mesh_protocol: MeshProtocol,

    /// Length of a first ejection (doubling with each further one).
    #[arg(long, env = "PILLION_OUTLIER_BASE_EJECTION", default_value_t = HumaneDuration(OutlierConfig::default().base_ejection))]
    pub outlier_base_ejection: HumaneDuration,

    /// Bytes of answers kept for routes with a `cache:`, over all of them (0: no
    /// route caches); nothing is allocated until a route uses it.
    #[arg(long, env = "PILLION_RESPONSE_CACHE_BYTES", value_name = "BYTES",
          default_value_t = defaults::RESPONSE_CACHE_BYTES)]
    pub response_cache_bytes: u64,
}

impl DataPathArgs {
    /// The settings these flags describe, with the proxy's connect timeout.
    pub(crate) fn to_settings(&self, connect_timeout: Duration) -> Settings {
        Settings {
            connect_timeout,
            detect_timeout: self.detect_timeout.get(),
            server_first_after: self.server_first_after.get(),
            max_connections: self
                .max_connections
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            opaque_ports: self.opaque_ports.0.clone(),
            loopback_ports: self.inbound_loopback_ports.0.clone(),
            outlier: OutlierConfig {
                consecutive_failures: self.outlier_failures.max(1),
                base_ejection: self.outlier_base_ejection.get(),
                ..OutlierConfig::default()
            },
            strategy: match self.balancer {
                BalancerFlag::P2c => Strategy::PowerOfTwoChoices,
                BalancerFlag::RoundRobin => Strategy::RoundRobin,
            },
            mesh_protocol: self.mesh_protocol,
            responses: Arc::new(Store::new(self.response_cache_bytes)),
            ..Settings::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        http: DataPathArgs,
    }

    #[test]
    fn defaults_and_overrides() {
        let cli = Cli::try_parse_from(["x"]).unwrap();
        let s = cli.http.to_settings(Duration::from_secs(5));
        assert_eq!(s.detect_timeout, defaults::DETECT_TIMEOUT);
        assert_eq!(s.server_first_after, defaults::SERVER_FIRST_AFTER);
        assert_eq!(s.max_connections, None);
        assert_eq!(s.strategy, Strategy::PowerOfTwoChoices);
        assert_eq!(s.outlier, OutlierConfig::default());
        assert_eq!(s.mesh_protocol, MeshProtocol::Keep);
        assert!(s.loopback_ports.is_empty());
        let cli = Cli::try_parse_from([
            "x",
            "--balancer",
            "round-robin",
            "--opaque-ports",
            "7000,7001",
            "--inbound-loopback-ports",
            "9090",
            "--outlier-base-ejection",
            "2s",
            "--outlier-failures",
            "3",
            "--mesh-protocol",
            "http2",
            "--max-connections",
            "100",
            "--server-first-after",
            "0s",
        ])
        .unwrap();
        let s = cli.http.to_settings(Duration::from_secs(1));
        assert_eq!(s.strategy, Strategy::RoundRobin);
        assert_eq!(s.opaque_ports, [7000, 7001]);
        assert_eq!(s.loopback_ports, [9090]);
        assert_eq!(s.outlier.base_ejection, Duration::from_secs(2));
        assert_eq!(s.outlier.consecutive_failures, 3);
        assert_eq!(s.connect_timeout, Duration::from_secs(1));
        assert_eq!(s.mesh_protocol, MeshProtocol::Http2);
        assert_eq!(s.max_connections, Some(100));
        assert_eq!(s.server_first_after, Duration::ZERO);
        assert!(Cli::try_parse_from(["x", "--max-connections", "0"]).is_err());
        assert!(Cli::try_parse_from(["x", "--mesh-protocol", "h3"]).is_err());
        // An empty list (what an injected pod's environment holds by default) is none.
        let cli = Cli::try_parse_from(["x", "--inbound-loopback-ports", "", "--opaque-ports="]);
        let s = cli.unwrap().http.to_settings(Duration::from_secs(1));
        assert!(s.loopback_ports.is_empty() && s.opaque_ports.is_empty());
        assert!(Cli::try_parse_from(["x", "--inbound-loopback-ports", "0"]).is_err());
    }
}
