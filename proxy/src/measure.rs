//! Entry points of the benchmark's in-process figures (`pillion-benches --jwt`), not
//! an API: the real per-request code, driven without a network.

use std::collections::BTreeMap;

use http::HeaderMap;
use pillion_api::jwt::JwtPolicy;

use crate::policy::jwt::{unix_now, Authenticator, Checked, ClaimRules};

/// A port's token check with one route's claims, as the inbound path runs it.
pub struct TokenCheck {
    auth: Authenticator,
    claims: ClaimRules,
}

impl TokenCheck {
    /// Compiles `policy` and a route's `claims`.
    pub fn new(
        policy: &JwtPolicy,
        claims: &BTreeMap<String, Vec<String>>,
    ) -> Result<TokenCheck, String> {
        Ok(TokenCheck {
            auth: Authenticator::new(policy).map_err(|e| e.to_string())?,
            claims: ClaimRules::new(claims),
        })
    }

    /// One request's check (strip, find, verify or cache hit, claims, claim
    /// headers); the refusal's reason when it does not pass.
    pub fn check(&self, headers: &mut HeaderMap) -> Result<(), &'static str> {
        let required = true;
        match (self.auth).authenticate(required, &self.claims, headers, unix_now()) {
            Ok(Checked::Done) => Ok(()),
            Ok(Checked::Ask(_)) => Err("the token would be asked about at the endpoint"),
            Err(refusal) => Err(refusal.reason()),
        }
    }
}
