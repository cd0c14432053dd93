//! Response caching on a client-side route (RFC 9111 for a shared cache), as pure
//! decisions over `http` types: which requests may be answered from the cache
//! ([`RouteCache::ask`]), which answers may be kept and for how long
//! ([`freshness::storable`]), what keys them ([`key`]), what a kept answer looks
//! like when it is served again ([`answer`]) and how a `304` refreshes it
//! ([`refresh`]). The store they share is [`store::Store`].
//!
//! A `HEAD` is answered from a fresh `GET` entry's head, and otherwise sent on.
//!
//! Fail closed: a request the cache does not understand (a body, a range, a
//! precondition other than `If-None-Match`/`If-Modified-Since`) goes upstream
//! untouched and its answer is not kept.

pub(crate) mod control;
pub(crate) mod freshness;
pub(crate) mod key;
pub(crate) mod store;
pub(crate) mod vary;

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{
    HeaderMap, HeaderName, HeaderValue, AGE, CONTENT_LENGTH, ETAG, HOST, IF_MATCH,
    IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE, LAST_MODIFIED, RANGE,
    TRANSFER_ENCODING,
};
use http::request::Parts;
use http::{Method, StatusCode};
use pillion_api::cache::ResponseCache;

use control::Directives;
use freshness::{http_date, Limits};
use key::{Key, KeyRules};
use store::{Store, Stored};

/// The header that tells the caller what the cache did.
pub(crate) const CACHE_HEADER: &str = "pillion-cache";

/// One route's cache, compiled.
#[derive(Debug)]
pub(crate) struct RouteCache {
    /// How requests are keyed.
    pub rules: KeyRules,
    /// Freshness bounds.
    pub limits: Limits,
    /// Largest body kept.
    pub max_body_bytes: u64,
    /// The proxy's store.
    pub store: Arc<Store>,
}

/// What the cache may do with one request.
#[derive(Debug)]
pub(crate) enum Ask {
    /// Nothing: forward it untouched, keep nothing.
    Bypass,
    /// Look it up under `primary`.
    Lookup(Lookup),
}

/// A request the cache may answer.
#[derive(Debug)]
pub(crate) struct Lookup {
    /// Its key before `Vary`.
    pub primary: Key,
    /// What the request says about reuse (`no-cache`, `max-age`, `min-fresh`).
    pub wants: Directives,
    /// Whether it carries credentials the key does not keep apart.
    pub authorized: bool,
    /// A `HEAD`: answered from a fresh `GET` entry's head, never stored, never
    /// waited on.
    pub head: bool,
}

impl RouteCache {
    /// A route's cache over the proxy's store.
    pub(crate) fn new(
        policy: &ResponseCache,
        service: &str,
        port: u16,
        route: &str,
        store: Arc<Store>,
    ) -> Result<RouteCache, http::header::InvalidHeaderName> {
        let key_headers = policy
            .key_headers
            .iter()
            .map(|n| HeaderName::from_bytes(n.as_bytes()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RouteCache {
            rules: KeyRules::new(service, port, route, policy.shared, &key_headers),
            limits: Limits {
                default_ttl: policy.default_ttl,
                max_ttl: policy.max_ttl,
            },
            max_body_bytes: policy.max_body_bytes,
            store,
        })
    }

    /// Whether this request may be answered from the cache, and under what key.
    /// `has_body`: the request declared a body.
    pub(crate) fn ask(&self, parts: &Parts, has_body: bool) -> Ask {
        let headers = &parts.headers;
        let head = parts.method == Method::HEAD;
        if (parts.method != Method::GET && !head)
            || has_body
            || headers.contains_key(TRANSFER_ENCODING)
            || [RANGE, IF_MATCH, IF_UNMODIFIED_SINCE, IF_RANGE]
                .iter()
                .any(|h| headers.contains_key(h))
            || !self.store.is_on()
        {
            return Ask::Bypass;
        }
        let wants = Directives::of(headers);
        if wants.no_store || wants.malformed {
            return Ask::Bypass;
        }
        let authority = match parts.uri.authority() {
            Some(a) => a.as_str().as_bytes(),
            None => headers.get(HOST).map_or(&[][..], HeaderValue::as_bytes),
        };
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        Ask::Lookup(Lookup {
            // A HEAD looks for the GET's entry (RFC 9111 §4).
            primary: self
                .rules
                .primary(&Method::GET, authority, path.as_bytes(), headers),
            wants,
            authorized: self.rules.is_shared() && headers.contains_key(http::header::AUTHORIZATION),
            head,
        })
    }
}

impl Lookup {
    /// Whether `stored` may answer this request without asking the origin.
    pub(crate) fn reuses(&self, stored: &Stored, now: Instant) -> bool {
        if self.wants.no_cache || !stored.is_fresh(now) {
            return false;
        }
        let age = stored.age(now);
        let max_age_ok = self
            .wants
            .max_age
            .is_none_or(|max| age <= Duration::from_secs(max));
        let min_fresh_ok = self.wants.min_fresh.is_none_or(|min| {
            stored.freshness.lifetime.saturating_sub(age) >= Duration::from_secs(min)
        });
        max_age_ok && min_fresh_ok
    }
}

/// The caller's preconditions this cache answers itself, removed from a request
/// it forwards (so the origin sends a whole answer to keep).
pub(crate) const OWN_PRECONDITIONS: [HeaderName; 2] = [IF_NONE_MATCH, IF_MODIFIED_SINCE];

/// The validators that ask the origin whether `stored` is still current.
pub(crate) fn validators(stored: &Stored, headers: &mut HeaderMap) {
    if let Some(etag) = stored.headers.get(ETAG) {
        headers.insert(IF_NONE_MATCH, etag.clone());
    }
    if let Some(modified) = stored.headers.get(LAST_MODIFIED) {
        headers.insert(IF_MODIFIED_SINCE, modified.clone());
    }
}

/// Whether the caller's `If-None-Match` / `If-Modified-Since` hold for `stored`,
/// so it is answered `304` (RFC 9110 §13.2.2: `If-None-Match` first, weakly).
pub(crate) fn not_modified(request: &HeaderMap, stored: &Stored) -> bool {
    if stored.status != StatusCode::OK {
        return false;
    }
    if request.contains_key(IF_NONE_MATCH) {
        let Some(etag) = stored.headers.get(ETAG).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let opaque = |tag: &str| tag.trim().trim_start_matches("W/").to_string();
        let ours = opaque(etag);
        return request.get_all(IF_NONE_MATCH).iter().any(|v| {
            v.to_str().is_ok_and(|list| {
                list.split(',')
                    .any(|t| t.trim() == "*" || opaque(t) == ours)
            })
        });
    }
    match (
        http_date(request, IF_MODIFIED_SINCE),
        http_date(&stored.headers, LAST_MODIFIED),
    ) {
        (Some(since), Some(modified)) => modified <= since,
        _ => false,
    }
}

/// The head of `stored` as served now: its fields with `Age` set, or the fields a
/// `304` keeps when `not_modified`.
pub(crate) fn answer(stored: &Stored, now: Instant, not_modified: bool) -> (StatusCode, HeaderMap) {
    let mut headers = stored.headers.clone();
    headers.insert(AGE, HeaderValue::from(stored.age(now).as_secs()));
    if not_modified {
        headers.remove(CONTENT_LENGTH);
        (StatusCode::NOT_MODIFIED, headers)
    } else {
        (stored.status, headers)
    }
}

/// A copy of `headers` that owns its bytes: parsed values share the connection's
/// read buffer, which a kept answer must not hold on to.
pub(crate) fn detached(headers: &HeaderMap) -> HeaderMap {
    let mut own = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if let Ok(mut copy) = HeaderValue::from_bytes(value.as_bytes()) {
            copy.set_sensitive(value.is_sensitive());
            own.append(name.clone(), copy);
        }
    }
    own
}

/// `stored`'s fields updated by the origin's `304` (RFC 9111 §3.2): each field the
/// `304` carries replaces the stored one, except those that describe the body.
pub(crate) fn refresh(stored: &HeaderMap, not_modified: &HeaderMap) -> HeaderMap {
    let mut headers = stored.clone();
    for name in not_modified.keys() {
        if *name == CONTENT_LENGTH
            || *name == TRANSFER_ENCODING
            || *name == http::header::CONTENT_ENCODING
        {
            continue;
        }
        headers.remove(name);
        for value in not_modified.get_all(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers
}

#[cfg(test)]
mod tests;
