//! Pillion's sidecar injector: decides which pods get the proxy and builds the
//! containers, volumes and annotations that carry it, as typed Kubernetes objects.
//!
//! Two front doors share one core ([`inject::inject_pod`]):
//! - [`admission::review`]: the mutating admission webhook, AdmissionReview v1 JSON in
//!   and out; the agent serves it at `POST /v1/inject`.
//! - [`offline::inject_manifests`]: `linkerd inject`-style rewriting of YAML manifests,
//!   behind the `pillion-inject` binary.
//!
//! The injector never blocks a pod: anything it cannot or will not do becomes a warning
//! and the pod is created as it was.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admission;
pub mod annotations;
pub mod cli;
pub mod config;
pub mod decide;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod inject;
pub mod offline;
pub mod patch;
pub mod sidecar;
pub mod values;

pub use admission::review;
pub use config::{InjectArgs, InjectConfig};
pub use decide::{Decision, SkipReason};
pub use error::{ConfigError, OfflineError, ReviewError};
pub use inject::{inject_pod, Outcome};
pub use offline::inject_manifests;
