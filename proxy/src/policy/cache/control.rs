//! `Cache-Control` (RFC 9111 §5.2), read from requests and responses alike: the
//! directives the cache acts on, and whether the header could be read at all. A
//! field that cannot be read makes a response unstorable, never fresher.

use std::borrow::Cow;

use http::header::{HeaderMap, CACHE_CONTROL, PRAGMA};

/// Delta-seconds above this are read as this (RFC 9111 §1.2.2).
const MAX_DELTA_SECONDS: u64 = 1 << 31;

/// The directives of one message's `Cache-Control` fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Directives {
    /// `no-store`: neither stored nor (for a request) answered from the cache.
    pub no_store: bool,
    /// `no-cache` (qualified or not; a request's `Pragma: no-cache` too): reused
    /// only after the origin confirmed it.
    pub no_cache: bool,
    /// `private` (qualified or not): for one user's cache, not this one.
    pub private: bool,
    /// `public`: storable even for a request with `authorization`.
    pub public: bool,
    /// `must-revalidate` or `proxy-revalidate`.
    pub must_revalidate: bool,
    /// `max-age`, seconds.
    pub max_age: Option<u64>,
    /// `s-maxage`, seconds (responses; shared caches prefer it).
    pub s_maxage: Option<u64>,
    /// `min-fresh`, seconds (requests).
    pub min_fresh: Option<u64>,
    /// A directive the cache needs had a value it could not read, or a field
    /// was not visible ASCII.
    pub malformed: bool,
}

impl Directives {
    /// The directives of every `Cache-Control` field of `headers`; a request's
    /// `Pragma: no-cache` counts when it has no `Cache-Control` (RFC 9111 §5.4).
    pub(crate) fn of(headers: &HeaderMap) -> Directives {
        let mut d = Directives::default();
        let mut any = false;
        for value in headers.get_all(CACHE_CONTROL) {
            any = true;
            match value.to_str() {
                Ok(text) => d.read(text),
                Err(_) => d.malformed = true,
            }
        }
        if !any {
            let pragma = headers.get_all(PRAGMA).iter().any(|v| {
                v.to_str().is_ok_and(|t| {
                    t.split(',')
                        .any(|p| p.trim().eq_ignore_ascii_case("no-cache"))
                })
            });
            d.no_cache |= pragma;
        }
        d
    }

    /// Reads one field's comma-separated directives.
    fn read(&mut self, text: &str) {
        let mut malformed = false;
        let clean = each_directive(text, |name, value| {
            let seconds = |slot: &mut Option<u64>, malformed: &mut bool| {
                match value.as_deref().and_then(delta_seconds) {
                    // Two different values for one directive: neither is believed.
                    Some(s) if slot.is_none_or(|old| old == s) => *slot = Some(s),
                    _ => *malformed = true,
                }
            };
            let is = |known: &str| name.eq_ignore_ascii_case(known);
            if is("no-store") {
                self.no_store = true;
            } else if is("no-cache") {
                self.no_cache = true;
            } else if is("private") {
                self.private = true;
            } else if is("public") {
                self.public = true;
            } else if is("must-revalidate") || is("proxy-revalidate") {
                self.must_revalidate = true;
            } else if is("max-age") {
                seconds(&mut self.max_age, &mut malformed);
            } else if is("s-maxage") {
                seconds(&mut self.s_maxage, &mut malformed);
            } else if is("min-fresh") {
                seconds(&mut self.min_fresh, &mut malformed);
            }
        });
        self.malformed |= malformed || !clean;
    }
}

/// `1*DIGIT`, clamped; anything else is `None`.
pub(crate) fn delta_seconds(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(
        text.parse::<u64>()
            .unwrap_or(MAX_DELTA_SECONDS)
            .min(MAX_DELTA_SECONDS),
    )
}

/// Calls `each(name, value)` for every directive of one field, the value unquoted
/// (borrowed from `text` unless it had escapes); `false` when some directive
/// could not be split (an open quote, an empty name, more after a value), which
/// the caller treats as a field it cannot read.
fn each_directive(text: &str, mut each: impl FnMut(&str, Option<Cow<'_, str>>)) -> bool {
    let b = text.as_bytes();
    let space = |c: u8| c == b' ' || c == b'\t';
    let mut clean = true;
    let mut i = 0;
    loop {
        while i < b.len() && (space(b[i]) || b[i] == b',') {
            i += 1;
        }
        if i >= b.len() {
            return clean;
        }
        let start = i;
        while i < b.len() && !matches!(b[i], b'=' | b',' | b' ' | b'\t') {
            i += 1;
        }
        let name = &text[start..i];
        while i < b.len() && space(b[i]) {
            i += 1;
        }
        let mut value = None;
        if i < b.len() && b[i] == b'=' {
            i += 1;
            if i < b.len() && b[i] == b'"' {
                i += 1;
                let from = i;
                let mut escaped = false;
                loop {
                    match b.get(i) {
                        None => return false,
                        Some(b'\\') => {
                            escaped = true;
                            i += 2;
                        }
                        Some(b'"') => break,
                        Some(_) => i += 1,
                    }
                }
                let raw = &text[from..i];
                i += 1;
                value = Some(if escaped {
                    Cow::Owned(unescape(raw))
                } else {
                    Cow::Borrowed(raw)
                });
            } else {
                let from = i;
                while i < b.len() && !matches!(b[i], b',' | b' ' | b'\t') {
                    i += 1;
                }
                value = Some(Cow::Borrowed(&text[from..i]));
            }
        }
        while i < b.len() && space(b[i]) {
            i += 1;
        }
        // Anything but a comma or the end after a directive is not one we can read.
        if name.is_empty() || (i < b.len() && b[i] != b',') {
            clean = false;
            while i < b.len() && b[i] != b',' {
                i += 1;
            }
        } else {
            each(name, value);
        }
    }
}

/// A quoted string's content without its escapes (`\\x` is `x`).
fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn of(fields: &[&str]) -> Directives {
        let mut headers = HeaderMap::new();
        for f in fields {
            headers.append(CACHE_CONTROL, HeaderValue::from_str(f).unwrap());
        }
        Directives::of(&headers)
    }

    #[test]
    fn directives_are_read_across_fields_and_case() {
        let d = of(&["Public, MAX-AGE=60", "s-maxage=\"120\", must-revalidate"]);
        assert!(d.public && d.must_revalidate && !d.malformed);
        assert_eq!((d.max_age, d.s_maxage), (Some(60), Some(120)));
        let d = of(&["no-cache=\"set-cookie, x-a\", private=\"x\", no-store"]);
        assert!(d.no_cache && d.private && d.no_store && !d.malformed);
        assert_eq!(of(&["max-age=99999999999999999999"]).max_age, Some(1 << 31));
        assert_eq!(of(&["community=\"UCI\", max-age=5"]).max_age, Some(5));
    }

    #[test]
    fn what_cannot_be_read_is_marked() {
        for bad in [
            "max-age=ten",
            "max-age=",
            "max-age=-1",
            "max-age=1, max-age=2",
            "max-age=\"5",
            "max-age=5 garbage",
            "=5",
        ] {
            assert!(of(&[bad]).malformed, "{bad}");
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            CACHE_CONTROL,
            HeaderValue::from_bytes(b"max-age=5\xff").unwrap(),
        );
        assert!(Directives::of(&headers).malformed);
        // The same value twice is still one value.
        assert!(!of(&["max-age=5", "max-age=5"]).malformed);
    }

    #[test]
    fn pragma_counts_only_without_cache_control() {
        let mut headers = HeaderMap::new();
        headers.insert(PRAGMA, HeaderValue::from_static("no-cache"));
        assert!(Directives::of(&headers).no_cache);
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=5"));
        assert!(!Directives::of(&headers).no_cache);
    }
}
