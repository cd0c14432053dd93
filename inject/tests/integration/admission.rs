//! The webhook end to end on hand-written AdmissionReview v1 requests: answer the
//! request, apply the returned JSON Patch to the original pod as the API server would,
//! and check the result as a typed `k8s_openapi` Pod.

use std::collections::BTreeMap;

use base64::Engine;
use k8s_openapi::api::core::v1::Pod;
use pillion_api::defaults::{self, env};
use pillion_inject::admission::{AdmissionResponse, AdmissionReview};
use pillion_inject::{review, InjectConfig, ReviewError};
use serde_json::{json, Value};

use crate::common::*;

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

/// Namespace annotations as the agent's watch would know them.
fn namespaces(name: &str) -> Option<BTreeMap<String, String>> {
    let enabled = BTreeMap::from([("pillion.io/inject".to_owned(), "enabled".to_owned())]);
    match name {
        "pillion-demo" | "shop" => Some(enabled),
        "plain" => Some(BTreeMap::new()),
        _ => None,
    }
}

/// Sends a request body through `review` and returns the decoded response.
fn answer_with(
    request: &Value,
    lookup: impl Fn(&str) -> Option<BTreeMap<String, String>>,
    config: &InjectConfig,
) -> AdmissionResponse {
    let body = serde_json::to_vec(request).unwrap();
    let out = review(&body, lookup, config).expect("a response");
    let review: AdmissionReview = serde_json::from_slice(&out).unwrap();
    assert_eq!(review.api_version, "admission.k8s.io/v1");
    assert_eq!(review.kind, "AdmissionReview");
    let response = review.response.expect("response");
    assert_eq!(response.uid, request["request"]["uid"].as_str().unwrap());
    assert!(response.allowed, "the injector must never deny");
    response
}

fn answer(request: &Value) -> AdmissionResponse {
    answer_with(request, namespaces, &InjectConfig::default())
}

/// The decoded RFC 6902 patch of a response, if any.
fn patch_of(response: &AdmissionResponse) -> Option<Vec<Value>> {
    let encoded = response.patch.as_ref()?;
    assert_eq!(response.patch_type.as_deref(), Some("JSONPatch"));
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .expect("standard base64");
    let ops: Vec<Value> = serde_json::from_slice(&bytes).expect("a JSON array");
    for op in &ops {
        assert_eq!(op["op"], "add", "{op}");
        assert!(op["path"].as_str().unwrap().starts_with('/'), "{op}");
    }
    Some(ops)
}

/// Applies a response's patch to the request's pod, as the API server does.
fn patched(request: &Value, response: &AdmissionResponse) -> (Value, Pod) {
    let ops = patch_of(response).expect("a patch");
    let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops)).unwrap();
    let mut object = request["request"]["object"].clone();
    json_patch::patch(&mut object, &patch).expect("the patch applies to the original");
    let pod: Pod = serde_json::from_value(object.clone()).expect("a valid Pod");
    (object, pod)
}

fn status_message(response: &AdmissionResponse) -> &str {
    response
        .status
        .as_ref()
        .map(|s| s.message.as_str())
        .unwrap_or("")
}

#[test]
fn deployment_pod_in_annotated_namespace_is_injected() {
    let request = fixture("deployment-pod.json");
    let response = answer(&request);
    assert!(response.warnings.is_empty(), "{:?}", response.warnings);
    assert!(status_message(&response).contains("injected"));
    let (object, pod) = patched(&request, &response);
    let spec = pod.spec.unwrap();
    assert_native_injected(&spec, &[], &["web"]);

    // What the pod had is still there, in place.
    let volumes: Vec<&str> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(&volumes[..2], ["kube-api-access-x7k2p", "tmp"]);
    let annotations = pod.metadata.annotations.unwrap();
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(
        annotations["pillion.io/injected"],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(
        annotations["kubectl.kubernetes.io/default-container"],
        "web"
    );
    assert_eq!(
        pod.metadata.generate_name.as_deref(),
        Some("web-6b8f7c9d5-")
    );
    assert!(pod.metadata.name.is_none());
    assert_eq!(pod.metadata.owner_references.unwrap()[0].kind, "ReplicaSet");
    let original = &request["request"]["object"];
    assert_eq!(
        object["metadata"]["managedFields"],
        original["metadata"]["managedFields"]
    );
    assert_eq!(object["spec"]["containers"], original["spec"]["containers"]);
    assert_eq!(object["status"], original["status"]);
}

#[test]
fn the_same_pod_in_a_plain_namespace_is_left_alone_quietly() {
    let mut request = fixture("deployment-pod.json");
    request["request"]["namespace"] = json!("plain");
    request["request"]["object"]["metadata"]["namespace"] = json!("plain");
    let response = answer(&request);
    assert!(response.patch.is_none() && response.patch_type.is_none());
    assert!(response.warnings.is_empty());
    assert!(status_message(&response).contains("neither the pod nor its namespace"));
}

#[test]
fn a_pod_can_opt_in_where_its_namespace_does_not() {
    let mut request = fixture("deployment-pod.json");
    request["request"]["namespace"] = json!("plain");
    request["request"]["object"]["metadata"]["annotations"]["pillion.io/inject"] = json!("enabled");
    let (_, pod) = patched(&request, &answer(&request));
    assert_native_injected(&pod.spec.unwrap(), &[], &["web"]);
}

#[test]
fn an_unknown_namespace_is_not_injected_but_says_so() {
    let mut request = fixture("deployment-pod.json");
    request["request"]["namespace"] = json!("brand-new");
    let response = answer(&request);
    assert!(response.patch.is_none());
    assert_eq!(response.warnings.len(), 1);
    assert!(
        response.warnings[0].contains("not known"),
        "{:?}",
        response.warnings
    );
}

#[test]
fn the_namespace_falls_back_to_the_pods_own() {
    let mut request = fixture("deployment-pod.json");
    request["request"]
        .as_object_mut()
        .unwrap()
        .remove("namespace");
    let (_, pod) = patched(&request, &answer(&request));
    assert_native_injected(&pod.spec.unwrap(), &[], &["web"]);
}

#[test]
fn job_pod_gets_a_native_sidecar_so_the_job_can_complete() {
    let request = fixture("job-pod.json");
    let response = answer(&request);
    assert!(response.warnings.is_empty(), "{:?}", response.warnings);
    let (_, pod) = patched(&request, &response);
    let spec = pod.spec.unwrap();
    assert_native_injected(&spec, &[], &["curl"]);
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    assert_eq!(
        pod.metadata.finalizers.unwrap(),
        ["batch.kubernetes.io/job-tracking"]
    );
}

#[test]
fn own_init_containers_run_after_the_proxy_and_annotations_apply() {
    let request = fixture("init-containers-pod.json");
    let response = answer(&request);
    assert!(response.warnings.is_empty(), "{:?}", response.warnings);
    let (_, pod) = patched(&request, &response);
    let spec = pod.spec.unwrap();
    assert_native_injected(
        &spec,
        &["wait-for-db", "migrate"],
        &["orders", "log-shipper"],
    );
    assert_eq!(
        pod.metadata.annotations.unwrap()["kubectl.kubernetes.io/default-container"],
        "orders"
    );

    let init = spec.init_containers.unwrap();
    let args = init[0].args.clone().unwrap();
    assert!(
        args.contains(&"--skip-outbound-ports=5432".to_owned()),
        "{args:?}"
    );
    assert!(
        args.contains(&"--skip-outbound-cidrs=10.96.0.0/12".to_owned()),
        "{args:?}"
    );
    let proxy = &init[1];
    assert_eq!(env_value(proxy, env::OPAQUE_PORTS), Some("7000,7001"));
    assert_eq!(
        env_value(proxy, env::LOG_LEVEL),
        Some("warn,pillion_proxy=debug")
    );
    let limits = proxy.resources.as_ref().unwrap().limits.as_ref().unwrap();
    assert_eq!(limits["memory"].0, "256Mi");
    assert_eq!(limits["cpu"].0, "1");
}

#[test]
fn host_network_pod_is_skipped_with_a_reason() {
    let request = fixture("host-network-pod.json");
    let response = answer(&request);
    assert!(response.patch.is_none());
    assert!(status_message(&response).contains("hostNetwork"));
    assert_eq!(response.warnings.len(), 1);
    assert!(response.warnings[0].contains("hostNetwork"));
}

#[test]
fn injected_pod_yields_an_empty_patch() {
    let request = fixture("injected-pod.json");
    let response = answer(&request);
    assert!(response.patch.is_none(), "idempotent: nothing to add");
    assert!(response.warnings.is_empty());
    assert!(status_message(&response).contains("already"));
}

#[test]
fn injecting_the_injected_result_again_changes_nothing() {
    let request = fixture("deployment-pod.json");
    let (object, _) = patched(&request, &answer(&request));
    let mut again = request.clone();
    again["request"]["object"] = object;
    let response = answer(&again);
    assert!(response.patch.is_none());
    assert!(response.warnings.is_empty());
}

#[test]
fn disabled_pod_is_left_alone_without_a_warning() {
    let request = fixture("disabled-pod.json");
    let response = answer(&request);
    assert!(response.patch.is_none());
    assert!(response.warnings.is_empty());
    assert!(status_message(&response).contains("disabled"));
}

#[test]
fn old_clusters_get_the_proxy_as_the_first_container() {
    let mut request = fixture("init-containers-pod.json");
    request["request"]["object"]["metadata"]["annotations"]["pillion.io/native-sidecar"] =
        json!("false");
    let (_, pod) = patched(&request, &answer(&request));
    let spec = pod.spec.unwrap();
    let init: Vec<String> = spec
        .init_containers
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(init, ["pillion-init", "wait-for-db", "migrate"]);
    let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["pillion-proxy", "orders", "log-shipper"]);
    let proxy = &spec.containers[0];
    assert_proxy(proxy);
    assert!(proxy.restart_policy.is_none());
    let hook = proxy
        .lifecycle
        .as_ref()
        .unwrap()
        .post_start
        .as_ref()
        .unwrap();
    let script = hook
        .exec
        .as_ref()
        .unwrap()
        .command
        .as_ref()
        .unwrap()
        .join(" ");
    assert!(script.contains(&defaults::ADMIN_PORT.to_string()) && script.contains("/ready"));

    // The cluster-wide switch does the same for every pod.
    let request = fixture("job-pod.json");
    let config = InjectConfig {
        native_sidecars: false,
        ..InjectConfig::default()
    };
    let response = answer_with(&request, namespaces, &config);
    let (_, pod) = patched(&request, &response);
    assert_eq!(pod.spec.unwrap().containers[0].name, "pillion-proxy");
}

#[test]
fn invalid_annotation_values_inject_with_defaults_and_warn() {
    let mut request = fixture("deployment-pod.json");
    let annotations = &mut request["request"]["object"]["metadata"]["annotations"];
    annotations["pillion.io/skip-inbound-ports"] = json!("80,eighty");
    annotations["pillion.io/proxy-cpu-request"] = json!("a lot");
    annotations["pillion.io/trace-sampling"] = json!("1.5");
    let response = answer(&request);
    assert_eq!(response.warnings.len(), 3, "{:?}", response.warnings);
    for key in ["skip-inbound-ports", "proxy-cpu-request", "trace-sampling"] {
        assert!(
            response.warnings.iter().any(|w| w.contains(key)),
            "{key}: {:?}",
            response.warnings
        );
    }
    let (_, pod) = patched(&request, &response);
    let spec = pod.spec.unwrap();
    assert_native_injected(&spec, &[], &["web"]);
    let init = spec.init_containers.unwrap();
    let proxy = &init[1];
    let requests = proxy.resources.as_ref().unwrap().requests.as_ref().unwrap();
    assert_eq!(requests["cpu"].0, "10m");
    let sampling = InjectConfig::default().trace_sampling.to_string();
    assert_eq!(
        env_value(proxy, env::TRACE_SAMPLING),
        Some(sampling.as_str())
    );
}

#[test]
fn garbage_is_an_error_only_without_a_uid() {
    let config = InjectConfig::default();
    for body in [&b"\x00\xff garbage"[..], b"", b"{\"request\": "] {
        assert!(matches!(
            review(body, namespaces, &config),
            Err(ReviewError::NotJson(_))
        ));
    }
    for body in [
        &b"{}"[..],
        b"null",
        b"{\"request\": {}}",
        b"{\"request\": []}",
    ] {
        assert!(matches!(
            review(body, namespaces, &config),
            Err(ReviewError::NoUid)
        ));
    }
    // A uid is enough to answer, however broken the rest.
    let request = json!({"request": {"uid": "u-1", "kind": {"kind": "Pod"},
                                     "operation": "CREATE", "object": "not a pod"}});
    let response = answer(&request);
    assert!(response.patch.is_none());
    assert!(
        response.warnings[0].contains("could not be read"),
        "{:?}",
        response.warnings
    );
}

/// A named change to a pod object.
type Mutation = (&'static str, Box<dyn Fn(&mut Value)>);

#[test]
fn unusual_pods_never_panic_and_never_break_the_pod() {
    let base = fixture("deployment-pod.json");
    let huge = "x".repeat(1 << 20);
    let many: serde_json::Map<String, Value> = (0..10_000)
        .map(|i| (format!("example.com/key-{i}"), json!(i.to_string())))
        .collect();
    let cases: Vec<Mutation> = vec![
        (
            "no containers",
            Box::new(|o| o["spec"]["containers"] = json!([])),
        ),
        (
            "containers missing",
            Box::new(|o| {
                o["spec"].as_object_mut().unwrap().remove("containers");
            }),
        ),
        (
            "huge annotation",
            Box::new(move |o| {
                o["metadata"]["annotations"]["pillion.io/opaque-ports"] = json!(huge.clone());
                o["metadata"]["annotations"]["big"] = json!(huge.clone());
            }),
        ),
        (
            "many annotations",
            Box::new(move |o| {
                o["metadata"]["annotations"] = Value::Object(many.clone());
            }),
        ),
        (
            "clashing volume",
            Box::new(|o| {
                o["spec"]["volumes"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name": "pillion-token", "emptyDir": {}}));
            }),
        ),
        (
            "clashing container",
            Box::new(|o| {
                o["spec"]["initContainers"] = json!([{"name": "pillion-init", "image": "mine"}]);
            }),
        ),
        ("spec null", Box::new(|o| o["spec"] = Value::Null)),
        (
            "metadata string",
            Box::new(|o| o["metadata"] = json!("meta")),
        ),
        (
            "annotations list",
            Box::new(|o| o["metadata"]["annotations"] = json!(["a"])),
        ),
        (
            "volumes object",
            Box::new(|o| o["spec"]["volumes"] = json!({"a": 1})),
        ),
        (
            "unicode names",
            Box::new(|o| o["spec"]["containers"][0]["name"] = json!("wéb/🚀~1")),
        ),
    ];
    for (what, mutate) in cases {
        let mut request = base.clone();
        mutate(&mut request["request"]["object"]);
        let response = answer(&request);
        if response.patch.is_some() {
            let (_, pod) = patched(&request, &response);
            let spec = pod.spec.unwrap();
            let names: Vec<&str> = spec
                .volumes
                .iter()
                .flatten()
                .map(|v| v.name.as_str())
                .collect();
            let mut unique = names.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(names.len(), unique.len(), "{what}: duplicate volumes");
        } else {
            assert!(
                !response.warnings.is_empty(),
                "{what}: skipped without a word"
            );
        }
        for warning in &response.warnings {
            assert!(
                warning.len() <= 256,
                "{what}: warning of {} bytes",
                warning.len()
            );
        }
    }
}

/// Every JSON pointer below `value`.
fn pointers(value: &Value, prefix: String, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let token = key.replace('~', "~0").replace('/', "~1");
                let path = format!("{prefix}/{token}");
                out.push(path.clone());
                pointers(child, path, out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                let path = format!("{prefix}/{i}");
                out.push(path.clone());
                pointers(child, path, out);
            }
        }
        _ => {}
    }
}

#[test]
fn any_field_replaced_by_any_type_never_panics() {
    let config = InjectConfig::default();
    let replacements = [
        json!(null),
        json!(-1),
        json!("x"),
        json!([]),
        json!({}),
        json!(true),
    ];
    let mut reviewed = 0;
    for name in [
        "deployment-pod.json",
        "job-pod.json",
        "init-containers-pod.json",
    ] {
        let request = fixture(name);
        let mut paths = Vec::new();
        pointers(&request["request"]["object"], String::new(), &mut paths);
        for path in &paths {
            for replacement in &replacements {
                let mut broken = request.clone();
                let object = &mut broken["request"]["object"];
                *object.pointer_mut(path).unwrap() = replacement.clone();
                let response = answer_with(&broken, namespaces, &config);
                if let Some(ops) = patch_of(&response) {
                    // Whatever was injected applies cleanly, and a valid Pod stays one.
                    let patch: json_patch::Patch =
                        serde_json::from_value(Value::Array(ops)).unwrap();
                    let mut object = broken["request"]["object"].clone();
                    json_patch::patch(&mut object, &patch).expect("the patch applies");
                    if serde_json::from_value::<Pod>(broken["request"]["object"].clone()).is_ok() {
                        serde_json::from_value::<Pod>(object)
                            .unwrap_or_else(|e| panic!("{name} {path}={replacement}: {e}"));
                    }
                }
                reviewed += 1;
            }
        }
    }
    assert!(reviewed > 500, "only {reviewed} variants");
}
