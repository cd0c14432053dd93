//! The validated, typed form of the configuration: what every later step works from,
//! so no step has to re-check a port or a CIDR.

use std::fmt;

use ipnet::IpNet;

use crate::backend::BackendChoice;
use crate::logging::LogFormat;

/// An address family; each one has its own nat table and its own restore binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// IPv4, driven by `iptables-*`.
    V4,
    /// IPv6, driven by `ip6tables-*`.
    V6,
}

impl Family {
    /// Whether a CIDR belongs to this family (and so goes into this family's rules).
    pub fn contains(self, net: &IpNet) -> bool {
        matches!(
            (self, net),
            (Family::V4, IpNet::V4(_)) | (Family::V6, IpNet::V6(_))
        )
    }

    /// Prefix of this family's iptables binaries: `iptables` or `ip6tables`.
    pub fn tool_prefix(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// Everything that shapes the rule set, already validated and de-duplicated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Port of the proxy's outbound listener; nat OUTPUT redirects here.
    pub outbound_port: u16,
    /// Port of the proxy's inbound listener; nat PREROUTING redirects here.
    pub inbound_port: u16,
    /// Uid the proxy runs as; its own connections are never redirected.
    pub proxy_uid: u32,
    /// Gid the proxy runs as, if its traffic should be exempt by group too.
    pub proxy_gid: Option<u32>,
    /// Inbound destination ports that reach the application directly.
    pub skip_inbound_ports: Vec<u16>,
    /// Outbound destination ports that bypass the proxy.
    pub skip_outbound_ports: Vec<u16>,
    /// Outbound destination networks that bypass the proxy (either family).
    pub skip_outbound_cidrs: Vec<IpNet>,
    /// Families to program, IPv4 first.
    pub families: Vec<Family>,
}

impl Plan {
    /// The skipped outbound networks that belong to `family`, in the order given.
    pub fn cidrs_for(&self, family: Family) -> impl Iterator<Item = &IpNet> {
        self.skip_outbound_cidrs
            .iter()
            .filter(move |net| family.contains(net))
    }
}

#[cfg(test)]
impl Plan {
    /// The plan of a run without flags (ports, uid and skipped inbound ports from
    /// `pillion_api::defaults`, both families): what the unit tests start from.
    pub(crate) fn defaults() -> Plan {
        use pillion_api::defaults;
        Plan {
            outbound_port: defaults::OUTBOUND_PORT,
            inbound_port: defaults::INBOUND_PORT,
            proxy_uid: defaults::PROXY_UID,
            proxy_gid: None,
            skip_inbound_ports: defaults::SKIP_INBOUND_PORTS.to_vec(),
            skip_outbound_ports: Vec::new(),
            skip_outbound_cidrs: Vec::new(),
            families: vec![Family::V4, Family::V6],
        }
    }
}

/// Whether this run installs the rules or removes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Install (or refresh) the redirect rules.
    Install,
    /// Remove everything an install added, and nothing else.
    Cleanup,
}

/// One run of `pillion-init`, fully validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The rule set to install (or, for cleanup, the one that was installed).
    pub plan: Plan,
    /// Install or cleanup.
    pub mode: Mode,
    /// Print the transactions instead of applying them.
    pub dry_run: bool,
    /// Which iptables backend to drive.
    pub backend: BackendChoice,
    /// Shape of the log lines on stderr.
    pub log_format: LogFormat,
}
