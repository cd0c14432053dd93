//! The agent through its public API and binary: certificates, the CA on disk, the YAML source, the watch stream, and the Kubernetes side against a fake API server speaking the real wire formats; one test binary.
#![allow(clippy::unwrap_used)] // Tests: a panic with its reason is the report.

mod binary;
mod ca_dir;
mod certificates;
mod common;
mod kubernetes_fake;
mod kubernetes_leader;
mod kubernetes_token_review;
mod kubernetes_translate;
mod kubernetes_webhook;
mod resolve;
mod source_dir;
mod source_yaml;
mod watch;
