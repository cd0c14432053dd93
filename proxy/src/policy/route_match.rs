//! Picks the route for a request: a port's routes compiled once into a
//! [`RouteTable`] (regexes built, header names and methods parsed), then
//! [`RouteTable::select`] per request without allocating.
//!
//! # Precedence
//!
//! A route applies when any of its matches holds (a route without matches holds for
//! every request). When several matches from any routes hold, the most specific one
//! wins, comparing in this order (like the Gateway API):
//!
//! 1. path: an `exact` path beats any `prefix`, a longer `prefix` beats a shorter one,
//!    any `prefix` beats a `regex`, and a `regex` beats no path at all;
//! 2. more header matches beat fewer;
//! 3. a match with a method beats one without;
//! 4. the earlier route in the list wins, then the earlier match within it.
//!
//! The table is sorted by these keys when it is built, so selecting is a scan that
//! stops at the first match that holds.

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use pillion_api::policy::{
    anchored_regex, regex_builder, PathMatch, Route, RouteMatch, ServerRoute, StringMatch,
    REGEX_SIZE_LIMIT,
};

/// A route type a [`RouteTable`] can select: anything with a name and match rules, so
/// client routes and inbound server routes share one matcher.
pub(crate) trait Matchable {
    /// The route's name, for metrics and errors.
    fn name(&self) -> &str;
    /// The route's matches; empty means every request.
    fn matches(&self) -> &[RouteMatch];
}

impl Matchable for Route {
    fn name(&self) -> &str {
        &self.name
    }
    fn matches(&self) -> &[RouteMatch] {
        &self.matches
    }
}

impl Matchable for ServerRoute {
    fn name(&self) -> &str {
        &self.name
    }
    fn matches(&self) -> &[RouteMatch] {
        &self.matches
    }
}

/// A route whose matches could not be compiled; the agent validates policies, so this
/// means a view it should not have sent.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RouteTableError {
    /// A path or header regex did not compile.
    #[error("route {route:?} matches[{index}]: regex {pattern:?} does not compile: {source}")]
    Regex {
        /// The route's name.
        route: String,
        /// Which of its matches.
        index: usize,
        /// The expression as written.
        pattern: String,
        /// The compiler's complaint.
        #[source]
        source: regex::Error,
    },
    /// A header name, header value or method is not valid HTTP.
    #[error("route {route:?} matches[{index}]: {what} {value:?} is not valid HTTP")]
    Invalid {
        /// The route's name.
        route: String,
        /// Which of its matches.
        index: usize,
        /// `header name`, `header value` or `method`.
        what: &'static str,
        /// The value as written.
        value: String,
    },
}

/// The route chosen for a request and what its path matched, which a prefix rewrite
/// needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Selection<'a> {
    /// Position of the winning route in the list the table was built from.
    pub route: usize,
    /// The matched prefix (without a trailing `/`) for a `prefix` match, the whole
    /// path for an `exact` match, `None` for `regex` or no path.
    pub matched_prefix: Option<&'a str>,
}

/// A port's routes, compiled once per view and shared by every request; it keeps
/// only the match rules, and answers positions in the list it was built from.
#[derive(Debug)]
pub(crate) struct RouteTable {
    /// Every (route, match) pair, most specific first.
    rules: Vec<Rule>,
}

#[derive(Debug)]
struct Rule {
    route: usize,
    path: PathRule,
    method: Option<Method>,
    headers: Box<[HeaderRule]>,
}

#[derive(Debug)]
enum PathRule {
    Any,
    Exact(Box<str>),
    /// Without a trailing `/`; `/` itself is kept as `/`.
    Prefix(Box<str>),
    Regex(regex::Regex),
}

#[derive(Debug)]
struct HeaderRule {
    name: HeaderName,
    value: ValueRule,
}

#[derive(Debug)]
enum ValueRule {
    Exact(HeaderValue),
    Regex(regex::bytes::Regex),
}

impl RouteTable {
    /// Compiles `routes` in order; fails on the first match that is not valid.
    pub(crate) fn new<'r, R: Matchable + 'r>(
        routes: impl IntoIterator<Item = &'r R>,
    ) -> Result<Self, RouteTableError> {
        let mut rules = Vec::new();
        for (index, spec) in routes.into_iter().enumerate() {
            if spec.matches().is_empty() {
                rules.push(Rule {
                    route: index,
                    path: PathRule::Any,
                    method: None,
                    headers: Box::new([]),
                });
            }
            for (i, m) in spec.matches().iter().enumerate() {
                rules.push(compile_match(index, spec.name(), i, m)?);
            }
        }
        // Stable sort: equal keys keep route order, then match order.
        rules.sort_by_key(|rule| std::cmp::Reverse(rule.specificity()));
        Ok(RouteTable { rules })
    }

    /// The most specific route for a request, or `None` when no route matches (the
    /// caller then applies its port default).
    pub(crate) fn select(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Option<Selection<'_>> {
        let rule = self
            .rules
            .iter()
            .find(|rule| rule.holds(method, path, headers))?;
        let matched_prefix = match &rule.path {
            PathRule::Exact(p) | PathRule::Prefix(p) => Some(&**p),
            PathRule::Regex(_) | PathRule::Any => None,
        };
        Some(Selection {
            route: rule.route,
            matched_prefix,
        })
    }

    /// [`RouteTable::select`] for a request's head.
    pub(crate) fn select_parts(&self, parts: &http::request::Parts) -> Option<Selection<'_>> {
        self.select(&parts.method, parts.uri.path(), &parts.headers)
    }
}

impl Rule {
    /// Sort key, larger is more specific (see the module docs).
    fn specificity(&self) -> (u8, usize, usize, bool) {
        let (kind, prefix_len) = match &self.path {
            PathRule::Exact(_) => (3, 0),
            PathRule::Prefix(p) => (2, p.len()),
            PathRule::Regex(_) => (1, 0),
            PathRule::Any => (0, 0),
        };
        (kind, prefix_len, self.headers.len(), self.method.is_some())
    }

    fn holds(&self, method: &Method, path: &str, headers: &HeaderMap) -> bool {
        if let Some(m) = &self.method {
            if m != method {
                return false;
            }
        }
        let path_ok = match &self.path {
            PathRule::Any => true,
            PathRule::Exact(p) => path == &**p,
            PathRule::Prefix(p) => prefix_holds(p, path),
            PathRule::Regex(re) => re.is_match(path),
        };
        path_ok
            && self.headers.iter().all(|rule| {
                headers
                    .get_all(&rule.name)
                    .iter()
                    .any(|value| rule.value.holds(value))
            })
    }
}

/// `prefix` (normalized, no trailing `/`) matches whole segments of `path`.
fn prefix_holds(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

impl ValueRule {
    fn holds(&self, value: &HeaderValue) -> bool {
        match self {
            ValueRule::Exact(v) => v.as_bytes() == value.as_bytes(),
            ValueRule::Regex(re) => re.is_match(value.as_bytes()),
        }
    }
}

/// Normalizes a prefix: a trailing `/` is ignored, except for `/` itself.
fn normalize_prefix(prefix: &str) -> &str {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() {
        "/"
    } else {
        trimmed
    }
}

fn compile_match(
    route: usize,
    name: &str,
    index: usize,
    m: &RouteMatch,
) -> Result<Rule, RouteTableError> {
    let invalid = |what: &'static str, value: &str| RouteTableError::Invalid {
        route: name.to_string(),
        index,
        what,
        value: value.to_string(),
    };
    let regex_error = |pattern: &str, source: regex::Error| RouteTableError::Regex {
        route: name.to_string(),
        index,
        pattern: pattern.to_string(),
        source,
    };
    let path = match &m.path {
        None => PathRule::Any,
        Some(PathMatch::Exact(p)) => PathRule::Exact(p.as_str().into()),
        Some(PathMatch::Prefix(p)) => PathRule::Prefix(normalize_prefix(p).into()),
        Some(PathMatch::Regex(re)) => {
            PathRule::Regex(regex_builder(re).build().map_err(|e| regex_error(re, e))?)
        }
    };
    let method = match &m.method {
        None => None,
        Some(text) => {
            Some(Method::from_bytes(text.as_bytes()).map_err(|_| invalid("method", text))?)
        }
    };
    let mut headers = Vec::with_capacity(m.headers.len());
    for h in &m.headers {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| invalid("header name", &h.name))?;
        let value = match &h.value {
            StringMatch::Exact(v) => {
                ValueRule::Exact(HeaderValue::from_str(v).map_err(|_| invalid("header value", v))?)
            }
            StringMatch::Regex(re) => ValueRule::Regex(
                regex::bytes::RegexBuilder::new(&anchored_regex(re))
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|e| regex_error(re, e))?,
            ),
        };
        headers.push(HeaderRule { name, value });
    }
    Ok(Rule {
        route,
        path,
        method,
        headers: headers.into_boxed_slice(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pillion_api::policy::HeaderMatch;

    fn path(p: PathMatch) -> RouteMatch {
        RouteMatch {
            path: Some(p),
            ..RouteMatch::default()
        }
    }

    fn route(name: &str, matches: Vec<RouteMatch>) -> Route {
        Route {
            name: name.into(),
            matches,
            ..Route::default()
        }
    }

    /// A table over `routes`, kept beside it so positions can be named.
    fn compiled<R: Matchable>(routes: Vec<R>) -> Result<(RouteTable, Vec<R>), RouteTableError> {
        RouteTable::new(&routes).map(|t| (t, routes))
    }

    fn header(name: &str, value: StringMatch) -> HeaderMatch {
        HeaderMatch {
            name: name.into(),
            value,
        }
    }

    fn pick<'a, R: Matchable>(
        (table, routes): &'a (RouteTable, Vec<R>),
        method: &str,
        p: &str,
        hs: &[(&str, &str)],
    ) -> Option<&'a str> {
        let mut headers = HeaderMap::new();
        for (k, v) in hs {
            headers.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        table
            .select(&method, p, &headers)
            .map(|s| routes[s.route].name())
    }

    #[test]
    fn path_kinds_rank_exact_then_longest_prefix_then_regex_then_none() {
        let table = compiled(vec![
            route("catch-all", vec![]),
            route("regex", vec![path(PathMatch::Regex("/api/.*".into()))]),
            route("short", vec![path(PathMatch::Prefix("/api".into()))]),
            route("long", vec![path(PathMatch::Prefix("/api/v2/".into()))]),
            route(
                "exact",
                vec![path(PathMatch::Exact("/api/v2/health".into()))],
            ),
        ])
        .unwrap();
        assert_eq!(pick(&table, "GET", "/api/v2/health", &[]), Some("exact"));
        assert_eq!(pick(&table, "GET", "/api/v2/items", &[]), Some("long"));
        assert_eq!(pick(&table, "GET", "/api/v2", &[]), Some("long"));
        assert_eq!(pick(&table, "GET", "/api/v1/items", &[]), Some("short"));
        assert_eq!(pick(&table, "GET", "/api", &[]), Some("short"));
        assert_eq!(pick(&table, "GET", "/other", &[]), Some("catch-all"));
    }

    #[test]
    fn regex_beats_no_path_and_must_match_the_whole_path() {
        let table = compiled(vec![
            route("any", vec![RouteMatch::default()]),
            route(
                "items",
                vec![path(PathMatch::Regex("/v[0-9]+/items".into()))],
            ),
        ])
        .unwrap();
        assert_eq!(pick(&table, "GET", "/v3/items", &[]), Some("items"));
        assert_eq!(pick(&table, "GET", "/v3/items/1", &[]), Some("any"));
        assert_eq!(pick(&table, "GET", "/x/v3/items", &[]), Some("any"));
    }

    #[test]
    fn prefixes_match_whole_segments() {
        let table = compiled(vec![route(
            "api",
            vec![path(PathMatch::Prefix("/api".into()))],
        )])
        .unwrap();
        assert_eq!(pick(&table, "GET", "/api", &[]), Some("api"));
        assert_eq!(pick(&table, "GET", "/api/", &[]), Some("api"));
        assert_eq!(pick(&table, "GET", "/api/x/y", &[]), Some("api"));
        assert_eq!(pick(&table, "GET", "/apix", &[]), None);
        assert_eq!(pick(&table, "GET", "/", &[]), None);

        let root = compiled(vec![route(
            "root",
            vec![path(PathMatch::Prefix("/".into()))],
        )])
        .unwrap();
        assert_eq!(pick(&root, "GET", "/anything/at/all", &[]), Some("root"));
    }

    #[test]
    fn more_headers_then_method_then_order_break_ties() {
        let with = |name: &str, method: Option<&str>, headers: Vec<HeaderMatch>| {
            route(
                name,
                vec![RouteMatch {
                    path: Some(PathMatch::Prefix("/".into())),
                    method: method.map(Into::into),
                    headers,
                }],
            )
        };
        let canary = || header("x-canary", StringMatch::Exact("1".into()));
        let user = || header("x-user", StringMatch::Regex("[a-z]+".into()));
        let table = compiled(vec![
            with("first", None, vec![]),
            with("second", None, vec![]),
            with("get", Some("GET"), vec![]),
            with("one-header", None, vec![canary()]),
            with("one-header-get", Some("GET"), vec![canary()]),
            with("two-headers", None, vec![canary(), user()]),
        ])
        .unwrap();
        assert_eq!(
            pick(&table, "GET", "/", &[("x-canary", "1"), ("x-user", "bob")]),
            Some("two-headers")
        );
        assert_eq!(
            pick(&table, "GET", "/", &[("x-canary", "1")]),
            Some("one-header-get")
        );
        assert_eq!(
            pick(&table, "POST", "/", &[("x-canary", "1")]),
            Some("one-header")
        );
        assert_eq!(pick(&table, "GET", "/", &[]), Some("get"));
        assert_eq!(pick(&table, "POST", "/", &[]), Some("first"));
        assert_eq!(
            pick(&table, "POST", "/", &[("x-canary", "1"), ("x-user", "Bob")]),
            Some("one-header"),
            "the regex must match the whole value"
        );
    }

    #[test]
    fn path_outranks_headers_and_method() {
        let table = compiled(vec![
            route(
                "headers",
                vec![RouteMatch {
                    path: Some(PathMatch::Prefix("/a".into())),
                    method: Some("GET".into()),
                    headers: vec![header("x", StringMatch::Exact("1".into()))],
                }],
            ),
            route("longer", vec![path(PathMatch::Prefix("/a/b".into()))]),
        ])
        .unwrap();
        assert_eq!(pick(&table, "GET", "/a/b", &[("x", "1")]), Some("longer"));
    }

    #[test]
    fn any_match_of_a_route_selects_it_and_all_parts_must_hold() {
        let table = compiled(vec![route(
            "either",
            vec![
                RouteMatch {
                    path: Some(PathMatch::Exact("/login".into())),
                    method: Some("POST".into()),
                    headers: vec![],
                },
                path(PathMatch::Prefix("/static".into())),
            ],
        )])
        .unwrap();
        assert_eq!(pick(&table, "POST", "/login", &[]), Some("either"));
        assert_eq!(pick(&table, "GET", "/login", &[]), None);
        assert_eq!(pick(&table, "GET", "/static/app.js", &[]), Some("either"));
    }

    #[test]
    fn header_names_are_case_insensitive_and_any_value_counts() {
        let table = compiled(vec![route(
            "canary",
            vec![RouteMatch {
                headers: vec![header("X-Canary", StringMatch::Exact("yes".into()))],
                ..RouteMatch::default()
            }],
        )])
        .unwrap();
        assert_eq!(
            pick(&table, "GET", "/", &[("x-canary", "yes")]),
            Some("canary")
        );
        assert_eq!(
            pick(
                &table,
                "GET",
                "/",
                &[("x-canary", "no"), ("x-canary", "yes")]
            ),
            Some("canary")
        );
        assert_eq!(pick(&table, "GET", "/", &[("x-canary", "YES")]), None);
        assert_eq!(pick(&table, "GET", "/", &[]), None);
    }

    #[test]
    fn methods_are_case_sensitive() {
        let table = compiled(vec![route(
            "get",
            vec![RouteMatch {
                method: Some("GET".into()),
                ..RouteMatch::default()
            }],
        )])
        .unwrap();
        assert_eq!(pick(&table, "GET", "/", &[]), Some("get"));
        assert_eq!(pick(&table, "get", "/", &[]), None);
    }

    #[test]
    fn selection_reports_the_matched_prefix_and_index() {
        let (table, routes) = compiled(vec![
            route("exact", vec![path(PathMatch::Exact("/e".into()))]),
            route("prefix", vec![path(PathMatch::Prefix("/p/".into()))]),
            route("re", vec![path(PathMatch::Regex("/r.*".into()))]),
        ])
        .unwrap();
        let h = HeaderMap::new();
        let s = table.select(&Method::GET, "/p/x", &h).unwrap();
        assert_eq!((s.route, s.matched_prefix), (1, Some("/p")));
        let s = table.select(&Method::GET, "/e", &h).unwrap();
        assert_eq!((s.route, s.matched_prefix), (0, Some("/e")));
        let s = table.select(&Method::GET, "/rx", &h).unwrap();
        assert_eq!((s.route, s.matched_prefix), (2, None));
        assert_eq!(routes[s.route].name, "re");
    }

    #[test]
    fn select_parts_ignores_the_query() {
        let (table, routes) = compiled(vec![route(
            "exact",
            vec![path(PathMatch::Exact("/search".into()))],
        )])
        .unwrap();
        let (parts, ()) = http::Request::get("http://svc/search?q=1")
            .body(())
            .unwrap()
            .into_parts();
        let s = table.select_parts(&parts).unwrap();
        assert_eq!(routes[s.route].name(), "exact");
    }

    #[test]
    fn server_routes_use_the_same_matcher() {
        let (table, routes) = compiled(vec![ServerRoute {
            name: "admin".into(),
            matches: vec![path(PathMatch::Prefix("/admin".into()))],
            ..ServerRoute::default()
        }])
        .unwrap();
        let s = table.select(&Method::GET, "/admin/users", &HeaderMap::new());
        assert_eq!(routes[s.unwrap().route].name(), "admin");
        assert!(table.select(&Method::GET, "/", &HeaderMap::new()).is_none());
    }

    #[test]
    fn bad_matches_fail_to_compile_with_the_route_named() {
        let err = compiled(vec![route(
            "broken",
            vec![RouteMatch::default(), path(PathMatch::Regex("(".into()))],
        )])
        .unwrap_err();
        assert!(
            matches!(err, RouteTableError::Regex { index: 1, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("\"broken\""), "{err}");

        let err = compiled(vec![route(
            "r",
            vec![RouteMatch {
                headers: vec![header("bad name", StringMatch::Exact("x".into()))],
                ..RouteMatch::default()
            }],
        )])
        .unwrap_err();
        assert!(err.to_string().contains("header name"), "{err}");
    }

    #[test]
    fn empty_table_matches_nothing() {
        let (table, routes) = compiled::<Route>(vec![]).unwrap();
        assert!(routes.is_empty());
        assert!(table.select(&Method::GET, "/", &HeaderMap::new()).is_none());
    }
}
