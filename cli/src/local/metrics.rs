//! Reading a proxy's `/metrics`: a small parser for the Prometheus / OpenMetrics text
//! format and a scrape that fetches it the way Prometheus would, from the node.

use std::fmt;
use std::net::SocketAddr;

use anyhow::{anyhow, bail, Context, Result};

use crate::local::http;
use crate::local::pod::Pod;

/// One sample line: metric name, labels in the order written, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Full sample name as written (e.g. `pillion_tcp_sent_bytes_total`).
    pub name: String,
    /// Label pairs, unescaped.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

/// Every sample of one scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Samples {
    samples: Vec<Sample>,
}

impl Samples {
    /// Parses exposition text; comment lines (`# HELP`, `# TYPE`, `# EOF`) are skipped.
    pub fn parse(text: &str) -> Result<Samples> {
        let samples = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| parse_line(l).with_context(|| format!("bad metrics line {l:?}")))
            .collect::<Result<_>>()?;
        Ok(Samples { samples })
    }

    /// The sum of the samples named `name` whose labels include all of `labels`; `None`
    /// if there is no such sample.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        for s in self.samples.iter().filter(|s| s.name == name) {
            let matches = labels
                .iter()
                .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v));
            if matches {
                found = Some(found.unwrap_or(0.0) + s.value);
            }
        }
        found
    }

    /// Like [`Samples::get`], with 0 for a series that does not exist yet (labelled
    /// counters appear only once they are first touched).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// All samples, in text order.
    pub fn iter(&self) -> impl Iterator<Item = &Sample> {
        self.samples.iter()
    }

    /// Whether there are no samples at all.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

impl fmt::Display for Samples {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.samples {
            let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
            writeln!(f, "{}{{{}}} {}", s.name, labels.join(","), s.value)?;
        }
        Ok(())
    }
}

fn parse_line(line: &str) -> Result<Sample> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or_else(|| anyhow!("no value"))?;
    let name = &line[..name_end];
    if name.is_empty() {
        bail!("no metric name");
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let (parsed, tail) = parse_labels(after)?;
        labels = parsed;
        rest = tail;
    }
    // Drop an exemplar (` # {...} v`) and keep the value (and maybe a timestamp).
    let rest = rest.split(" # ").next().unwrap_or_default();
    let value = rest
        .split_whitespace()
        .next()
        .ok_or_else(|| anyhow!("no value"))?;
    Ok(Sample {
        name: name.to_string(),
        labels,
        value: parse_value(value)?,
    })
}

/// Parses `k="v",k2="v2"}` (after the opening brace); returns the pairs and the tail.
fn parse_labels(mut s: &str) -> Result<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start_matches([' ', ',']);
        if let Some(tail) = s.strip_prefix('}') {
            return Ok((labels, tail));
        }
        let eq = s.find('=').ok_or_else(|| anyhow!("label without '='"))?;
        let key = s[..eq].trim().to_string();
        let after = s[eq + 1..]
            .trim_start()
            .strip_prefix('"')
            .ok_or_else(|| anyhow!("label value not quoted"))?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => bail!("dangling escape"),
                },
                Some((_, c)) => value.push(c),
                None => bail!("unterminated label value"),
            }
        };
        labels.push((key, value));
        s = &after[end + 1..];
    }
}

fn parse_value(v: &str) -> Result<f64> {
    match v {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => v.parse().with_context(|| format!("bad value {v:?}")),
    }
}

/// Fetches and parses `GET /metrics` from a pod's admin port. The request comes from
/// the node namespace to the pod's IPv4 address, as Prometheus would send it, so it
/// never passes through the pod's own outbound redirect.
pub fn scrape(pod: &Pod, admin_port: u16) -> Result<Samples> {
    let addr = pod.addr_v4(admin_port);
    let resp = pod.run_in_node(move || http::request(addr, "GET", "/metrics"))??;
    if resp.status != 200 {
        bail!("GET /metrics on {addr}: status {}", resp.status);
    }
    Samples::parse(&resp.body)
}

/// Fetches and parses `GET /metrics` from inside the pod, over its loopback
/// (`127.0.0.1:admin_port`), as a root process of the pod would.
pub fn scrape_in_pod(pod: &Pod, admin_port: u16) -> Result<Samples> {
    let addr = SocketAddr::from(([127, 0, 0, 1], admin_port));
    let resp = pod.run(move || http::request(addr, "GET", "/metrics"))??;
    if resp.status != 200 {
        bail!(
            "GET /metrics on {addr} in pod {}: status {}",
            pod.name(),
            resp.status
        );
    }
    Samples::parse(&resp.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP pillion_tcp_sent_bytes Bytes sent.
# TYPE pillion_tcp_sent_bytes counter
pillion_tcp_sent_bytes_total{direction="outbound"} 1024
pillion_tcp_sent_bytes_total{direction="inbound",peer="a\"b\\c"} 7 1700000000
pillion_tcp_connections_open{direction="outbound"} 0
process_start_time_seconds 1.7e9
odd{ a = "1" ,b="x y"} +Inf
with_exemplar_total{direction="outbound"} 3 # {trace_id="abc"} 1.0
# EOF
"#;

    #[test]
    fn parses_and_sums() {
        let s = Samples::parse(TEXT).unwrap();
        assert_eq!(s.iter().count(), 6);
        let out = [("direction", "outbound")];
        assert_eq!(s.get("pillion_tcp_sent_bytes_total", &out), Some(1024.0));
        assert_eq!(s.get("pillion_tcp_sent_bytes_total", &[]), Some(1031.0));
        assert_eq!(
            s.get("pillion_tcp_sent_bytes_total", &[("peer", "a\"b\\c")]),
            Some(7.0)
        );
        assert_eq!(s.get("pillion_tcp_connections_open", &out), Some(0.0));
        assert_eq!(s.get("pillion_tcp_connect_failures_total", &out), None);
        assert_eq!(s.value("pillion_tcp_connect_failures_total", &out), 0.0);
        assert_eq!(s.get("process_start_time_seconds", &[]), Some(1.7e9));
        assert_eq!(s.get("odd", &[("b", "x y")]), Some(f64::INFINITY));
        assert_eq!(s.get("with_exemplar_total", &out), Some(3.0));
    }

    #[test]
    fn rejects_garbage() {
        assert!(Samples::parse("metric_without_value").is_err());
        assert!(Samples::parse("m{a=\"1} 2").is_err());
        assert!(Samples::parse("m{a=1} 2").is_err());
        assert!(Samples::parse("m abc").is_err());
    }
}
