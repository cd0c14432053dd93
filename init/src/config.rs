//! The command line (every flag also read from `PILLION_<NAME>`) and its validation into
//! [`Settings`]. Everything is checked here, before a single iptables binary runs, and
//! every message says which flag to change and how.

use std::fmt;
use std::net::IpAddr;

use clap::builder::BoolishValueParser;
use clap::Parser;
use ipnet::IpNet;
use pillion_api::defaults;
use pillion_api::lists::parse_list;
pub use pillion_api::lists::{parse_port, PortList};

use crate::backend::BackendChoice;
use crate::error::ConfigError;
use crate::logging::LogFormat;
use crate::plan::{Family, Mode, Plan, Settings};

/// Flags of `pillion-init`; defaults come from `pillion_api::defaults`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "pillion-init",
    version,
    about = "Installs (or removes) the nat rules that redirect a pod's TCP through its \
             Pillion proxy. Run it once in the pod's network namespace, with CAP_NET_ADMIN."
)]
pub struct Args {
    /// Port of the proxy's outbound listener; the pod's outgoing TCP is redirected here.
    #[arg(long, env = "PILLION_OUTBOUND_PORT", value_name = "PORT",
          default_value_t = defaults::OUTBOUND_PORT, value_parser = parse_port)]
    pub outbound_port: u16,

    /// Port of the proxy's inbound listener; TCP arriving at the pod is redirected here.
    #[arg(long, env = "PILLION_INBOUND_PORT", value_name = "PORT",
          default_value_t = defaults::INBOUND_PORT, value_parser = parse_port)]
    pub inbound_port: u16,

    /// Numeric uid the proxy runs as; its own connections are never redirected.
    #[arg(long, env = "PILLION_PROXY_UID", value_name = "UID",
          default_value_t = defaults::PROXY_UID, value_parser = parse_id)]
    pub proxy_uid: u32,

    /// Numeric gid the proxy runs as; if given, that group's connections are exempt too.
    #[arg(long, env = "PILLION_PROXY_GID", value_name = "GID", value_parser = parse_id)]
    pub proxy_gid: Option<u32>,

    /// Comma-separated inbound ports that reach the application without the proxy,
    /// in addition to the proxy's admin port, which is always skipped.
    #[arg(long, env = "PILLION_SKIP_INBOUND_PORTS", value_name = "PORTS",
          default_value = "", hide_default_value = true, value_parser = PortList::parse)]
    pub skip_inbound_ports: PortList,

    /// Comma-separated destination ports whose outbound connections bypass the proxy.
    #[arg(long, env = "PILLION_SKIP_OUTBOUND_PORTS", value_name = "PORTS",
          default_value = "", hide_default_value = true, value_parser = PortList::parse)]
    pub skip_outbound_ports: PortList,

    /// Comma-separated IPv4/IPv6 networks (CIDR) that outbound connections reach directly.
    #[arg(long, env = "PILLION_SKIP_OUTBOUND_CIDRS", value_name = "CIDRS",
          default_value = "", hide_default_value = true, value_parser = CidrList::parse)]
    pub skip_outbound_cidrs: CidrList,

    /// Remove everything an install added (and nothing else); fine when nothing is there.
    #[arg(long, env = "PILLION_CLEANUP", value_parser = BoolishValueParser::new(),
          action = clap::ArgAction::SetTrue)]
    pub cleanup: bool,

    /// Print the rule sets for both families to stdout and touch nothing.
    #[arg(long, env = "PILLION_DRY_RUN", value_parser = BoolishValueParser::new(),
          action = clap::ArgAction::SetTrue)]
    pub dry_run: bool,

    /// iptables flavour to drive; `auto` uses the one the namespace already uses.
    #[arg(long, env = "PILLION_BACKEND", value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,

    /// Leave IPv6 alone (for pods without IPv6, or without ip6tables).
    #[arg(long, env = "PILLION_NO_IPV6", value_parser = BoolishValueParser::new(),
          action = clap::ArgAction::SetTrue)]
    pub no_ipv6: bool,

    /// Log line format on stderr.
    #[arg(long, env = "PILLION_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl Args {
    /// Checks the flags against each other and builds the typed settings; all problems
    /// are reported at once.
    pub fn validate(self) -> Result<Settings, ConfigError> {
        let mut problems = Vec::new();
        let (outbound, inbound) = (self.outbound_port, self.inbound_port);
        if outbound == inbound {
            problems.push(format!(
                "--outbound-port and --inbound-port are both {outbound}; the proxy needs two \
                 different ports"
            ));
        }
        let proxy_ports = [("outbound", outbound), ("inbound", inbound)];
        for (flag, list) in [
            ("--skip-inbound-ports", &self.skip_inbound_ports),
            ("--skip-outbound-ports", &self.skip_outbound_ports),
        ] {
            for (which, port) in proxy_ports {
                if list.0.contains(&port) {
                    problems.push(format!(
                        "{flag} contains {port}, the proxy's {which} port; remove it from the \
                         list (skipping a proxy port would break interception)"
                    ));
                }
            }
        }
        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }

        let families = if self.no_ipv6 {
            vec![Family::V4]
        } else {
            vec![Family::V4, Family::V6]
        };
        for net in &self.skip_outbound_cidrs.0 {
            if self.no_ipv6 && Family::V6.contains(net) {
                tracing::warn!(cidr = %net, "IPv6 network ignored because of --no-ipv6");
            }
            if net.prefix_len() == 0 {
                tracing::warn!(cidr = %net, "this skips every destination of its family");
            }
        }
        let mode = if self.cleanup {
            Mode::Cleanup
        } else {
            Mode::Install
        };
        Ok(Settings {
            plan: Plan {
                outbound_port: outbound,
                inbound_port: inbound,
                proxy_uid: self.proxy_uid,
                proxy_gid: self.proxy_gid,
                skip_inbound_ports: with_defaults(self.skip_inbound_ports.0),
                skip_outbound_ports: self.skip_outbound_ports.0,
                skip_outbound_cidrs: self.skip_outbound_cidrs.0,
                families,
            },
            mode,
            dry_run: self.dry_run,
            backend: self.backend,
            log_format: self.log_format,
        })
    }
}

/// The always-skipped inbound ports (the admin port: probes reach it directly, and
/// a redirect would hand off-pod callers to it from loopback) followed by the
/// user's. A user's list adds to these, it never replaces them.
fn with_defaults(user: Vec<u16>) -> Vec<u16> {
    let mut ports = defaults::SKIP_INBOUND_PORTS.to_vec();
    ports.extend(
        user.into_iter()
            .filter(|p| !defaults::SKIP_INBOUND_PORTS.contains(p)),
    );
    ports
}

/// A comma-separated list of IPv4/IPv6 networks, de-duplicated in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrList(pub Vec<IpNet>);

impl CidrList {
    /// Parses `"10.0.0.0/8,2001:2::/48"`; a bare address means that one host.
    pub fn parse(text: &str) -> Result<CidrList, String> {
        parse_list(text, parse_cidr).map(CidrList)
    }
}

impl fmt::Display for CidrList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let joined: Vec<String> = self.0.iter().map(IpNet::to_string).collect();
        f.write_str(&joined.join(","))
    }
}

/// Parses a numeric, non-root user or group id.
pub fn parse_id(text: &str) -> Result<u32, String> {
    let text = text.trim();
    let number: u64 = text.parse().map_err(|_| {
        format!("'{text}' is not a numeric id; give the number (e.g. 2580), not a name")
    })?;
    match u32::try_from(number) {
        Ok(0) => Err(
            "0 is root; the proxy must run as its own non-root id, or every \
                       process running as root would bypass it"
                .to_owned(),
        ),
        Ok(id) if id != u32::MAX => Ok(id),
        _ => Err(format!("{number} is not a valid id; use 1 to 4294967294")),
    }
}

/// Parses one network: `addr/prefix`, or a bare address for a single host. Host bits
/// must be clear, so what is written is exactly what is skipped.
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    let (addr_text, prefix_text) = match text.split_once('/') {
        Some((addr, prefix)) => (addr, Some(prefix)),
        None => (text, None),
    };
    let addr: IpAddr = addr_text
        .parse()
        .map_err(|_| format!("'{text}': '{addr_text}' is not an IPv4 or IPv6 address"))?;
    let (max, family) = match addr {
        IpAddr::V4(_) => (32, Family::V4),
        IpAddr::V6(_) => (128, Family::V6),
    };
    let prefix = match prefix_text {
        None => max,
        Some(prefix) => prefix
            .parse::<u8>()
            .ok()
            .filter(|length| *length <= max)
            .ok_or_else(|| {
                format!("'{text}': the prefix length must be 0 to {max} for an {family} network")
            })?,
    };
    let net = IpNet::new(addr, prefix)
        .map_err(|_| format!("'{text}': the prefix length must be 0 to {max}"))?;
    if net.trunc() != net {
        return Err(format!(
            "'{text}' has host bits set; write {} instead",
            net.trunc()
        ));
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("pillion-init").chain(args.iter().copied()))
    }

    fn settings(args: &[&str]) -> Settings {
        parse(args).unwrap().validate().unwrap()
    }

    fn problems(args: &[&str]) -> String {
        parse(args).unwrap().validate().unwrap_err().to_string()
    }

    fn clap_error(args: &[&str]) -> String {
        parse(args).unwrap_err().to_string()
    }

    #[test]
    fn defaults_come_from_the_api_crate() {
        let s = settings(&[]);
        assert_eq!(s.plan.outbound_port, defaults::OUTBOUND_PORT);
        assert_eq!(s.plan.inbound_port, defaults::INBOUND_PORT);
        assert_eq!(s.plan.proxy_uid, defaults::PROXY_UID);
        assert_eq!(s.plan.proxy_gid, None);
        assert_eq!(s.plan.skip_inbound_ports, defaults::SKIP_INBOUND_PORTS);
        assert!(s.plan.skip_outbound_ports.is_empty());
        assert!(s.plan.skip_outbound_cidrs.is_empty());
        assert_eq!(s.plan.families, [Family::V4, Family::V6]);
        assert_eq!(s.mode, Mode::Install);
        assert!(!s.dry_run);
        assert_eq!(s.backend, BackendChoice::Auto);
        assert_eq!(s.log_format, LogFormat::Text);
    }

    #[test]
    fn every_flag_parses() {
        let s = settings(&[
            "--outbound-port=1001",
            "--inbound-port=1002",
            "--proxy-uid=7",
            "--proxy-gid=8",
            "--skip-inbound-ports=22, 15020,22,",
            "--skip-outbound-ports=5432",
            "--skip-outbound-cidrs=10.0.0.0/8,2001:2::/48,198.18.0.9",
            "--cleanup",
            "--dry-run",
            "--backend=legacy",
            "--no-ipv6",
            "--log-format=json",
        ]);
        assert_eq!(s.plan.outbound_port, 1001);
        assert_eq!(s.plan.inbound_port, 1002);
        assert_eq!(s.plan.proxy_uid, 7);
        assert_eq!(s.plan.proxy_gid, Some(8));
        assert_eq!(s.plan.skip_inbound_ports, [15020, 22]);
        assert_eq!(s.plan.skip_outbound_ports, [5432]);
        let cidrs: Vec<String> = s
            .plan
            .skip_outbound_cidrs
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(cidrs, ["10.0.0.0/8", "2001:2::/48", "198.18.0.9/32"]);
        assert_eq!(s.mode, Mode::Cleanup);
        assert!(s.dry_run);
        assert_eq!(s.backend, BackendChoice::Legacy);
        assert_eq!(s.plan.families, [Family::V4]);
        assert_eq!(s.log_format, LogFormat::Json);
    }

    #[test]
    fn a_skip_list_adds_to_the_admin_port_and_never_removes_it() {
        for (list, want) in [
            ("", &[15020][..]),
            ("22", &[15020, 22]),
            ("22,15020", &[15020, 22]),
            ("15020", &[15020]),
        ] {
            let s = settings(&[&format!("--skip-inbound-ports={list}")]);
            assert_eq!(s.plan.skip_inbound_ports, want, "{list:?}");
        }
    }

    #[test]
    fn bad_ports_are_rejected_with_the_range() {
        for bad in ["0", "70000", "-1", "http", "99999999999999999999999"] {
            let text = clap_error(&[&format!("--outbound-port={bad}")]);
            assert!(text.contains("--outbound-port"), "{text}");
            assert!(text.contains("from 1 to 65535"), "{text}");
        }
        let text = clap_error(&["--skip-outbound-ports", "443,0"]);
        assert!(text.contains("0 is out of range"), "{text}");
    }

    #[test]
    fn bad_ids_are_rejected() {
        let text = clap_error(&["--proxy-uid", "proxy"]);
        assert!(text.contains("not a numeric id"), "{text}");
        let text = clap_error(&["--proxy-uid", "0"]);
        assert!(text.contains("0 is root"), "{text}");
        let text = clap_error(&["--proxy-gid", "4294967295"]);
        assert!(text.contains("not a valid id"), "{text}");
    }

    #[test]
    fn bad_cidrs_are_rejected_with_the_fix() {
        let text = clap_error(&["--skip-outbound-cidrs", "10.0.0.0/33"]);
        assert!(
            text.contains("prefix length must be 0 to 32 for an IPv4 network"),
            "{text}"
        );
        let text = clap_error(&["--skip-outbound-cidrs", "2001:2::/129"]);
        assert!(text.contains("0 to 128 for an IPv6 network"), "{text}");
        let text = clap_error(&["--skip-outbound-cidrs", "10.0.0.1/8"]);
        assert!(text.contains("write 10.0.0.0/8 instead"), "{text}");
        let text = clap_error(&["--skip-outbound-cidrs", "10.0.0.0/8,example.com"]);
        assert!(
            text.contains("'example.com' is not an IPv4 or IPv6 address"),
            "{text}"
        );
        let text = clap_error(&["--skip-outbound-cidrs", "10.0.0.0/x"]);
        assert!(text.contains("prefix length"), "{text}");
    }

    #[test]
    fn proxy_ports_must_differ() {
        let text = problems(&["--outbound-port", "15006"]);
        assert!(text.contains("both 15006"), "{text}");
    }

    #[test]
    fn skip_lists_may_not_name_a_proxy_port() {
        let text = problems(&["--skip-inbound-ports", "15020,15006"]);
        assert!(
            text.contains("--skip-inbound-ports contains 15006"),
            "{text}"
        );
        let text = problems(&["--skip-outbound-ports", "15001"]);
        assert!(
            text.contains("--skip-outbound-ports contains 15001"),
            "{text}"
        );
        let text = problems(&["--skip-outbound-ports", "15006"]);
        assert!(text.contains("the proxy's inbound port"), "{text}");
    }

    #[test]
    fn all_problems_are_reported_together() {
        let text = problems(&[
            "--outbound-port=1",
            "--inbound-port=1",
            "--skip-outbound-ports=1",
        ]);
        assert!(text.contains("both 1"), "{text}");
        assert!(text.contains("--skip-outbound-ports contains 1"), "{text}");
        assert!(text.contains("nothing was changed"), "{text}");
    }

    #[test]
    fn unknown_backend_lists_the_choices() {
        let text = clap_error(&["--backend", "ebpf"]);
        assert!(
            text.contains("auto") && text.contains("nft") && text.contains("legacy"),
            "{text}"
        );
    }

    #[test]
    fn every_flag_has_a_pillion_env_var() {
        let command = Args::command();
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(id, "help" | "version") {
                continue;
            }
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
            let expected = format!(
                "{}{}",
                defaults::ENV_PREFIX,
                id.to_ascii_uppercase().replace('-', "_")
            );
            assert_eq!(env.as_deref(), Some(expected.as_str()), "flag {id}");
        }
        command.debug_assert();
    }

    #[test]
    fn lists_round_trip_through_display() {
        let ports = PortList::parse("15020,22").unwrap();
        assert_eq!(PortList::parse(&ports.to_string()).unwrap(), ports);
        let cidrs = CidrList::parse("10.0.0.0/8, 2001:2::/48").unwrap();
        assert_eq!(CidrList::parse(&cidrs.to_string()).unwrap(), cidrs);
        assert_eq!(PortList::parse("").unwrap(), PortList::default());
    }
}
