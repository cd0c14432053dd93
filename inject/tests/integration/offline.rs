//! Offline injection (`pillion-inject -f`): workloads in multi-document YAML get the
//! sidecar in their pod templates; everything else comes back byte for byte.

use std::io::Write;
use std::process::{Command, Stdio};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::Pod;
use pillion_inject::offline::inject_manifests_with_report;
use pillion_inject::{inject_manifests, Decision, InjectConfig};
use serde::Deserialize;

use crate::common::*;

const SERVICE: &str = "\
# The service keeps its comments and layout.
apiVersion: v1
kind: Service
metadata:
  name: web   # trailing comment
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
";

const DISABLED_POD: &str = "\
apiVersion: v1
kind: Pod
metadata:
  name: debug
  annotations:
    pillion.io/inject: disabled
spec:
  containers:
    - name: shell
      image: busybox:1.36
";

const DEPLOYMENT: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
      annotations:
        pillion.io/opaque-ports: \"6379\"
    spec:
      initContainers:
        - name: migrate
          image: registry.example/web:1.2
      containers:
        - name: web
          image: registry.example/web:1.2
          ports: [{containerPort: 8080}]
";

const CRONJOB: &str = "\
apiVersion: batch/v1
kind: CronJob
metadata:
  name: report
spec:
  schedule: \"*/5 * * * *\"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers:
            - name: report
              image: registry.example/report:3
";

fn stream() -> String {
    format!("{DEPLOYMENT}---\n{SERVICE}---\n{CRONJOB}---\n{DISABLED_POD}")
}

/// The documents of a YAML stream, as text, split at `---` lines.
fn documents(yaml: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in yaml.split_inclusive('\n') {
        if line.trim_end() == "---" {
            docs.push(String::new());
        } else if let Some(last) = docs.last_mut() {
            last.push_str(line);
        }
    }
    docs
}

fn typed<T: for<'de> Deserialize<'de>>(doc: &str) -> T {
    serde_yaml_ng::from_str(doc).unwrap_or_else(|e| panic!("{e}\n{doc}"))
}

#[test]
fn workloads_are_injected_and_the_rest_passes_through() {
    let output = inject_manifests_with_report(&stream(), &InjectConfig::default()).unwrap();
    let docs = documents(&output.yaml);
    assert_eq!(docs.len(), 4, "{}", output.yaml);

    let deployment: Deployment = typed(&docs[0]);
    let spec = pod_spec(&deployment);
    assert_native_injected(spec, &["migrate"], &["web"]);
    let proxy = &spec.init_containers.as_ref().unwrap()[1];
    assert_eq!(
        env_value(proxy, pillion_api::defaults::env::OPAQUE_PORTS),
        Some("6379")
    );
    let template_meta = deployment.spec.as_ref().unwrap().template.metadata.as_ref();
    let annotations = template_meta.unwrap().annotations.as_ref().unwrap();
    assert_eq!(
        annotations["kubectl.kubernetes.io/default-container"],
        "web"
    );
    assert!(annotations.contains_key("pillion.io/injected"));
    // Only the template changed.
    assert_eq!(deployment.metadata.namespace.as_deref(), Some("shop"));
    assert_eq!(deployment.spec.as_ref().unwrap().replicas, Some(2));
    assert!(docs[0].starts_with("apiVersion: apps/v1\nkind: Deployment\nmetadata:"));

    assert_eq!(docs[1], SERVICE, "the Service must be untouched");

    let cronjob: CronJob = typed(&docs[2]);
    let job_spec = cronjob.spec.unwrap().job_template.spec.unwrap();
    let pod_spec = job_spec.template.spec.unwrap();
    assert_native_injected(&pod_spec, &[], &["report"]);
    assert_eq!(pod_spec.restart_policy.as_deref(), Some("OnFailure"));

    assert_eq!(docs[3], DISABLED_POD, "an opted-out pod must be untouched");
    let pod: Pod = typed(&docs[3]);
    assert!(pod.spec.unwrap().init_containers.is_none());

    let verdicts: Vec<(&str, &Decision)> = output
        .reports
        .iter()
        .map(|r| (r.kind.as_str(), &r.decision))
        .collect();
    assert_eq!(verdicts.len(), 3);
    assert_eq!(verdicts[0], ("Deployment", &Decision::Inject));
    assert_eq!(verdicts[1], ("CronJob", &Decision::Inject));
    assert!(matches!(verdicts[2], ("Pod", Decision::Skip(_))));
    assert_eq!(output.reports[1].index, 3);
}

#[test]
fn injecting_twice_changes_nothing_more() {
    let config = InjectConfig::default();
    let once = inject_manifests(&stream(), &config).unwrap();
    let twice = inject_manifests_with_report(&once, &config).unwrap();
    assert_eq!(twice.yaml, once);
    assert!(twice.reports.iter().all(|r| r.decision != Decision::Inject));
}

#[test]
fn fallback_mode_offline() {
    let config = InjectConfig {
        native_sidecars: false,
        ..InjectConfig::default()
    };
    let out = inject_manifests(DEPLOYMENT, &config).unwrap();
    let deployment: Deployment = typed(&out);
    let spec = pod_spec(&deployment);
    assert_eq!(spec.containers[0].name, "pillion-proxy");
    assert_proxy(&spec.containers[0]);
    let init: Vec<&str> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(init, ["pillion-init", "migrate"]);
}

fn cli(args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pillion-inject"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn the_binary_reads_stdin_or_a_file_and_reports_on_stderr() {
    let (ok, stdout, stderr) = cli(&["-f", "-"], &stream());
    assert!(ok, "{stderr}");
    assert_eq!(
        stdout,
        inject_manifests(&stream(), &InjectConfig::default()).unwrap()
    );
    assert!(
        stderr.contains("document 1 (Deployment web): injected"),
        "{stderr}"
    );
    assert!(
        stderr.contains("document 4 (Pod debug): skipped"),
        "{stderr}"
    );

    let path = std::env::temp_dir().join(format!("pillion-inject-{}.yaml", std::process::id()));
    std::fs::write(&path, SERVICE).unwrap();
    let (ok, stdout, stderr) = cli(&["-f", path.to_str().unwrap(), "--quiet"], "");
    std::fs::remove_file(&path).unwrap();
    assert!(ok && stderr.is_empty(), "{stderr}");
    assert_eq!(stdout, SERVICE);

    let (ok, _, stderr) = cli(
        &["-f", "-", "--proxy-image", "registry.example/p:9"],
        CRONJOB,
    );
    assert!(ok, "{stderr}");
}

#[test]
fn the_binary_names_the_broken_document() {
    let broken = format!("{SERVICE}---\nkind: Deployment\nmetadata: {{name: api}}\nspec: {{}}\n");
    let (ok, stdout, stderr) = cli(&["-f", "-"], &broken);
    assert!(!ok);
    assert!(stdout.is_empty(), "nothing half-written: {stdout}");
    assert!(stderr.contains("document 2 (Deployment api)"), "{stderr}");

    let (ok, _, stderr) = cli(&["-f", "/nonexistent/app.yaml"], "");
    assert!(!ok && stderr.contains("/nonexistent/app.yaml"), "{stderr}");

    let (ok, _, stderr) = cli(&["-f", "-"], "a: [unclosed\n");
    assert!(!ok && stderr.contains("document 1"), "{stderr}");
}
