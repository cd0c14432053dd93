//! Parsers for the values users write in annotations and flags (port lists, networks,
//! Kubernetes quantities, sampling ratios, log filters). Each returns a message that
//! names what was wrong, so the injector can turn it into an admission warning.

use std::net::IpAddr;

use ipnet::IpNet;
use pillion_api::defaults;
use pillion_api::lists::{self, parse_list};
pub use pillion_api::lists::{parse_port, shorten};

/// Longest annotation value the parsers look at; anything longer is refused outright,
/// so a huge value costs nothing and cannot flood the warnings.
pub const MAX_VALUE_LEN: usize = 4096;

/// Refuses values that are too long to be meant, before any other parsing.
fn check_len(text: &str) -> Result<(), String> {
    if text.len() > MAX_VALUE_LEN {
        Err(format!(
            "is {} bytes long; the limit is {MAX_VALUE_LEN}",
            text.len()
        ))
    } else {
        Ok(())
    }
}

/// Parses `"8080, 9090"` into ports, de-duplicated in order; empty text is the empty list.
pub fn parse_ports(text: &str) -> Result<Vec<u16>, String> {
    check_len(text)?;
    lists::parse_ports(text)
}

/// Parses a list of ports that must bypass the proxy. The proxy's own listener ports
/// are refused, because `pillion-init` refuses them and the pod would never start.
pub fn parse_skip_ports(text: &str) -> Result<Vec<u16>, String> {
    let ports = parse_ports(text)?;
    for proxy_port in [defaults::OUTBOUND_PORT, defaults::INBOUND_PORT] {
        if ports.contains(&proxy_port) {
            return Err(format!(
                "{proxy_port} is a port of the proxy itself and cannot be skipped"
            ));
        }
    }
    Ok(ports)
}

/// Parses `"10.0.0.0/8, 2001:db8::/32"`; a bare address means that one host. Host
/// bits must be clear, the same rule `pillion-init` applies.
pub fn parse_cidrs(text: &str) -> Result<Vec<IpNet>, String> {
    check_len(text)?;
    parse_list(text, parse_cidr)
}

/// Parses one network or bare address.
fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let net = match text.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => match text.parse::<IpAddr>() {
            Ok(addr) => IpNet::from(addr),
            Err(_) => {
                return Err(format!(
                    "'{}' is not an IPv4/IPv6 network (CIDR) or address",
                    shorten(text)
                ))
            }
        },
    };
    if net.trunc() != net {
        return Err(format!(
            "'{text}' has host bits set; write {} instead",
            net.trunc()
        ));
    }
    Ok(net)
}

/// Parses a ratio of traces to sample, a number from 0 to 1.
pub fn parse_sampling(text: &str) -> Result<f64, String> {
    let text = text.trim();
    match text.parse::<f64>() {
        Ok(ratio) if ratio.is_finite() && (0.0..=1.0).contains(&ratio) => Ok(ratio),
        _ => Err(format!(
            "'{}' is not a sampling ratio from 0 to 1",
            shorten(text)
        )),
    }
}

/// Parses `true`/`false` (as Kubernetes annotations usually spell them).
pub fn parse_bool(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "enabled" | "yes" | "1" => Ok(true),
        "false" | "disabled" | "no" | "0" => Ok(false),
        _ => Err(format!("'{}' is not true or false", shorten(text))),
    }
}

/// Levels a `tracing` filter directive may name.
const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];

/// Checks a log filter such as `info` or `warn,pillion_proxy=debug`: comma-separated
/// directives, each a level, a target, or `target=level`. Span filters (`[...]`) are
/// refused: they are rarely meant in an annotation and easy to get wrong.
pub fn parse_log_level(text: &str) -> Result<String, String> {
    check_len(text)?;
    let text = text.trim();
    let bad = || {
        format!(
            "'{}' is not a log filter like 'info' or 'warn,pillion_proxy=debug'",
            shorten(text)
        )
    };
    if text.is_empty() {
        return Err(bad());
    }
    let is_target = |t: &str| {
        !t.is_empty()
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '-' | '.'))
    };
    for directive in text.split(',') {
        let directive = directive.trim();
        let ok = match directive.split_once('=') {
            Some((target, level)) => {
                is_target(target) && LEVELS.contains(&level.to_ascii_lowercase().as_str())
            }
            None => is_target(directive),
        };
        if !ok {
            return Err(bad());
        }
    }
    Ok(text.to_owned())
}

/// A validated Kubernetes resource quantity (`100m`, `128Mi`, `1.5`, `2e3`), kept as
/// written, with its numeric value for comparisons.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantity {
    /// The quantity as written (trimmed), which is what goes into the pod spec.
    pub text: String,
    /// The value in base units (cores or bytes), for comparing request and limit.
    pub value: f64,
}

/// Parses a non-negative Kubernetes quantity: a decimal number followed by a binary SI
/// suffix (`Ki`..`Ei`), a decimal SI suffix (`n u m k M G T P E`) or an exponent (`e3`).
pub fn parse_quantity(text: &str) -> Result<Quantity, String> {
    let text = text.trim();
    let bad = |why: &str| format!("'{}' is not a Kubernetes quantity: {why}", shorten(text));
    if text.is_empty() || text.len() > 64 {
        return Err(bad("expected e.g. 100m, 0.5, 128Mi or 1Gi"));
    }
    let unsigned = text.strip_prefix('+').unwrap_or(text);
    if unsigned.starts_with('-') {
        return Err(bad("it is negative"));
    }
    let number_len = unsigned
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(unsigned.len());
    let (number, suffix) = unsigned.split_at(number_len);
    let digits = number.chars().filter(char::is_ascii_digit).count();
    if digits == 0 || number.matches('.').count() > 1 {
        return Err(bad("expected a number such as 100, 0.5 or .5"));
    }
    let mantissa: f64 = number
        .parse()
        .or_else(|_| format!("0{number}").parse())
        .map_err(|_| bad("expected a number such as 100, 0.5 or .5"))?;
    let scale = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => {
            let power: i32 = exp[1..]
                .parse()
                .map_err(|_| bad("the exponent after 'e' must be an integer"))?;
            if !(-30..=30).contains(&power) {
                return Err(bad("the exponent is out of range"));
            }
            10f64.powi(power)
        }
        _ => {
            return Err(bad(
                "unknown suffix; use one of m, k, M, G, Ki, Mi, Gi (or none)",
            ))
        }
    };
    Ok(Quantity {
        text: text.to_owned(),
        value: mantissa * scale,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports() {
        assert_eq!(parse_ports("8080, 9090,8080,").unwrap(), vec![8080, 9090]);
        assert_eq!(parse_ports("").unwrap(), Vec::<u16>::new());
        assert!(parse_ports("80,abc").unwrap_err().contains("'abc'"));
        assert!(parse_ports("0").is_err());
        assert!(parse_ports("65536").is_err());
        assert!(parse_ports(&"1,".repeat(5000)).is_err());
    }

    #[test]
    fn skip_ports_refuse_the_proxy_ports() {
        assert!(parse_skip_ports("22,15001").unwrap_err().contains("15001"));
        assert!(parse_skip_ports("15006").is_err());
        assert_eq!(parse_skip_ports("22").unwrap(), vec![22]);
    }

    #[test]
    fn cidrs() {
        let nets = parse_cidrs("10.0.0.0/8, 2001:db8::/32, 192.0.2.1").unwrap();
        assert_eq!(nets.len(), 3);
        assert_eq!(nets[2].prefix_len(), 32);
        assert!(parse_cidrs("10.0.0.1/8")
            .unwrap_err()
            .contains("10.0.0.0/8"));
        assert!(parse_cidrs("10.0.0.0/33").is_err());
        assert!(parse_cidrs("example.com").is_err());
    }

    #[test]
    fn sampling() {
        assert_eq!(parse_sampling("0.25").unwrap(), 0.25);
        assert_eq!(parse_sampling("1").unwrap(), 1.0);
        assert_eq!(parse_sampling("0").unwrap(), 0.0);
        for bad in ["1.5", "-0.1", "NaN", "inf", "half", ""] {
            assert!(parse_sampling(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn log_levels() {
        assert_eq!(parse_log_level(" debug ").unwrap(), "debug");
        parse_log_level("warn,pillion_proxy=debug,hyper::proto=off").unwrap();
        for bad in ["", "info;rm", "a=loud", "x=[span]", "=debug"] {
            assert!(parse_log_level(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn quantities() {
        let q = |s: &str| parse_quantity(s).unwrap().value;
        assert_eq!(q("100m"), 0.1);
        assert_eq!(q("1"), 1.0);
        assert_eq!(q("128Mi"), 128.0 * 1024.0 * 1024.0);
        assert_eq!(q("1Gi"), 1024f64.powi(3));
        assert_eq!(q("1.5"), 1.5);
        assert_eq!(q(".5"), 0.5);
        assert_eq!(q("2e3"), 2000.0);
        assert_eq!(q("+1k"), 1000.0);
        assert_eq!(parse_quantity(" 10m ").unwrap().text, "10m");
        for bad in [
            "", "-1", "abc", "1.2.3", "10mb", "1e", "1e999", "Mi", ".", "1 Gi", "1GB",
        ] {
            assert!(parse_quantity(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bools() {
        assert!(parse_bool("True").unwrap());
        assert!(!parse_bool("false").unwrap());
        assert!(parse_bool("maybe").is_err());
    }
}
