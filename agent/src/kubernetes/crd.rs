//! The `pillion.io/v1alpha1` policy objects (`deploy/crds/`) as serde types. They are
//! watched as untyped objects and parsed here one by one, so one odd object is skipped
//! with a warning instead of breaking the watch of all the others.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::collections::BTreeMap;

/// API group of every Pillion policy kind.
pub const GROUP: &str = "pillion.io";
/// The one served version.
pub const VERSION: &str = "v1alpha1";

/// The five policy kinds with their plural resource names.
pub const KINDS: [(&str, &str); 5] = [
    ("Route", "routes"),
    ("RetryPolicy", "retrypolicies"),
    ("RateLimitPolicy", "ratelimitpolicies"),
    ("AuthorizationPolicy", "authorizationpolicies"),
    ("AuthenticationPolicy", "authenticationpolicies"),
];

/// How to reach one policy kind through the API, for an untyped watch.
pub fn api_resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, VERSION, kind), plural)
}

/// A policy object after parsing: its metadata and typed spec.
#[derive(Debug, Clone)]
pub struct Object<S> {
    /// Namespace (policies are namespaced).
    pub namespace: String,
    /// Name within the namespace.
    pub name: String,
    /// The parsed `spec`.
    pub spec: S,
}

/// Parses the `spec` of an untyped object, or says why it cannot be used.
pub fn parse<S: DeserializeOwned>(obj: &DynamicObject) -> Result<Object<S>, String> {
    let meta: &ObjectMeta = &obj.metadata;
    let name = meta.name.clone().unwrap_or_default();
    let namespace = meta.namespace.clone().unwrap_or_default();
    let spec = obj
        .data
        .get("spec")
        .cloned()
        .ok_or_else(|| format!("{namespace}/{name} has no spec"))?;
    let spec = serde_json::from_value(spec)
        .map_err(|e| format!("{namespace}/{name} has an unusable spec: {e}"))?;
    Ok(Object {
        namespace,
        name,
        spec,
    })
}

/// `Route.spec`: Gateway API HTTPRoute, trimmed.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteSpec {
    /// The Service ports routed, or the gateways (`kind: Gateway`) serving it.
    pub parent_refs: Vec<ParentRef>,
    /// The hosts a gateway serves the Route's rules for (gateway parents only).
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// Rules, in order.
    pub rules: Vec<RouteRule>,
}

/// A Service (and optionally one port) a Route attaches to, or a gateway.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    /// `Service` (the default) or `Gateway`: a gateway named by its ServiceAccount.
    #[serde(default)]
    pub kind: Option<String>,
    /// Service (or gateway ServiceAccount) name.
    pub name: String,
    /// Service namespace; defaults to the Route's.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Service port; absent means every port.
    #[serde(default)]
    pub port: Option<u16>,
}

/// One rule of a Route.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteRule {
    /// Name in metrics and traces.
    #[serde(default)]
    pub name: Option<String>,
    /// Any of these selects the rule.
    #[serde(default)]
    pub matches: Vec<HttpMatch>,
    /// Weighted destinations.
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
    /// Header edits and rewrites.
    #[serde(default)]
    pub filters: Vec<Filter>,
    /// Request and per-try timeouts.
    #[serde(default)]
    pub timeouts: Option<Timeouts>,
}

/// One match of a rule.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpMatch {
    /// Path condition.
    #[serde(default)]
    pub path: Option<PathCondition>,
    /// Method condition.
    #[serde(default)]
    pub method: Option<String>,
    /// Header conditions.
    #[serde(default)]
    pub headers: Vec<HeaderCondition>,
}

/// `Exact`, `PathPrefix` (the default) or `RegularExpression` on the path.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PathCondition {
    /// The kind of comparison.
    #[serde(default = "path_prefix", rename = "type")]
    pub kind: String,
    /// The path or expression.
    pub value: String,
}

fn path_prefix() -> String {
    "PathPrefix".to_string()
}

/// `Exact` (the default) or `RegularExpression` on one header.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderCondition {
    /// The kind of comparison.
    #[serde(default = "exact", rename = "type")]
    pub kind: String,
    /// Header name.
    pub name: String,
    /// Value or expression.
    pub value: String,
}

fn exact() -> String {
    "Exact".to_string()
}

/// A weighted destination: a Service of the Route's namespace, maybe a label subset.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendRef {
    /// Service name.
    pub name: String,
    /// Service namespace, for a gateway's Routes only (the Route's by default).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Service port; absent: the parent port's number (required from a gateway).
    #[serde(default)]
    pub port: Option<u16>,
    /// Relative share of traffic.
    #[serde(default = "one")]
    pub weight: u32,
    /// Pod labels selecting a subset.
    #[serde(default)]
    pub subset: BTreeMap<String, String>,
}

fn one() -> u32 {
    1
}

/// A rule filter.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Filter {
    /// `RequestHeaderModifier`, `ResponseHeaderModifier` or `URLRewrite`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Request header edits.
    #[serde(default)]
    pub request_header_modifier: Option<HeaderModifier>,
    /// Response header edits.
    #[serde(default)]
    pub response_header_modifier: Option<HeaderModifier>,
    /// Path rewrite.
    #[serde(default)]
    pub url_rewrite: Option<UrlRewrite>,
}

/// Gateway API header edits: lists of name/value pairs.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct HeaderModifier {
    /// Replace these headers.
    #[serde(default)]
    pub set: Vec<NameValue>,
    /// Append these headers.
    #[serde(default)]
    pub add: Vec<NameValue>,
    /// Delete these headers.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A header name and value.
#[derive(Debug, Clone, Deserialize)]
pub struct NameValue {
    /// Header name.
    pub name: String,
    /// Header value.
    pub value: String,
}

/// `urlRewrite` of a rule.
#[derive(Debug, Clone, Deserialize)]
pub struct UrlRewrite {
    /// The path part.
    pub path: PathRewrite,
}

/// `ReplacePrefixMatch` or `ReplaceFullPath`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PathRewrite {
    /// The kind of rewrite.
    #[serde(rename = "type")]
    pub kind: String,
    /// New prefix, for `ReplacePrefixMatch`.
    #[serde(default)]
    pub replace_prefix_match: Option<String>,
    /// New path, for `ReplaceFullPath`.
    #[serde(default)]
    pub replace_full_path: Option<String>,
}

/// Durations of a rule.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    /// The whole request, retries included.
    #[serde(default)]
    pub request: Option<String>,
    /// Each try.
    #[serde(default)]
    pub backend_request: Option<String>,
}

/// What a RetryPolicy or RateLimitPolicy applies to.
#[derive(Debug, Clone, Deserialize)]
pub struct TargetRef {
    /// `Service` or `Route`.
    pub kind: String,
    /// Its name, in the policy's namespace.
    pub name: String,
    /// For a Service: one port; absent means every port.
    #[serde(default)]
    pub port: Option<u16>,
}

/// `RetryPolicy.spec`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicySpec {
    /// What it applies to.
    pub target_ref: TargetRef,
    /// Tries per request, the first included.
    #[serde(default)]
    pub attempts: Option<u32>,
    /// Retried outcomes (`5xx`, `gateway-error`, `connect-failure`, `reset`, `429`).
    #[serde(default)]
    pub conditions: Option<Vec<String>>,
    /// Also retry non-idempotent methods.
    #[serde(default)]
    pub retry_non_idempotent: bool,
    /// Deadline of each try.
    #[serde(default)]
    pub per_try_timeout: Option<String>,
    /// Backoff between tries.
    #[serde(default)]
    pub backoff: Option<Backoff>,
    /// Retry budget.
    #[serde(default)]
    pub budget: Option<Budget>,
}

/// Backoff between tries.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Backoff {
    /// First cap.
    #[serde(default)]
    pub base: Option<String>,
    /// Ceiling.
    #[serde(default)]
    pub max: Option<String>,
}

/// Retry budget.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Budget {
    /// Retries per request.
    #[serde(default)]
    pub ratio: Option<f64>,
    /// Retries per second regardless of traffic.
    #[serde(default)]
    pub min_per_second: Option<u32>,
    /// Counting window.
    #[serde(default)]
    pub window: Option<String>,
}

/// `RateLimitPolicy.spec`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitPolicySpec {
    /// What it applies to.
    pub target_ref: TargetRef,
    /// Sustained rate.
    pub requests_per_second: f64,
    /// Requests on top of the rate at once.
    #[serde(default)]
    pub burst: u32,
    /// What the limit is counted per.
    #[serde(default)]
    pub key: Option<RateLimitKeySpec>,
}

/// `None`, `ClientIdentity` or `Header` (with `header`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RateLimitKeySpec {
    /// The kind of key.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// The header, for `Header`.
    #[serde(default)]
    pub header: Option<String>,
}

/// `AuthorizationPolicy.spec`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    /// Pods of the namespace it applies to; empty selects all.
    #[serde(default)]
    pub pod_selector: Option<PodSelector>,
    /// The application port.
    pub port: u16,
    /// `Permissive` (default) or `Strict`.
    #[serde(default)]
    pub mode: Option<String>,
    /// Allowed SPIFFE id patterns; empty allows any mesh identity.
    #[serde(default)]
    pub allow: Vec<String>,
}

/// A label selector (only `matchLabels`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSelector {
    /// Labels a pod must all carry.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// `AuthenticationPolicy.spec`: end users' tokens on one port of the selected pods.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthenticationPolicySpec {
    /// Pods of the namespace it applies to; empty selects all.
    #[serde(default)]
    pub pod_selector: Option<PodSelector>,
    /// The application port (not with `gateway`).
    #[serde(default)]
    pub port: u16,
    /// A gateway's hosts instead of pods' port: the gateway's ServiceAccount (in
    /// the policy's namespace) and the hostnames its Routes serve.
    #[serde(default)]
    pub gateway: Option<GatewayTarget>,
    /// Whether a request without a token is refused.
    #[serde(default = "yes")]
    pub required: bool,
    /// JWT issuers and their keys.
    #[serde(default)]
    pub providers: Vec<ProviderSpec>,
    /// The introspection endpoint for opaque tokens.
    #[serde(default)]
    pub introspection: Option<IntrospectionSpec>,
    /// Claims per path, and paths open without a token.
    #[serde(default)]
    pub rules: Vec<AuthenticationRule>,
}

fn yes() -> bool {
    true
}

/// The gateway hosts an AuthenticationPolicy applies to.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayTarget {
    /// The gateway's ServiceAccount, in the policy's namespace.
    pub name: String,
    /// Its hosts the policy covers.
    pub hostnames: Vec<String>,
}

/// One JWT issuer, as the CRD spells it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProviderSpec {
    /// The `iss` of its tokens.
    pub issuer: String,
    /// Accepted audiences.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// The key set as JSON text.
    #[serde(default)]
    pub jwks: Option<String>,
    /// Where the agent fetches the key set.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// Where tokens travel.
    #[serde(default)]
    pub from: Vec<TokenPlace>,
    /// Tolerance for `exp` and `nbf`.
    #[serde(default)]
    pub clock_skew: Option<pillion_api::duration::HumaneDuration>,
    /// Claims copied to request headers.
    #[serde(default)]
    pub claim_headers: BTreeMap<String, String>,
    /// Whether the token goes on to the application.
    #[serde(default = "yes")]
    pub forward_token: bool,
}

/// A place a token travels: a header (with an optional scheme prefix) or a cookie.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenPlace {
    /// A request header.
    #[serde(default)]
    pub header: Option<HeaderPlace>,
    /// A cookie's name.
    #[serde(default)]
    pub cookie: Option<String>,
}

/// A header a token travels in.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderPlace {
    /// The header's name.
    pub name: String,
    /// Text in front of the token (`Bearer `).
    #[serde(default)]
    pub prefix: Option<String>,
}

/// The introspection endpoint, as the CRD spells it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IntrospectionSpec {
    /// Its Service: `name` (the policy's namespace) or `namespace/name`.
    pub service: String,
    /// The Service's port.
    pub port: u16,
    /// The path tokens are posted to.
    #[serde(default)]
    pub path: Option<String>,
    /// The `iss` an answer must carry.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Accepted audiences.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Where tokens travel.
    #[serde(default)]
    pub from: Vec<TokenPlace>,
    /// Longest wait for an answer.
    #[serde(default)]
    pub timeout: Option<pillion_api::duration::HumaneDuration>,
    /// How long an answer is reused.
    #[serde(default)]
    pub cache_ttl: Option<pillion_api::duration::HumaneDuration>,
    /// Tolerance for `exp` and `nbf`.
    #[serde(default)]
    pub clock_skew: Option<pillion_api::duration::HumaneDuration>,
    /// Members of the answer copied to request headers.
    #[serde(default)]
    pub claim_headers: BTreeMap<String, String>,
    /// Whether the token goes on to the application.
    #[serde(default = "yes")]
    pub forward_token: bool,
}

/// What one path needs of the end user.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthenticationRule {
    /// The rule's name (its index otherwise).
    #[serde(default)]
    pub name: Option<String>,
    /// The paths it covers.
    pub path: RulePath,
    /// Claims the token must carry here.
    #[serde(default)]
    pub claims: BTreeMap<String, Vec<String>>,
    /// `false` admits requests without a token here.
    #[serde(default)]
    pub jwt_required: Option<bool>,
}

/// A rule's paths: `Exact` or `PathPrefix` (the default), as Gateway API writes them.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RulePath {
    /// `Exact` or `PathPrefix`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// The path.
    pub value: String,
}
