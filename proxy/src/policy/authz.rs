//! Inbound authorization: may this caller (its verified SPIFFE id, or none for
//! plaintext) use this port or route; and the one header that carries that identity
//! to the application, which only the proxy may set.
//!
//! # Rules
//!
//! - `strict` port, no identity (plaintext): denied.
//! - empty allow list: every authenticated caller is allowed, and plaintext callers
//!   too on a `permissive` port.
//! - non-empty allow list: the caller's identity must match one pattern; plaintext
//!   callers never match.
//! - an inbound route's own non-empty `allow` replaces the port's list for requests
//!   that select that route ([`Authorizer::for_route`]); the port's mode still holds.
//!
//! # Patterns
//!
//! [`pillion_api::identity::IdentityPattern`]: the one grammar, matched over the
//! identity string without parsing or allocating per request.
//!
//! # The identity header
//!
//! [`PEER_IDENTITY_HEADER`] is removed from every incoming request, whatever its
//! case or number of values, and then set only from the verified mTLS identity
//! ([`set_peer_identity`]), so an application can trust it. Build the value once per
//! connection with [`peer_identity_value`].

use http::{HeaderMap, HeaderName, HeaderValue};
use pillion_api::identity::{IdentityPattern, PatternError};
use pillion_api::view::Mode;

/// The header that tells the application who called (the verified SPIFFE id).
pub(crate) const PEER_IDENTITY_HEADER: HeaderName =
    HeaderName::from_static(pillion_api::policy::PEER_IDENTITY_HEADER);

/// An allow list entry or identity that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AuthzError {
    /// An allow pattern that is not well formed.
    #[error(transparent)]
    BadPattern(#[from] PatternError),
    /// An identity that cannot be carried in a header.
    #[error("identity {0:?} cannot be carried in a header")]
    BadIdentity(String),
}

/// Why a request was refused (the HTTP layer answers 403 either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Denied {
    /// The caller has no verified identity and the port or route needs one.
    Unauthenticated,
    /// The caller's identity matches none of the allowed patterns.
    NotAllowed,
}

/// The allow decision of one inbound port (or one inbound route of it); the
/// default is a permissive port open to anyone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Authorizer {
    mode: Mode,
    allow: Box<[IdentityPattern]>,
}

impl Authorizer {
    /// An authorizer for a port's mode and allow patterns.
    pub(crate) fn new(mode: Mode, allow: &[String]) -> Result<Authorizer, AuthzError> {
        Ok(Authorizer {
            mode,
            allow: allow
                .iter()
                .map(|p| IdentityPattern::parse(p))
                .collect::<Result<_, _>>()
                .map_err(AuthzError::BadPattern)?,
        })
    }

    /// The authorizer for an inbound route of this port: the route's own allow list
    /// when it has one, the port's otherwise; the port's mode either way.
    pub(crate) fn for_route(&self, route_allow: &[String]) -> Result<Authorizer, AuthzError> {
        if route_allow.is_empty() {
            return Ok(self.clone());
        }
        Authorizer::new(self.mode, route_allow)
    }

    /// An authorizer that admits nobody: the fail-closed stand-in for an allow list
    /// that cannot be parsed (the agent validates, so this is a safety net).
    pub(crate) fn deny_all() -> Authorizer {
        Authorizer {
            mode: Mode::Strict,
            allow: Box::new([IdentityPattern::nobody()]),
        }
    }

    /// Whether plaintext is accepted where this authorizer applies.
    pub(crate) fn mode(&self) -> Mode {
        self.mode
    }

    /// Decides for a caller: its verified identity, or `None` for plaintext.
    pub(crate) fn check(&self, peer: Option<&str>) -> Result<(), Denied> {
        match peer {
            None if self.mode == Mode::Strict || !self.allow.is_empty() => {
                Err(Denied::Unauthenticated)
            }
            None => Ok(()),
            Some(_) if self.allow.is_empty() => Ok(()),
            Some(id) if self.allow.iter().any(|p| p.matches(id)) => Ok(()),
            Some(_) => Err(Denied::NotAllowed),
        }
    }
}

/// The header value for a verified identity; build it once per connection.
pub(crate) fn peer_identity_value(identity: &str) -> Result<HeaderValue, AuthzError> {
    HeaderValue::from_str(identity).map_err(|_| AuthzError::BadIdentity(identity.to_string()))
}

/// Removes every caller-supplied [`PEER_IDENTITY_HEADER`] and sets it to the verified
/// identity, if any. Call it on every inbound request (outbound ones lose it with
/// the rest of the proxy's own headers, so an application cannot forward a forged
/// value).
pub(crate) fn set_peer_identity(headers: &mut HeaderMap, verified: Option<&HeaderValue>) {
    headers.remove(&PEER_IDENTITY_HEADER);
    if let Some(value) = verified {
        headers.insert(PEER_IDENTITY_HEADER, value.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pillion_api::view::InboundPolicy;
    use std::collections::BTreeMap;

    const CLIENT: &str = "spiffe://cluster.local/ns/demo/sa/client";

    fn authorizer(mode: Mode, allow: &[&str]) -> Authorizer {
        let allow: Vec<String> = allow.iter().map(|s| s.to_string()).collect();
        Authorizer::new(mode, &allow).unwrap()
    }

    #[test]
    fn decisions_follow_mode_and_allow_list() {
        use Mode::{Permissive, Strict};
        let demo = "spiffe://cluster.local/ns/demo/*";
        let other = "spiffe://cluster.local/ns/other/sa/x";
        type Case<'a> = (Mode, &'a [&'a str], Option<&'a str>, Result<(), Denied>);
        let cases: [Case<'_>; 8] = [
            (Permissive, &[], None, Ok(())),
            (Permissive, &[], Some(CLIENT), Ok(())),
            (Strict, &[], None, Err(Denied::Unauthenticated)),
            (Strict, &[], Some(CLIENT), Ok(())),
            (Permissive, &[demo], None, Err(Denied::Unauthenticated)),
            (Permissive, &[demo], Some(CLIENT), Ok(())),
            (Strict, &[demo], Some(other), Err(Denied::NotAllowed)),
            (Strict, &[other, demo], Some(CLIENT), Ok(())),
        ];
        for (mode, allow, peer, want) in cases {
            assert_eq!(
                authorizer(mode, allow).check(peer),
                want,
                "{mode:?} {allow:?} {peer:?}"
            );
        }
    }

    #[test]
    fn routes_narrow_the_port_list_and_keep_the_mode() {
        let port = authorizer(Mode::Strict, &["spiffe://cluster.local/*"]);
        let admin = port
            .for_route(&["spiffe://cluster.local/ns/ops/*".to_string()])
            .unwrap();
        assert_eq!(port.check(Some(CLIENT)), Ok(()));
        assert_eq!(admin.check(Some(CLIENT)), Err(Denied::NotAllowed));
        assert_eq!(
            admin.check(Some("spiffe://cluster.local/ns/ops/sa/a")),
            Ok(())
        );
        assert_eq!(admin.check(None), Err(Denied::Unauthenticated));
        assert_eq!(port.for_route(&[]).unwrap(), port);
    }

    #[test]
    fn port_authorizers_come_from_the_inbound_policy() {
        let inbound = InboundPolicy {
            default_mode: Mode::Permissive,
            ports: BTreeMap::from([(
                7000,
                pillion_api::view::PortPolicy {
                    mode: Mode::Strict,
                    allow: vec!["spiffe://cluster.local/ns/demo/*".into()],
                    ..Default::default()
                },
            )]),
        };
        let strict = {
            let (mode, allow) = inbound.for_port(7000);
            Authorizer::new(mode, allow).unwrap()
        };
        assert_eq!(strict.check(Some(CLIENT)), Ok(()));
        assert_eq!(strict.check(None), Err(Denied::Unauthenticated));
        let open = {
            let (mode, allow) = inbound.for_port(8080);
            Authorizer::new(mode, allow).unwrap()
        };
        assert_eq!(open.check(None), Ok(()));
    }

    #[test]
    fn forged_identity_headers_are_stripped_and_replaced() {
        let mut headers = HeaderMap::new();
        headers.append(
            "Pillion-Peer-Identity",
            HeaderValue::from_static("spiffe://evil/ns/a/sa/b"),
        );
        headers.append(
            "pillion-peer-identity",
            HeaderValue::from_static("spiffe://evil/ns/c/sa/d"),
        );
        headers.append("x-other", HeaderValue::from_static("kept"));
        let verified = peer_identity_value(CLIENT).unwrap();
        set_peer_identity(&mut headers, Some(&verified));
        let values: Vec<_> = headers.get_all(&PEER_IDENTITY_HEADER).iter().collect();
        assert_eq!(values, [&verified]);
        assert_eq!(headers.get("x-other").unwrap(), "kept");

        set_peer_identity(&mut headers, None);
        assert!(
            headers.get(&PEER_IDENTITY_HEADER).is_none(),
            "plaintext: no identity"
        );
        assert_eq!(PEER_IDENTITY_HEADER.as_str(), "pillion-peer-identity");
        assert!(peer_identity_value("bad\nid").is_err());
    }

    #[test]
    fn deny_all_admits_nobody() {
        let a = Authorizer::deny_all();
        assert_eq!(a.check(None), Err(Denied::Unauthenticated));
        assert_eq!(a.check(Some(CLIENT)), Err(Denied::NotAllowed));
        assert_eq!(a.check(Some("spiffe:///x")), Err(Denied::NotAllowed));
    }
}
