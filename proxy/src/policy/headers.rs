//! Header edits and path rewrites of a route, parsed once per view into `http` types
//! so applying them per request only copies reference-counted values.

use http::uri::{PathAndQuery, Uri};
use http::{HeaderMap, HeaderName, HeaderValue};
use pillion_api::policy::{is_reserved_header, HeaderEdits, PathRewrite};

/// An edit that cannot be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HeaderEditError {
    /// Not a valid header name.
    #[error("{0:?} is not a valid header name")]
    BadName(String),
    /// Not a valid header value.
    #[error("the value of header {0:?} is not a valid header value")]
    BadValue(String),
    /// A connection, framing or identity header, which only the proxy may set.
    #[error("header {0:?} is reserved and cannot be edited")]
    Reserved(String),
}

/// A route's header edits, ready to apply: remove, then set, then add.
#[derive(Debug, Clone, Default)]
pub(crate) struct HeaderEditor {
    remove: Box<[HeaderName]>,
    set: Box<[(HeaderName, HeaderValue)]>,
    add: Box<[(HeaderName, HeaderValue)]>,
}

fn name(text: &str) -> Result<HeaderName, HeaderEditError> {
    let name = HeaderName::from_bytes(text.as_bytes())
        .map_err(|_| HeaderEditError::BadName(text.to_string()))?;
    if is_reserved_header(name.as_str()) {
        return Err(HeaderEditError::Reserved(text.to_string()));
    }
    Ok(name)
}

fn pairs(
    map: &std::collections::BTreeMap<String, String>,
) -> Result<Box<[(HeaderName, HeaderValue)]>, HeaderEditError> {
    map.iter()
        .map(|(k, v)| {
            let value =
                HeaderValue::from_str(v).map_err(|_| HeaderEditError::BadValue(k.clone()))?;
            Ok((name(k)?, value))
        })
        .collect()
}

impl HeaderEditor {
    /// Parses a route's edits; reserved headers are refused.
    pub(crate) fn new(edits: &HeaderEdits) -> Result<HeaderEditor, HeaderEditError> {
        Ok(HeaderEditor {
            remove: edits
                .remove
                .iter()
                .map(|n| name(n))
                .collect::<Result<_, _>>()?,
            set: pairs(&edits.set)?,
            add: pairs(&edits.add)?,
        })
    }

    /// True when there is nothing to do, so the caller can skip the call.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    /// Applies the edits to a request's or response's headers.
    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        for name in self.remove.iter() {
            headers.remove(name);
        }
        for (name, value) in self.set.iter() {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in self.add.iter() {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// A rewrite that cannot be compiled or applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RewriteError {
    /// The replacement does not start with `/` or has a query or fragment.
    #[error("rewrite prefix {0:?} must start with '/' and have no '?' or '#'")]
    BadPrefix(String),
}

/// A route's prefix rewrite, ready to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PathRewriter {
    /// The replacement without a trailing `/` (`/` itself becomes empty).
    replacement: Box<str>,
}

impl PathRewriter {
    /// Parses a route's rewrite.
    pub(crate) fn new(rewrite: &PathRewrite) -> Result<PathRewriter, RewriteError> {
        let prefix = &rewrite.prefix;
        if !prefix.starts_with('/') || prefix.contains(['?', '#']) {
            return Err(RewriteError::BadPrefix(prefix.clone()));
        }
        Ok(PathRewriter {
            replacement: prefix.trim_end_matches('/').into(),
        })
    }

    /// The path with `matched_prefix` (from the route selection) replaced; the rest of
    /// the path and the query are kept. `/api/items?x=1` with prefix `/api` and
    /// replacement `/v2` becomes `/v2/items?x=1`; with replacement `/`, `/items?x=1`.
    /// A path that does not start with `matched_prefix` is returned unchanged.
    pub(crate) fn rewrite_path_and_query(&self, uri: &Uri, matched_prefix: &str) -> String {
        let path = uri.path();
        let unchanged = || {
            uri.path_and_query()
                .map_or(path, PathAndQuery::as_str)
                .to_string()
        };
        let matched = matched_prefix.trim_end_matches('/');
        let Some(mut rest) = path.strip_prefix(matched) else {
            return unchanged();
        };
        if !(rest.is_empty() || rest.starts_with('/')) {
            return unchanged(); // not on a segment boundary: not what was matched
        }
        if matched.is_empty() && rest == "/" {
            rest = ""; // the root prefix on the root path: just the replacement
        }
        let query = uri.query();
        let mut out = String::with_capacity(
            self.replacement.len() + rest.len() + query.map_or(0, |q| q.len() + 1) + 1,
        );
        out.push_str(&self.replacement);
        out.push_str(rest);
        if out.is_empty() {
            out.push('/');
        }
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pillion_api::policy::PEER_IDENTITY_HEADER;
    use pillion_testkit::strings::map;

    fn values(headers: &HeaderMap, name: &str) -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn edits_remove_then_set_then_add() {
        let editor = HeaderEditor::new(&HeaderEdits {
            set: map(&[("x-route", "api"), ("X-Env", "prod")]),
            add: map(&[("via", "pillion"), ("x-env", "canary")]),
            remove: vec!["x-debug".into(), "x-env".into()],
        })
        .unwrap();
        let mut headers = HeaderMap::new();
        headers.append("x-debug", HeaderValue::from_static("1"));
        headers.append("x-route", HeaderValue::from_static("old-1"));
        headers.append("x-route", HeaderValue::from_static("old-2"));
        headers.append("via", HeaderValue::from_static("edge"));
        headers.append("x-env", HeaderValue::from_static("dev"));
        editor.apply(&mut headers);
        assert!(headers.get("x-debug").is_none());
        assert_eq!(values(&headers, "x-route"), ["api"]);
        assert_eq!(values(&headers, "via"), ["edge", "pillion"]);
        assert_eq!(values(&headers, "x-env"), ["prod", "canary"]);
        assert!(!editor.is_empty());
        assert!(HeaderEditor::new(&HeaderEdits::default())
            .unwrap()
            .is_empty());
    }

    #[test]
    fn reserved_and_invalid_headers_are_refused() {
        let bad = |edits: HeaderEdits| HeaderEditor::new(&edits).unwrap_err();
        assert_eq!(
            bad(HeaderEdits {
                remove: vec![PEER_IDENTITY_HEADER.to_uppercase()],
                ..HeaderEdits::default()
            }),
            HeaderEditError::Reserved(PEER_IDENTITY_HEADER.to_uppercase())
        );
        assert!(matches!(
            bad(HeaderEdits {
                set: map(&[("Content-Length", "0")]),
                ..HeaderEdits::default()
            }),
            HeaderEditError::Reserved(_)
        ));
        assert!(matches!(
            bad(HeaderEdits {
                add: map(&[("bad name", "x")]),
                ..HeaderEdits::default()
            }),
            HeaderEditError::BadName(_)
        ));
        assert!(matches!(
            bad(HeaderEdits {
                add: map(&[("x-a", "line\nbreak")]),
                ..HeaderEdits::default()
            }),
            HeaderEditError::BadValue(_)
        ));
    }

    fn rewriter(prefix: &str) -> PathRewriter {
        PathRewriter::new(&PathRewrite {
            prefix: prefix.into(),
        })
        .unwrap()
    }

    fn rewrite(prefix: &str, uri: &str, matched: &str) -> String {
        let uri: Uri = uri.parse().unwrap();
        let mut parts = uri.clone().into_parts();
        let rewritten = rewriter(prefix).rewrite_path_and_query(&uri, matched);
        parts.path_and_query = Some(PathAndQuery::try_from(rewritten).unwrap());
        Uri::from_parts(parts).unwrap().to_string()
    }

    #[test]
    fn prefix_rewrites_keep_the_rest_and_the_query() {
        assert_eq!(rewrite("/v2", "/api/items?x=1", "/api"), "/v2/items?x=1");
        assert_eq!(rewrite("/v2/", "/api/items", "/api"), "/v2/items");
        assert_eq!(rewrite("/v2", "/api", "/api"), "/v2");
        assert_eq!(rewrite("/v2", "/api/", "/api"), "/v2/");
        assert_eq!(rewrite("/", "/api/items?x=1", "/api"), "/items?x=1");
        assert_eq!(rewrite("/", "/api", "/api"), "/");
        assert_eq!(rewrite("/", "/api?q", "/api"), "/?q");
        assert_eq!(rewrite("/new", "/any/path", "/"), "/new/any/path");
        assert_eq!(rewrite("/new", "/", "/"), "/new");
    }

    #[test]
    fn exact_matches_replace_the_whole_path() {
        assert_eq!(
            rewrite("/healthz", "/health?full=1", "/health"),
            "/healthz?full=1"
        );
    }

    #[test]
    fn absolute_uris_keep_scheme_and_authority() {
        assert_eq!(
            rewrite("/v2", "http://svc.demo:8080/api/x?y", "/api"),
            "http://svc.demo:8080/v2/x?y"
        );
    }

    #[test]
    fn paths_outside_the_prefix_are_left_alone() {
        assert_eq!(rewrite("/v2", "/other/x?q=1", "/api"), "/other/x?q=1");
        assert_eq!(rewrite("/v2", "/apix", "/api"), "/apix");
    }

    #[test]
    fn bad_rewrite_prefixes_are_refused() {
        for bad in ["v2", "", "/a?b", "/a#b"] {
            assert!(
                PathRewriter::new(&PathRewrite { prefix: bad.into() }).is_err(),
                "{bad:?}"
            );
        }
    }
}
