//! Small builders for RFC 6902 JSON Patch operations, and the base64 form an
//! AdmissionResponse carries. Only `add` is ever needed: the injector never removes or
//! rewrites what the pod already has.

use base64::Engine;
use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use serde_json::Value;

/// An `add` of `value` at the path made of `tokens` (escaped as JSON Pointer needs,
/// so annotation keys with `/` or `~` are safe). `-` appends to an array.
pub fn add(tokens: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(tokens.iter().copied()),
        value,
    })
}

/// The patch as JSON, base64-encoded (standard alphabet, padded), as the API server
/// expects in `response.patch`.
pub fn to_base64(patch: &Patch) -> Result<String, serde_json::Error> {
    let json = serde_json::to_vec(patch)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(json))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_with_slashes_are_escaped() {
        let op = add(
            &["metadata", "annotations", "pillion.io/injected"],
            json!("1"),
        );
        let text = serde_json::to_string(&op).unwrap();
        assert!(text.contains(r#""path":"/metadata/annotations/pillion.io~1injected""#));
        let mut doc = json!({"metadata": {"annotations": {}}});
        json_patch::patch(&mut doc, &[op]).unwrap();
        assert_eq!(doc["metadata"]["annotations"]["pillion.io/injected"], "1");
    }

    #[test]
    fn base64_round_trips() {
        let patch = Patch(vec![add(&["a"], json!(1))]);
        let encoded = to_base64(&patch).unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        let back: Patch = serde_json::from_slice(&decoded).unwrap();
        assert_eq!(back, patch);
    }
}
