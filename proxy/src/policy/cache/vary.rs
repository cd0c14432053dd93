//! `Vary` (RFC 9110 §12.5.5): the request headers an answer's variants differ by,
//! read once from the answer and kept with its entry, so each variant has a key
//! of its own.

use std::sync::Arc;

use http::header::{HeaderMap, HeaderName, VARY};

/// Most header names one answer may vary by (beyond that it is not stored).
const MAX_NAMES: usize = 8;

/// The sorted, distinct header names of an answer's `Vary` (empty: one variant).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(crate) struct Vary(Arc<[HeaderName]>);

impl Vary {
    /// The header names.
    pub(crate) fn names(&self) -> &[HeaderName] {
        &self.0
    }

    /// Whether the answer has one variant for every request.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The `Vary` of an answer; `None` for `*`, a name that is not one, or too many.
pub(crate) fn of(headers: &HeaderMap) -> Option<Vary> {
    let mut names = Vec::new();
    for value in headers.get_all(VARY) {
        for name in value.to_str().ok()?.split(',') {
            let name = name.trim();
            if name.is_empty() {
                continue;
            }
            if name == "*" {
                return None;
            }
            names.push(HeaderName::from_bytes(name.as_bytes()).ok()?);
        }
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    (names.len() <= MAX_NAMES).then(|| Vary(names.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn vary(fields: &[&str]) -> Option<Vec<String>> {
        let mut h = HeaderMap::new();
        for f in fields {
            h.append(VARY, HeaderValue::from_str(f).unwrap());
        }
        of(&h).map(|v| v.names().iter().map(|n| n.to_string()).collect())
    }

    #[test]
    fn names_are_sorted_lowercased_and_distinct() {
        assert_eq!(vary(&[]), Some(vec![]));
        assert_eq!(
            vary(&["Accept-Language, accept", "ACCEPT"]),
            Some(vec!["accept".into(), "accept-language".into()])
        );
        assert_eq!(vary(&[" , "]), Some(vec![]));
    }

    #[test]
    fn star_bad_names_and_too_many_are_refused() {
        assert_eq!(vary(&["accept, *"]), None);
        assert_eq!(vary(&["bad name"]), None);
        assert_eq!(vary(&["a,b,c,d,e,f,g,h,i"]), None);
    }
}
