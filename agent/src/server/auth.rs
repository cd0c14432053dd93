//! Who is asking: the bearer token of a request, mapped to a workload of the catalog.

use super::reply::{self, Body};
use crate::source::{Catalog, Workload};
use crate::token::TokenHash;
use http::{header, HeaderMap, Response, StatusCode};
use pillion_api::certs::error_codes;

/// The token of an `Authorization: Bearer <token>` header, if there is one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The workload the request's token proves, or the 401 to answer. Tokens are only
/// ever logged as a short hash.
pub fn authenticate<'c>(
    headers: &HeaderMap,
    catalog: &'c Catalog,
    endpoint: &'static str,
) -> Result<(&'c Workload, TokenHash), Box<Response<Body>>> {
    let Some(token) = bearer(headers) else {
        tracing::info!(endpoint, "refused: no bearer token");
        return Err(Box::new(reply::error(
            StatusCode::UNAUTHORIZED,
            error_codes::UNAUTHENTICATED,
            "missing credential: send `Authorization: Bearer <token>` with the workload's token",
        )));
    };
    let hash = TokenHash::of(token);
    match catalog.workload_for_hash(&hash) {
        Some(w) => Ok((w, hash)),
        None => {
            tracing::info!(endpoint, token_sha256 = %hash.short(), "refused: unknown token");
            Err(Box::new(reply::error(
                StatusCode::UNAUTHORIZED,
                error_codes::UNAUTHENTICATED,
                "unknown token: it proves no workload identity known to this agent",
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
