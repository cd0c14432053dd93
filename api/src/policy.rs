//! Per-route policy: how the proxy matches HTTP requests to routes, splits them over
//! backends, and applies timeouts, retries, rate limits, header edits and rewrites.
//!
//! Client side (outbound), a service port carries `routes: Vec<Route>`; server side
//! (inbound), a port carries a [`ServerPolicy`] whose [`ServerRoute`]s narrow who may
//! call which paths and at what rate. [`validate_routes`] and
//! [`ServerPolicy::validate`] check a policy before it is served, naming the faulty
//! field by its path, e.g. `routes[1].backends[0].weight`.
//!
//! # Wire format
//!
//! JSON (or the agent's YAML), snake_case fields, lowercase enum values. Optional
//! fields may be absent. Durations are [`crate::duration`] strings: whole numbers
//! with a unit, `ns`, `us`, `ms`, `s`, `m`, `h` or `d` (`250ms`, `2s`, `1m30s`); bare
//! numbers are refused so nobody has to guess the unit.
//!
//! ```json
//! {
//!   "name": "api-v2",
//!   "matches": [
//!     {"path": {"prefix": "/api"}, "method": "GET",
//!      "headers": [{"name": "x-canary", "value": {"exact": "true"}}]},
//!     {"path": {"prefix": "/api"},
//!      "headers": [{"name": "x-version", "value": {"regex": "2(\\.[0-9]+)?"}}]}
//!   ],
//!   "backends": [
//!     {"weight": 90, "subset": {"version": "v1"}},
//!     {"weight": 10, "subset": {"version": "v2"}},
//!     {"weight": 0, "service": "api-fallback"}
//!   ],
//!   "timeout": "2s",
//!   "per_try_timeout": "500ms",
//!   "retry": {"attempts": 3, "conditions": ["gateway-error", "connect-failure", 429],
//!             "backoff_base": "25ms", "backoff_max": "250ms",
//!             "budget": {"ratio": 0.2, "min_per_second": 10, "window": "10s"}},
//!   "rate_limit": {"requests_per_second": 100, "burst": 20, "key": {"header": "x-api-key"}},
//!   "request_headers": {"set": {"x-route": "api-v2"}, "add": {"via": "pillion"},
//!                       "remove": ["x-debug"]},
//!   "response_headers": {"remove": ["server"]},
//!   "rewrite": {"prefix": "/v2"}
//! }
//! ```
//!
//! Meaning, field by field:
//!
//! - `matches`: the route applies when **any** of them matches; an empty list (or an
//!   empty match `{}`) matches every request. Within one match, **all** given parts
//!   must hold. Paths are matched without the query string; `prefix` matches whole
//!   path segments (`/api` matches `/api` and `/api/x`, not `/apix`); `regex` must match
//!   the whole path (`{"regex": "/v[0-9]+/items/[^/]+"}`). Header names are case-insensitive; a header value matches when any
//!   of the request's values for that name matches. Methods are case-sensitive.
//! - `backends`: traffic is split by `weight` (weights need not sum to 100). A
//!   backend is a `subset` of the service's endpoints (by label; empty = all of them)
//!   or another `service` by name. An empty list means all endpoints of the service.
//! - `retry.attempts` counts every try, the first included (`1` = never retry).
//!   `conditions`: `5xx` (any 5xx response or a per-try timeout), `gateway-error`
//!   (502, 503, 504 or a per-try timeout), `connect-failure` (no connection; retried
//!   for every method since nothing was sent), `reset` (the stream or connection
//!   broke before a response), or a status code such as `429`. Only idempotent
//!   methods are retried unless `retry_non_idempotent` is true. Without `budget` the
//!   mesh default applies ([`RetryBudget::default`]); retries are never unbounded.
//! - `rate_limit.key`: `"none"` (one limit for the route), `"client_identity"` (one per
//!   caller's SPIFFE id; all plaintext callers share one) or `{"header": "name"}` (one
//!   per value of that request header; requests without it share one).
//! - Header edits run `remove`, then `set` (replaces every value), then `add`
//!   (appends). Hop-by-hop and framing headers and [`PEER_IDENTITY_HEADER`] cannot be
//!   edited.
//! - `rewrite.prefix` replaces the matched path prefix (or the whole path of an
//!   `exact` match) and keeps the rest and the query: with `{"prefix": "/api"}` and
//!   rewrite `/v2`, `/api/items?x=1` becomes `/v2/items?x=1`. It needs every match of
//!   the route to have an `exact` or `prefix` path.
//!
//! # Compatibility
//!
//! [`Route`], [`ServerRoute`] and [`ServerPolicy`] ignore unknown fields, so a newer
//! agent can add route features without older proxies refusing the whole view. The
//! small shapes inside them (matches, backends, retries, limits, edits) refuse unknown
//! fields: there a misspelt key (`"header"` for `"headers"`) would silently widen a
//! match or send traffic elsewhere.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Request header that carries the caller's verified SPIFFE id to the application; the
/// inbound proxy always strips it from incoming requests and sets it only from mTLS.
pub const PEER_IDENTITY_HEADER: &str = "pillion-peer-identity";
/// Default share of requests that may be retried (DESIGN: retries ≤ 20 % of requests).
pub const DEFAULT_RETRY_RATIO: f64 = 0.2;
/// Default retries allowed per second on top of the ratio, so low traffic can retry.
pub const DEFAULT_RETRY_MIN_PER_SECOND: u32 = 10;
/// Default window over which the retry budget counts requests and retries.
pub const DEFAULT_RETRY_WINDOW: Duration = Duration::from_secs(10);
/// Default tries per request, the first included, when a retry policy omits it.
pub const DEFAULT_RETRY_ATTEMPTS: u32 = 3;
/// Most tries per request a route may ask for, so one request cannot fan out.
pub const MAX_RETRY_ATTEMPTS: u32 = 10;
/// Default first backoff cap between tries (doubled per retry, full jitter).
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(25);
/// Default ceiling of the backoff between tries.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_millis(250);
/// Longest regular expression program accepted, in bytes of compiled size, so one
/// policy cannot make every proxy allocate unbounded memory.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Longest timeout a route (or an aggregation's part) may set: far beyond any
/// request, and far from the clock arithmetic's limits.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(366 * 86_400);
/// Longest route name; names appear in metrics labels and rate-limit headers.
pub const MAX_ROUTE_NAME_LEN: usize = 128;
/// Prefix of the proxy's own headers (`pillion-peer-identity`, `pillion-orig-proto`):
/// only a verified peer proxy may send them; from anyone else they are removed, and
/// no edit may set them.
pub const OWN_HEADER_PREFIX: &str = "pillion-";

/// Whether no route edit may touch header `name`: connection management, framing,
/// and the proxy's own headers ([`OWN_HEADER_PREFIX`]).
pub fn is_reserved_header(name: &str) -> bool {
    RESERVED_HEADERS
        .iter()
        .any(|reserved| reserved.eq_ignore_ascii_case(name))
        || name
            .get(..OWN_HEADER_PREFIX.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(OWN_HEADER_PREFIX))
}

/// Headers that no edit may touch: connection management, message framing, and the
/// identity header only the inbound proxy sets.
pub const RESERVED_HEADERS: &[&str] = &[
    "connection",
    "content-length",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    PEER_IDENTITY_HEADER,
];

// ---------------------------------------------------------------------------------
// Client-side routes
// ---------------------------------------------------------------------------------

/// One rule of a service port: which requests it catches and how to send them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Route {
    /// Unique within the port; used in metrics and rate-limit headers.
    pub name: String,
    /// Any of these selects the route; empty matches every request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<RouteMatch>,
    /// Where matched requests go, split by weight; empty means all endpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<WeightedBackend>,
    /// Deadline for the whole request, retries included.
    #[serde(
        default,
        with = "crate::duration::serde_humane_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// Deadline for each single try.
    #[serde(
        default,
        with = "crate::duration::serde_humane_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub per_try_timeout: Option<Duration>,
    /// When and how often to retry; absent means never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// Client-side rate limit for the route; absent means unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Edits applied to requests before they are forwarded.
    #[serde(default, skip_serializing_if = "HeaderEdits::is_empty")]
    pub request_headers: HeaderEdits,
    /// Edits applied to responses before they reach the caller.
    #[serde(default, skip_serializing_if = "HeaderEdits::is_empty")]
    pub response_headers: HeaderEdits,
    /// Replaces the matched path prefix before forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<PathRewrite>,
    /// Delays or aborts injected into this route's requests, for resilience tests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<crate::fault::FaultInjection>,
    /// A share of the route's requests copied to a shadow backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Mirror>,
    /// Answers to the route's `GET`s reused while fresh (RFC 9111).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<crate::cache::ResponseCache>,
    /// Rewrites of the request's and the answer's bodies (JSON edits, XML ↔ JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transform: Option<crate::transform::Transform>,
    /// Answers composed from several services' JSON, called at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate: Option<crate::aggregate::Aggregate>,
}

/// Copies of a share of a route's requests, sent to another backend whose answers
/// are thrown away: a new version sees real traffic before it serves any.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    /// Where the copies go (its `weight` is not used).
    pub backend: WeightedBackend,
    /// Share of requests copied, 0 to 100; default 100.
    #[serde(default = "crate::fault::all_percent")]
    pub percent: f64,
}

impl Eq for Mirror {}

impl Route {
    /// Every backend the route sends to, its mirror's and its aggregation's parts
    /// included: what must exist.
    pub fn sent_to(&self) -> impl Iterator<Item = &WeightedBackend> {
        let parts = self.aggregate.iter().flat_map(|a| &a.parts);
        self.backends
            .iter()
            .chain(self.mirror.as_ref().map(|m| &m.backend))
            .chain(parts.map(|p| &p.backend))
    }
}

/// One way a request can select a route; every given part must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// How the request path must look; absent matches every path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// The request method, case-sensitive (`GET`); absent matches every method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Headers that must all be present with a matching value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
}

/// How a request path is compared, without its query string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PathMatch {
    /// The path must equal this exactly.
    Exact(String),
    /// The path must start with these whole segments (`/api` ≠ `/apix`).
    Prefix(String),
    /// The whole path must match this regular expression (`regex` crate syntax).
    Regex(String),
}

/// A header the request must carry, with a value that matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    /// Header name, case-insensitive.
    pub name: String,
    /// What one of the header's values must be.
    pub value: StringMatch,
}

/// A comparison of a text value, exact or by regular expression.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StringMatch {
    /// Byte-for-byte equal.
    Exact(String),
    /// The whole value must match this regular expression.
    Regex(String),
}

/// One destination of a traffic split.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedBackend {
    /// Relative share of traffic; 0 keeps the backend configured but idle.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Endpoint labels that select a subset (e.g. `version: v2`); empty = all.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub subset: BTreeMap<String, String>,
    /// Another service to send to instead of this port's endpoints: `name` (same
    /// namespace) or `namespace/name` (a gateway's routes, which live in no service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// That service's port; defaults to the route's own port number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

fn default_weight() -> u32 {
    1
}

/// When to try a request again, and how long to wait in between.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Tries per request, the first included (1..=10).
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// Outcomes that are retried; default: connect failures, resets, gateway errors.
    #[serde(default = "default_conditions")]
    pub conditions: Vec<RetryOn>,
    /// First backoff cap; each retry doubles it, and the wait is random below it.
    #[serde(
        default = "default_backoff_base",
        with = "crate::duration::serde_humane"
    )]
    pub backoff_base: Duration,
    /// Ceiling of the backoff cap.
    #[serde(
        default = "default_backoff_max",
        with = "crate::duration::serde_humane"
    )]
    pub backoff_max: Duration,
    /// Retry POST, PATCH and other non-idempotent methods too.
    #[serde(default)]
    pub retry_non_idempotent: bool,
    /// How many retries the route may spend; absent means the mesh default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<RetryBudget>,
}

fn default_attempts() -> u32 {
    DEFAULT_RETRY_ATTEMPTS
}
fn default_conditions() -> Vec<RetryOn> {
    vec![
        RetryOn::ConnectFailure,
        RetryOn::Reset,
        RetryOn::GatewayError,
    ]
}
fn default_backoff_base() -> Duration {
    DEFAULT_BACKOFF_BASE
}
fn default_backoff_max() -> Duration {
    DEFAULT_BACKOFF_MAX
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: DEFAULT_RETRY_ATTEMPTS,
            conditions: default_conditions(),
            backoff_base: DEFAULT_BACKOFF_BASE,
            backoff_max: DEFAULT_BACKOFF_MAX,
            retry_non_idempotent: false,
            budget: None,
        }
    }
}

impl RetryPolicy {
    /// The budget in force: the route's own, or the mesh default.
    pub fn budget_or_default(&self) -> RetryBudget {
        self.budget.clone().unwrap_or_default()
    }
}

/// An outcome of one try that may be retried.
///
/// Written as a string (`"5xx"`, `"gateway-error"`, `"connect-failure"`, `"reset"`) or
/// as a status code (`429` or `"429"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryOn {
    /// Any 5xx response, or a per-try timeout.
    ServerError,
    /// 502, 503 or 504, or a per-try timeout.
    GatewayError,
    /// The connection could not be made; nothing reached the server.
    ConnectFailure,
    /// The stream or connection broke before a response arrived.
    Reset,
    /// This exact response status.
    Status(u16),
}

/// Caps retries so they can never multiply load: per window, retries may be at most
/// `ratio` × requests + `min_per_second` × window seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudget {
    /// Retries allowed per request, 0.0..=1.0.
    #[serde(default = "default_ratio")]
    pub ratio: f64,
    /// Retries allowed per second regardless of traffic.
    #[serde(default = "default_min_per_second")]
    pub min_per_second: u32,
    /// How far back requests and retries are counted (1 s ..= 1 h).
    #[serde(default = "default_window", with = "crate::duration::serde_humane")]
    pub window: Duration,
}

// `ratio` is never NaN: JSON cannot express it, and validation refuses non-finite
// values, so equality is total and routes can be compared as whole views.
impl Eq for RetryBudget {}

fn default_ratio() -> f64 {
    DEFAULT_RETRY_RATIO
}
fn default_min_per_second() -> u32 {
    DEFAULT_RETRY_MIN_PER_SECOND
}
fn default_window() -> Duration {
    DEFAULT_RETRY_WINDOW
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            ratio: DEFAULT_RETRY_RATIO,
            min_per_second: DEFAULT_RETRY_MIN_PER_SECOND,
            window: DEFAULT_RETRY_WINDOW,
        }
    }
}

/// A request rate limit: a sustained rate plus a burst, per key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained requests per second per key (may be below 1, e.g. 0.5).
    pub requests_per_second: f64,
    /// Requests a key may send at once after being idle (at least 1).
    pub burst: u32,
    /// What separates one caller's limit from another's.
    #[serde(default)]
    pub key: RateLimitKey,
}

// `requests_per_second` is never NaN: see the note on `RetryBudget`.
impl Eq for RateLimit {}

/// What a rate limit is counted per.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitKey {
    /// One shared limit for every caller.
    #[default]
    None,
    /// One limit per caller's verified SPIFFE id (plaintext callers share one).
    ClientIdentity,
    /// One limit per value of this request header (absent values share one).
    Header(String),
}

/// Header edits, applied in the order remove, set, add.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderEdits {
    /// Headers to set, replacing any values they had.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// Headers to append, keeping values already there.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    /// Headers to delete.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HeaderEdits {
    /// True when there is nothing to do, so callers can skip the edit step.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// Replaces the matched path prefix before the request is forwarded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathRewrite {
    /// What the matched prefix becomes; must start with `/`.
    pub prefix: String,
}

// ---------------------------------------------------------------------------------
// Server-side (inbound) routes
// ---------------------------------------------------------------------------------

/// The HTTP policy of one inbound port, on top of its mode and allow list: routes that
/// narrow who may call what, and server-side rate limits.
///
/// A request takes the most specific matching route (same precedence as client
/// routes). A request that matches no route is judged by the port's `allow` alone and
/// is not rate limited.
///
/// ```json
/// {"routes": [
///   {"name": "admin", "matches": [{"path": {"prefix": "/admin"}}],
///    "allow": ["spiffe://cluster.local/ns/ops/*"]},
///   {"name": "public", "rate_limit": {"requests_per_second": 50, "burst": 50,
///    "key": "client_identity"}}
/// ]}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ServerPolicy {
    /// Inbound routes of the port, most specific match wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<ServerRoute>,
}

impl ServerPolicy {
    /// True when the port has no inbound routes, so the wire form can leave it out.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// One inbound rule: which requests it covers, who may send them, and how fast.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ServerRoute {
    /// Unique within the port; used in metrics and rate-limit headers.
    pub name: String,
    /// Any of these selects the route; empty matches every request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<RouteMatch>,
    /// SPIFFE id patterns (`*` wildcards) allowed on this route; empty defers to the
    /// port's `allow` list. Patterns never match plaintext callers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Server-side rate limit; absent means unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Claims the end user's verified token must carry (port `jwt` needed): for each
    /// claim, one of the listed values (a claim that is a list must contain one; a
    /// `scope` or `scp` string is split at spaces; `a.b` reaches into objects).
    /// Checked in addition to `allow`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub claims: BTreeMap<String, Vec<String>>,
    /// Overrides the port's `jwt.required` on this route: `false` admits requests
    /// without a token (a token that is sent must still verify). A route with
    /// `claims` always needs a token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_required: Option<bool>,
}

// ---------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------

/// A policy that cannot be served, with the path of the field at fault
/// (e.g. `routes[1].backends[0].weight`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct PolicyError {
    /// Where the problem is, from the validated value down, `.`-separated.
    pub path: String,
    /// What is wrong there.
    pub problem: PolicyProblem,
}

/// What is wrong with one field of a policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyProblem {
    /// A route name is empty, too long, or has characters outside `[A-Za-z0-9._-]`.
    #[error("route name {0:?} must be 1 to 128 letters, digits, '.', '_' or '-'")]
    BadName(String),
    /// Two routes of one port share a name.
    #[error("route name {0:?} is used twice")]
    DuplicateName(String),
    /// Every backend has weight 0, so no request could be sent.
    #[error("every backend weight is 0; at least one must be positive")]
    AllWeightsZero,
    /// The weights add up to more than `u32::MAX`.
    #[error("the backend weights add up to more than {}", u32::MAX)]
    WeightsTooLarge,
    /// A backend names an empty service or an empty label.
    #[error("must not be empty")]
    Empty,
    /// An exact or prefix path or a rewrite does not start with `/`, or has a query.
    #[error("path {0:?} must start with '/' and have no '?' or '#'")]
    BadPath(String),
    /// A regular expression does not compile (or is too large).
    #[error("regular expression {pattern:?} is invalid: {reason}")]
    BadRegex {
        /// The expression as written.
        pattern: String,
        /// The compiler's complaint.
        reason: String,
    },
    /// Not a valid HTTP method token.
    #[error("{0:?} is not a valid HTTP method")]
    BadMethod(String),
    /// Not a valid HTTP header name.
    #[error("{0:?} is not a valid header name")]
    BadHeaderName(String),
    /// Not a valid HTTP header value (control characters other than tab).
    #[error("the value of header {0:?} has characters a header cannot carry")]
    BadHeaderValue(String),
    /// An edit touches a header the proxy owns.
    #[error("header {0:?} is reserved and cannot be edited")]
    ReservedHeader(String),
    /// Rate not a positive finite number.
    #[error("requests_per_second must be a positive number")]
    BadRate,
    /// A burst of 0 would refuse every request.
    #[error("burst must be at least 1")]
    ZeroBurst,
    /// Attempts outside 1..=10.
    #[error("attempts must be between 1 and {MAX_RETRY_ATTEMPTS}, got {0}")]
    BadAttempts(u32),
    /// A status code outside 100..=599.
    #[error("{0} is not an HTTP status code")]
    BadStatus(u16),
    /// A zero duration where a positive one is needed.
    #[error("must be longer than zero")]
    ZeroDuration,
    /// Backoff base above its ceiling.
    #[error("backoff_base {base:?} is longer than backoff_max {max:?}")]
    BackoffOrder {
        /// The base as written.
        base: Duration,
        /// The ceiling as written.
        max: Duration,
    },
    /// Retry ratio outside 0.0..=1.0 (above 1 retries could more than double load).
    #[error("ratio must be between 0.0 and 1.0")]
    BadRatio,
    /// Retry window outside 1 s ..= 1 h.
    #[error("window must be between 1s and 1h")]
    BadWindow,
    /// A rewrite on a route with a match that has no exact or prefix path.
    #[error("a prefix rewrite needs every match to have an exact or prefix path")]
    RewriteNeedsPathPrefix,
    /// A share outside 0..=100.
    #[error("percent must be between 0 and 100")]
    BadPercent,
    /// A fault with neither a delay nor an abort.
    #[error("a fault needs a delay, abort or both")]
    EmptyFault,
    /// A fault delay beyond [`crate::fault::MAX_FAULT_DELAY`].
    #[error("a fault delay must be at most 1h")]
    FaultDelayTooLong,
    /// An abort without a status to answer with.
    #[error("an abort needs http_status or grpc_status")]
    AbortWithoutStatus,
    /// A gRPC status outside 1..=16.
    #[error("grpc_status must be 1 to 16 (0 is OK, not a fault), got {0}")]
    BadGrpcStatus(u32),
    /// A circuit breaker bound of zero or above [`crate::breaker::MAX_MAX_REQUESTS`].
    #[error("must be 1 to 1048576, got {0}")]
    BadBreakerBound(u32),
    /// More `key_headers` than [`crate::cache::MAX_KEY_HEADERS`].
    #[error("a cache may name at most 16 key headers")]
    TooManyKeyHeaders,
    /// A cache freshness of zero, above a day, or a default above the maximum.
    #[error("must be more than 0 and at most 1d (default_ttl at most max_ttl)")]
    BadCacheTtl,
    /// A cache body bound of zero or above [`crate::cache::MAX_BODY_BYTES`].
    #[error("must be 1 to 16777216 bytes")]
    BadCacheBodyBytes,
    /// A transform body bound of zero or above [`crate::transform::MAX_BODY_BYTES`].
    #[error("must be 1 to 16777216 bytes")]
    BadTransformBodyBytes,
    /// A transform (or one direction of it) that changes nothing.
    #[error("a transform needs a request or response part, each with a convert or json edits")]
    EmptyTransform,
    /// An `xml_root` without `convert: json_to_xml`.
    #[error("xml_root is only used by convert: json_to_xml")]
    RootWithoutXml,
    /// Not a name an XML element can have.
    #[error("{0:?} is not an XML name (a letter, '_' or ':' first; then letters, digits, '-', '.', '_', ':')")]
    BadXmlName(String),
    /// More JSON edits than [`crate::transform::MAX_EDITS`].
    #[error("at most 64 JSON edits per direction")]
    TooManyEdits,
    /// Not a JSON Pointer to a part of the document.
    #[error("{0:?} is not a JSON Pointer to a member (RFC 6901: '/name/0/…'; the whole document cannot be edited)")]
    BadPointer(String),
    /// A move to a place inside what it moves.
    #[error("{0:?} is inside what is moved")]
    MoveIntoItself(String),
    /// An aggregation with no parts or more than [`crate::aggregate::MAX_PARTS`].
    #[error("an aggregation needs 1 to 16 parts")]
    BadPartCount,
    /// A part named like the member that carries a partial answer's errors.
    #[error("part name {0:?} is reserved for the errors of a partial answer")]
    ReservedPartName(String),
    /// A part's path that is not an origin-form target.
    #[error("path {0:?} must start with '/' and be a valid path and query (no spaces, no '#')")]
    BadPartPath(String),
    /// A field an aggregation route cannot have: its parts say where to send.
    #[error(
        "an aggregate route cannot have `{0}`: each part has its own backend, retry and timeout"
    )]
    AggregateAlongside(&'static str),
    /// A part's backend port without a service: the port of the route's own
    /// service is the one it is called on.
    #[error("a port is for another service: name it with `service`")]
    PortWithoutService,
    /// A timeout beyond [`MAX_TIMEOUT`].
    #[error("a timeout must be at most 366d")]
    TimeoutTooLong,
    /// A backend port of 0.
    #[error("a port must be 1 to 65535")]
    ZeroPort,
    /// A gateway hostname that is not a DNS name or a `*.` wildcard of one.
    #[error("hostname {0:?} must be a lowercase DNS name, or `*.` and one (e.g. `*.example.com`)")]
    BadHostname(String),
    /// A hostname served by two gateway hosts.
    #[error("hostname {0:?} is served twice")]
    DuplicateHostname(String),
    /// A gateway host without hostnames or without routes.
    #[error("a gateway host needs at least one hostname and one route")]
    EmptyGatewayHost,
    /// A cache that is not `shared` on a host that checks API keys or tokens.
    #[error("a host with api_keys or jwt removes the credentials a private cache would key on: mark the cache `shared: true` (answers for everyone) or leave it out")]
    PrivateCacheAtGateway,
    /// A gateway route backend that names no service (a gateway has no endpoints of its own).
    #[error("a gateway route backend must name a service (`namespace/name`) and a port")]
    GatewayBackendWithoutService,
    /// An allow list at a gateway, whose callers are end users, never mesh peers.
    #[error(
        "a gateway's callers have no mesh identity: authorize them by claims, not allow lists"
    )]
    AllowAtGateway,
    /// A usage plan's rate limit with a `key`: the API key is the key.
    #[error("a plan's rate limit is per API key; leave out `key`")]
    PlanRateKeyed,
    /// A quota of zero or above [`crate::api_keys::MAX_QUOTA`].
    #[error("a quota must be 1 to 4294967295 requests")]
    BadQuota,
    /// More keys than [`crate::api_keys::MAX_API_KEYS`].
    #[error("at most 100000 API keys per host")]
    TooManyApiKeys,
    /// Not 64 lowercase hex digits.
    #[error("must be the SHA-256 of the key as 64 lowercase hex digits (e.g. `printf %s KEY | sha256sum`); the key itself never goes in the source")]
    BadKeyHash,
    /// The key's id sent in the header the key itself travels in.
    #[error("must differ from `header`: the key's id would replace the key")]
    IdHeaderIsKeyHeader,
    /// Two keys with one hash.
    #[error("another key has this hash")]
    DuplicateKeyHash,
    /// A key of a plan that is not listed.
    #[error("no plan named {0:?}")]
    UnknownPlan(String),
    /// End-user authentication that cannot be served.
    #[error(transparent)]
    Jwt(#[from] crate::jwt::JwtProblem),
    /// Claims or `jwt_required` on a route of a port without `jwt` providers.
    #[error("claims and jwt_required need the port's jwt providers")]
    ClaimsWithoutJwt,
    /// A SPIFFE id pattern that is not well formed.
    #[error("identity pattern {pattern:?} is invalid: {reason}")]
    BadIdentityPattern {
        /// The pattern as written.
        pattern: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl PolicyError {
    pub(crate) fn new(path: impl Into<String>, problem: PolicyProblem) -> Self {
        PolicyError {
            path: path.into(),
            problem,
        }
    }

    /// Puts `outer` in front of the path, as the error travels up the tree.
    pub(crate) fn within(mut self, outer: impl fmt::Display) -> Self {
        self.path = if self.path.is_empty() {
            outer.to_string()
        } else {
            format!("{outer}.{}", self.path)
        };
        self
    }
}

/// Checks a port's routes: each route on its own, plus unique names. Errors start
/// with `routes[i]`.
pub fn validate_routes(routes: &[Route]) -> Result<(), PolicyError> {
    validate_route_list(routes, |r| &r.name, Route::validate)
}

/// Checks each route and that names are unique, so outbound and inbound route
/// lists report errors under the same `routes[i]` paths.
fn validate_route_list<T>(
    routes: &[T],
    name: impl Fn(&T) -> &String,
    validate: impl Fn(&T) -> Result<(), PolicyError>,
) -> Result<(), PolicyError> {
    let mut names = BTreeSet::new();
    for (i, route) in routes.iter().enumerate() {
        validate(route).map_err(|e| e.within(format!("routes[{i}]")))?;
        if !names.insert(name(route).as_str()) {
            return Err(PolicyError::new(
                format!("routes[{i}].name"),
                PolicyProblem::DuplicateName(name(route).clone()),
            ));
        }
    }
    Ok(())
}

impl Route {
    /// Checks everything the proxy will need to compile this route; paths in the
    /// error are relative to the route (`backends[0].weight`).
    pub fn validate(&self) -> Result<(), PolicyError> {
        validate_name(&self.name)?;
        validate_matches(&self.matches)?;
        validate_backends(&self.backends)?;
        for (field, value) in [
            ("timeout", self.timeout),
            ("per_try_timeout", self.per_try_timeout),
        ] {
            validate_timeout(value).map_err(|e| e.within(field))?;
        }
        if let Some(retry) = &self.retry {
            retry.validate().map_err(|e| e.within("retry"))?;
        }
        if let Some(limit) = &self.rate_limit {
            limit.validate().map_err(|e| e.within("rate_limit"))?;
        }
        self.request_headers
            .validate()
            .map_err(|e| e.within("request_headers"))?;
        self.response_headers
            .validate()
            .map_err(|e| e.within("response_headers"))?;
        if let Some(fault) = &self.fault {
            fault.validate().map_err(|e| e.within("fault"))?;
        }
        if let Some(mirror) = &self.mirror {
            crate::fault::validate_percent(mirror.percent)
                .map_err(|e| e.within("mirror.percent"))?;
            validate_backend(&mirror.backend).map_err(|e| e.within("mirror.backend"))?;
        }
        if let Some(cache) = &self.cache {
            cache.validate().map_err(|e| e.within("cache"))?;
        }
        if let Some(transform) = &self.transform {
            transform.validate().map_err(|e| e.within("transform"))?;
        }
        if let Some(aggregate) = &self.aggregate {
            aggregate.validate().map_err(|e| e.within("aggregate"))?;
            let alongside = [
                ("backends", !self.backends.is_empty()),
                ("retry", self.retry.is_some()),
                ("per_try_timeout", self.per_try_timeout.is_some()),
                ("rewrite", self.rewrite.is_some()),
                ("mirror", self.mirror.is_some()),
                ("cache", self.cache.is_some()),
                ("transform", self.transform.is_some()),
            ];
            if let Some((field, _)) = alongside.iter().find(|(_, set)| *set) {
                return Err(PolicyError::new(
                    *field,
                    PolicyProblem::AggregateAlongside(field),
                ));
            }
        }
        if let Some(rewrite) = &self.rewrite {
            validate_path(&rewrite.prefix).map_err(|e| e.within("rewrite.prefix"))?;
            let prefix_like = |m: &RouteMatch| {
                matches!(
                    m.path,
                    Some(PathMatch::Exact(_)) | Some(PathMatch::Prefix(_))
                )
            };
            if self.matches.is_empty() || !self.matches.iter().all(prefix_like) {
                return Err(PolicyError::new(
                    "rewrite",
                    PolicyProblem::RewriteNeedsPathPrefix,
                ));
            }
        }
        Ok(())
    }
}

impl ServerPolicy {
    /// Checks every inbound route and that names are unique; errors start with
    /// `routes[i]`.
    pub fn validate(&self) -> Result<(), PolicyError> {
        validate_route_list(&self.routes, |r| &r.name, ServerRoute::validate)
    }
}

impl ServerRoute {
    /// Checks matches, identity patterns and the rate limit; paths are relative to
    /// the route.
    pub fn validate(&self) -> Result<(), PolicyError> {
        validate_name(&self.name)?;
        validate_matches(&self.matches)?;
        for (i, pattern) in self.allow.iter().enumerate() {
            crate::identity::IdentityPattern::parse(pattern).map_err(|e| {
                PolicyError::new(
                    format!("allow[{i}]"),
                    PolicyProblem::BadIdentityPattern {
                        pattern: e.pattern,
                        reason: e.reason,
                    },
                )
            })?;
        }
        if let Some(limit) = &self.rate_limit {
            limit.validate().map_err(|e| e.within("rate_limit"))?;
        }
        for (claim, values) in &self.claims {
            if claim.is_empty() || values.is_empty() || values.iter().any(String::is_empty) {
                return Err(PolicyError::new(
                    format!("claims.{claim}"),
                    PolicyProblem::Empty,
                ));
            }
        }
        Ok(())
    }

    /// Whether this route asks anything of the end user's token.
    pub fn uses_jwt(&self) -> bool {
        !self.claims.is_empty() || self.jwt_required.is_some()
    }
}

/// Checks an inbound port's end-user authentication together with its routes: the
/// providers themselves, and that no route asks for claims the port cannot verify.
pub fn validate_port_auth(
    jwt: Option<&crate::jwt::JwtPolicy>,
    server: &ServerPolicy,
) -> Result<(), PolicyError> {
    match jwt {
        Some(jwt) => jwt.validate().map_err(|e| e.within("jwt")),
        None => match server.routes.iter().position(ServerRoute::uses_jwt) {
            Some(i) => Err(PolicyError::new(
                format!("routes[{i}]"),
                PolicyProblem::ClaimsWithoutJwt,
            )),
            None => Ok(()),
        },
    }
}

impl RetryPolicy {
    /// Checks attempts, conditions, backoff and budget; paths are relative to the
    /// policy.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if !(1..=MAX_RETRY_ATTEMPTS).contains(&self.attempts) {
            return Err(PolicyError::new(
                "attempts",
                PolicyProblem::BadAttempts(self.attempts),
            ));
        }
        for (i, condition) in self.conditions.iter().enumerate() {
            if let RetryOn::Status(code) = condition {
                if !(100..=599).contains(code) {
                    return Err(PolicyError::new(
                        format!("conditions[{i}]"),
                        PolicyProblem::BadStatus(*code),
                    ));
                }
            }
        }
        if self.backoff_base.is_zero() {
            return Err(PolicyError::new(
                "backoff_base",
                PolicyProblem::ZeroDuration,
            ));
        }
        if self.backoff_base > self.backoff_max {
            return Err(PolicyError::new(
                "backoff_max",
                PolicyProblem::BackoffOrder {
                    base: self.backoff_base,
                    max: self.backoff_max,
                },
            ));
        }
        if let Some(budget) = &self.budget {
            budget.validate().map_err(|e| e.within("budget"))?;
        }
        Ok(())
    }
}

impl RetryBudget {
    /// Checks the ratio (0..=1) and the window (1 s ..= 1 h).
    pub fn validate(&self) -> Result<(), PolicyError> {
        if !(self.ratio.is_finite() && (0.0..=1.0).contains(&self.ratio)) {
            return Err(PolicyError::new("ratio", PolicyProblem::BadRatio));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&self.window) {
            return Err(PolicyError::new("window", PolicyProblem::BadWindow));
        }
        Ok(())
    }
}

impl RateLimit {
    /// Checks that the rate is positive and finite, the burst at least 1, and a
    /// header key a valid header name.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if !(self.requests_per_second.is_finite() && self.requests_per_second > 0.0) {
            return Err(PolicyError::new(
                "requests_per_second",
                PolicyProblem::BadRate,
            ));
        }
        if self.burst == 0 {
            return Err(PolicyError::new("burst", PolicyProblem::ZeroBurst));
        }
        if let RateLimitKey::Header(name) = &self.key {
            validate_header_name(name).map_err(|e| e.within("key.header"))?;
        }
        Ok(())
    }
}

impl HeaderEdits {
    /// Checks names and values, and that no reserved header is touched.
    pub fn validate(&self) -> Result<(), PolicyError> {
        for (field, map) in [("set", &self.set), ("add", &self.add)] {
            for (name, value) in map {
                validate_edited_name(name).map_err(|e| e.within(field))?;
                if http::HeaderValue::from_str(value).is_err() {
                    return Err(PolicyError::new(
                        format!("{field}.{name}"),
                        PolicyProblem::BadHeaderValue(name.clone()),
                    ));
                }
            }
        }
        for (i, name) in self.remove.iter().enumerate() {
            validate_edited_name(name).map_err(|e| e.within(format!("remove[{i}]")))?;
        }
        Ok(())
    }
}

/// A timeout, if set, is longer than zero and at most [`MAX_TIMEOUT`].
pub(crate) fn validate_timeout(timeout: Option<Duration>) -> Result<(), PolicyError> {
    match timeout {
        Some(Duration::ZERO) => Err(PolicyError::new("", PolicyProblem::ZeroDuration)),
        Some(t) if t > MAX_TIMEOUT => Err(PolicyError::new("", PolicyProblem::TimeoutTooLong)),
        _ => Ok(()),
    }
}

pub(crate) fn validate_name(name: &str) -> Result<(), PolicyError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_ROUTE_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(PolicyError::new(
            "name",
            PolicyProblem::BadName(name.to_string()),
        ))
    }
}

fn validate_matches(matches: &[RouteMatch]) -> Result<(), PolicyError> {
    for (i, m) in matches.iter().enumerate() {
        m.validate()
            .map_err(|e| e.within(format!("matches[{i}]")))?;
    }
    Ok(())
}

impl RouteMatch {
    /// Checks the path, method and header parts; paths are relative to the match.
    pub fn validate(&self) -> Result<(), PolicyError> {
        match &self.path {
            Some(PathMatch::Exact(p)) => validate_path(p).map_err(|e| e.within("path.exact"))?,
            Some(PathMatch::Prefix(p)) => validate_path(p).map_err(|e| e.within("path.prefix"))?,
            Some(PathMatch::Regex(re)) => validate_regex(re).map_err(|e| e.within("path.regex"))?,
            None => {}
        }
        if let Some(method) = &self.method {
            if http::Method::from_bytes(method.as_bytes()).is_err() {
                return Err(PolicyError::new(
                    "method",
                    PolicyProblem::BadMethod(method.clone()),
                ));
            }
        }
        for (i, h) in self.headers.iter().enumerate() {
            let at = format!("headers[{i}]");
            validate_header_name(&h.name).map_err(|e| e.within(format!("{at}.name")))?;
            match &h.value {
                StringMatch::Exact(v) => {
                    if http::HeaderValue::from_str(v).is_err() {
                        return Err(PolicyError::new(
                            format!("{at}.value.exact"),
                            PolicyProblem::BadHeaderValue(h.name.clone()),
                        ));
                    }
                }
                StringMatch::Regex(re) => {
                    validate_regex(re).map_err(|e| e.within(format!("{at}.value.regex")))?
                }
            }
        }
        Ok(())
    }
}

fn validate_backends(backends: &[WeightedBackend]) -> Result<(), PolicyError> {
    let mut total: u64 = 0;
    for (i, b) in backends.iter().enumerate() {
        total += u64::from(b.weight);
        if total > u64::from(u32::MAX) {
            return Err(PolicyError::new(
                format!("backends[{i}].weight"),
                PolicyProblem::WeightsTooLarge,
            ));
        }
        validate_backend(b).map_err(|e| e.within(format!("backends[{i}]")))?;
    }
    if !backends.is_empty() && total == 0 {
        return Err(PolicyError::new("backends", PolicyProblem::AllWeightsZero));
    }
    Ok(())
}

/// One backend's service and subset labels are not empty.
pub(crate) fn validate_backend(b: &WeightedBackend) -> Result<(), PolicyError> {
    if b.service.as_deref() == Some("") {
        return Err(PolicyError::new("service", PolicyProblem::Empty));
    }
    if b.port == Some(0) {
        return Err(PolicyError::new("port", PolicyProblem::ZeroPort));
    }
    if b.subset.keys().any(String::is_empty) {
        return Err(PolicyError::new("subset", PolicyProblem::Empty));
    }
    Ok(())
}

fn validate_path(path: &str) -> Result<(), PolicyError> {
    if path.starts_with('/') && !path.contains(['?', '#']) {
        Ok(())
    } else {
        Err(PolicyError::new(
            "",
            PolicyProblem::BadPath(path.to_string()),
        ))
    }
}

fn validate_regex(pattern: &str) -> Result<(), PolicyError> {
    regex_builder(pattern).build().map(drop).map_err(|e| {
        PolicyError::new(
            "",
            PolicyProblem::BadRegex {
                pattern: pattern.to_string(),
                reason: e.to_string(),
            },
        )
    })
}

pub(crate) fn validate_header_name(name: &str) -> Result<(), PolicyError> {
    match http::HeaderName::from_bytes(name.as_bytes()) {
        Ok(_) => Ok(()),
        Err(_) => Err(PolicyError::new(
            "",
            PolicyProblem::BadHeaderName(name.to_string()),
        )),
    }
}

/// A header name the policy may write: valid, and not reserved ([`is_reserved_header`]).
pub(crate) fn validate_edited_name(name: &str) -> Result<(), PolicyError> {
    validate_header_name(name).map_err(|e| e.within(name))?;
    if is_reserved_header(name) {
        return Err(PolicyError::new(
            name,
            PolicyProblem::ReservedHeader(name.to_string()),
        ));
    }
    Ok(())
}

/// The anchored form of a policy regex: policy expressions must match a whole path or
/// header value, so `^(?:…)$` is added around them.
pub fn anchored_regex(pattern: &str) -> String {
    format!("^(?:{pattern})$")
}

/// A builder for a policy regex, anchored and size-limited the same way everywhere
/// (validation here and compilation in the proxy), so both always agree.
pub fn regex_builder(pattern: &str) -> regex::RegexBuilder {
    let mut builder = regex::RegexBuilder::new(&anchored_regex(pattern));
    builder.size_limit(REGEX_SIZE_LIMIT);
    builder
}

// ---------------------------------------------------------------------------------
// Serde helpers
// ---------------------------------------------------------------------------------

impl Serialize for RetryOn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            RetryOn::ServerError => s.serialize_str("5xx"),
            RetryOn::GatewayError => s.serialize_str("gateway-error"),
            RetryOn::ConnectFailure => s.serialize_str("connect-failure"),
            RetryOn::Reset => s.serialize_str("reset"),
            RetryOn::Status(code) => s.serialize_u16(*code),
        }
    }
}

impl<'de> Deserialize<'de> for RetryOn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = RetryOn;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "\"5xx\", \"gateway-error\", \"connect-failure\", \"reset\" or a status code",
                )
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RetryOn, E> {
                u16::try_from(v)
                    .map(RetryOn::Status)
                    .map_err(|_| E::custom(format!("{v} is not an HTTP status code")))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RetryOn, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format!("{v} is not an HTTP status code")))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RetryOn, E> {
                match v {
                    "5xx" => Ok(RetryOn::ServerError),
                    "gateway-error" => Ok(RetryOn::GatewayError),
                    "connect-failure" => Ok(RetryOn::ConnectFailure),
                    "reset" => Ok(RetryOn::Reset),
                    other => other.parse::<u16>().map(RetryOn::Status).map_err(|_| {
                        E::custom(format!(
                            "unknown retry condition {other:?}: use 5xx, gateway-error, \
                             connect-failure, reset or a status code"
                        ))
                    }),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{
      "name": "api-v2",
      "matches": [
        {"path": {"prefix": "/api"}, "method": "GET",
         "headers": [{"name": "x-canary", "value": {"exact": "true"}}]},
        {"path": {"prefix": "/api"},
         "headers": [{"name": "x-version", "value": {"regex": "2(\\.[0-9]+)?"}}]}
      ],
      "backends": [
        {"weight": 90, "subset": {"version": "v1"}},
        {"weight": 10, "subset": {"version": "v2"}},
        {"weight": 0, "service": "api-fallback"}
      ],
      "timeout": "2s",
      "per_try_timeout": "500ms",
      "retry": {"attempts": 3, "conditions": ["gateway-error", "connect-failure", 429],
                "backoff_base": "25ms", "backoff_max": "250ms",
                "budget": {"ratio": 0.2, "min_per_second": 10, "window": "10s"}},
      "rate_limit": {"requests_per_second": 100, "burst": 20, "key": {"header": "x-api-key"}},
      "request_headers": {"set": {"x-route": "api-v2"}, "add": {"via": "pillion"},
                          "remove": ["x-debug"]},
      "response_headers": {"remove": ["server"]},
      "rewrite": {"prefix": "/v2"}
    }"#;

    fn example() -> Route {
        serde_json::from_str(EXAMPLE).unwrap()
    }

    #[test]
    fn documented_example_parses_and_validates() {
        let route = example();
        route.validate().unwrap();
        assert_eq!(route.matches.len(), 2);
        assert_eq!(
            route.matches[0].path,
            Some(PathMatch::Prefix("/api".into()))
        );
        assert_eq!(route.backends[1].weight, 10);
        assert_eq!(route.backends[2].service.as_deref(), Some("api-fallback"));
        assert_eq!(route.timeout, Some(Duration::from_secs(2)));
        assert_eq!(route.per_try_timeout, Some(Duration::from_millis(500)));
        let retry = route.retry.as_ref().unwrap();
        assert_eq!(
            retry.conditions,
            [
                RetryOn::GatewayError,
                RetryOn::ConnectFailure,
                RetryOn::Status(429)
            ]
        );
        assert_eq!(retry.budget_or_default(), RetryBudget::default());
        let limit = route.rate_limit.as_ref().unwrap();
        assert_eq!(limit.key, RateLimitKey::Header("x-api-key".into()));
        assert_eq!(route.rewrite.as_ref().unwrap().prefix, "/v2");
    }

    #[test]
    fn round_trips_through_json() {
        let route = example();
        let text = serde_json::to_string(&route).unwrap();
        let back: Route = serde_json::from_str(&text).unwrap();
        assert_eq!(back, route);
        assert!(text.contains(r#""timeout":"2s""#), "{text}");
        assert!(text.contains(r#""per_try_timeout":"500ms""#), "{text}");
    }

    #[test]
    fn minimal_route_takes_defaults() {
        let route: Route = serde_json::from_str(r#"{"name": "all"}"#).unwrap();
        route.validate().unwrap();
        assert!(route.matches.is_empty() && route.backends.is_empty());
        assert_eq!(route.retry, None);
        let retry: RetryPolicy = serde_json::from_str("{}").unwrap();
        assert_eq!(retry, RetryPolicy::default());
        assert_eq!(retry.attempts, DEFAULT_RETRY_ATTEMPTS);
        let budget = retry.budget_or_default();
        assert_eq!(budget.ratio, 0.2);
        assert_eq!(budget.min_per_second, 10);
        assert_eq!(budget.window, Duration::from_secs(10));
        let backend: WeightedBackend = serde_json::from_str("{}").unwrap();
        assert_eq!(backend.weight, 1);
        let limit: RateLimit =
            serde_json::from_str(r#"{"requests_per_second": 5, "burst": 1}"#).unwrap();
        assert_eq!(limit.key, RateLimitKey::None);
        let key: RateLimitKey = serde_json::from_str(r#""client_identity""#).unwrap();
        assert_eq!(key, RateLimitKey::ClientIdentity);
    }

    #[test]
    fn unknown_fields_refused_in_small_shapes_but_not_on_routes() {
        let typo = r#"{"name": "r", "matches": [{"header": []}]}"#;
        let err = serde_json::from_str::<Route>(typo).unwrap_err().to_string();
        assert!(err.contains("header"), "{err}");
        let typo = r#"{"weight": 1, "subsets": {"version": "v2"}}"#;
        assert!(serde_json::from_str::<WeightedBackend>(typo).is_err());
        let newer = r#"{"name": "r", "compress": {"gzip": {"level": {}}}}"#;
        let route: Route = serde_json::from_str(newer).unwrap();
        assert_eq!(route.name, "r");
    }

    #[test]
    fn mirrors_are_checked_and_counted_as_backends() {
        let route = |json: &str| serde_json::from_str::<Route>(json).unwrap();
        let good = route(
            r#"{"name": "r", "backends": [{"service": "a"}],
            "mirror": {"backend": {"service": "shadow", "subset": {"v": "2"}}, "percent": 12.5}}"#,
        );
        good.validate().unwrap();
        let sent: Vec<_> = good
            .sent_to()
            .filter_map(|b| b.service.as_deref())
            .collect();
        assert_eq!(sent, ["a", "shadow"]);
        for (json, path) in [
            (
                r#"{"name": "r", "mirror": {"backend": {}, "percent": 101}}"#,
                "mirror.percent",
            ),
            (
                r#"{"name": "r", "mirror": {"backend": {"service": ""}}}"#,
                "mirror.backend.service",
            ),
            (
                r#"{"name": "r", "mirror": {"backend": {"subset": {"": "x"}}}}"#,
                "mirror.backend.subset",
            ),
            (
                r#"{"name": "r", "backends": [{"service": ""}]}"#,
                "backends[0].service",
            ),
        ] {
            assert_eq!(route(json).validate().unwrap_err().path, path, "{json}");
        }
    }

    #[test]
    fn retry_conditions_parse_from_strings_and_numbers() {
        let conditions: Vec<RetryOn> =
            serde_json::from_str(r#"["5xx", "reset", "503", 429]"#).unwrap();
        assert_eq!(
            conditions,
            [
                RetryOn::ServerError,
                RetryOn::Reset,
                RetryOn::Status(503),
                RetryOn::Status(429)
            ]
        );
        let err = serde_json::from_str::<Vec<RetryOn>>(r#"["5xxx"]"#).unwrap_err();
        assert!(err.to_string().contains("unknown retry condition"), "{err}");
        assert!(serde_json::from_str::<Vec<RetryOn>>("[70000]").is_err());
        assert!(serde_json::from_str::<Vec<RetryOn>>("[-1]").is_err());
    }

    #[test]
    fn durations_are_humane() {
        let route: Route = serde_json::from_str(r#"{"name": "r", "timeout": "1m30s"}"#).unwrap();
        assert_eq!(route.timeout, Some(Duration::from_secs(90)));
        let err = serde_json::from_str::<Route>(r#"{"name": "r", "timeout": 2}"#);
        assert!(err.is_err(), "bare numbers are refused");
        let err = serde_json::from_str::<Route>(r#"{"name": "r", "timeout": "2"}"#);
        assert!(err.is_err(), "numbers without a unit are refused");
    }

    fn problem_at(route: &Route) -> (String, PolicyProblem) {
        let e = route.validate().unwrap_err();
        (e.path, e.problem)
    }

    #[test]
    fn validation_names_the_faulty_field() {
        let mut r = example();
        r.backends.iter_mut().for_each(|b| b.weight = 0);
        assert_eq!(
            problem_at(&r),
            ("backends".into(), PolicyProblem::AllWeightsZero)
        );

        let mut r = example();
        r.backends[0].weight = u32::MAX;
        assert_eq!(
            problem_at(&r),
            ("backends[1].weight".into(), PolicyProblem::WeightsTooLarge)
        );

        let mut r = example();
        r.rewrite = None;
        r.matches[1].path = Some(PathMatch::Regex("(unclosed".into()));
        let (path, problem) = problem_at(&r);
        assert_eq!(path, "matches[1].path.regex");
        assert!(matches!(problem, PolicyProblem::BadRegex { .. }));

        let mut r = example();
        r.matches[0].headers[0].name = "bad header".into();
        assert_eq!(problem_at(&r).0, "matches[0].headers[0].name");

        let mut r = example();
        r.matches[0].method = Some("G E T".into());
        assert_eq!(problem_at(&r).0, "matches[0].method");

        let mut r = example();
        r.rate_limit.as_mut().unwrap().burst = 0;
        assert_eq!(
            problem_at(&r),
            ("rate_limit.burst".into(), PolicyProblem::ZeroBurst)
        );

        let mut r = example();
        r.rate_limit.as_mut().unwrap().requests_per_second = 0.0;
        assert_eq!(problem_at(&r).0, "rate_limit.requests_per_second");
        r.rate_limit.as_mut().unwrap().requests_per_second = f64::INFINITY;
        assert_eq!(problem_at(&r).1, PolicyProblem::BadRate);

        let mut r = example();
        r.rate_limit.as_mut().unwrap().key = RateLimitKey::Header("x y".into());
        assert_eq!(problem_at(&r).0, "rate_limit.key.header");

        let mut r = example();
        r.retry.as_mut().unwrap().attempts = 11;
        assert_eq!(
            problem_at(&r),
            ("retry.attempts".into(), PolicyProblem::BadAttempts(11))
        );
        r.retry.as_mut().unwrap().attempts = 0;
        assert_eq!(problem_at(&r).1, PolicyProblem::BadAttempts(0));

        let mut r = example();
        r.retry
            .as_mut()
            .unwrap()
            .conditions
            .push(RetryOn::Status(42));
        assert_eq!(problem_at(&r).0, "retry.conditions[3]");

        let mut r = example();
        r.retry.as_mut().unwrap().backoff_base = Duration::from_secs(5);
        assert_eq!(problem_at(&r).0, "retry.backoff_max");

        let mut r = example();
        r.retry.as_mut().unwrap().budget.as_mut().unwrap().ratio = 1.5;
        assert_eq!(
            problem_at(&r),
            ("retry.budget.ratio".into(), PolicyProblem::BadRatio)
        );

        let mut r = example();
        r.timeout = Some(Duration::ZERO);
        assert_eq!(
            problem_at(&r),
            ("timeout".into(), PolicyProblem::ZeroDuration)
        );

        let mut r = example();
        r.request_headers
            .set
            .insert("Transfer-Encoding".into(), "chunked".into());
        assert_eq!(problem_at(&r).0, "request_headers.set.Transfer-Encoding");

        let mut r = example();
        r.request_headers.remove.push(PEER_IDENTITY_HEADER.into());
        let (path, problem) = problem_at(&r);
        assert_eq!(
            path,
            format!("request_headers.remove[1].{PEER_IDENTITY_HEADER}")
        );
        assert!(matches!(problem, PolicyProblem::ReservedHeader(_)));

        // Every one of the proxy's own headers is reserved, in any case.
        let mut r = example();
        r.request_headers
            .set
            .insert("Pillion-Orig-Proto".into(), "HTTP/1.0".into());
        assert!(matches!(problem_at(&r).1, PolicyProblem::ReservedHeader(_)));
        assert!(!is_reserved_header("x-pillion") && is_reserved_header("PILLION-x"));

        let mut r = example();
        r.response_headers
            .add
            .insert("x-a".into(), "line\nbreak".into());
        assert_eq!(problem_at(&r).0, "response_headers.add.x-a");

        let mut r = example();
        r.rewrite = Some(PathRewrite {
            prefix: "v2".into(),
        });
        assert_eq!(problem_at(&r).0, "rewrite.prefix");

        let mut r = example();
        r.matches[0].path = Some(PathMatch::Exact("/a?b".into()));
        assert_eq!(problem_at(&r).0, "matches[0].path.exact");

        let mut r = example();
        r.name = "has space".into();
        assert_eq!(problem_at(&r).0, "name");
    }

    #[test]
    fn rewrite_needs_prefix_or_exact_matches() {
        let mut r = example();
        r.matches[1].path = Some(PathMatch::Regex("/v[0-9]+/items/[^/]+".into()));
        assert_eq!(
            problem_at(&r),
            ("rewrite".into(), PolicyProblem::RewriteNeedsPathPrefix)
        );
        r.matches[1].path = None;
        assert_eq!(problem_at(&r).1, PolicyProblem::RewriteNeedsPathPrefix);
        r.matches[1].path = Some(PathMatch::Exact("/api".into()));
        r.validate().unwrap();
        r.matches.clear();
        assert_eq!(problem_at(&r).1, PolicyProblem::RewriteNeedsPathPrefix);
    }

    #[test]
    fn route_lists_get_indexed_paths_and_unique_names() {
        let mut bad = example();
        bad.rewrite = None;
        bad.backends[0].weight = u32::MAX;
        let ok: Route = serde_json::from_str(r#"{"name": "ok"}"#).unwrap();
        let err = validate_routes(&[ok.clone(), bad]).unwrap_err();
        assert_eq!(err.path, "routes[1].backends[1].weight");
        assert_eq!(
            err.to_string(),
            format!(
                "routes[1].backends[1].weight: the backend weights add up to more than {}",
                u32::MAX
            )
        );
        let err = validate_routes(&[ok.clone(), ok]).unwrap_err();
        assert_eq!(err.path, "routes[1].name");
        assert_eq!(err.problem, PolicyProblem::DuplicateName("ok".into()));
        validate_routes(&[]).unwrap();
    }

    #[test]
    fn server_policy_parses_and_validates() {
        let json = r#"{"routes": [
          {"name": "admin", "matches": [{"path": {"prefix": "/admin"}}],
           "allow": ["spiffe://cluster.local/ns/ops/*"]},
          {"name": "public", "rate_limit": {"requests_per_second": 50, "burst": 50,
           "key": "client_identity"}}
        ]}"#;
        let policy: ServerPolicy = serde_json::from_str(json).unwrap();
        policy.validate().unwrap();
        assert_eq!(policy.routes[0].allow.len(), 1);
        assert_eq!(
            policy.routes[1].rate_limit.as_ref().unwrap().key,
            RateLimitKey::ClientIdentity
        );

        let mut bad = policy.clone();
        bad.routes[0]
            .allow
            .push("spiffe://cluster.local/ns/a*".into());
        let err = bad.validate().unwrap_err();
        assert_eq!(err.path, "routes[0].allow[1]");
        let mut bad = policy;
        bad.routes[1].name = "admin".into();
        assert_eq!(bad.validate().unwrap_err().path, "routes[1].name");
    }

    #[test]
    fn regexes_are_anchored() {
        let re = regex_builder("/v[0-9]+").build().unwrap();
        assert!(re.is_match("/v2"));
        assert!(!re.is_match("/v2/x"));
        assert!(!re.is_match("/x/v2"));
        assert!(regex_builder("a|b").build().unwrap().is_match("b"));
        assert!(!regex_builder("a|b").build().unwrap().is_match("ab"));
    }
}
