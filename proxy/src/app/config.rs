//! The proxy's typed, validated configuration: what the library needs to bind and
//! run, independent of how it was given (flags, env vars or code).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use pillion_api::defaults;

use pillion_api::duration::HumaneDuration;

/// Listen backlog of the outbound and inbound listeners unless told otherwise: as
/// deep as the kernel allows by default (`net.core.somaxconn`, 4096 since Linux 5.4,
/// caps it), because a full accept queue drops SYNs, and a peer proxy's new
/// connection behind a flood's then waits a second for its retransmit.
pub(crate) const DEFAULT_BACKLOG: u32 = 4096;

/// Largest backlog `listen(2)` accepts as an `int`.
pub(crate) const MAX_BACKLOG: u32 = i32::MAX as u32;

/// Everything the proxy needs to bind its listeners and serve connections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Addresses of the outbound listener (nat OUTPUT redirects here).
    pub outbound_addrs: Vec<SocketAddr>,
    /// Addresses of the inbound listener (nat PREROUTING redirects here).
    pub inbound_addrs: Vec<SocketAddr>,
    /// Address of the admin server (probes, metrics, shutdown).
    pub admin_addr: SocketAddr,
    /// Time allowed to establish an upstream TCP connection.
    pub connect_timeout: Duration,
    /// Time open connections may take to finish after shutdown starts.
    pub drain_timeout: Duration,
    /// Listen backlog of the outbound and inbound listeners.
    pub backlog: u32,
    /// The gateway role's listeners and certificates (empty: a sidecar).
    pub gateway: GatewayConfig,
}

/// The gateway role: public listeners without interception, for traffic from
/// outside the mesh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayConfig {
    /// HTTPS listeners (TLS with the certificates of `cert_dirs`, HTTP/1.1 and HTTP/2).
    pub https_addrs: Vec<SocketAddr>,
    /// Plaintext listeners, answering every request with a redirect to HTTPS.
    pub http_addrs: Vec<SocketAddr>,
    /// The HTTPS port visitors are redirected to: the public one (a Service's 443),
    /// not necessarily the one the listener binds.
    pub redirect_port: u16,
    /// `Strict-Transport-Security`'s `max-age` on HTTPS answers (zero: none).
    pub hsts: std::time::Duration,
    /// Directories each holding `tls.crt` (chain) and `tls.key` (its key), the
    /// layout of a mounted Kubernetes TLS Secret.
    pub cert_dirs: Vec<std::path::PathBuf>,
}

/// A configuration mistake, phrased as what to fix and named by its flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A listener was given no address at all.
    #[error("{flag} needs at least one address, e.g. {example}")]
    NoAddrs {
        /// The flag that was empty.
        flag: &'static str,
        /// A valid value to suggest.
        example: &'static str,
    },
    /// The same address appears twice in one list.
    #[error("{flag} lists {addr} twice; give each address once")]
    DuplicateAddr {
        /// The flag whose list repeats an address.
        flag: &'static str,
        /// The repeated address.
        addr: SocketAddr,
    },
    /// Two flags claim the same address and port.
    #[error("{addr} is given to both {first} and {second}; each listener needs its own port")]
    SharedAddr {
        /// The first flag claiming the address.
        first: &'static str,
        /// The second flag claiming the address.
        second: &'static str,
        /// The address both claim.
        addr: SocketAddr,
    },
    /// The connect timeout is zero, so no upstream could ever be reached.
    #[error("--connect-timeout must be > 0, got {got}")]
    ZeroConnectTimeout {
        /// The value given.
        got: HumaneDuration,
    },
    /// HTTPS gateway listeners without certificates, or certificates without them.
    #[error("--gateway-https and --gateway-certs go together: give both (a directory with tls.crt and tls.key per certificate), or neither")]
    GatewayCerts,
    /// A redirect listener with no HTTPS listener to send clients to.
    #[error("--gateway-http redirects to HTTPS: it needs --gateway-https")]
    RedirectWithoutHttps,
    /// The backlog is zero or larger than the kernel accepts.
    #[error("--backlog must be between 1 and {MAX_BACKLOG}, got {got}")]
    Backlog {
        /// The value given.
        got: u32,
    },
}

impl Default for GatewayConfig {
    /// No gateway listeners; redirects to 443.
    fn default() -> Self {
        GatewayConfig {
            https_addrs: Vec::new(),
            http_addrs: Vec::new(),
            redirect_port: 443,
            hsts: pillion_api::defaults::GATEWAY_HSTS,
            cert_dirs: Vec::new(),
        }
    }
}

impl Default for ProxyConfig {
    /// The mesh defaults from [`pillion_api::defaults`].
    fn default() -> Self {
        let v4_loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let v6_loopback = IpAddr::V6(Ipv6Addr::LOCALHOST);
        let v4_any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let v6_any = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
        Self {
            outbound_addrs: vec![
                SocketAddr::new(v4_loopback, defaults::OUTBOUND_PORT),
                SocketAddr::new(v6_loopback, defaults::OUTBOUND_PORT),
            ],
            inbound_addrs: vec![
                SocketAddr::new(v4_any, defaults::INBOUND_PORT),
                SocketAddr::new(v6_any, defaults::INBOUND_PORT),
            ],
            admin_addr: SocketAddr::new(v4_any, defaults::ADMIN_PORT),
            connect_timeout: defaults::CONNECT_TIMEOUT,
            drain_timeout: defaults::DRAIN_TIMEOUT,
            backlog: DEFAULT_BACKLOG,
            gateway: GatewayConfig::default(),
        }
    }
}

impl ProxyConfig {
    /// A configuration for tests and embedding: every listener on `127.0.0.1:0`
    /// (the kernel picks free ports), other values at their defaults.
    pub fn loopback_ephemeral() -> Self {
        let any_port = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
        Self {
            outbound_addrs: vec![any_port],
            inbound_addrs: vec![any_port],
            admin_addr: any_port,
            ..Self::default()
        }
    }

    /// Checks the configuration before anything is bound; the error says what to fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_list(
            "--outbound-addrs",
            defaults::OUTBOUND_ADDR_V4,
            &self.outbound_addrs,
        )?;
        check_list(
            "--inbound-addrs",
            defaults::INBOUND_ADDR_V4,
            &self.inbound_addrs,
        )?;
        let admin = [self.admin_addr];
        let lists: [(&'static str, &[SocketAddr]); 5] = [
            ("--outbound-addrs", &self.outbound_addrs),
            ("--inbound-addrs", &self.inbound_addrs),
            ("--admin-addr", &admin),
            ("--gateway-https", &self.gateway.https_addrs),
            ("--gateway-http", &self.gateway.http_addrs),
        ];
        let gateway = &self.gateway;
        if gateway.https_addrs.is_empty() != gateway.cert_dirs.is_empty() {
            return Err(ConfigError::GatewayCerts);
        }
        if !gateway.http_addrs.is_empty() && gateway.https_addrs.is_empty() {
            return Err(ConfigError::RedirectWithoutHttps);
        }
        for (i, (first, a)) in lists.iter().enumerate() {
            for (second, b) in &lists[i + 1..] {
                // Port 0 asks the kernel for a fresh port, so it never collides.
                if let Some(addr) = a.iter().find(|addr| addr.port() != 0 && b.contains(addr)) {
                    return Err(ConfigError::SharedAddr {
                        first,
                        second,
                        addr: *addr,
                    });
                }
            }
        }
        if self.connect_timeout.is_zero() {
            return Err(ConfigError::ZeroConnectTimeout {
                got: self.connect_timeout.into(),
            });
        }
        if self.backlog == 0 || self.backlog > MAX_BACKLOG {
            return Err(ConfigError::Backlog { got: self.backlog });
        }
        Ok(())
    }
}

/// Checks one listener's address list: not empty, no repeats.
fn check_list(
    flag: &'static str,
    example: &'static str,
    addrs: &[SocketAddr],
) -> Result<(), ConfigError> {
    if addrs.is_empty() {
        return Err(ConfigError::NoAddrs { flag, example });
    }
    for (i, addr) in addrs.iter().enumerate() {
        if addr.port() != 0 && addrs[..i].contains(addr) {
            return Err(ConfigError::DuplicateAddr { flag, addr: *addr });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_shared_defaults() {
        let c = ProxyConfig::default();
        let parse = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            c.outbound_addrs,
            vec![
                parse(defaults::OUTBOUND_ADDR_V4),
                parse(defaults::OUTBOUND_ADDR_V6)
            ]
        );
        assert_eq!(
            c.inbound_addrs,
            vec![
                parse(defaults::INBOUND_ADDR_V4),
                parse(defaults::INBOUND_ADDR_V6)
            ]
        );
        assert_eq!(c.admin_addr, parse(defaults::ADMIN_ADDR));
        assert_eq!(c.connect_timeout, defaults::CONNECT_TIMEOUT);
        assert_eq!(c.drain_timeout, defaults::DRAIN_TIMEOUT);
        assert_eq!(c.backlog, DEFAULT_BACKLOG);
        c.validate().unwrap();
        ProxyConfig::loopback_ephemeral().validate().unwrap();
    }

    #[test]
    fn zero_connect_timeout_is_rejected_with_the_flag_name() {
        let c = ProxyConfig {
            connect_timeout: Duration::ZERO,
            ..ProxyConfig::default()
        };
        let err = c.validate().unwrap_err();
        assert_eq!(err.to_string(), "--connect-timeout must be > 0, got 0s");
    }

    #[test]
    fn zero_drain_timeout_is_allowed() {
        let c = ProxyConfig {
            drain_timeout: Duration::ZERO,
            ..ProxyConfig::default()
        };
        c.validate().unwrap();
    }

    #[test]
    fn empty_lists_are_rejected() {
        let c = ProxyConfig {
            outbound_addrs: vec![],
            ..ProxyConfig::default()
        };
        let err = c.validate().unwrap_err();
        assert!(matches!(
            err,
            ConfigError::NoAddrs {
                flag: "--outbound-addrs",
                ..
            }
        ));
        assert!(err.to_string().contains("127.0.0.1:15001"), "{err}");
    }

    #[test]
    fn duplicates_and_shared_addresses_are_rejected() {
        let a: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let c = ProxyConfig {
            inbound_addrs: vec![a, a],
            ..ProxyConfig::default()
        };
        assert_eq!(
            c.validate().unwrap_err(),
            ConfigError::DuplicateAddr {
                flag: "--inbound-addrs",
                addr: a
            }
        );
        let c = ProxyConfig {
            outbound_addrs: vec![a],
            admin_addr: a,
            ..ProxyConfig::default()
        };
        let err = c.validate().unwrap_err();
        assert_eq!(
            err,
            ConfigError::SharedAddr {
                first: "--outbound-addrs",
                second: "--admin-addr",
                addr: a
            }
        );
        assert!(err.to_string().contains("own port"));
    }

    #[test]
    fn port_zero_never_counts_as_shared() {
        let c = ProxyConfig::loopback_ephemeral();
        assert_eq!(c.outbound_addrs, c.inbound_addrs);
        c.validate().unwrap();
    }

    #[test]
    fn backlog_bounds() {
        for bad in [0, MAX_BACKLOG + 1] {
            let c = ProxyConfig {
                backlog: bad,
                ..ProxyConfig::default()
            };
            let err = c.validate().unwrap_err();
            assert!(
                err.to_string()
                    .starts_with("--backlog must be between 1 and"),
                "{err}"
            );
        }
    }
}
