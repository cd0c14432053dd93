//! Which host a request at the gateway is for, read once and strictly: the
//! authority of the target (`:authority`, or an absolute-form target's) or else the
//! `Host` field; both present must agree. Lowercase, without port or trailing dot,
//! and only the characters a DNS name or a bracketed IPv6 literal can hold, so the
//! name the route, the certificate check and a redirect read is one and the same.

use std::borrow::Cow;

use http::header::HOST;
use http::request::Parts;

use crate::http::errors::HttpError;

/// The request's host, normalized (see the module docs); 400 when it has none, two
/// that differ, or one no DNS name or IP literal could be.
pub(crate) fn request_host(parts: &Parts) -> Result<Cow<'_, str>, HttpError> {
    let from_header = match parts.headers.get(HOST) {
        Some(v) => Some(v.to_str().map_err(|_| bad())?),
        None => None,
    };
    let raw = match (parts.uri.authority().map(|a| a.as_str()), from_header) {
        (Some(a), Some(h)) if !a.eq_ignore_ascii_case(h) => {
            return Err(HttpError::BadRequest(
                "Host differs from the target's authority",
            ))
        }
        (Some(a), _) => a,
        (None, Some(h)) => h,
        (None, None) => return Err(HttpError::BadRequest("the request names no host")),
    };
    normalize(raw).ok_or_else(bad)
}

fn bad() -> HttpError {
    HttpError::BadRequest("the host is not a DNS name or an IP address")
}

/// `raw` without its port and trailing dot, lowercase; `None` if it is not a
/// name or IP literal.
fn normalize(raw: &str) -> Option<Cow<'_, str>> {
    let host = if raw.starts_with('[') {
        let end = raw.find(']')?;
        let rest = &raw[end + 1..];
        if !(rest.is_empty() || port_ok(rest)) {
            return None;
        }
        // An IPv6 address, nothing else (RFC 3986's IPvFuture is not served).
        if raw[1..end].parse::<std::net::Ipv6Addr>().is_err() {
            return None;
        }
        &raw[..=end]
    } else {
        let name = match raw.rfind(':') {
            Some(i) if port_ok(&raw[i..]) => &raw[..i],
            Some(_) => return None,
            None => raw,
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        let ok = !name.is_empty()
            && name.len() <= pillion_api::gateway::MAX_HOSTNAME_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            && !name.split('.').any(str::is_empty);
        if !ok {
            return None;
        }
        name
    };
    Some(lowercase(host))
}

/// `name` in lowercase, copied only when it has an uppercase letter (an SNI or a
/// host is nearly always lowercase already).
pub(crate) fn lowercase(name: &str) -> Cow<'_, str> {
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

/// `:` and 1 to 5 digits.
fn port_ok(s: &str) -> bool {
    s.strip_prefix(':')
        .is_some_and(|p| (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Version};

    fn parts(uri: &str, host: Option<&str>) -> Parts {
        let mut builder = Request::builder().uri(uri).version(Version::HTTP_11);
        if let Some(h) = host {
            builder = builder.header(HOST, h);
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn the_host_is_read_once_normalized() {
        for (uri, host, want) in [
            ("/", Some("shop.test"), "shop.test"),
            ("/", Some("Shop.TEST:8443"), "shop.test"),
            ("/", Some("shop.test."), "shop.test"),
            ("https://shop.test/x", None, "shop.test"),
            (
                "https://shop.test:443/x",
                Some("SHOP.test:443"),
                "shop.test",
            ),
            ("/", Some("[2001:2::1]:443"), "[2001:2::1]"),
            ("/", Some("198.18.0.1"), "198.18.0.1"),
        ] {
            let p = parts(uri, host);
            assert_eq!(request_host(&p).unwrap(), want, "{uri} {host:?}");
        }
    }

    #[test]
    fn hosts_that_cannot_be_names_are_refused() {
        for (uri, host) in [
            ("/", None),
            ("https://a.test/", Some("b.test")),
            ("/", Some("evil.test/x")),
            ("/", Some("a..test")),
            ("/", Some(".")),
            ("/", Some("a.test:")),
            ("/", Some("a.test:123456")),
            ("/", Some("a.test:x")),
            ("/", Some("[zz::1]")),
            ("/", Some("[..233333333333::1]")),
            ("/", Some("[::ffff:1.2.3]")),
            ("/", Some("[::1]x")),
            ("/", Some("a_b.test")),
            ("/", Some("a test")),
        ] {
            let p = parts(uri, host);
            assert!(request_host(&p).is_err(), "{uri} {host:?}");
        }
    }
}
