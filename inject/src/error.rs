//! The injector's errors. Pod content never causes one (an odd pod is skipped with a
//! warning instead); these are for bad configuration, unreadable admission requests
//! and unreadable manifests.

/// The injector was configured with values that would produce invalid pods.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid injector configuration: {}", problems.join("; "))]
pub struct ConfigError {
    /// Every problem found, each phrased as what to fix.
    pub problems: Vec<String>,
}

/// An admission request so broken that no response can be addressed to it; the
/// webhook server answers HTTP 400.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// The body is not JSON at all.
    #[error("the AdmissionReview body is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// The body is JSON but carries no `request.uid` to answer to.
    #[error("the AdmissionReview has no request.uid to answer to")]
    NoUid,
    /// The response could not be serialized (never expected).
    #[error("could not serialize the AdmissionReview response: {0}")]
    Serialize(#[source] serde_json::Error),
}

/// A manifest given to offline injection could not be read or written back.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    /// A document is not valid YAML, or not a mapping.
    #[error("document {index}: not a valid Kubernetes YAML object: {message}")]
    Parse {
        /// Zero-based position of the document in the input.
        index: usize,
        /// What the YAML parser said.
        message: String,
    },
    /// A workload's pod template is malformed.
    #[error("document {index} ({kind} {name}): {message}")]
    Template {
        /// Zero-based position of the document in the input.
        index: usize,
        /// The document's `kind`.
        kind: String,
        /// The document's `metadata.name`, or `<unnamed>`.
        name: String,
        /// What is wrong with it.
        message: String,
    },
}
