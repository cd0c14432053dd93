//! String maps written as literals: Kubernetes annotations and the policy's header
//! edits are both `BTreeMap<String, String>`, which tests fill from `&str` pairs.

use std::collections::BTreeMap;

/// The map of `pairs` (a later pair wins over an earlier one with the same key).
pub fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
