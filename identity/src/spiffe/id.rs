//! The workload identity `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::error::IdError;
use super::rules::{validate_namespace, validate_service_account, validate_trust_domain};

/// The URI scheme every SPIFFE id starts with.
pub(crate) const SCHEME: &str = "spiffe://";
/// Longest SPIFFE id accepted, in bytes (the SPIFFE spec's URI limit).
pub const MAX_ID_LEN: usize = 2048;

/// A workload's SPIFFE identity, the only name mesh TLS trusts.
///
/// Always of the shape `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`;
/// constructing one validates every part, so holding a `SpiffeId` means it is well formed.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    /// The full URI; the parts below are slices of it, kept as ranges.
    uri: String,
    td_end: usize,
    ns: (usize, usize),
    sa_start: usize,
}

impl SpiffeId {
    /// Builds the id of service account `sa` in namespace `ns` of trust domain `td`.
    pub fn new(td: &str, ns: &str, sa: &str) -> Result<SpiffeId, IdError> {
        validate_trust_domain(td)?;
        validate_namespace(ns)?;
        validate_service_account(sa)?;
        let uri = format!("{SCHEME}{td}/ns/{ns}/sa/{sa}");
        if uri.len() > MAX_ID_LEN {
            return Err(IdError::TooLong {
                len: uri.len(),
                max: MAX_ID_LEN,
            });
        }
        let td_end = SCHEME.len() + td.len();
        let ns_start = td_end + "/ns/".len();
        let ns_end = ns_start + ns.len();
        let sa_start = ns_end + "/sa/".len();
        Ok(SpiffeId {
            uri,
            td_end,
            ns: (ns_start, ns_end),
            sa_start,
        })
    }

    /// Parses a SPIFFE id from its URI form; same as `str::parse`.
    pub fn parse(s: &str) -> Result<SpiffeId, IdError> {
        if s.len() > MAX_ID_LEN {
            return Err(IdError::TooLong {
                len: s.len(),
                max: MAX_ID_LEN,
            });
        }
        let rest = s.strip_prefix(SCHEME).ok_or(IdError::WrongScheme)?;
        if rest.contains('?') {
            return Err(IdError::QueryNotAllowed);
        }
        if rest.contains('#') {
            return Err(IdError::FragmentNotAllowed);
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(IdError::UserInfoNotAllowed);
        }
        if authority.contains(':') {
            return Err(IdError::PortNotAllowed);
        }
        validate_trust_domain(authority)?;
        let segments: Vec<&str> = path.split('/').skip(1).collect();
        match segments.as_slice() {
            ["ns", ns, "sa", sa] => SpiffeId::new(authority, ns, sa),
            _ => Err(IdError::WrongPathShape {
                path: path.to_string(),
            }),
        }
    }

    /// The trust domain, e.g. `cluster.local`: which CA family vouches for this id.
    pub fn trust_domain(&self) -> &str {
        &self.uri[SCHEME.len()..self.td_end]
    }

    /// The Kubernetes namespace of the workload.
    pub fn namespace(&self) -> &str {
        &self.uri[self.ns.0..self.ns.1]
    }

    /// The Kubernetes service account of the workload.
    pub fn service_account(&self) -> &str {
        &self.uri[self.sa_start..]
    }

    /// The full URI form, as it appears in a certificate's URI SAN.
    pub fn as_str(&self) -> &str {
        &self.uri
    }
}

impl FromStr for SpiffeId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SpiffeId::parse(s)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.uri)
    }
}

impl Serialize for SpiffeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.uri)
    }
}

impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        SpiffeId::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_and_round_trip() {
        let id = SpiffeId::new("cluster.local", "demo", "web.frontend").unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "demo");
        assert_eq!(id.service_account(), "web.frontend");
        let s = id.to_string();
        assert_eq!(s, "spiffe://cluster.local/ns/demo/sa/web.frontend");
        assert_eq!(s.parse::<SpiffeId>().unwrap(), id);
    }

    type Check = fn(&IdError) -> bool;

    #[test]
    fn rejects_each_class_with_its_reason() {
        let cases: &[(&str, Check)] = &[
            ("http://cluster.local/ns/a/sa/b", |e| {
                matches!(e, IdError::WrongScheme)
            }),
            ("SPIFFE://cluster.local/ns/a/sa/b", |e| {
                matches!(e, IdError::WrongScheme)
            }),
            ("spiffe:///ns/a/sa/b", |e| {
                matches!(e, IdError::EmptyTrustDomain)
            }),
            ("spiffe://Cluster.local/ns/a/sa/b", |e| {
                matches!(e, IdError::InvalidTrustDomain { .. })
            }),
            ("spiffe://cluster..local/ns/a/sa/b", |e| {
                matches!(e, IdError::InvalidTrustDomain { .. })
            }),
            ("spiffe://cluster.local:8443/ns/a/sa/b", |e| {
                matches!(e, IdError::PortNotAllowed)
            }),
            ("spiffe://user@cluster.local/ns/a/sa/b", |e| {
                matches!(e, IdError::UserInfoNotAllowed)
            }),
            ("spiffe://cluster.local/ns/a/sa/b?x=1", |e| {
                matches!(e, IdError::QueryNotAllowed)
            }),
            ("spiffe://cluster.local/ns/a/sa/b#frag", |e| {
                matches!(e, IdError::FragmentNotAllowed)
            }),
            ("spiffe://cluster.local", |e| {
                matches!(e, IdError::WrongPathShape { .. })
            }),
            ("spiffe://cluster.local/ns/a/sa/b/", |e| {
                matches!(e, IdError::WrongPathShape { .. })
            }),
            ("spiffe://cluster.local/ns/a/sa/b/c", |e| {
                matches!(e, IdError::WrongPathShape { .. })
            }),
            ("spiffe://cluster.local/namespace/a/sa/b", |e| {
                matches!(e, IdError::WrongPathShape { .. })
            }),
            ("spiffe://cluster.local/ns/A/sa/b", |e| {
                matches!(e, IdError::InvalidNamespace { .. })
            }),
            ("spiffe://cluster.local/ns/a.b/sa/b", |e| {
                matches!(e, IdError::InvalidNamespace { .. })
            }),
            ("spiffe://cluster.local/ns//sa/b", |e| {
                matches!(e, IdError::InvalidNamespace { .. })
            }),
            ("spiffe://cluster.local/ns/a/sa/-b", |e| {
                matches!(e, IdError::InvalidServiceAccount { .. })
            }),
            ("spiffe://cluster.local/ns/a/sa/b_c", |e| {
                matches!(e, IdError::InvalidServiceAccount { .. })
            }),
            ("spiffe://cluster.local/ns/a/sa/b%20", |e| {
                matches!(e, IdError::InvalidServiceAccount { .. })
            }),
        ];
        for (input, check) in cases {
            let err = input.parse::<SpiffeId>().unwrap_err();
            assert!(check(&err), "{input}: unexpected error {err:?}");
            assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn rejects_too_long() {
        let long = format!("spiffe://cluster.local/ns/a/sa/{}", "b".repeat(MAX_ID_LEN));
        assert!(matches!(
            long.parse::<SpiffeId>(),
            Err(IdError::TooLong { .. })
        ));
        let ns = "n".repeat(64);
        assert!(matches!(
            SpiffeId::new("cluster.local", &ns, "sa"),
            Err(IdError::InvalidNamespace { .. })
        ));
    }

    #[test]
    fn serde_as_string() {
        let id: SpiffeId = "spiffe://cluster.local/ns/demo/sa/client".parse().unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"spiffe://cluster.local/ns/demo/sa/client\"");
        let back: SpiffeId = serde_json::from_str(&json).unwrap();
        assert_eq!(back, id);
        assert!(serde_json::from_str::<SpiffeId>("\"spiffe://x/ns/a\"").is_err());
    }

    #[test]
    fn orders_by_uri() {
        let a: SpiffeId = "spiffe://a.local/ns/a/sa/a".parse().unwrap();
        let b: SpiffeId = "spiffe://a.local/ns/a/sa/b".parse().unwrap();
        assert!(a < b);
    }
}
