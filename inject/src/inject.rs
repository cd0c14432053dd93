//! Injection of one pod (or pod template): read it as typed objects to decide, then
//! express the change as JSON Patch `add` operations on the pod's own JSON.
//!
//! The patch is built against the JSON exactly as received, never by re-serializing a
//! typed Pod: a round trip through k8s-openapi would drop fields newer than its API
//! version, and a diff would then remove them from the user's pod. The same
//! operations serve the webhook (as the response's patch) and offline injection
//! (applied to a workload's pod template, which has the same `metadata`/`spec` shape).

use std::collections::BTreeMap;

use json_patch::{Patch, PatchOperation};
use k8s_openapi::api::core::v1::{Container, PodSpec, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use pillion_api::defaults;

use crate::annotations::{self, DEFAULT_CONTAINER, DISABLED, ENABLED, INJECT, INJECTED};
use crate::config::InjectConfig;
use crate::decide::{decide, Decision, SkipReason};
use crate::patch::add;
use crate::sidecar;
use crate::values::shorten;

/// What the injector did with one pod.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The verdict.
    pub decision: Decision,
    /// Operations that inject the sidecar; empty unless the decision is `Inject`.
    pub patch: Patch,
    /// Messages for the pod's creator: ignored annotation values, surprising skips.
    pub warnings: Vec<String>,
}

impl Outcome {
    fn untouched(decision: Decision) -> Self {
        let warnings = match &decision {
            Decision::Skip(reason) if reason.is_surprising() => {
                vec![format!("pillion: sidecar not injected: {reason}")]
            }
            _ => Vec::new(),
        };
        Outcome {
            decision,
            patch: Patch(Vec::new()),
            warnings,
        }
    }

    /// A one-line summary for logs and the admission response's status message.
    pub fn message(&self) -> String {
        match &self.decision {
            Decision::Inject => "pillion: sidecar injected".to_owned(),
            Decision::AlreadyInjected => "pillion: the pod already has the sidecar".to_owned(),
            Decision::Skip(reason) => format!("pillion: sidecar not injected: {reason}"),
        }
    }
}

/// Reads the typed `metadata` and `spec` of a pod or pod template.
fn read(pod: &Value) -> Result<(ObjectMeta, PodSpec), String> {
    let object = pod.as_object().ok_or("it is not a JSON object")?;
    let meta = match object.get("metadata") {
        None | Some(Value::Null) => ObjectMeta::default(),
        Some(meta) => ObjectMeta::deserialize(meta).map_err(|e| format!("metadata: {e}"))?,
    };
    let spec = match object.get("spec") {
        None | Some(Value::Null) => return Err("it has no spec".to_owned()),
        Some(spec) => PodSpec::deserialize(spec).map_err(|e| format!("spec: {e}"))?,
    };
    Ok((meta, spec))
}

fn to_value<T: Serialize>(item: &T) -> Value {
    // Serializing k8s-openapi types into a `Value` cannot fail (string keys only).
    serde_json::to_value(item).unwrap_or(Value::Null)
}

/// Whether the member `key` of `object` is present and not null.
fn has(object: Option<&Value>, key: &str) -> bool {
    !matches!(object.and_then(|o| o.get(key)), None | Some(Value::Null))
}

/// Injects one pod or pod template given as JSON. `namespace` holds the annotations
/// of its namespace, or `None` when the namespace is unknown.
pub fn inject_pod(
    pod: &Value,
    namespace: Option<&BTreeMap<String, String>>,
    config: &InjectConfig,
) -> Outcome {
    let (meta, spec) = match read(pod) {
        Ok(typed) => typed,
        Err(why) => return Outcome::untouched(Decision::Skip(SkipReason::Unreadable(why))),
    };
    let empty = BTreeMap::new();
    let pod_annotations = meta.annotations.as_ref().unwrap_or(&empty);
    let mut warnings = Vec::new();
    if let Some(value) = pod_annotations.get(INJECT) {
        if ![ENABLED, DISABLED].contains(&value.trim()) {
            warnings.push(format!(
                "pillion: ignoring pod annotation {INJECT}={:?}: use {ENABLED:?} or {DISABLED:?}",
                shorten(value)
            ));
        }
    }
    let decision = decide(&meta, &spec, namespace);
    if decision != Decision::Inject {
        let mut outcome = Outcome::untouched(decision);
        warnings.append(&mut outcome.warnings);
        outcome.warnings = warnings;
        return outcome;
    }

    let (settings, mut setting_warnings) =
        annotations::pod_settings(pod_annotations, namespace.unwrap_or(&empty), config);
    warnings.append(&mut setting_warnings);
    warnings.extend(proxy_uid_warnings(&spec));
    let init = sidecar::init_container(config, &settings);
    let proxy = sidecar::proxy_container(config, &settings);

    let mut ops = Vec::new();
    annotate(pod, pod_annotations, &spec, config, &mut ops);
    let raw_spec = pod.get("spec");
    let mut init_containers = vec![init];
    if settings.native_sidecar {
        init_containers.push(proxy);
    } else {
        // Regular containers start in order, and the postStart hook holds the next
        // one back, so the proxy goes first.
        ops.push(add(&["spec", "containers", "0"], to_value(&proxy)));
    }
    prepend(raw_spec, "initContainers", &init_containers, &mut ops);
    append(raw_spec, "volumes", &sidecar::volumes(), &mut ops);

    Outcome {
        decision,
        patch: Patch(ops),
        warnings,
    }
}

/// Warns about containers that run as the proxy's uid: `pillion-init` exempts that
/// uid from redirection, so their traffic would bypass the proxy unseen.
fn proxy_uid_warnings(spec: &PodSpec) -> Vec<String> {
    let pod_uid = spec.security_context.as_ref().and_then(|s| s.run_as_user);
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers);
    containers
        .filter(|c| {
            let uid = c.security_context.as_ref().and_then(|s| s.run_as_user);
            uid.or(pod_uid) == Some(i64::from(defaults::PROXY_UID))
        })
        .map(|c| {
            format!(
                "pillion: container {:?} runs as uid {}, the proxy's own uid: its traffic \
                 bypasses the proxy; run it as another uid",
                shorten(&c.name),
                defaults::PROXY_UID
            )
        })
        .collect()
}

/// Adds the injected marker and, unless set, the default container for `kubectl`.
fn annotate(
    pod: &Value,
    existing: &BTreeMap<String, String>,
    spec: &PodSpec,
    config: &InjectConfig,
    ops: &mut Vec<PatchOperation>,
) {
    let mut wanted = vec![(INJECTED, config.version.clone())];
    if !existing.contains_key(DEFAULT_CONTAINER) {
        if let Some(app) = spec.containers.first() {
            wanted.push((DEFAULT_CONTAINER, app.name.clone()));
        }
    }
    let metadata = pod.get("metadata");
    if has(metadata, "annotations") {
        for (key, value) in wanted {
            ops.push(add(&["metadata", "annotations", key], Value::String(value)));
        }
        return;
    }
    let map: Map<String, Value> = wanted
        .into_iter()
        .map(|(k, v)| (k.to_owned(), Value::String(v)))
        .collect();
    if matches!(metadata, None | Some(Value::Null)) {
        let mut meta = Map::new();
        meta.insert("annotations".to_owned(), Value::Object(map));
        ops.push(add(&["metadata"], Value::Object(meta)));
    } else {
        ops.push(add(&["metadata", "annotations"], Value::Object(map)));
    }
}

/// Puts `items` at the front of the array `spec.<field>`, creating it if absent.
fn prepend(spec: Option<&Value>, field: &str, items: &[Container], ops: &mut Vec<PatchOperation>) {
    if has(spec, field) {
        for (index, item) in items.iter().enumerate() {
            let index = index.to_string();
            ops.push(add(&["spec", field, &index], to_value(item)));
        }
    } else {
        ops.push(add(&["spec", field], to_value(&items)));
    }
}

/// Puts `items` at the end of the array `spec.<field>`, creating it if absent.
fn append(spec: Option<&Value>, field: &str, items: &[Volume], ops: &mut Vec<PatchOperation>) {
    if has(spec, field) {
        for item in items {
            ops.push(add(&["spec", field, "-"], to_value(item)));
        }
    } else {
        ops.push(add(&["spec", field], to_value(&items)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::json;

    fn enabled() -> BTreeMap<String, String> {
        BTreeMap::from([(INJECT.to_owned(), ENABLED.to_owned())])
    }

    fn apply(pod: &Value, outcome: &Outcome) -> Pod {
        let mut doc = pod.clone();
        json_patch::patch(&mut doc, &outcome.patch).unwrap();
        serde_json::from_value(doc).unwrap()
    }

    #[test]
    fn minimal_pod_without_metadata_gets_everything_created() {
        let pod = json!({"spec": {"containers": [{"name": "app", "image": "app"}]}});
        let outcome = inject_pod(&pod, Some(&enabled()), &InjectConfig::default());
        assert_eq!(outcome.decision, Decision::Inject);
        let injected = apply(&pod, &outcome);
        let spec = injected.spec.unwrap();
        let names: Vec<_> = spec
            .init_containers
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["pillion-init", "pillion-proxy"]);
        assert_eq!(spec.volumes.unwrap().len(), 3);
        let annotations = injected.metadata.annotations.unwrap();
        assert_eq!(annotations[DEFAULT_CONTAINER], "app");
        assert!(annotations.contains_key(INJECTED));
    }

    #[test]
    fn null_members_are_replaced_not_indexed() {
        let pod = json!({
            "metadata": {"annotations": null},
            "spec": {"containers": [{"name": "app"}], "initContainers": null, "volumes": null}
        });
        let outcome = inject_pod(&pod, Some(&enabled()), &InjectConfig::default());
        let injected = apply(&pod, &outcome);
        assert_eq!(injected.spec.unwrap().init_containers.unwrap().len(), 2);
    }

    #[test]
    fn unknown_fields_survive_because_the_patch_only_adds() {
        let pod = json!({
            "metadata": {"name": "p", "futureField": {"x": 1}},
            "spec": {"containers": [{"name": "app", "futureContainerField": true}],
                     "futureSpecField": [1, 2]}
        });
        let outcome = inject_pod(&pod, Some(&enabled()), &InjectConfig::default());
        let mut doc = pod.clone();
        json_patch::patch(&mut doc, &outcome.patch).unwrap();
        assert_eq!(doc["metadata"]["futureField"], json!({"x": 1}));
        assert_eq!(doc["spec"]["futureSpecField"], json!([1, 2]));
        assert_eq!(doc["spec"]["containers"][0]["futureContainerField"], true);
    }

    #[test]
    fn fallback_puts_the_proxy_first_among_containers() {
        let pod = json!({"spec": {"containers": [{"name": "app"}]}});
        let config = InjectConfig {
            native_sidecars: false,
            ..InjectConfig::default()
        };
        let outcome = inject_pod(&pod, Some(&enabled()), &config);
        let spec = apply(&pod, &outcome).spec.unwrap();
        assert_eq!(spec.containers[0].name, "pillion-proxy");
        assert_eq!(spec.containers[1].name, "app");
        assert_eq!(spec.init_containers.unwrap().len(), 1);
    }

    #[test]
    fn odd_inject_values_and_the_proxy_uid_are_warned_about() {
        let pod = json!({
            "metadata": {"annotations": {"pillion.io/inject": "true"}},
            "spec": {"securityContext": {"runAsUser": 2580}, "containers": [{"name": "app"}]}
        });
        let outcome = inject_pod(&pod, Some(&BTreeMap::new()), &InjectConfig::default());
        assert_eq!(outcome.decision, Decision::Skip(SkipReason::NotRequested));
        assert_eq!(outcome.warnings.len(), 1, "{:?}", outcome.warnings);
        assert!(outcome.warnings[0].contains("\"true\""));

        let outcome = inject_pod(&pod, Some(&enabled()), &InjectConfig::default());
        assert_eq!(outcome.decision, Decision::Inject);
        assert_eq!(outcome.warnings.len(), 2, "{:?}", outcome.warnings);
        assert!(outcome.warnings[1].contains("uid 2580"));
    }

    #[test]
    fn unreadable_pods_are_skipped_with_a_warning() {
        for pod in [
            json!(null),
            json!([1]),
            json!({"metadata": {"annotations": 5}, "spec": {"containers": []}}),
            json!({"metadata": {}}),
            json!({"spec": {"containers": "app"}}),
        ] {
            let outcome = inject_pod(&pod, Some(&enabled()), &InjectConfig::default());
            assert!(
                matches!(outcome.decision, Decision::Skip(SkipReason::Unreadable(_))),
                "{pod}: {outcome:?}"
            );
            assert!(outcome.patch.0.is_empty());
            assert_eq!(outcome.warnings.len(), 1);
        }
    }
}
