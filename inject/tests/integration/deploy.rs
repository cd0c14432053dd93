//! Every manifest in `deploy/`, rendered by `kubectl kustomize` exactly as
//! `kubectl apply -k` would send it, parsed into typed Kubernetes objects and checked:
//! the agent's Service and webhook agree with `pillion_api::defaults`, RBAC is exactly
//! what the agent needs, the CRDs are structural and the example's policies obey them,
//! every container is locked down, and the offline injector turns the example's
//! workloads into pods whose proxies agree with the defaults too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PodSpec, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use pillion_api::defaults;
use pillion_inject::offline::inject_manifests_with_report;
use pillion_inject::{Decision, InjectConfig};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::common::*;

/// One rendered object, typed by its kind.
#[derive(Debug, Clone)]
enum Object {
    Namespace(Namespace),
    ServiceAccount(ServiceAccount),
    Deployment(Deployment),
    Service(Service),
    /// Parsed as a typed ConfigMap; no test reads its data.
    ConfigMap,
    Job(Job),
    ClusterRole(ClusterRole),
    ClusterRoleBinding(ClusterRoleBinding),
    Role(Role),
    RoleBinding(RoleBinding),
    Webhook(MutatingWebhookConfiguration),
    Crd(CustomResourceDefinition),
    Pdb(PodDisruptionBudget),
    /// An instance of one of Pillion's own CRDs, checked against its schema.
    Custom {
        kind: String,
        value: Value,
    },
}

/// Kinds served by Pillion's CRDs.
const PILLION_KINDS: &[&str] = &[
    "Route",
    "RetryPolicy",
    "RateLimitPolicy",
    "AuthorizationPolicy",
    "AuthenticationPolicy",
];

fn deploy_dir(sub: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(sub)
}

/// `kubectl kustomize <dir>`, or `None` (with a message) when kubectl is not
/// installed; CI installs it, so the skip is for laptops only.
fn render(sub: &str) -> Option<String> {
    let dir = deploy_dir(sub);
    let output = match Command::new("kubectl").arg("kustomize").arg(&dir).output() {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!(
                "SKIPPED: kubectl is not installed, cannot render {}",
                dir.display()
            );
            return None;
        }
        Err(e) => panic!("running kubectl: {e}"),
    };
    assert!(
        output.status.success(),
        "kubectl kustomize {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    Some(String::from_utf8(output.stdout).unwrap())
}

/// Deserializes into a typed object and back, failing if anything was lost: k8s-openapi
/// ignores unknown fields, so a misspelt key would otherwise pass silently.
fn typed<T: DeserializeOwned + Serialize>(value: &Value, what: &str) -> T {
    let object: T = serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{what}: {e}"));
    let back = serde_json::to_value(&object).unwrap();
    let mut lost = Vec::new();
    differences(value, &back, String::new(), &mut lost);
    assert!(
        lost.is_empty(),
        "{what}: fields the typed object does not know (misspelt?): {lost:#?}"
    );
    object
}

/// Paths where two JSON values differ; numbers compare by value (`1` == `1.0`).
fn differences(a: &Value, b: &Value, path: String, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for key in x.keys().chain(y.keys()).collect::<BTreeSet<_>>() {
                let child = format!("{path}/{key}");
                match (x.get(key), y.get(key)) {
                    (Some(l), Some(r)) => differences(l, r, child, out),
                    _ => out.push(child),
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (l, r)) in x.iter().zip(y).enumerate() {
                differences(l, r, format!("{path}/{i}"), out);
            }
        }
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => {}
        _ if a == b => {}
        _ => out.push(format!("{path}: {a} became {b}")),
    }
}

fn parse(yaml: &str) -> Vec<Object> {
    let mut objects = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(yaml).enumerate() {
        let value = Value::deserialize(doc).unwrap_or_else(|e| panic!("document {i}: {e}"));
        if value.is_null() {
            continue;
        }
        let kind = value["kind"].as_str().unwrap_or_default().to_owned();
        let name = value["metadata"]["name"].as_str().unwrap_or_default();
        let what = format!("{kind} {name}");
        let object = match kind.as_str() {
            "Namespace" => Object::Namespace(typed(&value, &what)),
            "ServiceAccount" => Object::ServiceAccount(typed(&value, &what)),
            "Deployment" => Object::Deployment(typed(&value, &what)),
            "Service" => Object::Service(typed(&value, &what)),
            "ConfigMap" => {
                let _: ConfigMap = typed(&value, &what);
                Object::ConfigMap
            }
            "Job" => Object::Job(typed(&value, &what)),
            "ClusterRole" => Object::ClusterRole(typed(&value, &what)),
            "ClusterRoleBinding" => Object::ClusterRoleBinding(typed(&value, &what)),
            "Role" => Object::Role(typed(&value, &what)),
            "RoleBinding" => Object::RoleBinding(typed(&value, &what)),
            "MutatingWebhookConfiguration" => Object::Webhook(typed(&value, &what)),
            "CustomResourceDefinition" => Object::Crd(typed(&value, &what)),
            "PodDisruptionBudget" => Object::Pdb(typed(&value, &what)),
            k if PILLION_KINDS.contains(&k) => {
                assert_eq!(value["apiVersion"], "pillion.io/v1alpha1", "{what}");
                Object::Custom { kind, value }
            }
            other => {
                panic!("document {i}: unknown kind {other:?} ({what}); teach this test about it")
            }
        };
        objects.push(object);
    }
    objects
}

/// Both kustomizations, or `None` when kubectl is missing.
fn rendered() -> Option<(Vec<Object>, Vec<Object>, String)> {
    let base = parse(&render("")?);
    let example_yaml = render("example")?;
    let example = parse(&example_yaml);
    Some((base, example, example_yaml))
}

macro_rules! all {
    ($objects:expr, $variant:ident) => {
        $objects
            .iter()
            .filter_map(|o| match o {
                Object::$variant(inner) => Some(inner),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
}

fn name_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or_default()
}

fn namespace_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or_default()
}

/// The labels a Deployment puts on its pods.
fn template_labels(spec: &k8s_openapi::api::apps::v1::DeploymentSpec) -> BTreeMap<String, String> {
    let meta = spec
        .template
        .metadata
        .as_ref()
        .expect("a pod template with metadata");
    meta.labels.clone().expect("pod template labels")
}

fn agent_deployment(base: &[Object]) -> Deployment {
    all!(base, Deployment)
        .into_iter()
        .find(|d| name_of(&d.metadata) == "pillion-agent")
        .expect("the agent Deployment")
        .clone()
}

#[test]
fn agent_service_and_deployment_agree_with_the_defaults() {
    let Some((base, _, _)) = rendered() else {
        return;
    };
    let namespaces: Vec<&str> = all!(base, Namespace)
        .iter()
        .map(|n| name_of(&n.metadata))
        .collect();
    assert_eq!(namespaces, [defaults::AGENT_NAMESPACE]);

    let service = all!(base, Service)
        .into_iter()
        .find(|s| name_of(&s.metadata) == "pillion-agent")
        .expect("the agent Service");
    assert_eq!(namespace_of(&service.metadata), defaults::AGENT_NAMESPACE);
    let spec = service.spec.as_ref().unwrap();
    let ports = spec.ports.as_ref().unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].port, i32::from(defaults::AGENT_PORT));

    let agent = agent_deployment(&base);
    assert_eq!(namespace_of(&agent.metadata), defaults::AGENT_NAMESPACE);
    let template = &agent.spec.as_ref().unwrap().template;
    let labels = template.metadata.as_ref().unwrap().labels.clone().unwrap();
    for (key, value) in spec.selector.as_ref().unwrap() {
        assert_eq!(
            labels.get(key),
            Some(value),
            "the Service selects the agent"
        );
    }
    let annotations = template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .clone()
        .unwrap();
    assert_eq!(annotations["pillion.io/inject"], "disabled");

    let pod = pod_spec(&agent);
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some(defaults::AGENT_SERVICE_ACCOUNT)
    );
    let accounts: Vec<(&str, &str)> = all!(base, ServiceAccount)
        .iter()
        .map(|a| (namespace_of(&a.metadata), name_of(&a.metadata)))
        .collect();
    assert!(accounts.contains(&(defaults::AGENT_NAMESPACE, defaults::AGENT_SERVICE_ACCOUNT)));

    let container = &pod.containers[0];
    assert_eq!(
        container.command.as_deref(),
        Some(&["pillion-agent".to_owned()][..])
    );
    let args = container.args.clone().unwrap();
    assert!(args.contains(&"--kubernetes".to_owned()), "{args:?}");
    // The issuer comes from the Secret, never from an emptyDir a restart empties.
    let issuer_dir = args
        .iter()
        .find_map(|a| a.strip_prefix("--issuer-dir="))
        .expect("--issuer-dir");
    assert!(!args.iter().any(|a| a.starts_with("--ca-dir")), "{args:?}");
    let mounts = container.volume_mounts.clone().unwrap();
    let mount = mounts
        .iter()
        .find(|m| m.mount_path == issuer_dir)
        .expect("the issuer dir is a volume");
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .expect("its volume");
    let secret = volume.secret.as_ref().expect("a Secret volume");
    assert_eq!(secret.secret_name.as_deref(), Some("pillion-identity"));
    assert_eq!(secret.default_mode, Some(0o400));
    assert!(volume.empty_dir.is_none());

    // The Service's target port and every probe land on the agent's port.
    let named: BTreeMap<String, i32> = container
        .ports
        .iter()
        .flatten()
        .filter_map(|p| Some((p.name.clone()?, p.container_port)))
        .collect();
    let resolve = |port: &IntOrString| match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => *named.get(name).unwrap_or_else(|| panic!("port {name}")),
    };
    assert_eq!(
        resolve(ports[0].target_port.as_ref().unwrap()),
        i32::from(defaults::AGENT_PORT)
    );
    for probe in [
        &container.startup_probe,
        &container.readiness_probe,
        &container.liveness_probe,
    ] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(resolve(&get.port), i32::from(defaults::AGENT_PORT));
        assert_eq!(get.scheme.as_deref(), Some("HTTPS"));
    }
}

#[test]
fn the_webhook_points_at_the_agent() {
    let Some((base, _, _)) = rendered() else {
        return;
    };
    let hooks = all!(base, Webhook);
    assert_eq!(hooks.len(), 1);
    let config = hooks[0];
    assert_eq!(name_of(&config.metadata), "pillion-injector");
    let webhooks = config.webhooks.as_ref().unwrap();
    assert_eq!(webhooks.len(), 1);
    let hook = &webhooks[0];
    let service = hook
        .client_config
        .service
        .as_ref()
        .expect("a Service reference");
    assert_eq!(service.name, "pillion-agent");
    assert_eq!(service.namespace, defaults::AGENT_NAMESPACE);
    assert_eq!(service.path.as_deref(), Some("/v1/inject"));
    assert_eq!(service.port, Some(i32::from(defaults::AGENT_PORT)));
    assert!(
        hook.client_config.ca_bundle.is_none(),
        "the agent fills the caBundle in"
    );
    assert!(hook.client_config.url.is_none());
    assert_eq!(hook.failure_policy.as_deref(), Some("Ignore"));
    assert_eq!(hook.side_effects, "None");
    assert_eq!(hook.admission_review_versions, ["v1"]);

    let rules = hook.rules.as_ref().unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(
        rules[0].operations.as_deref(),
        Some(&["CREATE".to_owned()][..])
    );
    assert_eq!(
        rules[0].resources.as_deref(),
        Some(&["pods".to_owned()][..])
    );
    assert_eq!(rules[0].api_groups.as_deref(), Some(&["".to_owned()][..]));

    let selector = hook.namespace_selector.as_ref().unwrap();
    let expressions = selector.match_expressions.as_ref().unwrap();
    assert_eq!(expressions.len(), 1);
    assert_eq!(expressions[0].key, "kubernetes.io/metadata.name");
    assert_eq!(expressions[0].operator, "NotIn");
    let excluded: BTreeSet<&str> = expressions[0]
        .values
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    assert_eq!(
        excluded,
        BTreeSet::from([defaults::AGENT_NAMESPACE, "kube-system"])
    );
}

#[test]
fn rbac_grants_exactly_what_the_agent_needs() {
    let Some((base, _, _)) = rendered() else {
        return;
    };
    leader_election_is_all_the_role_grants(&base);
    let roles = all!(base, ClusterRole);
    assert_eq!(roles.len(), 1);
    let role = roles[0];

    type Grant = (String, String, Vec<String>, Vec<String>);
    let mut granted: BTreeSet<Grant> = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        assert!(rule.non_resource_urls.is_none());
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                let mut verbs = rule.verbs.clone();
                verbs.sort();
                let mut names = rule.resource_names.clone().unwrap_or_default();
                names.sort();
                for word in verbs.iter().chain([group, resource]).chain(&names) {
                    assert!(!word.contains('*'), "wildcard in {rule:?}");
                }
                granted.insert((group.clone(), resource.clone(), verbs, names));
            }
        }
    }
    let read = || vec!["get".to_owned(), "list".to_owned(), "watch".to_owned()];
    let grant = |group: &str, resource: &str, verbs: Vec<String>, names: &[&str]| -> Grant {
        let mut verbs = verbs;
        verbs.sort();
        (
            group.to_owned(),
            resource.to_owned(),
            verbs,
            names.iter().map(|n| n.to_string()).collect(),
        )
    };
    let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut expected: BTreeSet<Grant> = BTreeSet::new();
    for resource in ["services", "pods", "namespaces"] {
        expected.insert(grant("", resource, read(), &[]));
    }
    expected.insert(grant("discovery.k8s.io", "endpointslices", read(), &[]));
    for resource in [
        "routes",
        "retrypolicies",
        "ratelimitpolicies",
        "authorizationpolicies",
        "authenticationpolicies",
    ] {
        expected.insert(grant("pillion.io", resource, read(), &[]));
    }
    expected.insert(grant(
        "authentication.k8s.io",
        "tokenreviews",
        words(&["create"]),
        &[],
    ));
    expected.insert(grant(
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        words(&["get", "patch"]),
        &["pillion-injector"],
    ));
    expected.insert(grant(
        "",
        "configmaps",
        words(&["get", "create", "patch"]),
        &["pillion-trust-anchors"],
    ));
    assert_eq!(granted, expected);

    // The CRD plurals the role names are the ones the CRDs define.
    let plurals: BTreeSet<String> = all!(base, Crd)
        .iter()
        .map(|c| c.spec.names.plural.clone())
        .collect();
    let read_crds: BTreeSet<String> = granted
        .iter()
        .filter(|g| g.0 == "pillion.io")
        .map(|g| g.1.clone())
        .collect();
    assert_eq!(plurals, read_crds);

    let bindings = all!(base, ClusterRoleBinding);
    assert_eq!(bindings.len(), 1);
    let binding = bindings[0];
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(binding.role_ref.name, name_of(&role.metadata));
    binds_only_the_agent(binding.subjects.as_deref());
}

/// A binding's subjects are the agent's ServiceAccount alone.
fn binds_only_the_agent(subjects: Option<&[k8s_openapi::api::rbac::v1::Subject]>) {
    let subjects = subjects.unwrap();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(subjects[0].name, defaults::AGENT_SERVICE_ACCOUNT);
    assert_eq!(
        subjects[0].namespace.as_deref(),
        Some(defaults::AGENT_NAMESPACE)
    );
}

/// The one Role: the leader election's Lease in the agent's namespace, bound to the
/// agent. Create cannot name its object; everything else names `pillion-agent`.
fn leader_election_is_all_the_role_grants(base: &[Object]) {
    let roles = all!(base, Role);
    assert_eq!(roles.len(), 1);
    let role = roles[0];
    assert_eq!(namespace_of(&role.metadata), defaults::AGENT_NAMESPACE);
    let mut granted = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        assert_eq!(
            rule.api_groups.as_deref(),
            Some(&["coordination.k8s.io".to_string()][..])
        );
        assert_eq!(rule.resources.as_deref(), Some(&["leases".to_string()][..]));
        let names = rule.resource_names.clone().unwrap_or_default();
        for verb in &rule.verbs {
            granted.insert((verb.clone(), names.clone()));
        }
    }
    let lease = vec!["pillion-agent".to_string()];
    let expected = BTreeSet::from([
        ("create".to_string(), Vec::new()),
        ("get".to_string(), lease.clone()),
        ("patch".to_string(), lease),
    ]);
    assert_eq!(granted, expected);
    let bindings = all!(base, RoleBinding);
    assert_eq!(bindings.len(), 1);
    let binding = bindings[0];
    assert_eq!(binding.role_ref.kind, "Role");
    assert_eq!(binding.role_ref.name, name_of(&role.metadata));
    binds_only_the_agent(binding.subjects.as_deref());
}

/// Two agent replicas that never both go away on purpose: rolling updates that
/// keep one ready, spread over nodes, a PodDisruptionBudget selecting them, and
/// each told its pod name and namespace for the Lease.
#[test]
fn the_agent_runs_two_replicas_that_never_both_go_away() {
    let Some((base, _, _)) = rendered() else {
        return;
    };
    let agent = agent_deployment(&base);
    let spec = agent.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(2));
    let strategy = spec.strategy.as_ref().unwrap();
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let rolling = strategy.rolling_update.as_ref().unwrap();
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(0)));
    let pod = spec.template.spec.as_ref().unwrap();
    let anti = pod
        .affinity
        .as_ref()
        .and_then(|a| a.pod_anti_affinity.as_ref());
    assert!(anti.is_some(), "replicas are spread over nodes");
    let env = pod.containers[0].env.clone().unwrap_or_default();
    for (name, field) in [
        ("PILLION_POD_NAME", "metadata.name"),
        ("PILLION_POD_NAMESPACE", "metadata.namespace"),
    ] {
        let var = env.iter().find(|e| e.name == name).expect(name);
        let from = var.value_from.as_ref().and_then(|v| v.field_ref.as_ref());
        assert_eq!(from.map(|f| f.field_path.as_str()), Some(field), "{name}");
    }
    let pdbs = all!(base, Pdb);
    assert_eq!(pdbs.len(), 1);
    let pdb = pdbs[0].spec.as_ref().unwrap();
    assert_eq!(pdb.min_available, Some(IntOrString::Int(1)));
    assert_eq!(namespace_of(&pdbs[0].metadata), defaults::AGENT_NAMESPACE);
    let labels = template_labels(spec);
    let selects = pdb.selector.as_ref().unwrap().match_labels.clone().unwrap();
    for (key, value) in &selects {
        assert_eq!(labels.get(key), Some(value), "the budget selects the agent");
    }
}

/// Checks that a schema is structural; returns the paths that preserve unknown fields.
fn check_structural(schema: &Value, path: &str, problems: &mut Vec<String>) {
    let Some(node) = schema.as_object() else {
        problems.push(format!("{path}: not a schema object"));
        return;
    };
    let flag = |key: &str| node.get(key).and_then(Value::as_bool) == Some(true);
    if flag("x-kubernetes-preserve-unknown-fields") {
        problems.push(format!("{path}: preserves unknown fields"));
    }
    if !flag("x-kubernetes-int-or-string") && node.get("type").is_none() {
        problems.push(format!("{path}: no type"));
    }
    for key in [
        "$ref",
        "anyOf",
        "allOf",
        "oneOf",
        "not",
        "definitions",
        "dependencies",
    ] {
        if node.contains_key(key) {
            problems.push(format!("{path}: uses {key}"));
        }
    }
    if node.contains_key("properties") && node.contains_key("additionalProperties") {
        problems.push(format!("{path}: both properties and additionalProperties"));
    }
    if let Some(properties) = node.get("properties").and_then(Value::as_object) {
        for (name, child) in properties {
            check_structural(child, &format!("{path}.{name}"), problems);
        }
    }
    if let Some(extra) = node.get("additionalProperties").filter(|v| v.is_object()) {
        check_structural(extra, &format!("{path}.*"), problems);
    }
    match node.get("type").and_then(Value::as_str) {
        Some("array") => match node.get("items") {
            Some(items) => check_structural(items, &format!("{path}[]"), problems),
            None => problems.push(format!("{path}: array without items")),
        },
        Some("object" | "string" | "integer" | "number" | "boolean") | None => {}
        Some(other) => problems.push(format!("{path}: unknown type {other}")),
    }
}

/// Validates an object against a (structural) schema, as the API server would, apart
/// from CEL rules; unknown fields count as errors, since the server would drop them.
fn validate(schema: &Value, value: &Value, path: &str, problems: &mut Vec<String>) {
    let node = schema.as_object().unwrap();
    let number = |key: &str| node.get(key).and_then(Value::as_f64);
    let ty = node.get("type").and_then(Value::as_str).unwrap_or("");
    let type_ok = match ty {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        _ => true,
    };
    if !type_ok {
        problems.push(format!("{path}: {value} is not {ty}"));
        return;
    }
    if let Some(options) = node.get("enum").and_then(Value::as_array) {
        if !options.contains(value) {
            problems.push(format!("{path}: {value} is not one of {options:?}"));
        }
    }
    if let Some(n) = value.as_f64() {
        if number("minimum").is_some_and(|min| n < min)
            || number("maximum").is_some_and(|max| n > max)
        {
            problems.push(format!("{path}: {n} out of range"));
        }
    }
    if let Some(text) = value.as_str() {
        let len = text.chars().count() as f64;
        if number("minLength").is_some_and(|m| len < m)
            || number("maxLength").is_some_and(|m| len > m)
        {
            problems.push(format!("{path}: length {len} out of range"));
        }
        if let Some(pattern) = node.get("pattern").and_then(Value::as_str) {
            let re = regex::Regex::new(pattern).unwrap_or_else(|e| panic!("{path}: {e}"));
            if !re.is_match(text) {
                problems.push(format!("{path}: {text:?} does not match {pattern}"));
            }
        }
    }
    if let Some(items) = value.as_array() {
        let len = items.len() as f64;
        if number("minItems").is_some_and(|m| len < m)
            || number("maxItems").is_some_and(|m| len > m)
        {
            problems.push(format!("{path}: {len} items out of range"));
        }
        for (i, item) in items.iter().enumerate() {
            validate(&node["items"], item, &format!("{path}[{i}]"), problems);
        }
    }
    if let Some(fields) = value.as_object() {
        if number("maxProperties").is_some_and(|m| fields.len() as f64 > m) {
            problems.push(format!("{path}: too many properties"));
        }
        for required in node
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let required = required.as_str().unwrap();
            if !fields.contains_key(required) {
                problems.push(format!("{path}: {required} is required"));
            }
        }
        for (key, child) in fields {
            let child_path = format!("{path}.{key}");
            match (
                node.get("properties").and_then(|p| p.get(key)),
                node.get("additionalProperties"),
            ) {
                (Some(schema), _) => {
                    // The root's metadata is the API server's business.
                    if key != "metadata" || !path.is_empty() {
                        validate(schema, child, &child_path, problems);
                    }
                }
                (None, Some(extra)) if extra.is_object() => {
                    validate(extra, child, &child_path, problems)
                }
                _ => problems.push(format!("{child_path}: unknown field (would be pruned)")),
            }
        }
    }
}

#[test]
fn crds_are_structural_and_the_examples_obey_them() {
    let Some((base, example, _)) = rendered() else {
        return;
    };
    let crds = all!(base, Crd);
    let kinds: BTreeSet<&str> = crds.iter().map(|c| c.spec.names.kind.as_str()).collect();
    assert_eq!(kinds, PILLION_KINDS.iter().copied().collect());

    let mut schemas = BTreeMap::new();
    for crd in &crds {
        let spec = &crd.spec;
        assert_eq!(spec.group, "pillion.io");
        assert_eq!(spec.scope, "Namespaced");
        assert_eq!(
            name_of(&crd.metadata),
            format!("{}.{}", spec.names.plural, spec.group)
        );
        assert_eq!(spec.versions.len(), 1);
        let version = &spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(version.served && version.storage);
        let schema = version
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("an openAPIV3Schema");
        let schema = serde_json::to_value(schema).unwrap();
        let mut problems = Vec::new();
        check_structural(&schema, &spec.names.kind, &mut problems);
        assert!(problems.is_empty(), "{problems:#?}");
        assert_eq!(schema["properties"]["spec"]["type"], "object");
        schemas.insert(spec.names.kind.clone(), schema);
    }

    let mut seen = BTreeSet::new();
    for object in &example {
        if let Object::Custom { kind, value } = object {
            let mut problems = Vec::new();
            validate(&schemas[kind], value, "", &mut problems);
            assert!(problems.is_empty(), "{kind}: {problems:#?}");
            seen.insert(kind.as_str());
        }
    }
    assert_eq!(seen, kinds, "the example uses every CRD");

    // And the validator does catch mistakes.
    let bad = serde_json::json!({
        "apiVersion": "pillion.io/v1alpha1", "kind": "Route", "metadata": {"name": "x"},
        "spec": {"parentRefs": [{"name": "a", "port": 70000}],
                 "rules": [{"matches": [{"path": {"type": "Prefix", "value": "/"}}],
                            "timeouts": {"request": "2"}, "retries": 3}]}
    });
    let mut problems = Vec::new();
    validate(&schemas["Route"], &bad, "", &mut problems);
    assert_eq!(problems.len(), 4, "{problems:#?}");
}

/// Every container of a pod spec runs non-root, unprivileged, read-only, without
/// capabilities; `pillion-init` is the one exception, when `injected`.
fn assert_hardened(what: &str, spec: &PodSpec, injected: bool) {
    let pod = spec.security_context.clone().unwrap_or_default();
    assert_ne!(spec.host_network, Some(true), "{what}");
    assert_ne!(spec.host_pid, Some(true), "{what}");
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers);
    for c in containers {
        let what = format!("{what}/{}", c.name);
        if injected && c.name == "pillion-init" {
            assert_init(c);
            continue;
        }
        let sc = c.security_context.clone().unwrap_or_default();
        assert_eq!(
            sc.run_as_non_root.or(pod.run_as_non_root),
            Some(true),
            "{what}: runAsNonRoot"
        );
        let uid = sc.run_as_user.or(pod.run_as_user);
        assert!(
            uid.is_some_and(|u| u != 0),
            "{what}: a numeric non-root uid"
        );
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{what}");
        assert_eq!(sc.read_only_root_filesystem, Some(true), "{what}");
        assert_ne!(sc.privileged, Some(true), "{what}");
        let caps = sc.capabilities.clone().unwrap_or_default();
        assert_eq!(
            caps.drop.as_deref(),
            Some(&["ALL".to_owned()][..]),
            "{what}"
        );
        assert!(caps.add.unwrap_or_default().is_empty(), "{what}");
        let seccomp = sc.seccomp_profile.or(pod.seccomp_profile.clone());
        assert_eq!(
            seccomp.map(|s| s.type_).as_deref(),
            Some("RuntimeDefault"),
            "{what}"
        );
        let image = c.image.clone().unwrap_or_default();
        let tag = image
            .rsplit('/')
            .next()
            .and_then(|last| last.split_once(':'));
        assert!(
            tag.is_some_and(|(_, tag)| tag != "latest"),
            "{what}: pin the image tag ({image})"
        );
        if injected && c.name != "pillion-proxy" {
            assert_ne!(
                uid,
                Some(i64::from(defaults::PROXY_UID)),
                "{what}: an app running as the proxy's uid would bypass it"
            );
        }
    }
}

fn pod_specs(objects: &[Object]) -> Vec<(String, PodSpec)> {
    let mut specs = Vec::new();
    for d in all!(objects, Deployment) {
        specs.push((
            format!("Deployment {}", name_of(&d.metadata)),
            pod_spec(d).clone(),
        ));
    }
    for j in all!(objects, Job) {
        let spec = j.spec.as_ref().unwrap().template.spec.clone().unwrap();
        specs.push((format!("Job {}", name_of(&j.metadata)), spec));
    }
    specs
}

#[test]
fn every_container_is_locked_down() {
    let Some((base, example, _)) = rendered() else {
        return;
    };
    let specs: Vec<_> = pod_specs(&base)
        .into_iter()
        .chain(pod_specs(&example))
        .collect();
    assert!(specs.len() >= 6, "{}", specs.len());
    for (what, spec) in &specs {
        assert_hardened(what, spec, false);
    }
    let jaeger = all!(base, Deployment)
        .into_iter()
        .find(|d| name_of(&d.metadata) == "jaeger")
        .expect("Jaeger");
    let env = pod_spec(jaeger).containers[0].env.clone().unwrap();
    assert!(env
        .iter()
        .any(|e| e.name == "COLLECTOR_OTLP_ENABLED" && e.value.as_deref() == Some("true")));
    let jaeger_ports: BTreeSet<i32> = all!(base, Service)
        .into_iter()
        .find(|s| name_of(&s.metadata) == "jaeger")
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .map(|p| p.port)
        .collect();
    assert_eq!(jaeger_ports, BTreeSet::from([4317, 4318, 16686]));
}

#[test]
fn the_example_hangs_together() {
    let Some((_, example, _)) = rendered() else {
        return;
    };
    let namespaces = all!(example, Namespace);
    assert_eq!(namespaces.len(), 1);
    let demo = namespaces[0];
    assert_eq!(name_of(&demo.metadata), "pillion-demo");
    let annotations = demo.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations.get("pillion.io/inject").map(String::as_str),
        Some("enabled")
    );

    let accounts: BTreeSet<&str> = all!(example, ServiceAccount)
        .iter()
        .map(|a| name_of(&a.metadata))
        .collect();
    let mut labels_by_account: BTreeMap<String, Vec<BTreeMap<String, String>>> = BTreeMap::new();
    let mut ports_of_labels: Vec<(BTreeMap<String, String>, BTreeSet<i32>)> = Vec::new();
    for (what, spec) in pod_specs(&example) {
        let account = spec.service_account_name.clone().unwrap_or_default();
        assert!(
            accounts.contains(account.as_str()),
            "{what}: ServiceAccount {account:?}"
        );
        let _ = labels_by_account.entry(account).or_default();
        for container in &spec.containers {
            for port in container.ports.iter().flatten() {
                let reserved = [
                    defaults::OUTBOUND_PORT,
                    defaults::INBOUND_PORT,
                    defaults::ADMIN_PORT,
                ];
                assert!(
                    !reserved.contains(&(port.container_port as u16)),
                    "{what}: port {} belongs to the proxy",
                    port.container_port
                );
            }
        }
    }
    for d in all!(example, Deployment) {
        let spec = d.spec.as_ref().unwrap();
        let labels = template_labels(spec);
        for (k, v) in spec.selector.match_labels.iter().flatten() {
            assert_eq!(labels.get(k), Some(v), "{}: selector", name_of(&d.metadata));
        }
        let ports = pod_spec(d)
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten().map(|p| p.container_port))
            .collect();
        ports_of_labels.push((labels, ports));
    }
    let selects = |selector: &BTreeMap<String, String>| {
        ports_of_labels
            .iter()
            .filter(|(labels, _)| selector.iter().all(|(k, v)| labels.get(k) == Some(v)))
            .collect::<Vec<_>>()
    };
    let mut services = BTreeMap::new();
    for service in all!(example, Service) {
        let spec = service.spec.clone().unwrap();
        let selector = spec.selector.clone().unwrap();
        assert!(
            !selects(&selector).is_empty(),
            "{:?} selects nothing",
            service.metadata.name
        );
        services.insert(name_of(&service.metadata).to_owned(), spec);
    }

    for object in &example {
        let Object::Custom { kind, value } = object else {
            continue;
        };
        let spec = &value["spec"];
        let service_refs: Vec<&Value> = match kind.as_str() {
            "Route" => spec["parentRefs"]
                .as_array()
                .unwrap()
                .iter()
                .chain(
                    spec["rules"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .flat_map(|r| r["backendRefs"].as_array().into_iter().flatten()),
                )
                .collect(),
            "RetryPolicy" | "RateLimitPolicy" => vec![&spec["targetRef"]],
            _ => Vec::new(),
        };
        for reference in service_refs {
            let name = reference["name"].as_str().unwrap();
            let service = services
                .get(name)
                .unwrap_or_else(|| panic!("{kind}: no Service {name}"));
            if let Some(port) = reference["port"].as_i64() {
                assert!(
                    service
                        .ports
                        .iter()
                        .flatten()
                        .any(|p| i64::from(p.port) == port),
                    "{kind}: Service {name} has no port {port}"
                );
            }
            if let Some(subset) = reference["subset"].as_object() {
                let mut selector = service.selector.clone().unwrap();
                for (k, v) in subset {
                    selector.insert(k.clone(), v.as_str().unwrap().to_owned());
                }
                assert!(
                    !selects(&selector).is_empty(),
                    "{kind}: subset {subset:?} is empty"
                );
            }
        }
        if kind == "AuthorizationPolicy" {
            let selector: BTreeMap<String, String> =
                serde_json::from_value(spec["podSelector"]["matchLabels"].clone()).unwrap();
            let port = spec["port"].as_i64().unwrap() as i32;
            let pods = selects(&selector);
            assert!(!pods.is_empty());
            assert!(
                pods.iter().all(|(_, ports)| ports.contains(&port)),
                "port {port}"
            );
            for identity in spec["allow"].as_array().unwrap() {
                let identity = identity.as_str().unwrap();
                let account = identity
                    .strip_prefix(&format!(
                        "spiffe://{}/ns/pillion-demo/sa/",
                        defaults::TRUST_DOMAIN
                    ))
                    .unwrap_or_else(|| panic!("{identity} is not in this namespace"));
                assert!(
                    accounts.contains(account),
                    "{identity}: no such ServiceAccount"
                );
            }
        }
    }
}

#[test]
fn offline_injection_of_the_example_agrees_with_the_defaults() {
    let Some((_, example, example_yaml)) = rendered() else {
        return;
    };
    let output = inject_manifests_with_report(&example_yaml, &InjectConfig::default()).unwrap();
    let workloads = pod_specs(&example).len();
    assert_eq!(output.reports.len(), workloads);
    for report in &output.reports {
        assert_eq!(report.decision, Decision::Inject, "{report:?}");
        assert!(report.warnings.is_empty(), "{report:?}");
    }

    let injected = parse(&output.yaml);
    assert_eq!(injected.len(), example.len(), "every document survives");
    let before: BTreeMap<String, PodSpec> = pod_specs(&example).into_iter().collect();
    for (what, spec) in pod_specs(&injected) {
        let apps: Vec<&str> = before[&what]
            .containers
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        let own_init: Vec<&str> = before[&what]
            .init_containers
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_native_injected(&spec, &own_init, &apps);
        assert_hardened(&what, &spec, true);
        let proxy = &spec.init_containers.as_ref().unwrap()[1];
        // The namespace's annotation reaches the proxy only through the webhook;
        // offline, the injector's default applies.
        assert!(env_value(proxy, defaults::env::TRACE_SAMPLING).is_some());
    }
}

#[test]
fn the_gateway_is_locked_down_and_reaches_the_example() {
    let Some((base, example, _)) = rendered() else {
        return;
    };
    let Some(gateway_yaml) = render("gateway") else {
        return;
    };
    let gateway = parse(&gateway_yaml);
    let namespaces = all!(gateway, Namespace);
    let ns = namespaces[0];
    assert_eq!(name_of(&ns.metadata), "pillion-gateway");
    // Annotated, so the agent publishes the trust anchors there.
    assert_eq!(
        ns.metadata.annotations.as_ref().unwrap()["pillion.io/inject"],
        "enabled"
    );
    let deployments = all!(gateway, Deployment);
    let deployment = deployments[0];
    let template = deployment.spec.as_ref().unwrap().template.clone();
    assert_eq!(
        template.metadata.unwrap().annotations.unwrap()["pillion.io/inject"],
        "disabled",
        "the gateway is a proxy itself"
    );
    let spec = pod_spec(deployment);
    assert_hardened("Deployment edge", spec, false);
    let container = &spec.containers[0];
    let config = InjectConfig::default();
    for (name, want) in [
        (defaults::env::AGENT_ADDR, config.agent_addr.clone()),
        (defaults::env::AGENT_IDENTITY, config.agent_identity.clone()),
        (
            defaults::env::TOKEN_FILE,
            pillion_inject::sidecar::token_path(),
        ),
        (
            defaults::env::TRUST_ANCHORS,
            pillion_inject::sidecar::trust_anchors_path(),
        ),
    ] {
        assert_eq!(env_value(container, name), Some(want.as_str()), "{name}");
    }
    let certs = env_value(container, "PILLION_GATEWAY_CERTS").unwrap();
    let mounted = container
        .volume_mounts
        .iter()
        .flatten()
        .any(|m| m.mount_path == certs && m.read_only == Some(true));
    assert!(
        mounted,
        "the certificate directory {certs} is a mounted Secret"
    );
    let service = all!(gateway, Service)[0].spec.clone().unwrap();
    let ports: Vec<i32> = service.ports.iter().flatten().map(|p| p.port).collect();
    assert_eq!(ports, [443, 80]);

    // The Route obeys its CRD and names the gateway's ServiceAccount and the
    // example's Services with their ports.
    let crd = all!(base, Crd)
        .into_iter()
        .find(|c| c.spec.names.kind == "Route")
        .unwrap();
    let schema = serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap();
    let accounts: BTreeSet<&str> = all!(gateway, ServiceAccount)
        .iter()
        .map(|a| name_of(&a.metadata))
        .collect();
    let services: BTreeMap<&str, Vec<i32>> = all!(example, Service)
        .iter()
        .map(|s| {
            let ports = s
                .spec
                .as_ref()
                .unwrap()
                .ports
                .iter()
                .flatten()
                .map(|p| p.port);
            (name_of(&s.metadata), ports.collect())
        })
        .collect();
    let mut routes = 0;
    for object in &gateway {
        let Object::Custom { kind, value } = object else {
            continue;
        };
        assert_eq!(kind, "Route");
        routes += 1;
        let mut problems = Vec::new();
        validate(&schema, value, "", &mut problems);
        assert!(problems.is_empty(), "{problems:#?}");
        let parent = &value["spec"]["parentRefs"][0];
        assert_eq!(parent["kind"], "Gateway");
        // A gateway takes Routes from its own namespace only.
        assert_eq!(value["metadata"]["namespace"], "pillion-gateway");
        assert!(parent
            .get("namespace")
            .is_none_or(|ns| ns == "pillion-gateway"));
        assert!(accounts.contains(parent["name"].as_str().unwrap()));
        assert!(!value["spec"]["hostnames"].as_array().unwrap().is_empty());
        for rule in value["spec"]["rules"].as_array().unwrap() {
            for backend in rule["backendRefs"].as_array().unwrap() {
                let name = backend["name"].as_str().unwrap();
                assert_eq!(backend["namespace"], "pillion-demo", "{name}");
                let port = backend["port"]
                    .as_i64()
                    .expect("a gateway backend names its port");
                assert!(
                    services
                        .get(name)
                        .is_some_and(|p| p.contains(&(port as i32))),
                    "{name}:{port} is not a Service port of the example"
                );
            }
        }
    }
    assert_eq!(routes, 1);
}
