//! `Cache-Control` (RFC 9111 §5.2), read from requests and responses alike: the
//! directives the cache acts on, and whether the header could be read at all. A
//! field that cannot be read makes a response unstorable, never fresher.

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
        for (name, value) in directives(text) {
            let Some(name) = name else {
                self.malformed = true;
                continue;
            };
            let seconds = |slot: &mut Option<u64>, malformed: &mut bool| {
                match value.as_deref().and_then(delta_seconds) {
                    // Two different values for one directive: neither is believed.
                    Some(s) if slot.is_none_or(|old| old == s) => *slot = Some(s),
                    _ => *malformed = true,
                }
            };
            match name.to_ascii_lowercase().as_str() {
                "no-store" => self.no_store = true,
                "no-cache" => self.no_cache = true,
                "private" => self.private = true,
                "public" => self.public = true,
                "must-revalidate" | "proxy-revalidate" => self.must_revalidate = true,
                "max-age" => seconds(&mut self.max_age, &mut self.malformed),
                "s-maxage" => seconds(&mut self.s_maxage, &mut self.malformed),
                "min-fresh" => seconds(&mut self.min_fresh, &mut self.malformed),
                _ => {}
            }
        }
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

/// The directives of one field: `(name, value)`, the value unquoted; a name of
/// `None` marks a directive that could not be split (an open quote, an empty name).
fn directives(text: &str) -> Vec<(Option<String>, Option<String>)> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars
            .peek()
            .is_some_and(|c| *c == ' ' || *c == '\t' || *c == ',')
        {
            chars.next();
        }
        if chars.peek().is_none() {
            return out;
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' || c == ' ' || c == '\t' {
                break;
            }
            name.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| *c == ' ' || *c == '\t') {
            chars.next();
        }
        let mut value = None;
        if chars.peek() == Some(&'=') {
            chars.next();
            let mut v = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                let mut closed = false;
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => match chars.next() {
                            Some(escaped) => v.push(escaped),
                            None => break,
                        },
                        '"' => {
                            closed = true;
                            break;
                        }
                        c => v.push(c),
                    }
                }
                if !closed {
                    out.push((None, None));
                    return out;
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ',' || c == ' ' || c == '\t' {
                        break;
                    }
                    v.push(c);
                    chars.next();
                }
            }
            value = Some(v);
        }
        while chars.peek().is_some_and(|c| *c == ' ' || *c == '\t') {
            chars.next();
        }
        // Anything but a comma or the end after a directive is not one we can read.
        let clean = matches!(chars.peek(), None | Some(','));
        out.push(((!name.is_empty() && clean).then_some(name), value));
        if !clean {
            while chars.peek().is_some_and(|c| *c != ',') {
                chars.next();
            }
        }
    }
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
