//! Who is asking: the bearer token of a request, proven by a [`TokenAuthenticator`]:
//! the YAML source's static tokens, or (in Kubernetes) a TokenReview of a projected
//! ServiceAccount token. Tokens are only ever logged as a short hash.

use super::reply::{self, Body};
use crate::source::{Catalog, Snapshot};
use crate::token::TokenHash;
use http::{header, HeaderMap, Response, StatusCode};
use pillion_api::certs::error_codes;
use pillion_identity::SpiffeId;
use std::future::Future;
use std::pin::Pin;
use tokio::sync::watch;

/// What [`TokenAuthenticator::authenticate`] returns.
pub type AuthFuture<'a> = Pin<Box<dyn Future<Output = Result<SpiffeId, AuthError>> + Send + 'a>>;

/// Why a token proves no identity; the reason goes back to the caller in the 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct AuthError {
    /// What is wrong with the token, never the token itself.
    pub reason: String,
}

impl AuthError {
    /// An error with this reason.
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }
}

/// Turns a bearer token into the SPIFFE id it proves; one per source of identities.
pub trait TokenAuthenticator: Send + Sync + std::fmt::Debug {
    /// The identity `token` proves, or why it proves none.
    fn authenticate<'a>(&'a self, token: &'a str) -> AuthFuture<'a>;

    /// Whether a watch opened with `token` as `identity` may go on under `catalog`
    /// (static tokens can be removed from the source; reviewed tokens stand).
    fn still_valid(&self, _token: &TokenHash, _identity: &SpiffeId, _catalog: &Catalog) -> bool {
        true
    }
}

/// The YAML source's tokens: each workload's token proves its identity.
#[derive(Debug)]
pub struct StaticTokens {
    source: watch::Receiver<Snapshot>,
}

impl StaticTokens {
    /// Tokens of whatever catalog `source` publishes now.
    pub fn new(source: watch::Receiver<Snapshot>) -> Self {
        Self { source }
    }
}

impl TokenAuthenticator for StaticTokens {
    fn authenticate<'a>(&'a self, token: &'a str) -> AuthFuture<'a> {
        let hash = TokenHash::of(token);
        let snapshot = self.source.borrow().clone();
        let found = snapshot
            .catalog
            .workload_for_hash(&hash)
            .map(|w| w.identity.clone());
        Box::pin(async move {
            found.ok_or_else(|| {
                AuthError::new("unknown token: it proves no workload identity known to this agent")
            })
        })
    }

    fn still_valid(&self, token: &TokenHash, identity: &SpiffeId, catalog: &Catalog) -> bool {
        catalog
            .workload_for_hash(token)
            .is_some_and(|w| w.identity == *identity)
    }
}

/// The token of an `Authorization: Bearer <token>` header, if there is one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The identity the request's token proves, or the 401 to answer.
pub async fn authenticate(
    headers: &HeaderMap,
    auth: &dyn TokenAuthenticator,
    endpoint: &'static str,
) -> Result<(SpiffeId, TokenHash), Box<Response<Body>>> {
    let Some(token) = bearer(headers) else {
        tracing::info!(endpoint, "refused: no bearer token");
        return Err(Box::new(reply::error(
            StatusCode::UNAUTHORIZED,
            error_codes::UNAUTHENTICATED,
            "missing credential: send `Authorization: Bearer <token>` with the workload's token",
        )));
    };
    let hash = TokenHash::of(token);
    match auth.authenticate(token).await {
        Ok(identity) => Ok((identity, hash)),
        Err(e) => {
            tracing::info!(endpoint, token_sha256 = %hash.short(), reason = %e, "refused: token proves no identity");
            Err(Box::new(reply::error(
                StatusCode::UNAUTHORIZED,
                error_codes::UNAUTHENTICATED,
                e.reason,
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn reads_bearer_tokens() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  abc "),
        );
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&h), None);
    }
}
