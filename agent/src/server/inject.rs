//! `POST /v1/inject`: the mutating admission webhook. The body is an AdmissionReview
//! v1 from the API server; the answer comes from [`pillion_inject::review`], with the
//! pod's namespace annotations from the agent's [`NamespaceSource`].

use super::reply::{self, Body};
use super::Shared;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use pillion_api::certs::error_codes;
use pillion_inject::admission::AdmissionReview;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Where the webhook is served.
pub const INJECT_PATH: &str = "/v1/inject";
/// Largest AdmissionReview accepted; the API server's own object limit is ~3 MiB.
pub const MAX_INJECT_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Namespace annotations for injection decisions, and a hook for injected namespaces.
pub trait NamespaceSource: Send + Sync + std::fmt::Debug {
    /// The annotations of namespace `name`, or `None` when it is not known (yet).
    fn annotations(&self, name: &str) -> Option<BTreeMap<String, String>>;

    /// Called after a pod of `namespace` got the sidecar (Kubernetes: publish the
    /// trust anchors there).
    fn injected(&self, _namespace: &str) {}
}

/// Outside Kubernetes there is no namespace watch: every namespace counts as known
/// and unannotated, so exactly the pods annotated `pillion.io/inject: enabled`
/// themselves are injected, as the offline injector decides.
#[derive(Debug, Default)]
pub struct NoNamespaces;

impl NamespaceSource for NoNamespaces {
    fn annotations(&self, _name: &str) -> Option<BTreeMap<String, String>> {
        Some(BTreeMap::new())
    }
}

/// Answers one admission request.
pub async fn handle(req: Request<Incoming>, shared: &Shared) -> Response<Body> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_INJECT_BODY_BYTES as u64) {
        return too_large();
    }
    let body = match Limited::new(req.into_body(), MAX_INJECT_BODY_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return too_large(),
        Err(e) => {
            return reply::error(
                StatusCode::BAD_REQUEST,
                error_codes::BAD_REQUEST,
                format!("cannot read the request body: {e}"),
            )
        }
    };
    let asked = Mutex::new(None::<String>);
    let lookup = |ns: &str| {
        if let Ok(mut asked) = asked.lock() {
            *asked = Some(ns.to_string());
        }
        shared.namespaces.annotations(ns)
    };
    match pillion_inject::review(&body, lookup, &shared.inject) {
        Ok(answer) => {
            let patched = serde_json::from_slice::<AdmissionReview>(&answer)
                .ok()
                .and_then(|r| r.response)
                .is_some_and(|r| r.patch.is_some());
            let namespace = asked.lock().ok().and_then(|mut a| a.take());
            if let (true, Some(ns)) = (patched, namespace) {
                shared.namespaces.injected(&ns);
            }
            reply::bytes(StatusCode::OK, "application/json", answer)
        }
        Err(e) => {
            tracing::info!(error = %e, "refused a malformed admission request");
            reply::error(
                StatusCode::BAD_REQUEST,
                error_codes::BAD_REQUEST,
                format!("not an AdmissionReview v1 request: {e}"),
            )
        }
    }
}

fn too_large() -> Response<Body> {
    reply::error(
        StatusCode::PAYLOAD_TOO_LARGE,
        error_codes::TOO_LARGE,
        format!("the AdmissionReview is larger than {MAX_INJECT_BODY_BYTES} bytes"),
    )
}
