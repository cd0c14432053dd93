//! Character and length rules for each part of a SPIFFE id.

use super::error::IdError;

/// Longest namespace (Kubernetes DNS-1123 label).
const MAX_NAMESPACE_LEN: usize = 63;
/// Longest service account (Kubernetes DNS-1123 subdomain).
const MAX_SERVICE_ACCOUNT_LEN: usize = 253;

/// Checks a trust domain by the one rule of [`pillion_api::identity::trust_domain_problem`].
pub fn validate_trust_domain(td: &str) -> Result<(), IdError> {
    if td.is_empty() {
        return Err(IdError::EmptyTrustDomain);
    }
    match pillion_api::identity::trust_domain_problem(td) {
        None => Ok(()),
        Some(reason) => Err(IdError::InvalidTrustDomain {
            trust_domain: td.to_string(),
            reason,
        }),
    }
}

/// Checks a namespace: a DNS-1123 label (lowercase alphanumerics and `-`,
/// starting and ending alphanumeric, at most 63 bytes).
pub(crate) fn validate_namespace(ns: &str) -> Result<(), IdError> {
    dns1123(ns, MAX_NAMESPACE_LEN, false).map_err(|reason| IdError::InvalidNamespace {
        namespace: ns.to_string(),
        reason,
    })
}

/// Checks a service account: a DNS-1123 subdomain (DNS-1123 labels joined by
/// `.`, at most 253 bytes).
pub(crate) fn validate_service_account(sa: &str) -> Result<(), IdError> {
    dns1123(sa, MAX_SERVICE_ACCOUNT_LEN, true).map_err(|reason| IdError::InvalidServiceAccount {
        service_account: sa.to_string(),
        reason,
    })
}

fn dns1123(s: &str, max: usize, dots: bool) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("empty");
    }
    if s.len() > max {
        return Err(if dots {
            "longer than 253 bytes"
        } else {
            "longer than 63 bytes"
        });
    }
    let labels: Vec<&str> = if dots {
        s.split('.').collect()
    } else {
        vec![s]
    };
    for label in labels {
        if label.is_empty() {
            return Err("empty label (leading, trailing or doubled '.')");
        }
        if label.len() > 63 {
            return Err("a label is longer than 63 bytes");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(if dots {
                "only lowercase letters, digits, '-' and '.' are allowed"
            } else {
                "only lowercase letters, digits and '-' are allowed"
            });
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("must start and end with a letter or digit");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_domains() {
        assert!(validate_trust_domain("cluster.local").is_ok());
        assert!(validate_trust_domain("my_td-1.example").is_ok());
        assert_eq!(validate_trust_domain(""), Err(IdError::EmptyTrustDomain));
        assert!(validate_trust_domain(".local").is_err());
        assert!(validate_trust_domain("local.").is_err());
        assert!(validate_trust_domain("UPPER").is_err());
        assert!(validate_trust_domain(&"a".repeat(64)).is_err());
        let long = vec!["a".repeat(60); 5].join(".");
        assert!(validate_trust_domain(&long).is_err());
    }

    #[test]
    fn namespaces_and_service_accounts() {
        assert!(validate_namespace("kube-system").is_ok());
        assert!(validate_namespace("a.b").is_err());
        assert!(validate_namespace("a-").is_err());
        assert!(validate_service_account("a.b-c.d").is_ok());
        assert!(validate_service_account("a..b").is_err());
        assert!(validate_service_account(&"a".repeat(64)).is_err());
        let long = vec!["a".repeat(63); 4].join(".");
        assert!(validate_service_account(&long).is_err());
    }
}
