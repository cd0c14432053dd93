//! The one grammar of SPIFFE id patterns, the allow lists of inbound policy: parsed
//! once where a policy is read (the agent) and where it is enforced (the proxy), and
//! matched over the identity string without parsing or allocating per request.
//!
//! `*` alone admits every identity. Otherwise a pattern is
//! `spiffe://<trust-domain or *>/<segment>/…`, where each segment is a literal of
//! lowercase letters, digits, `-` and `.`, or a whole `*` standing for exactly one
//! segment; a `*` in last place stands for one or more remaining segments. So
//! `spiffe://cluster.local/ns/demo/*` admits every workload of namespace `demo`, and
//! `spiffe://cluster.local/ns/*/sa/client` the `client` account of any namespace.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The scheme every SPIFFE id starts with.
pub const SPIFFE_SCHEME: &str = "spiffe://";

/// Longest trust domain (the SPIFFE spec's limit).
const MAX_TRUST_DOMAIN_LEN: usize = 255;
/// Longest label of a trust domain (a DNS label).
const MAX_LABEL_LEN: usize = 63;

/// A pattern that is not well formed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("identity pattern {pattern:?} is invalid: {reason}")]
pub struct PatternError {
    /// The pattern as written.
    pub pattern: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// What is wrong with a trust domain, if anything: it must be non-empty `.`-separated
/// labels of lowercase letters, digits, `-` and `_`, each at most 63 bytes, at most
/// 255 bytes in all.
pub fn trust_domain_problem(td: &str) -> Option<&'static str> {
    if td.is_empty() {
        return Some("the trust domain is empty");
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Some("the trust domain is longer than 255 bytes");
    }
    if !td
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Some("the trust domain may hold only lowercase letters, digits, '-', '_' and '.'");
    }
    if td.split('.').any(str::is_empty) {
        return Some("the trust domain has an empty label (leading, trailing or doubled '.')");
    }
    if td.split('.').any(|label| label.len() > MAX_LABEL_LEN) {
        return Some("a label of the trust domain is longer than 63 bytes");
    }
    None
}

/// A SPIFFE id pattern, compiled for matching; compares and prints as written.
#[derive(Clone)]
pub struct IdentityPattern {
    text: Box<str>,
    /// `None` is `*` alone: every identity.
    shape: Option<Segments>,
}

#[derive(Debug, Clone)]
struct Segments {
    /// `None` is `*`.
    trust_domain: Option<Box<str>>,
    /// The segments before a trailing `*`; `None` entries are `*`.
    path: Box<[Option<Box<str>>]>,
    /// The last segment was `*`: one or more further segments match.
    trailing_any: bool,
}

fn literal(part: &str) -> Option<Box<str>> {
    (part != "*").then(|| part.into())
}

impl IdentityPattern {
    /// Parses a pattern (see the module docs); the error says what to fix.
    pub fn parse(pattern: &str) -> Result<IdentityPattern, PatternError> {
        let bad = |reason| PatternError {
            pattern: pattern.to_string(),
            reason,
        };
        if pattern == "*" {
            return Ok(IdentityPattern {
                text: pattern.into(),
                shape: None,
            });
        }
        let rest = pattern
            .strip_prefix(SPIFFE_SCHEME)
            .ok_or_else(|| bad("must be '*' or start with spiffe://"))?;
        if rest.contains('?') {
            return Err(bad("a SPIFFE id must not carry a query"));
        }
        if rest.contains('#') {
            return Err(bad("a SPIFFE id must not carry a fragment"));
        }
        let (trust_domain, path) = rest.split_once('/').ok_or_else(|| {
            bad("needs a path; use spiffe://<trust-domain>/* for a whole trust domain")
        })?;
        if trust_domain.contains('@') {
            return Err(bad("a SPIFFE id must not carry user info"));
        }
        if trust_domain.contains(':') {
            return Err(bad("a SPIFFE id must not carry a port"));
        }
        if trust_domain != "*" {
            if let Some(reason) = trust_domain_problem(trust_domain) {
                return Err(bad(reason));
            }
        }
        for segment in path.split('/') {
            if segment == "*" {
                continue;
            }
            if segment.is_empty() {
                return Err(bad("empty path segment"));
            }
            if segment.contains('*') {
                return Err(bad("'*' must stand for a whole segment"));
            }
            if !segment
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.'))
            {
                return Err(bad(
                    "segments may hold only lowercase letters, digits, '-' and '.'",
                ));
            }
        }
        let mut segments: Vec<&str> = path.split('/').collect();
        let trailing_any = segments.last() == Some(&"*");
        if trailing_any {
            segments.pop();
        }
        Ok(IdentityPattern {
            text: pattern.into(),
            shape: Some(Segments {
                trust_domain: literal(trust_domain),
                path: segments.into_iter().map(literal).collect(),
                trailing_any,
            }),
        })
    }

    /// A pattern that admits nobody: the fail-closed stand-in for one that could not
    /// be read.
    pub fn nobody() -> IdentityPattern {
        IdentityPattern {
            text: "".into(),
            // A trust domain holding '/', which the matcher never sees in one (it
            // splits there), so nothing matches.
            shape: Some(Segments {
                trust_domain: Some("/".into()),
                path: Box::new([]),
                trailing_any: true,
            }),
        }
    }

    /// True when `identity` (a SPIFFE id URI) is admitted.
    pub fn matches(&self, identity: &str) -> bool {
        let Some(shape) = &self.shape else {
            return true;
        };
        let Some(rest) = identity.strip_prefix(SPIFFE_SCHEME) else {
            return false;
        };
        let Some((trust_domain, path)) = rest.split_once('/') else {
            return false;
        };
        if shape
            .trust_domain
            .as_deref()
            .is_some_and(|td| td != trust_domain)
        {
            return false;
        }
        let mut id_segments = path.split('/');
        for want in shape.path.iter() {
            match id_segments.next() {
                Some(got) if !got.is_empty() && want.as_deref().is_none_or(|w| w == got) => {}
                _ => return false,
            }
        }
        let mut rest = id_segments.peekable();
        if shape.trailing_any {
            // At least one more segment, none of them empty.
            rest.peek().is_some() && rest.all(|s| !s.is_empty())
        } else {
            rest.next().is_none()
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl PartialEq for IdentityPattern {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for IdentityPattern {}

impl std::hash::Hash for IdentityPattern {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.text.hash(state);
    }
}

impl FromStr for IdentityPattern {
    type Err = PatternError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        IdentityPattern::parse(s)
    }
}

impl fmt::Display for IdentityPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for IdentityPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentityPattern({})", self.text)
    }
}

impl Serialize for IdentityPattern {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for IdentityPattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        IdentityPattern::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: &str = "spiffe://cluster.local/ns/demo/sa/client";

    fn pat(s: &str) -> IdentityPattern {
        s.parse().unwrap()
    }

    #[test]
    fn patterns_match_whole_segments() {
        let cases = [
            ("*", CLIENT, true),
            ("*", "spiffe://other.td/ns/x/sa/y", true),
            ("spiffe://cluster.local/ns/demo/sa/client", CLIENT, true),
            ("spiffe://cluster.local/ns/demo/sa/server", CLIENT, false),
            (
                "spiffe://cluster.local/ns/demo/sa/client",
                "spiffe://other.local/ns/demo/sa/client",
                false,
            ),
            ("spiffe://cluster.local/ns/demo/*", CLIENT, true),
            ("spiffe://cluster.local/ns/other/*", CLIENT, false),
            ("spiffe://cluster.local/*", CLIENT, true),
            ("spiffe://other.td/*", CLIENT, false),
            ("spiffe://*/ns/demo/sa/client", CLIENT, true),
            (
                "spiffe://*/ns/demo/sa/client",
                "spiffe://any.td/ns/demo/sa/client",
                true,
            ),
            ("spiffe://cluster.local/ns/*/sa/client", CLIENT, true),
            (
                "spiffe://cluster.local/ns/*/sa/client",
                "spiffe://cluster.local/ns/b/sa/client",
                true,
            ),
            ("spiffe://cluster.local/ns/*/sa/server", CLIENT, false),
            ("spiffe://cluster.local/ns/demo/sa/client/*", CLIENT, false),
            ("spiffe://cluster.local/ns/demo/sa/*", CLIENT, true),
            ("spiffe://cluster.local/ns/demo", CLIENT, false),
            (
                "spiffe://cluster.local/ns/demo/*",
                "spiffe://cluster.local/ns/demo",
                false,
            ),
            (
                "spiffe://cluster.local/ns/demo/*",
                "spiffe://cluster.local/ns/demo/",
                false,
            ),
            (
                "spiffe://cluster.local/*",
                "spiffe://cluster.local/ns//sa/x",
                false,
            ),
            (
                "spiffe://cluster.local/*",
                "http://cluster.local/ns/a/sa/b",
                false,
            ),
            ("spiffe://cluster.local/*", "spiffe://cluster.local", false),
            (
                "spiffe://cluster.local/ns/demo/*",
                "http://cluster.local/ns/demo/sa/a",
                false,
            ),
            (
                "spiffe://cluster.local/ns/demo/sa/client",
                "spiffe://cluster.local/ns/demo/sa/client/x",
                false,
            ),
            (
                "spiffe://cluster.local/ns/demo/sa/client",
                "spiffe://cluster.localx/ns/demo/sa/client",
                false,
            ),
        ];
        for (p, id, want) in cases {
            assert_eq!(pat(p).matches(id), want, "{p} ~ {id}");
        }
    }

    #[test]
    fn nobody_matches_nothing() {
        let p = IdentityPattern::nobody();
        for id in [CLIENT, "spiffe://a/b", "spiffe:///", "*", ""] {
            assert!(!p.matches(id), "{id}");
        }
    }

    #[test]
    fn refuses_bad_patterns_with_a_reason() {
        for ok in [
            "*",
            "spiffe://cluster.local/*",
            "spiffe://*/ns/demo/sa/client",
            "spiffe://cluster.local/ns/demo/*",
            "spiffe://cluster.local/ns/*/sa/client",
            "spiffe://my_td.example/ns/a/sa/b",
        ] {
            assert!(IdentityPattern::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "**",
            "http://cluster.local/ns/a/sa/b",
            "spiffe://cluster.local",
            "spiffe://cluster.local/",
            "spiffe://cluster.local/ns//sa/b",
            "spiffe://cluster.local/ns/de*",
            "spiffe://cluster.local/ns/de*/sa/x",
            "spiffe://Cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/A/sa/b",
            "spiffe://cluster.local:80/ns/a/sa/b",
            "spiffe://user@cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/*?a",
            "spiffe://cluster.local/*#a",
            "spiffe://a..b/*",
            "td/ns/a",
        ] {
            let err = IdentityPattern::parse(bad).unwrap_err();
            assert_eq!(err.pattern, bad);
            assert!(!err.reason.is_empty());
        }
        let long = format!("spiffe://{}/*", "a".repeat(64));
        assert!(IdentityPattern::parse(&long).is_err());
    }

    #[test]
    fn display_and_serde_keep_the_text() {
        let p = pat("spiffe://cluster.local/ns/*/sa/client");
        assert_eq!(p.to_string(), "spiffe://cluster.local/ns/*/sa/client");
        let json = serde_json::to_string(&p).unwrap();
        let back: IdentityPattern = serde_json::from_str(&json).unwrap();
        assert_eq!(back, p);
        assert!(serde_json::from_str::<IdentityPattern>(r#""spiffe://x""#).is_err());
    }

    #[test]
    fn trust_domains() {
        assert_eq!(trust_domain_problem("cluster.local"), None);
        assert_eq!(trust_domain_problem("a_b-c.d9"), None);
        for bad in ["", "A.b", "a..b", ".a", "a.", "a b"] {
            assert!(trust_domain_problem(bad).is_some(), "{bad:?}");
        }
        assert!(trust_domain_problem(&"a".repeat(64)).is_some());
        assert!(trust_domain_problem(&["a"; 200].join(".")).is_some());
    }
}
