//! Whether an answer may be stored and for how long it stays fresh (RFC 9111 §3,
//! §4.2), decided from its head alone. Everything the cache cannot be sure of
//! (a status outside the reusable set, `Set-Cookie`, `Vary: *`, a field it cannot
//! read) leaves the answer unstored: a cache that stores too little is slower, one
//! that stores too much serves one caller another's answer.

use std::time::{Duration, SystemTime};

use http::header::{HeaderMap, AGE, DATE, ETAG, EXPIRES, LAST_MODIFIED, SET_COOKIE};
use http::StatusCode;

use super::control::{delta_seconds, Directives};
use super::vary::{self, Vary};

/// What a route allows, compiled from its `cache:`.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// Freshness of a reusable answer that states none.
    pub default_ttl: Option<Duration>,
    /// Ceiling of any freshness.
    pub max_ttl: Duration,
}

/// An answer the cache may keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Storable {
    /// How long it is fresh, counted from its age zero (zero: revalidate each use).
    pub lifetime: Duration,
    /// How old it already was when it arrived (`Age`, and `Date` in the past).
    pub initial_age: Duration,
    /// The request headers its variants differ by.
    pub vary: Vary,
}

/// Why an answer was not stored (a debug log says which).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotStored {
    /// A status the cache does not reuse.
    Status,
    /// `no-store` or `private`.
    Forbidden,
    /// `Cache-Control` or `Vary` could not be read, or `Vary: *`.
    Unreadable,
    /// It sets a cookie.
    SetsCookie,
    /// Asked with credentials and not marked as shareable (RFC 9111 §3.5).
    Authorized,
    /// No freshness stated, no route default, and nothing to revalidate with.
    NoFreshness,
    /// A body over the route's bound, or with trailers.
    TooLarge,
}

/// Statuses reusable by default (RFC 9110 §15.1); 206 and the rest never stored.
fn reusable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Whether an answer with this head may be stored, and its freshness. `authorized`:
/// the request carried credentials that the key does not keep apart (a shared
/// route's `authorization`).
pub(crate) fn storable(
    status: StatusCode,
    headers: &HeaderMap,
    authorized: bool,
    limits: &Limits,
    now: SystemTime,
) -> Result<Storable, NotStored> {
    if !reusable(status) {
        return Err(NotStored::Status);
    }
    let cc = Directives::of(headers);
    if cc.malformed {
        return Err(NotStored::Unreadable);
    }
    if cc.no_store || cc.private {
        return Err(NotStored::Forbidden);
    }
    if headers.contains_key(SET_COOKIE) {
        return Err(NotStored::SetsCookie);
    }
    if authorized && !(cc.public || cc.must_revalidate || cc.s_maxage.is_some()) {
        return Err(NotStored::Authorized);
    }
    let vary = vary::of(headers).ok_or(NotStored::Unreadable)?;
    let date = http_date(headers, DATE).unwrap_or(now);
    let stated = if cc.no_cache {
        Some(Duration::ZERO)
    } else if let Some(s) = cc.s_maxage.or(cc.max_age) {
        Some(Duration::from_secs(s))
    } else if headers.contains_key(EXPIRES) {
        // An Expires that cannot be read means already expired (RFC 9111 §5.3).
        let expires = http_date(headers, EXPIRES).unwrap_or(date);
        Some(expires.duration_since(date).unwrap_or_default())
    } else {
        None
    };
    let lifetime = match (stated, limits.default_ttl) {
        (Some(stated), _) => stated,
        (None, Some(default)) => default,
        (None, None) => return Err(NotStored::NoFreshness),
    }
    .min(limits.max_ttl);
    let age = headers
        .get(AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(delta_seconds)
        .map_or(Duration::ZERO, Duration::from_secs);
    let apparent = now.duration_since(date).unwrap_or_default();
    let initial_age = age.max(apparent);
    let validators = headers.contains_key(ETAG) || headers.contains_key(LAST_MODIFIED);
    if lifetime <= initial_age && !validators {
        return Err(NotStored::NoFreshness);
    }
    Ok(Storable {
        lifetime,
        initial_age,
        vary,
    })
}

/// An HTTP date field, if present and readable.
pub(crate) fn http_date(headers: &HeaderMap, name: http::header::HeaderName) -> Option<SystemTime> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|t| httpdate::parse_http_date(t).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    type Field = (&'static str, &'static str);

    const LIMITS: Limits = Limits {
        default_ttl: None,
        max_ttl: Duration::from_secs(3600),
    };

    fn head(fields: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in fields {
            h.append(*name, HeaderValue::from_str(value).unwrap());
        }
        h
    }

    fn check(status: u16, fields: &[(&'static str, &str)]) -> Result<Storable, NotStored> {
        let now = httpdate::parse_http_date("Mon, 07 Dec 2026 12:00:00 GMT").unwrap();
        storable(
            StatusCode::from_u16(status).unwrap(),
            &head(fields),
            false,
            &LIMITS,
            now,
        )
    }

    #[test]
    fn stated_freshness_wins_in_rfc_order_and_is_capped() {
        let lifetime = |fields| check(200, fields).unwrap().lifetime.as_secs();
        assert_eq!(lifetime(&[("cache-control", "max-age=60")]), 60);
        assert_eq!(lifetime(&[("cache-control", "max-age=60, s-maxage=5")]), 5);
        assert_eq!(lifetime(&[("cache-control", "max-age=99999")]), 3600);
        assert_eq!(
            lifetime(&[
                ("date", "Mon, 07 Dec 2026 12:00:00 GMT"),
                ("expires", "Mon, 07 Dec 2026 12:00:30 GMT")
            ]),
            30
        );
        // max-age beats Expires.
        assert_eq!(
            lifetime(&[
                ("cache-control", "max-age=7"),
                ("expires", "Mon, 07 Dec 2026 13:00:00 GMT")
            ]),
            7
        );
    }

    #[test]
    fn age_and_past_dates_count_against_freshness() {
        let s = check(200, &[("cache-control", "max-age=60"), ("age", "20")]).unwrap();
        assert_eq!(s.initial_age, Duration::from_secs(20));
        let s = check(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("date", "Mon, 07 Dec 2026 11:59:50 GMT"),
            ],
        )
        .unwrap();
        assert_eq!(s.initial_age, Duration::from_secs(10));
        // Already older than its lifetime, and nothing to revalidate with.
        assert_eq!(
            check(200, &[("cache-control", "max-age=10"), ("age", "11")]),
            Err(NotStored::NoFreshness)
        );
    }

    #[test]
    fn what_must_not_be_stored_is_not() {
        use NotStored::*;
        let cases: &[(u16, &[Field], NotStored)] = &[
            (206, &[("cache-control", "max-age=60")], Status),
            (500, &[("cache-control", "max-age=60")], Status),
            (302, &[("cache-control", "max-age=60")], Status),
            (200, &[("cache-control", "no-store, max-age=60")], Forbidden),
            (200, &[("cache-control", "private, max-age=60")], Forbidden),
            (200, &[("cache-control", "max-age=6x")], Unreadable),
            (
                200,
                &[("cache-control", "max-age=60"), ("vary", "*")],
                Unreadable,
            ),
            (
                200,
                &[("cache-control", "max-age=60"), ("set-cookie", "a=b")],
                SetsCookie,
            ),
            (200, &[], NoFreshness),
            (200, &[("cache-control", "no-cache")], NoFreshness),
            (200, &[("expires", "0")], NoFreshness),
        ];
        for (status, fields, why) in cases {
            assert_eq!(check(*status, fields), Err(*why), "{status} {fields:?}");
        }
    }

    #[test]
    fn no_cache_with_a_validator_is_stored_for_revalidation() {
        let s = check(200, &[("cache-control", "no-cache"), ("etag", "\"v1\"")]).unwrap();
        assert_eq!(s.lifetime, Duration::ZERO);
    }

    #[test]
    fn credentials_need_an_answer_marked_shareable() {
        let now = SystemTime::now();
        let ok = |fields: &[(&'static str, &str)]| {
            storable(StatusCode::OK, &head(fields), true, &LIMITS, now).is_ok()
        };
        assert!(!ok(&[("cache-control", "max-age=60")]));
        assert!(ok(&[("cache-control", "public, max-age=60")]));
        assert!(ok(&[("cache-control", "s-maxage=60")]));
        assert!(ok(&[("cache-control", "max-age=60, must-revalidate")]));
    }

    #[test]
    fn a_route_default_applies_only_where_nothing_is_stated() {
        let limits = Limits {
            default_ttl: Some(Duration::from_secs(10)),
            max_ttl: Duration::from_secs(3600),
        };
        let now = SystemTime::now();
        let lifetime = |fields: &[(&'static str, &str)]| {
            storable(StatusCode::OK, &head(fields), false, &limits, now).map(|s| s.lifetime)
        };
        assert_eq!(lifetime(&[]), Ok(Duration::from_secs(10)));
        assert_eq!(
            lifetime(&[("cache-control", "max-age=3")]),
            Ok(Duration::from_secs(3))
        );
        assert_eq!(
            lifetime(&[("cache-control", "no-store")]),
            Err(NotStored::Forbidden)
        );
    }
}
