//! Checks shared by the admission, offline and deploy tests: an injected pod spec
//! must agree with `pillion_api::defaults` (ports, uid, env names, probes), whichever
//! way it was injected.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, PodSpec, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use pillion_api::defaults::{self, env};

/// Every environment variable the proxy reads, straight from the api crate.
pub fn proxy_env_names() -> BTreeSet<&'static str> {
    BTreeSet::from([
        env::AGENT_ADDR,
        env::AGENT_IDENTITY,
        env::TRUST_ANCHORS,
        env::TOKEN_FILE,
        env::TRUST_DOMAIN,
        env::NAMESPACE,
        env::SERVICE_ACCOUNT,
        env::POD_NAME,
        env::LOG_LEVEL,
        env::LOG_FORMAT,
        env::ADMIN_ADDR,
        env::OPAQUE_PORTS,
        env::INBOUND_LOOPBACK_PORTS,
        env::TRACE_SAMPLING,
        env::OTLP_ENDPOINT,
    ])
}

/// The pod spec of a Deployment's template, where injection adds the sidecar.
pub fn pod_spec(deployment: &Deployment) -> &PodSpec {
    deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
}

/// The value of a plain (non-`valueFrom`) env var of a container.
pub fn env_value<'a>(container: &'a Container, name: &str) -> Option<&'a str> {
    container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.as_deref())
}

/// The downward-API field path of an env var of a container.
pub fn env_field<'a>(container: &'a Container, name: &str) -> Option<&'a str> {
    container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.field_ref.as_ref())
        .map(|f| f.field_path.as_str())
}

fn assert_admin_probe(probe: Option<&Probe>, path: &str, what: &str) {
    let get = probe
        .and_then(|p| p.http_get.as_ref())
        .unwrap_or_else(|| panic!("{what}: no httpGet probe"));
    assert_eq!(get.path.as_deref(), Some(path), "{what}");
    assert_eq!(
        get.port,
        IntOrString::Int(i32::from(defaults::ADMIN_PORT)),
        "{what}"
    );
}

fn caps(container: &Container) -> (BTreeSet<String>, BTreeSet<String>) {
    let caps = container
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
        .unwrap_or_else(|| panic!("{}: no capabilities", container.name));
    (
        caps.add.iter().flatten().cloned().collect(),
        caps.drop.iter().flatten().cloned().collect(),
    )
}

/// The `pillion-init` container: root, NET_ADMIN + NET_RAW exactly, everything else off.
pub fn assert_init(init: &Container) {
    assert_eq!(init.name, "pillion-init");
    let sc = init.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_user, Some(0));
    assert_eq!(sc.run_as_non_root, Some(false));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_ne!(sc.privileged, Some(true));
    let (add, drop) = caps(init);
    assert_eq!(add, BTreeSet::from(["NET_ADMIN".into(), "NET_RAW".into()]));
    assert_eq!(drop, BTreeSet::from(["ALL".into()]));
    let args = init.args.clone().unwrap_or_default();
    for expected in [
        format!("--outbound-port={}", defaults::OUTBOUND_PORT),
        format!("--inbound-port={}", defaults::INBOUND_PORT),
        format!("--proxy-uid={}", defaults::PROXY_UID),
        format!("--proxy-gid={}", defaults::PROXY_GID),
    ] {
        assert!(args.contains(&expected), "{expected} missing from {args:?}");
    }
    let skip = args
        .iter()
        .find_map(|a| a.strip_prefix("--skip-inbound-ports="))
        .expect("--skip-inbound-ports");
    for port in defaults::SKIP_INBOUND_PORTS {
        assert!(skip.split(',').any(|p| p == port.to_string()), "{skip}");
    }
    let mounts = init.volume_mounts.clone().unwrap_or_default();
    assert!(mounts.iter().any(|m| m.mount_path == "/run"));
}

/// The proxy container, native or not: identity, hardening, probes, env, ports.
pub fn assert_proxy(proxy: &Container) {
    assert_eq!(proxy.name, "pillion-proxy");
    let sc = proxy.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_user, Some(i64::from(defaults::PROXY_UID)));
    assert_eq!(sc.run_as_group, Some(i64::from(defaults::PROXY_GID)));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let (add, drop) = caps(proxy);
    assert!(add.is_empty(), "{add:?}");
    assert_eq!(drop, BTreeSet::from(["ALL".into()]));

    assert_admin_probe(proxy.startup_probe.as_ref(), "/ready", "startupProbe");
    assert_admin_probe(proxy.readiness_probe.as_ref(), "/ready", "readinessProbe");
    assert_admin_probe(proxy.liveness_probe.as_ref(), "/live", "livenessProbe");

    let names: BTreeSet<&str> = proxy
        .env
        .iter()
        .flatten()
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(names, proxy_env_names());
    assert_eq!(
        env_value(proxy, env::ADMIN_ADDR),
        Some(defaults::ADMIN_ADDR)
    );
    assert_eq!(
        env_value(proxy, env::AGENT_ADDR),
        Some(format!("pillion-agent.pillion.svc:{}", defaults::AGENT_PORT).as_str())
    );
    assert_eq!(env_field(proxy, env::NAMESPACE), Some("metadata.namespace"));
    assert_eq!(
        env_field(proxy, env::SERVICE_ACCOUNT),
        Some("spec.serviceAccountName")
    );
    assert_eq!(env_field(proxy, env::POD_NAME), Some("metadata.name"));

    let ports = proxy.ports.clone().unwrap_or_default();
    let admin = ports
        .iter()
        .find(|p| p.name.as_deref() == Some("pillion-admin"))
        .expect("pillion-admin port");
    assert_eq!(admin.container_port, i32::from(defaults::ADMIN_PORT));
    let mounts: Vec<String> = proxy
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.mount_path.clone())
        .collect();
    let token = env_value(proxy, env::TOKEN_FILE).unwrap();
    let anchors = env_value(proxy, env::TRUST_ANCHORS).unwrap();
    assert!(
        mounts.iter().any(|m| token.starts_with(m.as_str())),
        "{token}"
    );
    assert!(
        mounts.iter().any(|m| anchors.starts_with(m.as_str())),
        "{anchors}"
    );
}

/// The sidecar's volumes: a projected token for audience `pillion`, the trust anchors.
pub fn assert_volumes(spec: &PodSpec) {
    let volumes = spec.volumes.clone().unwrap_or_default();
    let token = volumes
        .iter()
        .find(|v| v.name == "pillion-token")
        .and_then(|v| v.projected.as_ref())
        .and_then(|p| p.sources.as_ref())
        .and_then(|s| s.iter().find_map(|s| s.service_account_token.as_ref()))
        .expect("projected service account token");
    assert_eq!(token.audience.as_deref(), Some("pillion"));
    assert_eq!(token.expiration_seconds, Some(3600));
    let anchors = volumes
        .iter()
        .find(|v| v.name == "pillion-trust-anchors")
        .and_then(|v| v.config_map.as_ref())
        .expect("trust anchors ConfigMap volume");
    assert_eq!(anchors.name, "pillion-trust-anchors");
    assert_eq!(anchors.items.as_ref().unwrap()[0].key, "ca.pem");
    let mut names: Vec<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
    names.sort();
    let before = names.len();
    names.dedup();
    assert_eq!(before, names.len(), "duplicate volume names");
}

/// A natively injected pod: `pillion-init`, `pillion-proxy` (restartPolicy Always),
/// then the pod's own init containers in their order; the app containers untouched.
pub fn assert_native_injected(spec: &PodSpec, own_init: &[&str], app: &[&str]) {
    let init = spec.init_containers.clone().unwrap_or_default();
    let names: Vec<&str> = init.iter().map(|c| c.name.as_str()).collect();
    let mut expected = vec!["pillion-init", "pillion-proxy"];
    expected.extend_from_slice(own_init);
    assert_eq!(names, expected);
    assert_init(&init[0]);
    assert_proxy(&init[1]);
    assert_eq!(init[1].restart_policy.as_deref(), Some("Always"));
    assert!(init[0].restart_policy.is_none());
    let containers: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(containers, app);
    assert_volumes(spec);
}
