//! Offline injection, like `linkerd inject`: multi-document YAML in, the same YAML out
//! with the sidecar added to every workload's pod template.
//!
//! A pod template is treated as if its namespace were annotated
//! `pillion.io/inject: enabled`: it is injected unless it says `disabled` (or cannot
//! carry the sidecar). Documents that are not changed (other kinds, opted-out or
//! already injected workloads, comments, blank documents) are written back byte for
//! byte; a changed document is re-serialized with its keys in their original order.

use std::collections::BTreeMap;

use json_patch::PatchOperation;
use serde_yaml_ng::{Mapping, Value as Yaml};

use crate::annotations::{ENABLED, INJECT};
use crate::config::InjectConfig;
use crate::decide::Decision;
use crate::error::OfflineError;
use crate::inject::inject_pod;

/// What offline injection did to one workload.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// One-based position of the document in the input.
    pub index: usize,
    /// The workload's kind.
    pub kind: String,
    /// The workload's name (`<unnamed>` when it has none).
    pub name: String,
    /// The verdict for its pod template.
    pub decision: Decision,
    /// Ignored annotation values and surprising skips.
    pub warnings: Vec<String>,
}

/// The injected YAML and what happened to each workload in it.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// The documents, injected where they are workloads.
    pub yaml: String,
    /// One entry per workload (pods and pod templates), in input order.
    pub reports: Vec<Report>,
}

/// Injects every workload in a multi-document YAML stream and returns the stream.
pub fn inject_manifests(yaml: &str, config: &InjectConfig) -> Result<String, OfflineError> {
    inject_manifests_with_report(yaml, config).map(|output| output.yaml)
}

/// Like [`inject_manifests`], also saying what happened to each workload.
pub fn inject_manifests_with_report(
    yaml: &str,
    config: &InjectConfig,
) -> Result<Output, OfflineError> {
    let mut out = String::with_capacity(yaml.len() * 2);
    let mut reports = Vec::new();
    let mut index = 0;
    for doc in split_documents(yaml) {
        out.push_str(doc.separator);
        let parsed: Yaml = serde_yaml_ng::from_str(doc.body).map_err(|e| OfflineError::Parse {
            index: index + 1,
            message: e.to_string(),
        })?;
        if parsed.is_null() {
            // Blank or comment-only: not a document anyone counts.
            out.push_str(doc.body);
            continue;
        }
        index += 1;
        let mut object = match parsed {
            Yaml::Mapping(map) => map,
            _ => {
                return Err(OfflineError::Parse {
                    index,
                    message: "the document is not a mapping".to_owned(),
                })
            }
        };
        if inject_object(&mut object, index, config, &mut reports)? {
            let text = serde_yaml_ng::to_string(&object).map_err(|e| OfflineError::Parse {
                index,
                message: e.to_string(),
            })?;
            out.push_str(&text);
        } else {
            out.push_str(doc.body);
        }
    }
    Ok(Output { yaml: out, reports })
}

/// One document of the input: the `---` line before it (empty for the first) and its
/// text, both as written.
struct Document<'a> {
    separator: &'a str,
    body: &'a str,
}

/// Whether a line starts a new document: `---` at column 0, alone or followed by a
/// blank or a comment.
fn is_separator(line: &str) -> bool {
    match line.strip_prefix("---") {
        Some(rest) => {
            let rest = rest.trim_end_matches(['\n', '\r']);
            rest.is_empty() || rest.starts_with([' ', '\t'])
        }
        None => false,
    }
}

/// Splits a YAML stream at its document markers without parsing it, so untouched
/// documents can be written back exactly.
fn split_documents(yaml: &str) -> Vec<Document<'_>> {
    let mut docs = Vec::new();
    let mut separator = "";
    let mut body_start = 0;
    let mut offset = 0;
    for line in yaml.split_inclusive('\n') {
        if is_separator(line) {
            docs.push(Document {
                separator,
                body: &yaml[body_start..offset],
            });
            let marker = line.trim_end_matches(['\n', '\r']);
            let rest = marker[3..].trim_start();
            if rest.is_empty() || rest.starts_with('#') {
                separator = line;
                body_start = offset + line.len();
            } else {
                // Content on the marker line (`--- {a: 1}`) belongs to the document.
                separator = "---\n";
                body_start = offset + (marker.len() - rest.len());
            }
        }
        offset += line.len();
    }
    docs.push(Document {
        separator,
        body: &yaml[body_start..],
    });
    docs
}

/// Where a kind keeps its pod template, as a path of mapping keys.
fn template_path(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Pod" => Some(&[]),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job" => Some(&["spec", "template"]),
        "CronJob" => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

fn get_str<'a>(map: &'a Mapping, key: &str) -> Option<&'a str> {
    map.get(key).and_then(Yaml::as_str)
}

/// Injects one object (or each item of a `List`) in place; true when it changed.
fn inject_object(
    object: &mut Mapping,
    index: usize,
    config: &InjectConfig,
    reports: &mut Vec<Report>,
) -> Result<bool, OfflineError> {
    let kind = get_str(object, "kind").unwrap_or("").to_owned();
    if kind == "List" {
        let mut changed = false;
        if let Some(Yaml::Sequence(items)) = object.get_mut("items") {
            for item in items.iter_mut() {
                if let Yaml::Mapping(item) = item {
                    changed |= inject_object(item, index, config, reports)?;
                }
            }
        }
        return Ok(changed);
    }
    let Some(path) = template_path(&kind) else {
        return Ok(false);
    };
    let name = object
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Yaml::as_str)
        .unwrap_or("<unnamed>")
        .to_owned();
    let error = |message: String| OfflineError::Template {
        index,
        kind: kind.clone(),
        name: name.clone(),
        message,
    };

    let mut template = &mut *object;
    for key in path {
        template = match template.get_mut(*key) {
            Some(Yaml::Mapping(inner)) => inner,
            _ => return Err(error(format!("has no pod template at {}", path.join(".")))),
        };
    }
    let json = serde_json::to_value(&*template)
        .map_err(|e| error(format!("the pod template is not plain data: {e}")))?;
    let namespace = BTreeMap::from([(INJECT.to_owned(), ENABLED.to_owned())]);
    let outcome = inject_pod(&json, Some(&namespace), config);
    let mut node = Yaml::Mapping(std::mem::take(template));
    let applied = outcome.patch.iter().try_for_each(|op| apply(&mut node, op));
    if let Yaml::Mapping(map) = node {
        *template = map;
    }
    applied.map_err(error)?;
    let changed = !outcome.patch.0.is_empty();
    reports.push(Report {
        index,
        kind: kind.clone(),
        name: name.clone(),
        decision: outcome.decision,
        warnings: outcome.warnings,
    });
    Ok(changed)
}

/// Applies one `add` operation to a YAML node, keeping the order of existing keys.
fn apply(root: &mut Yaml, op: &PatchOperation) -> Result<(), String> {
    let PatchOperation::Add(add) = op else {
        return Err(format!("unexpected patch operation {op:?}"));
    };
    let value = serde_yaml_ng::to_value(&add.value).map_err(|e| e.to_string())?;
    let tokens: Vec<String> = add
        .path
        .tokens()
        .map(|t| t.decoded().into_owned())
        .collect();
    add_at(root, &tokens, value).map_err(|why| format!("cannot add {}: {why}", add.path))
}

/// Adds `value` at the path `tokens` below `node`.
fn add_at(node: &mut Yaml, tokens: &[String], value: Yaml) -> Result<(), String> {
    match (tokens, node) {
        ([], _) => Err("the path is empty".to_owned()),
        ([last], Yaml::Mapping(map)) => {
            map.insert(Yaml::String(last.clone()), value);
            Ok(())
        }
        ([last], Yaml::Sequence(seq)) => insert_into_sequence(seq, last, value),
        ([first, rest @ ..], Yaml::Mapping(map)) => match map.get_mut(first.as_str()) {
            Some(child) => add_at(child, rest, value),
            None => Err(format!("{first:?} is missing")),
        },
        ([first, rest @ ..], Yaml::Sequence(seq)) => {
            match first.parse::<usize>().ok().and_then(|i| seq.get_mut(i)) {
                Some(child) => add_at(child, rest, value),
                None => Err(format!("no list item {first}")),
            }
        }
        _ => Err("a scalar is in the way".to_owned()),
    }
}

fn insert_into_sequence(seq: &mut Vec<Yaml>, token: &str, value: Yaml) -> Result<(), String> {
    if token == "-" {
        seq.push(value);
        return Ok(());
    }
    match token.parse::<usize>() {
        Ok(i) if i <= seq.len() => {
            seq.insert(i, value);
            Ok(())
        }
        _ => Err(format!("index {token} is outside a list of {}", seq.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_every_byte() {
        let input = "# head\n---\na: 1\n--- # two\nb: 2\n---\n\n";
        let docs = split_documents(input);
        let rebuilt: String = docs
            .iter()
            .map(|d| [d.separator, d.body].concat())
            .collect();
        assert_eq!(rebuilt, input);
        assert_eq!(docs.len(), 4);
        assert_eq!(docs[2].separator, "--- # two\n");
        assert_eq!(docs[2].body, "b: 2\n");
    }

    #[test]
    fn separators_are_only_at_column_zero() {
        assert!(is_separator("---\n"));
        assert!(is_separator("--- # c\n"));
        assert!(!is_separator("----\n"));
        assert!(!is_separator(" ---\n"));
        assert!(!is_separator("---x\n"));
    }

    #[test]
    fn content_on_the_marker_line_stays_in_the_document() {
        let docs = split_documents("--- {kind: Service}\n");
        assert_eq!(docs[1].body, "{kind: Service}\n");
    }

    #[test]
    fn untouched_input_comes_back_identical() {
        let input = "# services only\napiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\n\
                     apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: b   # keep me\n";
        let out = inject_manifests(input, &InjectConfig::default()).unwrap();
        assert_eq!(out, input);
    }

    #[test]
    fn errors_name_the_document() {
        let err = inject_manifests("a: 1\n---\n: : :\n  - [\n", &InjectConfig::default())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("document 2"), "{err}");
        let err = inject_manifests(
            "kind: Service\n---\nkind: Deployment\nmetadata: {name: web}\nspec: {}\n",
            &InjectConfig::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("document 2 (Deployment web)"), "{err}");
        assert!(err.contains("spec.template"), "{err}");
        let err = inject_manifests("- 1\n", &InjectConfig::default()).unwrap_err();
        assert!(err.to_string().contains("not a mapping"));
    }

    #[test]
    fn lists_are_injected_item_by_item() {
        let input = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Pod\n  \
                     metadata: {name: p}\n  spec:\n    containers: [{name: app, image: app}]\n";
        let out = inject_manifests_with_report(input, &InjectConfig::default()).unwrap();
        assert_eq!(out.reports.len(), 1);
        assert_eq!(out.reports[0].decision, Decision::Inject);
        assert!(out.yaml.contains("pillion-proxy"));
    }
}
