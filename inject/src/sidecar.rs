//! The containers and volumes the injector adds, as typed Kubernetes objects: the
//! `pillion-init` container that installs the redirect rules, the proxy (a native
//! sidecar, or a regular first container on old clusters), and their volumes.
//!
//! # Why the init container needs a writable `/run`
//!
//! Both containers run with a read-only root filesystem. `pillion-init` drives either
//! `iptables-nft` or `iptables-legacy` (it detects which one the node uses). The legacy
//! flavour takes the xtables lock by creating `/run/xtables.lock`, and refuses to run
//! when it cannot; so the init container mounts a small in-memory `emptyDir` at `/run`.
//! The lock only has to serialize iptables calls inside this pod's own network
//! namespace, and the init container is the only one making them, so a private,
//! empty `/run` is correct, not just convenient. The nft flavour needs no lock.

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, ExecAction, HTTPGetAction, KeyToPath, Lifecycle, LifecycleHandler,
    ObjectFieldSelector, Probe, ProjectedVolumeSource, ResourceRequirements, SeccompProfile,
    SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use pillion_api::defaults::{self, env};
use std::collections::BTreeMap;

use crate::annotations::{join, PodSettings};
use crate::config::{
    InjectConfig, TOKEN_AUDIENCE, TOKEN_EXPIRATION_SECONDS, TRUST_ANCHORS_CONFIGMAP,
    TRUST_ANCHORS_KEY,
};

/// Name of the init container that installs the redirect rules.
pub const INIT_CONTAINER: &str = "pillion-init";
/// Name of the proxy container; its presence marks a pod as injected.
pub const PROXY_CONTAINER: &str = "pillion-proxy";
/// Every container name the injector adds.
pub const CONTAINER_NAMES: &[&str] = &[INIT_CONTAINER, PROXY_CONTAINER];

/// Volume with the projected ServiceAccount token (audience `pillion`).
pub const TOKEN_VOLUME: &str = "pillion-token";
/// Volume with the trust anchors ConfigMap.
pub const TRUST_ANCHORS_VOLUME: &str = "pillion-trust-anchors";
/// The init container's writable `/run` (for the legacy xtables lock).
pub const INIT_RUN_VOLUME: &str = "pillion-init-run";
/// Every volume name the injector adds.
pub const VOLUME_NAMES: &[&str] = &[TOKEN_VOLUME, TRUST_ANCHORS_VOLUME, INIT_RUN_VOLUME];

/// Where the token volume is mounted in the proxy.
pub const TOKEN_DIR: &str = "/var/run/secrets/pillion.io/token";
/// File name of the token inside [`TOKEN_DIR`].
pub const TOKEN_FILE_NAME: &str = "token";
/// Where the trust anchors volume is mounted in the proxy.
pub const TRUST_ANCHORS_DIR: &str = "/var/run/pillion.io/trust-anchors";

/// Name of the proxy's admin port (probes, metrics).
pub const ADMIN_PORT_NAME: &str = "pillion-admin";
/// Name of the proxy's inbound port.
pub const INBOUND_PORT_NAME: &str = "pillion-inbound";

/// Readiness path of the proxy's admin server.
pub const READY_PATH: &str = "/ready";
/// Liveness path of the proxy's admin server.
pub const LIVE_PATH: &str = "/live";

/// Seconds the proxy may take to become ready (certificate + first view) before the
/// kubelet restarts it: `STARTUP_PERIOD * STARTUP_FAILURES`.
const STARTUP_PERIOD: i32 = 1;
const STARTUP_FAILURES: i32 = 120;

/// Full path of the token file the proxy reads.
pub fn token_path() -> String {
    format!("{TOKEN_DIR}/{TOKEN_FILE_NAME}")
}

/// Full path of the PEM trust anchors the proxy reads.
pub fn trust_anchors_path() -> String {
    format!("{TRUST_ANCHORS_DIR}/{TRUST_ANCHORS_KEY}")
}

fn quantity(text: &str) -> Quantity {
    Quantity(text.to_owned())
}

fn capabilities(add: &[&str]) -> Capabilities {
    Capabilities {
        add: (!add.is_empty()).then(|| add.iter().map(|c| c.to_string()).collect()),
        drop: Some(vec!["ALL".to_owned()]),
    }
}

/// The `pillion-init` container: root with NET_ADMIN and NET_RAW only (to change the
/// pod's own network namespace), nothing else.
pub fn init_container(config: &InjectConfig, settings: &PodSettings) -> Container {
    let mut args = vec![
        format!("--outbound-port={}", defaults::OUTBOUND_PORT),
        format!("--inbound-port={}", defaults::INBOUND_PORT),
        format!("--proxy-uid={}", defaults::PROXY_UID),
        format!("--proxy-gid={}", defaults::PROXY_GID),
        format!(
            "--skip-inbound-ports={}",
            join(&settings.skip_inbound_ports)
        ),
    ];
    if !settings.skip_outbound_ports.is_empty() {
        args.push(format!(
            "--skip-outbound-ports={}",
            join(&settings.skip_outbound_ports)
        ));
    }
    if !settings.skip_outbound_cidrs.is_empty() {
        args.push(format!(
            "--skip-outbound-cidrs={}",
            join(&settings.skip_outbound_cidrs)
        ));
    }
    Container {
        name: INIT_CONTAINER.to_owned(),
        image: Some(config.init_image.clone()),
        image_pull_policy: Some(config.image_pull_policy.clone()),
        command: Some(vec!["pillion-init".to_owned()]),
        args: Some(args),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_owned(), quantity("10m")),
                ("memory".to_owned(), quantity("10Mi")),
            ])),
            limits: Some(BTreeMap::from([
                ("cpu".to_owned(), quantity("100m")),
                ("memory".to_owned(), quantity("50Mi")),
            ])),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(capabilities(&["NET_ADMIN", "NET_RAW"])),
            seccomp_profile: Some(runtime_default()),
            ..Default::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: INIT_RUN_VOLUME.to_owned(),
            mount_path: "/run".to_owned(),
            ..Default::default()
        }]),
        termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
        ..Default::default()
    }
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".to_owned(),
        ..Default::default()
    }
}

fn value_env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.into()),
        ..Default::default()
    }
}

fn field_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The proxy's environment: the variables of `pillion_api::defaults::env`.
pub fn proxy_env(config: &InjectConfig, settings: &PodSettings) -> Vec<EnvVar> {
    let mut vars = vec![
        value_env(env::AGENT_ADDR, &config.agent_addr),
        value_env(env::AGENT_IDENTITY, &config.agent_identity),
        value_env(env::TRUST_ANCHORS, trust_anchors_path()),
        value_env(env::TOKEN_FILE, token_path()),
        value_env(env::TRUST_DOMAIN, &config.trust_domain),
        field_env(env::NAMESPACE, "metadata.namespace"),
        field_env(env::SERVICE_ACCOUNT, "spec.serviceAccountName"),
        field_env(env::POD_NAME, "metadata.name"),
        value_env(env::LOG_LEVEL, &settings.log_level),
        value_env(env::LOG_FORMAT, &config.log_format),
        value_env(env::ADMIN_ADDR, defaults::ADMIN_ADDR),
        value_env(env::OPAQUE_PORTS, join(&settings.opaque_ports)),
        value_env(
            env::INBOUND_LOOPBACK_PORTS,
            join(&settings.inbound_loopback_ports),
        ),
        value_env(env::TRACE_SAMPLING, settings.trace_sampling.to_string()),
    ];
    if let Some(endpoint) = &config.otlp_endpoint {
        vars.push(value_env(env::OTLP_ENDPOINT, endpoint));
    }
    vars
}

fn admin_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::Int(i32::from(defaults::ADMIN_PORT)),
            scheme: Some("HTTP".to_owned()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(1),
        ..Default::default()
    }
}

/// Shell loop run as the fallback proxy's postStart hook: the kubelet starts the next
/// container only once this returns, so the app starts after the proxy is ready. Uses
/// bash's `/dev/tcp` because the image carries no HTTP client.
fn wait_ready_script() -> String {
    format!(
        "for _ in $(seq 1 {STARTUP_FAILURES}); do \
           if (exec 3<>/dev/tcp/127.0.0.1/{port} && \
               printf 'GET {READY_PATH} HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && \
               read -r _ code _ <&3 && [ \"$code\" = 200 ]) 2>/dev/null; then exit 0; fi; \
           sleep 1; \
         done; echo 'pillion-proxy did not become ready' >&2; exit 1",
        port = defaults::ADMIN_PORT
    )
}

/// The proxy container. As a native sidecar (`restartPolicy: Always` on an init
/// container) the kubelet starts the following containers only after its startup
/// probe passes and stops it after them, so Jobs complete. Otherwise (clusters before
/// 1.29) it is the first regular container with a postStart hook that holds the app
/// back until it is ready; a Job's pod then only completes when its app ends with
/// `POST http://localhost:15020/shutdown`, since the proxy would run on forever.
pub fn proxy_container(config: &InjectConfig, settings: &PodSettings) -> Container {
    let r = &settings.resources;
    let mut container = Container {
        name: PROXY_CONTAINER.to_owned(),
        image: Some(config.proxy_image.clone()),
        image_pull_policy: Some(config.image_pull_policy.clone()),
        command: Some(vec!["pillion-proxy".to_owned()]),
        env: Some(proxy_env(config, settings)),
        ports: Some(vec![
            ContainerPort {
                name: Some(ADMIN_PORT_NAME.to_owned()),
                container_port: i32::from(defaults::ADMIN_PORT),
                protocol: Some("TCP".to_owned()),
                ..Default::default()
            },
            ContainerPort {
                name: Some(INBOUND_PORT_NAME.to_owned()),
                container_port: i32::from(defaults::INBOUND_PORT),
                protocol: Some("TCP".to_owned()),
                ..Default::default()
            },
        ]),
        startup_probe: Some(admin_probe(READY_PATH, STARTUP_PERIOD, STARTUP_FAILURES)),
        readiness_probe: Some(admin_probe(READY_PATH, 5, 3)),
        liveness_probe: Some(admin_probe(LIVE_PATH, 10, 3)),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_owned(), quantity(&r.cpu_request.text)),
                ("memory".to_owned(), quantity(&r.memory_request.text)),
            ])),
            limits: Some(BTreeMap::from([
                ("cpu".to_owned(), quantity(&r.cpu_limit.text)),
                ("memory".to_owned(), quantity(&r.memory_limit.text)),
            ])),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            run_as_user: Some(i64::from(defaults::PROXY_UID)),
            run_as_group: Some(i64::from(defaults::PROXY_GID)),
            run_as_non_root: Some(true),
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(capabilities(&[])),
            seccomp_profile: Some(runtime_default()),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: TOKEN_VOLUME.to_owned(),
                mount_path: TOKEN_DIR.to_owned(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: TRUST_ANCHORS_VOLUME.to_owned(),
                mount_path: TRUST_ANCHORS_DIR.to_owned(),
                read_only: Some(true),
                ..Default::default()
            },
        ]),
        termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
        ..Default::default()
    };
    if settings.native_sidecar {
        container.restart_policy = Some("Always".to_owned());
    } else {
        container.lifecycle = Some(Lifecycle {
            post_start: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(vec![
                        "/bin/bash".to_owned(),
                        "-c".to_owned(),
                        wait_ready_script(),
                    ]),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    container
}

/// The volumes both containers mount: the projected token, the trust anchors and the
/// init container's `/run`.
pub fn volumes() -> Vec<Volume> {
    vec![
        Volume {
            name: TOKEN_VOLUME.to_owned(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(TOKEN_AUDIENCE.to_owned()),
                        expiration_seconds: Some(TOKEN_EXPIRATION_SECONDS),
                        path: TOKEN_FILE_NAME.to_owned(),
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: TRUST_ANCHORS_VOLUME.to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: TRUST_ANCHORS_CONFIGMAP.to_owned(),
                items: Some(vec![KeyToPath {
                    key: TRUST_ANCHORS_KEY.to_owned(),
                    path: TRUST_ANCHORS_KEY.to_owned(),
                    ..Default::default()
                }]),
                // Optional, so a namespace where the agent has not yet published the
                // anchors delays the proxy's readiness instead of wedging the pod in
                // ContainerCreating; the kubelet fills the file in once it exists.
                optional: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: INIT_RUN_VOLUME.to_owned(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".to_owned()),
                size_limit: Some(quantity("1Mi")),
            }),
            ..Default::default()
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::annotations::pod_settings;

    fn built(native: bool) -> (Container, Container) {
        let config = InjectConfig {
            native_sidecars: native,
            ..InjectConfig::default()
        };
        let (settings, _) = pod_settings(&BTreeMap::new(), &BTreeMap::new(), &config);
        (
            init_container(&config, &settings),
            proxy_container(&config, &settings),
        )
    }

    #[test]
    fn init_args_carry_the_defaults() {
        let (init, _) = built(true);
        let args = init.args.unwrap();
        assert!(args.contains(&format!("--proxy-uid={}", defaults::PROXY_UID)));
        assert!(args.contains(&format!("--skip-inbound-ports={}", defaults::ADMIN_PORT)));
        assert!(!args.iter().any(|a| a.starts_with("--skip-outbound")));
    }

    #[test]
    fn native_and_fallback_proxies() {
        let (_, native) = built(true);
        assert_eq!(native.restart_policy.as_deref(), Some("Always"));
        assert!(native.lifecycle.is_none());
        let (_, fallback) = built(false);
        assert!(fallback.restart_policy.is_none());
        let hook = fallback
            .lifecycle
            .unwrap()
            .post_start
            .unwrap()
            .exec
            .unwrap();
        let script = &hook.command.unwrap()[2];
        assert!(script.contains(&format!("/dev/tcp/127.0.0.1/{}", defaults::ADMIN_PORT)));
        assert!(script.contains(READY_PATH));
    }

    #[test]
    fn port_names_are_valid_iana_service_names() {
        for name in [ADMIN_PORT_NAME, INBOUND_PORT_NAME] {
            assert!(name.len() <= 15, "{name}");
            assert!(name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
        }
    }
}
