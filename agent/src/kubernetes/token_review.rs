//! Proves a proxy's identity in Kubernetes: its bearer token is a projected
//! ServiceAccount token with audience `pillion`, checked by the API server with a
//! TokenReview. `system:serviceaccount:<ns>:<sa>` becomes
//! `spiffe://<td>/ns/<ns>/sa/<sa>`.
//!
//! Positive answers are cached for a short while (at most [`MAX_CACHE_TTL`]), keyed
//! by the token's SHA-256, so a proxy's certificate request and watch cost one
//! review; refusals are never cached, so a fixed problem is seen at once.

use crate::server::auth::{AuthError, AuthFuture, TokenAuthenticator};
use crate::token::TokenHash;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::PostParams;
use kube::{Api, Client};
use pillion_identity::SpiffeId;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The audience every proxy token is minted for (the injector's projected volume).
pub const AUDIENCE: &str = pillion_inject::config::TOKEN_AUDIENCE;
/// Longest a positive review is trusted without asking again.
pub const MAX_CACHE_TTL: Duration = Duration::from_secs(60);
/// Cached reviews kept at most; past it, expired ones go, then all of them.
const MAX_CACHE_ENTRIES: usize = 4096;
/// Prefix of a ServiceAccount's user name.
const SA_PREFIX: &str = "system:serviceaccount:";

/// Checks tokens with the API server's TokenReview.
pub struct TokenReviewer {
    client: Client,
    trust_domain: String,
    ttl: Duration,
    cache: Mutex<HashMap<TokenHash, (SpiffeId, Instant)>>,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("trust_domain", &self.trust_domain)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl TokenReviewer {
    /// A reviewer asking through `client`; `ttl` is capped at [`MAX_CACHE_TTL`].
    pub fn new(client: Client, trust_domain: &str, ttl: Duration) -> Self {
        Self {
            client,
            trust_domain: trust_domain.to_string(),
            ttl: ttl.min(MAX_CACHE_TTL),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The identity `token` proves, from the cache or a fresh TokenReview.
    pub async fn review(&self, token: &str) -> Result<SpiffeId, AuthError> {
        let hash = TokenHash::of(token);
        if let Some(id) = self.cached(&hash) {
            return Ok(id);
        }
        let request = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![AUDIENCE.to_string()]),
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &request)
            .await
            .map_err(|e| {
                tracing::warn!(token_sha256 = %hash.short(), error = %e, "TokenReview failed");
                AuthError::new(format!(
                    "the token could not be checked with the Kubernetes API (TokenReview failed: {e})"
                ))
            })?;
        let id = self.identity_of(&answer)?;
        self.remember(hash, id.clone());
        Ok(id)
    }

    /// Reads a TokenReview answer: authenticated, for our audience, a ServiceAccount.
    pub fn identity_of(&self, answer: &TokenReview) -> Result<SpiffeId, AuthError> {
        let Some(status) = &answer.status else {
            return Err(AuthError::new("the TokenReview came back without a status"));
        };
        if status.authenticated != Some(true) {
            let why = status
                .error
                .as_deref()
                .filter(|e| !e.is_empty())
                .unwrap_or("no reason given");
            return Err(AuthError::new(format!(
                "the Kubernetes API did not authenticate the token: {why}"
            )));
        }
        let audiences = status.audiences.as_deref().unwrap_or_default();
        if !audiences.iter().any(|a| a == AUDIENCE) {
            return Err(AuthError::new(format!(
                "the token is not for audience {AUDIENCE:?} (it is for {audiences:?}); \
                 mount a projected ServiceAccount token with audience {AUDIENCE:?}"
            )));
        }
        let username = status
            .user
            .as_ref()
            .and_then(|u| u.username.as_deref())
            .unwrap_or("");
        let Some((ns, sa)) = username
            .strip_prefix(SA_PREFIX)
            .and_then(|rest| rest.split_once(':'))
        else {
            return Err(AuthError::new(format!(
                "the token belongs to {username:?}, not to a ServiceAccount"
            )));
        };
        SpiffeId::new(&self.trust_domain, ns, sa).map_err(|e| {
            AuthError::new(format!(
                "ServiceAccount {ns}/{sa} cannot form a SPIFFE id: {e}"
            ))
        })
    }

    fn cached(&self, hash: &TokenHash) -> Option<SpiffeId> {
        let cache = self.cache.lock().ok()?;
        let (id, at) = cache.get(hash)?;
        (at.elapsed() < self.ttl).then(|| id.clone())
    }

    fn remember(&self, hash: TokenHash, id: SpiffeId) {
        if self.ttl.is_zero() {
            return;
        }
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        if cache.len() >= MAX_CACHE_ENTRIES {
            let ttl = self.ttl;
            cache.retain(|_, (_, at)| at.elapsed() < ttl);
            if cache.len() >= MAX_CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(hash, (id, Instant::now()));
    }
}

impl TokenAuthenticator for TokenReviewer {
    fn authenticate<'a>(&'a self, token: &'a str) -> AuthFuture<'a> {
        Box::pin(self.review(token))
    }
}
