//! Entry points of the benchmark's in-process figures (`pillion-benches --jwt`), not
//! an API: the real per-request code, driven without a network.

use std::collections::BTreeMap;

use http::HeaderMap;
use pillion_api::jwt::JwtPolicy;

use crate::policy::jwt::{unix_now, Authenticator, Checked, ClaimRules, Judged};

/// A port's token check with one route's claims, as the inbound path runs it.
pub struct TokenCheck {
    auth: Authenticator,
    claims: ClaimRules,
    /// What the introspection endpoint answers, at once (the network left out).
    answer: Option<Vec<u8>>,
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
            answer: None,
        })
    }

    /// The same check with an introspection endpoint that answers `answer` at once.
    pub fn answering(mut self, answer: Vec<u8>) -> TokenCheck {
        self.answer = Some(answer);
        self
    }

    /// One request's check (strip, find, verify or cache hit, claims, claim
    /// headers); the refusal's reason when it does not pass.
    pub fn check(&self, headers: &mut HeaderMap) -> Result<(), &'static str> {
        let required = true;
        let now = unix_now();
        match (self.auth).authenticate(required, &self.claims, headers, now) {
            Ok(Checked::Done) => Ok(()),
            Ok(Checked::Ask(ask)) => {
                let Some(answer) = &self.answer else {
                    return Err("the token would be asked about at the endpoint");
                };
                match (self.auth).settle(ask, answer, &self.claims, headers, now) {
                    Ok(()) => Ok(()),
                    Err(Judged::Refused(refusal)) => Err(refusal.reason()),
                    Err(Judged::Unusable(why)) => Err(why),
                }
            }
            Err(refusal) => Err(refusal.reason()),
        }
    }
}
