//! Entry point of the injector's fuzz target (`fuzz/fuzz_targets/`), not an API: an
//! AdmissionReview body through [`review`], as the agent answers `POST /v1/inject`.
//! It panics only when an invariant breaks; the replay test below runs every
//! committed corpus file through it on stable.

use std::collections::BTreeMap;

use base64::Engine;
use serde_json::Value;

use crate::admission::{review, AdmissionReview};
use crate::config::InjectConfig;

/// Namespace `shop` asks for injection; any other namespace is unknown.
fn namespaces(name: &str) -> Option<BTreeMap<String, String>> {
    (name == "shop")
        .then(|| BTreeMap::from([("pillion.io/inject".to_owned(), "enabled".to_owned())]))
}

/// An AdmissionReview request body. Whatever the body, the answer is an allowed
/// response to its uid, and a patch it carries applies cleanly to the pod it came
/// with (what the API server does next).
pub fn admission_review(data: &[u8]) {
    let Ok(answer) = review(data, namespaces, &InjectConfig::default()) else {
        return;
    };
    let sent: Value = serde_json::from_slice(data).expect("review read it as JSON");
    let answer: AdmissionReview = serde_json::from_slice(&answer).expect("the answer reads");
    let response = answer.response.expect("the answer has a response");
    assert!(response.allowed, "the webhook never denies");
    assert_eq!(
        Some(response.uid.as_str()),
        sent.pointer("/request/uid").and_then(Value::as_str)
    );
    let Some(encoded) = response.patch else {
        return;
    };
    let json = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .expect("the patch is base64");
    let patch: json_patch::Patch =
        serde_json::from_slice(&json).expect("the patch is a JSON patch");
    let mut pod = sent
        .pointer("/request/object")
        .cloned()
        .expect("a patched request had a pod");
    if let Err(e) = json_patch::patch(&mut pod, &patch) {
        panic!("the patch does not apply to the pod: {e}\npatch: {patch:?}");
    }
}

#[cfg(test)]
mod tests {
    //! Replays every committed corpus file (`fuzz/corpus/admission_review/`), so a
    //! crash the fuzzer once found stays fixed on stable `cargo test`.

    #[test]
    fn replay_admission_review() {
        pillion_api::fuzzing::replay_corpus("admission_review", super::admission_review);
    }
}
