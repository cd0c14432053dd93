//! The key of a cached answer: the route, the request's method, authority, path
//! and query, the caller's credentials unless the route shares entries, and the
//! values of the headers the answer varies by. Fields are length-prefixed bytes,
//! compared whole (never a hash), so no two requests can be made to meet in one key.

use http::header::{HeaderMap, HeaderName, AUTHORIZATION, COOKIE};
use http::Method;

use super::vary::Vary;

/// One answer's place in the cache.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key(Box<[u8]>);

impl Key {
    /// Bytes counted against the cache's bound.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

/// How one route keys its requests.
#[derive(Debug, Clone)]
pub(crate) struct KeyRules {
    /// The route's own fields (service, port, route, sharing), first in every key.
    prefix: Box<[u8]>,
    /// Headers whose values keep callers apart; empty when the route is shared.
    credentials: Box<[HeaderName]>,
}

/// Separates variant keys from primary ones.
const VARIANT: u8 = 1;

/// Appends one field: its length, then its bytes.
fn push(key: &mut Vec<u8>, field: &[u8]) {
    key.extend_from_slice(&(field.len() as u32).to_be_bytes());
    key.extend_from_slice(field);
}

/// Appends every value of `name`, in order, each as a field, after their count.
fn push_values(key: &mut Vec<u8>, headers: &HeaderMap, name: &HeaderName) {
    let values = headers.get_all(name);
    key.extend_from_slice(&(values.iter().count() as u32).to_be_bytes());
    for value in values {
        push(key, value.as_bytes());
    }
}

impl KeyRules {
    /// The rules of route `route` of `service:port`; unless `shared`,
    /// `authorization`, `cookie` and `key_headers` keep callers apart.
    pub(crate) fn new(
        service: &str,
        port: u16,
        route: &str,
        shared: bool,
        key_headers: &[HeaderName],
    ) -> KeyRules {
        let mut prefix = Vec::new();
        push(&mut prefix, service.as_bytes());
        push(&mut prefix, &port.to_be_bytes());
        push(&mut prefix, route.as_bytes());
        prefix.push(u8::from(shared));
        let credentials = if shared {
            Vec::new()
        } else {
            let mut names = vec![AUTHORIZATION, COOKIE];
            names.extend(key_headers.iter().cloned());
            names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
            names.dedup();
            names
        };
        KeyRules {
            prefix: prefix.into(),
            credentials: credentials.into(),
        }
    }

    /// Whether callers' credentials share entries (then none are in the key).
    pub(crate) fn is_shared(&self) -> bool {
        self.credentials.is_empty()
    }

    /// The key of a request before its answer's `Vary` is known. A shared route
    /// keys requests with `authorization` apart from those without, since only
    /// answers marked shareable are stored for them.
    pub(crate) fn primary(
        &self,
        method: &Method,
        authority: &[u8],
        path_and_query: &[u8],
        headers: &HeaderMap,
    ) -> Key {
        let mut key =
            Vec::with_capacity(self.prefix.len() + authority.len() + path_and_query.len() + 32);
        key.extend_from_slice(&self.prefix);
        push(&mut key, method.as_str().as_bytes());
        push(&mut key, authority);
        push(&mut key, path_and_query);
        if self.is_shared() {
            key.push(u8::from(headers.contains_key(AUTHORIZATION)));
        }
        for name in self.credentials.iter() {
            push_values(&mut key, headers, name);
        }
        Key(key.into())
    }

    /// The key of the variant of `primary` this request selects.
    pub(crate) fn variant(primary: &Key, vary: &Vary, headers: &HeaderMap) -> Key {
        let mut key = Vec::with_capacity(primary.len() + 64);
        key.extend_from_slice(&primary.0);
        key.push(VARIANT);
        for name in vary.names() {
            push(&mut key, name.as_str().as_bytes());
            push_values(&mut key, headers, name);
        }
        Key(key.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(fields: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in fields {
            h.append(*n, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn key(rules: &KeyRules, path: &str, fields: &[(&'static str, &str)]) -> Key {
        rules.primary(&Method::GET, b"web:80", path.as_bytes(), &headers(fields))
    }

    #[test]
    fn credentials_keep_callers_apart_unless_shared() {
        let own = KeyRules::new(
            "demo/web",
            80,
            "r",
            false,
            &[HeaderName::from_static("x-api-key")],
        );
        let anon = key(&own, "/a", &[]);
        assert_eq!(anon, key(&own, "/a", &[("accept", "x")]));
        for cred in [
            ("authorization", "Bearer a"),
            ("cookie", "s=1"),
            ("x-api-key", "k"),
        ] {
            assert_ne!(anon, key(&own, "/a", &[cred]), "{cred:?}");
        }
        assert_ne!(
            key(&own, "/a", &[("authorization", "Bearer a")]),
            key(&own, "/a", &[("authorization", "Bearer b")])
        );
        let shared = KeyRules::new("demo/web", 80, "r", true, &[]);
        assert_eq!(
            key(&shared, "/a", &[("cookie", "s=1")]),
            key(&shared, "/a", &[])
        );
        assert_ne!(
            key(&shared, "/a", &[("authorization", "Bearer a")]),
            key(&shared, "/a", &[])
        );
        assert_eq!(
            key(&shared, "/a", &[("authorization", "Bearer a")]),
            key(&shared, "/a", &[("authorization", "Bearer b")])
        );
        // A shared and an own route of one name never meet.
        assert_ne!(
            key(&shared, "/a", &[]),
            key(&KeyRules::new("demo/web", 80, "r", false, &[]), "/a", &[])
        );
    }

    #[test]
    fn fields_cannot_be_shifted_into_each_other() {
        let rules = KeyRules::new("demo/web", 80, "r", false, &[]);
        let a = rules.primary(&Method::GET, b"ab", b"/c", &HeaderMap::new());
        let b = rules.primary(&Method::GET, b"a", b"b/c", &HeaderMap::new());
        assert_ne!(a, b);
        let a = key(&rules, "/a", &[("cookie", "x"), ("cookie", "y")]);
        let b = key(&rules, "/a", &[("cookie", "xy")]);
        assert_ne!(a, b);
        assert_ne!(key(&rules, "/a?x=1", &[]), key(&rules, "/a?x=2", &[]));
        let head = rules.primary(&Method::HEAD, b"web:80", b"/a", &HeaderMap::new());
        assert_ne!(head, key(&rules, "/a", &[]));
    }

    #[test]
    fn variants_differ_by_the_varied_headers_only() {
        let rules = KeyRules::new("demo/web", 80, "r", false, &[]);
        let primary = key(&rules, "/a", &[]);
        let mut vary_headers = HeaderMap::new();
        vary_headers.insert(
            http::header::VARY,
            HeaderValue::from_static("accept-language"),
        );
        let vary = super::super::vary::of(&vary_headers).unwrap();
        let en = KeyRules::variant(&primary, &vary, &headers(&[("accept-language", "en")]));
        let de = KeyRules::variant(&primary, &vary, &headers(&[("accept-language", "de")]));
        let en2 = KeyRules::variant(
            &primary,
            &vary,
            &headers(&[("accept-language", "en"), ("accept", "x")]),
        );
        assert_ne!(en, de);
        assert_eq!(en, en2);
        assert_ne!(en, primary);
    }
}
