//! Patterns over SPIFFE ids, for authorization rules such as "any client in namespace demo".

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::error::IdError;
use super::id::{SpiffeId, SCHEME};
use super::rules::validate_trust_domain;

/// One `/`-separated part of a pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Segment {
    /// Matches exactly this text.
    Literal(String),
    /// `*`: matches any one segment (or, in last place, the whole rest of the path).
    Any,
}

impl Segment {
    fn matches(&self, s: &str) -> bool {
        match self {
            Segment::Literal(l) => l == s,
            Segment::Any => true,
        }
    }
}

/// Which ids a pattern admits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Shape {
    /// `*` alone: every id.
    Everything,
    /// `spiffe://<td>/<seg>/...`, each part literal or `*`.
    Segments {
        trust_domain: Segment,
        path: Vec<Segment>,
    },
}

/// A SPIFFE id with `*` wildcards, used to say which peers a policy admits.
///
/// `*` stands for one whole path segment (or the trust domain); a `*` in last place
/// stands for the whole rest of the path; `*` alone admits every id. Examples:
/// `spiffe://cluster.local/ns/demo/*`, `spiffe://cluster.local/ns/*/sa/client`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SpiffeIdPattern {
    text: String,
    shape: Shape,
}

impl SpiffeIdPattern {
    /// Parses a pattern; same as `str::parse`.
    pub fn parse(s: &str) -> Result<SpiffeIdPattern, IdError> {
        let bad = |reason: &str| IdError::InvalidPattern {
            pattern: s.to_string(),
            reason: reason.to_string(),
        };
        if s == "*" {
            return Ok(SpiffeIdPattern {
                text: s.to_string(),
                shape: Shape::Everything,
            });
        }
        let rest = s.strip_prefix(SCHEME).ok_or(IdError::WrongScheme)?;
        if rest.contains('?') {
            return Err(IdError::QueryNotAllowed);
        }
        if rest.contains('#') {
            return Err(IdError::FragmentNotAllowed);
        }
        let mut parts = rest.split('/');
        let td = parts.next().unwrap_or_default();
        if td.contains('@') {
            return Err(IdError::UserInfoNotAllowed);
        }
        if td.contains(':') {
            return Err(IdError::PortNotAllowed);
        }
        let trust_domain = if td == "*" {
            Segment::Any
        } else {
            validate_trust_domain(td)?;
            Segment::Literal(td.to_string())
        };
        let mut path = Vec::new();
        for seg in parts {
            if seg == "*" {
                path.push(Segment::Any);
            } else if seg.is_empty() {
                return Err(bad("empty path segment"));
            } else if seg.contains('*') {
                return Err(bad("'*' must stand for a whole segment"));
            } else if !seg
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.'))
            {
                return Err(bad(
                    "segments may hold only lowercase letters, digits, '-' and '.'",
                ));
            } else {
                path.push(Segment::Literal(seg.to_string()));
            }
        }
        if path.is_empty() {
            return Err(bad(
                "a pattern needs a path; use spiffe://<trust-domain>/* for a whole trust domain",
            ));
        }
        Ok(SpiffeIdPattern {
            text: s.to_string(),
            shape: Shape::Segments { trust_domain, path },
        })
    }

    /// True when `id` is admitted by this pattern.
    pub fn matches(&self, id: &SpiffeId) -> bool {
        let (trust_domain, path) = match &self.shape {
            Shape::Everything => return true,
            Shape::Segments { trust_domain, path } => (trust_domain, path),
        };
        if !trust_domain.matches(id.trust_domain()) {
            return false;
        }
        let id_path = ["ns", id.namespace(), "sa", id.service_account()];
        let trailing_any = matches!(path.last(), Some(Segment::Any));
        if trailing_any {
            // The last `*` swallows one or more remaining segments.
            let fixed = &path[..path.len() - 1];
            id_path.len() > fixed.len()
                && fixed.iter().zip(id_path.iter()).all(|(p, s)| p.matches(s))
        } else {
            path.len() == id_path.len()
                && path.iter().zip(id_path.iter()).all(|(p, s)| p.matches(s))
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl FromStr for SpiffeIdPattern {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SpiffeIdPattern::parse(s)
    }
}

impl fmt::Display for SpiffeIdPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for SpiffeIdPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeIdPattern({})", self.text)
    }
}

impl Serialize for SpiffeIdPattern {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for SpiffeIdPattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        SpiffeIdPattern::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        s.parse().unwrap()
    }

    fn pat(s: &str) -> SpiffeIdPattern {
        s.parse().unwrap()
    }

    #[test]
    fn exact_pattern() {
        let p = pat("spiffe://cluster.local/ns/demo/sa/client");
        assert!(p.matches(&id("spiffe://cluster.local/ns/demo/sa/client")));
        assert!(!p.matches(&id("spiffe://cluster.local/ns/demo/sa/server")));
        assert!(!p.matches(&id("spiffe://other.local/ns/demo/sa/client")));
    }

    #[test]
    fn wildcard_segments() {
        let p = pat("spiffe://cluster.local/ns/*/sa/client");
        assert!(p.matches(&id("spiffe://cluster.local/ns/a/sa/client")));
        assert!(p.matches(&id("spiffe://cluster.local/ns/b/sa/client")));
        assert!(!p.matches(&id("spiffe://cluster.local/ns/b/sa/other")));

        let p = pat("spiffe://*/ns/demo/sa/client");
        assert!(p.matches(&id("spiffe://any.td/ns/demo/sa/client")));
    }

    #[test]
    fn trailing_wildcard() {
        let p = pat("spiffe://cluster.local/ns/demo/*");
        assert!(p.matches(&id("spiffe://cluster.local/ns/demo/sa/x")));
        assert!(!p.matches(&id("spiffe://cluster.local/ns/prod/sa/x")));
        let p = pat("spiffe://cluster.local/*");
        assert!(p.matches(&id("spiffe://cluster.local/ns/prod/sa/x")));
        assert!(!p.matches(&id("spiffe://other/ns/prod/sa/x")));
        let p = pat("spiffe://cluster.local/ns/demo/sa/*");
        assert!(p.matches(&id("spiffe://cluster.local/ns/demo/sa/x")));
    }

    #[test]
    fn too_short_or_long_patterns_do_not_match() {
        assert!(!pat("spiffe://cluster.local/ns/demo")
            .matches(&id("spiffe://cluster.local/ns/demo/sa/x")));
        assert!(!pat("spiffe://cluster.local/ns/demo/sa/x/*")
            .matches(&id("spiffe://cluster.local/ns/demo/sa/x")));
    }

    #[test]
    fn star_alone_matches_everything() {
        assert!(pat("*").matches(&id("spiffe://x.y/ns/a/sa/b")));
    }

    #[test]
    fn rejects_bad_patterns() {
        for bad in [
            "",
            "**",
            "http://cluster.local/*",
            "spiffe://cluster.local",
            "spiffe://cluster.local/ns/de*/sa/x",
            "spiffe://cluster.local/ns//sa/x",
            "spiffe://cluster.local/ns/A/*",
            "spiffe://cluster.local:1/*",
            "spiffe://cluster.local/*?a",
        ] {
            assert!(bad.parse::<SpiffeIdPattern>().is_err(), "{bad}");
        }
    }

    #[test]
    fn display_and_serde() {
        let p = pat("spiffe://cluster.local/ns/*/sa/client");
        assert_eq!(p.to_string(), "spiffe://cluster.local/ns/*/sa/client");
        let json = serde_json::to_string(&p).unwrap();
        let back: SpiffeIdPattern = serde_json::from_str(&json).unwrap();
        assert_eq!(back, p);
    }
}
