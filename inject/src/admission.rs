//! The mutating admission webhook, as a pure function from an AdmissionReview v1
//! request body to the response body. The agent's HTTPS server calls [`review`] on
//! `POST /v1/inject` and sends back what it returns.
//!
//! The webhook never denies: every response has `allowed: true`. A pod that cannot
//! be injected is created without the sidecar and its creator sees why in the
//! response's `warnings` (which `kubectl` prints); the full reason also goes to
//! `status.message` and the agent's log. Only a body with no `request.uid` to answer
//! to is an error, which the server maps to HTTP 400.
//!
//! ```
//! use std::collections::BTreeMap;
//! use pillion_inject::{review, InjectConfig};
//!
//! // What the agent's namespace watch knows: annotations by namespace name.
//! let mut namespaces = BTreeMap::new();
//! namespaces.insert(
//!     "shop".to_owned(),
//!     BTreeMap::from([("pillion.io/inject".to_owned(), "enabled".to_owned())]),
//! );
//! let config = InjectConfig::default();
//!
//! let body = br#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
//!   "request": {"uid": "705ab4f5", "kind": {"group": "", "version": "v1", "kind": "Pod"},
//!     "resource": {"group": "", "version": "v1", "resource": "pods"},
//!     "namespace": "shop", "operation": "CREATE",
//!     "object": {"metadata": {"generateName": "web-"},
//!                "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}}}"#;
//! match review(body, |ns| namespaces.get(ns).cloned(), &config) {
//!     // HTTP 200, Content-Type: application/json
//!     Ok(response) => {
//!         let text = String::from_utf8(response).unwrap();
//!         assert!(text.contains(r#""allowed":true"#) && text.contains(r#""patchType":"JSONPatch""#));
//!     }
//!     // HTTP 400 with the message
//!     Err(error) => panic!("{error}"),
//! }
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::InjectConfig;
use crate::decide::Decision;
use crate::error::ReviewError;
use crate::inject::inject_pod;
use crate::patch;

/// The API version this webhook speaks (the only one it registers for).
pub const API_VERSION: &str = "admission.k8s.io/v1";
/// The `kind` of both request and response.
pub const KIND: &str = "AdmissionReview";
/// Warnings longer than this are cut; the API server may truncate them anyway.
const MAX_WARNING_LEN: usize = 256;
/// At most this many warnings go back; the rest are summarized.
const MAX_WARNINGS: usize = 16;

/// The envelope of a request or response.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionReview {
    /// `admission.k8s.io/v1`.
    pub api_version: String,
    /// `AdmissionReview`.
    pub kind: String,
    /// Present in requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<AdmissionRequest>,
    /// Present in responses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<AdmissionResponse>,
}

/// A group, version and kind, as the request names the object's type.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupVersionKind {
    /// API group, empty for the core group.
    #[serde(default)]
    pub group: String,
    /// API version.
    #[serde(default)]
    pub version: String,
    /// Kind, e.g. `Pod`.
    #[serde(default)]
    pub kind: String,
}

/// A group, version and resource, as the request names the endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupVersionResource {
    /// API group, empty for the core group.
    #[serde(default)]
    pub group: String,
    /// API version.
    #[serde(default)]
    pub version: String,
    /// Resource, e.g. `pods`.
    #[serde(default)]
    pub resource: String,
}

/// The parts of an admission request the injector reads; others are ignored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionRequest {
    /// Identifies this call; the response must echo it.
    pub uid: String,
    /// Type of the object.
    #[serde(default)]
    pub kind: GroupVersionKind,
    /// Resource being requested.
    #[serde(default)]
    pub resource: GroupVersionResource,
    /// Subresource, e.g. `status`; empty for the object itself.
    #[serde(default)]
    pub sub_resource: Option<String>,
    /// Object name; often empty on CREATE (pods from `generateName`).
    #[serde(default)]
    pub name: Option<String>,
    /// Namespace of the object.
    #[serde(default)]
    pub namespace: Option<String>,
    /// `CREATE`, `UPDATE`, `DELETE` or `CONNECT`.
    #[serde(default)]
    pub operation: String,
    /// The object being admitted.
    #[serde(default)]
    pub object: Option<Value>,
    /// Whether the request is a dry run (harmless here: injection has no side effects).
    #[serde(default)]
    pub dry_run: Option<bool>,
}

/// The `status` of a response: only read by humans and logs when `allowed` is true.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// HTTP-style code, 200 here.
    pub code: u16,
    /// Why the pod was or was not injected.
    pub message: String,
}

/// The webhook's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionResponse {
    /// The request's uid.
    pub uid: String,
    /// Always true: the injector never blocks a pod.
    pub allowed: bool,
    /// `JSONPatch` when `patch` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<String>,
    /// Base64 of the RFC 6902 patch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    /// The reason for what happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// Messages shown to the pod's creator.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl AdmissionResponse {
    /// An allowed response that changes nothing.
    pub fn allow(
        uid: impl Into<String>,
        message: impl Into<String>,
        warnings: Vec<String>,
    ) -> Self {
        AdmissionResponse {
            uid: uid.into(),
            allowed: true,
            patch_type: None,
            patch: None,
            status: Some(Status {
                code: 200,
                message: message.into(),
            }),
            warnings: tidy_warnings(warnings),
        }
    }
}

/// Cuts warnings to a length and number the API server passes on intact.
fn tidy_warnings(mut warnings: Vec<String>) -> Vec<String> {
    if warnings.len() > MAX_WARNINGS {
        let dropped = warnings.len() - (MAX_WARNINGS - 1);
        warnings.truncate(MAX_WARNINGS - 1);
        warnings.push(format!("pillion: {dropped} more warnings not shown"));
    }
    for warning in &mut warnings {
        // Warnings travel as HTTP header values: no control characters.
        if warning.chars().any(char::is_control) {
            *warning = warning
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
        }
        if warning.len() > MAX_WARNING_LEN {
            let mut cut = MAX_WARNING_LEN - '…'.len_utf8();
            while !warning.is_char_boundary(cut) {
                cut -= 1;
            }
            warning.truncate(cut);
            warning.push('…');
        }
    }
    warnings
}

/// Answers one admission request. `namespace_annotations` returns the annotations of
/// a namespace by name, or `None` when the caller does not know it.
pub fn respond(
    request: &AdmissionRequest,
    namespace_annotations: impl Fn(&str) -> Option<BTreeMap<String, String>>,
    config: &InjectConfig,
) -> AdmissionResponse {
    let uid = request.uid.as_str();
    let is_pod = request.kind.kind == "Pod" || request.resource.resource == "pods";
    let sub_resource = request.sub_resource.as_deref().unwrap_or("");
    if !is_pod || !sub_resource.is_empty() || request.operation != "CREATE" {
        return AdmissionResponse::allow(
            uid,
            "pillion: only pod creations are injected",
            Vec::new(),
        );
    }
    let Some(pod) = request.object.as_ref() else {
        return AdmissionResponse::allow(
            uid,
            "pillion: the request carries no pod",
            vec!["pillion: sidecar not injected: the request carries no pod".to_owned()],
        );
    };
    let namespace = request
        .namespace
        .clone()
        .filter(|ns| !ns.is_empty())
        .or_else(|| {
            pod.pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
    let annotations = namespace.as_deref().and_then(&namespace_annotations);
    let outcome = inject_pod(pod, annotations.as_ref(), config);

    let pod_name = pod
        .pointer("/metadata/name")
        .or_else(|| pod.pointer("/metadata/generateName"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let namespace = namespace.as_deref().unwrap_or("");
    let message = outcome.message();
    match &outcome.decision {
        Decision::Inject => tracing::info!(uid, namespace, pod = pod_name, "{message}"),
        _ => tracing::debug!(uid, namespace, pod = pod_name, "{message}"),
    }
    for warning in &outcome.warnings {
        tracing::warn!(uid, namespace, pod = pod_name, "{warning}");
    }

    if outcome.patch.0.is_empty() {
        return AdmissionResponse::allow(uid, message, outcome.warnings);
    }
    match patch::to_base64(&outcome.patch) {
        Ok(encoded) => AdmissionResponse {
            patch_type: Some("JSONPatch".to_owned()),
            patch: Some(encoded),
            ..AdmissionResponse::allow(uid, message, outcome.warnings)
        },
        Err(e) => {
            let why = format!("pillion: sidecar not injected: the patch could not be encoded: {e}");
            AdmissionResponse::allow(uid, why.clone(), vec![why])
        }
    }
}

/// Answers an AdmissionReview request body with the response body. Errors only when
/// the body has no `request.uid` (the caller answers HTTP 400); any other problem,
/// including a request the injector cannot read, is an allowed response with a reason.
pub fn review(
    body: &[u8],
    namespace_annotations: impl Fn(&str) -> Option<BTreeMap<String, String>>,
    config: &InjectConfig,
) -> Result<Vec<u8>, ReviewError> {
    let value: Value = serde_json::from_slice(body).map_err(ReviewError::NotJson)?;
    let uid = value
        .pointer("/request/uid")
        .and_then(Value::as_str)
        .ok_or(ReviewError::NoUid)?;
    let api_version = match value.get("apiVersion").and_then(Value::as_str) {
        Some(version) if version.starts_with("admission.k8s.io/") => version,
        _ => API_VERSION,
    };
    // `request` exists: the uid was found inside it.
    let response = match AdmissionRequest::deserialize(&value["request"]) {
        Ok(request) => respond(&request, namespace_annotations, config),
        Err(e) => {
            tracing::warn!(uid, error = %e, "unreadable admission request");
            let why = format!("pillion: sidecar not injected: unreadable admission request: {e}");
            AdmissionResponse::allow(uid, why.clone(), vec![why])
        }
    };
    let review = AdmissionReview {
        api_version: api_version.to_owned(),
        kind: KIND.to_owned(),
        request: None,
        response: Some(response),
    };
    serde_json::to_vec(&review).map_err(ReviewError::Serialize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn answer(body: &Value) -> AdmissionResponse {
        let out = review(
            &serde_json::to_vec(body).unwrap(),
            |_| Some(BTreeMap::new()),
            &InjectConfig::default(),
        )
        .unwrap();
        let review: AdmissionReview = serde_json::from_slice(&out).unwrap();
        assert_eq!(review.kind, KIND);
        review.response.unwrap()
    }

    #[test]
    fn non_pod_and_non_create_requests_pass() {
        for request in [
            json!({"uid": "a", "kind": {"kind": "Service"}, "operation": "CREATE"}),
            json!({"uid": "a", "kind": {"kind": "Pod"}, "operation": "UPDATE", "object": {}}),
            json!({"uid": "a", "kind": {"kind": "Pod"}, "subResource": "status",
                   "operation": "CREATE", "object": {}}),
        ] {
            let r = answer(&json!({"apiVersion": API_VERSION, "request": request}));
            assert!(r.allowed && r.patch.is_none() && r.warnings.is_empty());
            assert_eq!(r.uid, "a");
        }
    }

    #[test]
    fn bad_request_shapes_are_allowed_with_a_reason() {
        let r = answer(&json!({"request": {"uid": "u1", "operation": 7}}));
        assert!(r.allowed);
        assert!(r.warnings[0].contains("unreadable admission request"));
        let r = answer(&json!({"request": {"uid": "u2", "kind": {"kind": "Pod"},
                                            "operation": "CREATE"}}));
        assert!(r.allowed && r.warnings[0].contains("no pod"));
    }

    #[test]
    fn no_uid_or_no_json_is_an_error() {
        let config = InjectConfig::default();
        let none = |_: &str| None;
        assert!(matches!(
            review(b"{not json", none, &config),
            Err(ReviewError::NotJson(_))
        ));
        assert!(matches!(
            review(br#"{"request": {"uid": 5}}"#, none, &config),
            Err(ReviewError::NoUid)
        ));
        assert!(matches!(
            review(b"[]", none, &config),
            Err(ReviewError::NoUid)
        ));
    }

    #[test]
    fn warnings_are_tidied() {
        let many: Vec<String> = (0..40)
            .map(|i| format!("w{i} {}", "é".repeat(300)))
            .collect();
        let tidy = tidy_warnings(many);
        assert_eq!(tidy.len(), MAX_WARNINGS);
        assert!(tidy.iter().all(|w| w.len() <= MAX_WARNING_LEN));
        assert!(tidy.last().unwrap().contains("25 more"));
    }
}
