//! `--kubernetes` mode: the agent learns services, endpoints, identities and policy
//! from the cluster instead of its YAML file, checks proxies' projected
//! ServiceAccount tokens with TokenReview, and serves the sidecar injector.
//!
//! - [`translate`]: typed objects in, the same [`crate::source::Catalog`] the YAML
//!   source builds out (pure, unit-tested on fixtures).
//! - [`watch`]: kube-runtime watchers feed stores; every change re-runs the
//!   translation (debounced) into the snapshot channel the server reads.
//! - [`token_review`]: the TokenReview authenticator, with a short positive cache.
//! - [`publish`]: fills the webhook's caBundle and publishes the trust anchors
//!   ConfigMap into injected namespaces.

pub mod crd;
pub mod translate;
