//! Whether a pod gets the sidecar, and if not, why. Pure: reads the pod and its
//! namespace's annotations, changes nothing.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::annotations::{DISABLED, ENABLED, INJECT};
use crate::sidecar::{CONTAINER_NAMES, PROXY_CONTAINER, VOLUME_NAMES};

/// The injector's verdict on one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Add the sidecar.
    Inject,
    /// The pod already has the proxy; leave it exactly as it is.
    AlreadyInjected,
    /// Leave the pod alone, for this reason.
    Skip(SkipReason),
}

/// Why a pod is left alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// The pod says `pillion.io/inject: disabled`.
    PodDisabled,
    /// Neither the pod nor its namespace asks for injection.
    NotRequested,
    /// The namespace is unknown to the caller (e.g. not yet seen by the agent's watch).
    NamespaceUnknown,
    /// The pod shares the node's network namespace; redirecting it would capture the
    /// node's traffic.
    HostNetwork,
    /// The pod has no containers, so there is nothing to mesh.
    NoContainers,
    /// The pod is not for Linux; the redirect rules are iptables rules.
    NotLinux(String),
    /// The pod already uses a name the sidecar needs (a container or a volume).
    NameClash {
        /// `container` or `volume`.
        what: &'static str,
        /// The clashing name.
        name: String,
    },
    /// The pod object could not be read as a Pod.
    Unreadable(String),
}

impl SkipReason {
    /// Whether the reason deserves a warning to the user: they asked for injection and
    /// did not get it. Plain "not requested" skips stay quiet, or every pod of the
    /// cluster would carry a warning.
    pub fn is_surprising(&self) -> bool {
        !matches!(self, SkipReason::PodDisabled | SkipReason::NotRequested)
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::PodDisabled => write!(f, "the pod is annotated {INJECT}: {DISABLED}"),
            SkipReason::NotRequested => write!(
                f,
                "neither the pod nor its namespace is annotated {INJECT}: {ENABLED}"
            ),
            SkipReason::NamespaceUnknown => write!(
                f,
                "its namespace is not known to the injector yet; if the namespace is \
                 annotated {INJECT}: {ENABLED}, recreate the pod"
            ),
            SkipReason::HostNetwork => write!(
                f,
                "the pod uses hostNetwork; its traffic cannot be redirected without \
                 capturing the node's"
            ),
            SkipReason::NoContainers => write!(f, "the pod has no containers"),
            SkipReason::NotLinux(os) => write!(
                f,
                "the pod runs on {os:?}; the sidecar needs Linux (iptables)"
            ),
            SkipReason::NameClash { what, name } => write!(
                f,
                "the pod already has a {what} named {name:?}, which the sidecar needs; \
                 rename it or annotate the pod {INJECT}: {DISABLED}"
            ),
            SkipReason::Unreadable(why) => write!(f, "the pod could not be read: {why}"),
        }
    }
}

/// Decides for a pod, given its namespace's annotations (`None` when the namespace
/// is unknown). Order: already injected, opt-out, opt-in, then pods that cannot
/// carry the sidecar.
pub fn decide(
    meta: &ObjectMeta,
    spec: &PodSpec,
    namespace: Option<&BTreeMap<String, String>>,
) -> Decision {
    let containers = spec.containers.iter();
    let init_containers = spec.init_containers.iter().flatten();
    let mut container_names = containers.chain(init_containers).map(|c| c.name.as_str());
    if container_names.clone().any(|name| name == PROXY_CONTAINER) {
        return Decision::AlreadyInjected;
    }

    let pod_says = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(INJECT))
        .map(|v| v.trim());
    match pod_says {
        Some(DISABLED) => return Decision::Skip(SkipReason::PodDisabled),
        Some(ENABLED) => {}
        _ => match namespace {
            None => return Decision::Skip(SkipReason::NamespaceUnknown),
            Some(annotations) => {
                if annotations.get(INJECT).map(|v| v.trim()) != Some(ENABLED) {
                    return Decision::Skip(SkipReason::NotRequested);
                }
            }
        },
    }

    if spec.host_network == Some(true) {
        return Decision::Skip(SkipReason::HostNetwork);
    }
    if spec.containers.is_empty() {
        return Decision::Skip(SkipReason::NoContainers);
    }
    if let Some(os) = spec.os.as_ref().filter(|os| os.name != "linux") {
        return Decision::Skip(SkipReason::NotLinux(os.name.clone()));
    }
    if let Some(name) = container_names.find(|name| CONTAINER_NAMES.contains(name)) {
        return Decision::Skip(SkipReason::NameClash {
            what: "container",
            name: name.to_owned(),
        });
    }
    let volumes = spec.volumes.iter().flatten();
    if let Some(volume) = volumes
        .into_iter()
        .find(|v| VOLUME_NAMES.contains(&v.name.as_str()))
    {
        return Decision::Skip(SkipReason::NameClash {
            what: "volume",
            name: volume.name.clone(),
        });
    }
    Decision::Inject
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, Volume};

    fn pod(annotations: &[(&str, &str)]) -> (ObjectMeta, PodSpec) {
        let meta = ObjectMeta {
            namespace: Some("demo".into()),
            annotations: Some(
                annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        };
        let spec = PodSpec {
            containers: vec![Container {
                name: "app".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        (meta, spec)
    }

    fn enabled() -> BTreeMap<String, String> {
        BTreeMap::from([(INJECT.to_string(), ENABLED.to_string())])
    }

    #[test]
    fn namespace_or_pod_opt_in() {
        let (meta, spec) = pod(&[]);
        assert_eq!(decide(&meta, &spec, Some(&enabled())), Decision::Inject);
        assert_eq!(
            decide(&meta, &spec, Some(&BTreeMap::new())),
            Decision::Skip(SkipReason::NotRequested)
        );
        let (meta, spec) = pod(&[(INJECT, "enabled")]);
        assert_eq!(
            decide(&meta, &spec, Some(&BTreeMap::new())),
            Decision::Inject
        );
        assert_eq!(decide(&meta, &spec, None), Decision::Inject);
    }

    #[test]
    fn pod_opt_out_wins() {
        let (meta, spec) = pod(&[(INJECT, "disabled")]);
        assert_eq!(
            decide(&meta, &spec, Some(&enabled())),
            Decision::Skip(SkipReason::PodDisabled)
        );
    }

    #[test]
    fn unknown_namespace_is_a_surprising_skip() {
        let (meta, spec) = pod(&[]);
        let decision = decide(&meta, &spec, None);
        assert_eq!(decision, Decision::Skip(SkipReason::NamespaceUnknown));
        assert!(SkipReason::NamespaceUnknown.is_surprising());
    }

    #[test]
    fn pods_that_cannot_carry_the_sidecar() {
        let (meta, mut spec) = pod(&[]);
        spec.host_network = Some(true);
        assert_eq!(
            decide(&meta, &spec, Some(&enabled())),
            Decision::Skip(SkipReason::HostNetwork)
        );
        assert!(SkipReason::HostNetwork.is_surprising());
        assert!(!SkipReason::NotRequested.is_surprising());

        let (meta, mut spec) = pod(&[]);
        spec.os = Some(k8s_openapi::api::core::v1::PodOS {
            name: "windows".into(),
        });
        assert_eq!(
            decide(&meta, &spec, Some(&enabled())),
            Decision::Skip(SkipReason::NotLinux("windows".into()))
        );

        let (meta, mut spec) = pod(&[]);
        spec.containers.clear();
        assert_eq!(
            decide(&meta, &spec, Some(&enabled())),
            Decision::Skip(SkipReason::NoContainers)
        );

        let (meta, mut spec) = pod(&[]);
        spec.init_containers = Some(vec![Container {
            name: "pillion-init".into(),
            ..Default::default()
        }]);
        assert!(matches!(
            decide(&meta, &spec, Some(&enabled())),
            Decision::Skip(SkipReason::NameClash {
                what: "container",
                ..
            })
        ));

        let (meta, mut spec) = pod(&[]);
        spec.volumes = Some(vec![Volume {
            name: VOLUME_NAMES[0].into(),
            ..Default::default()
        }]);
        assert!(matches!(
            decide(&meta, &spec, Some(&enabled())),
            Decision::Skip(SkipReason::NameClash { what: "volume", .. })
        ));
    }

    #[test]
    fn the_proxy_container_means_injected_wherever_it_is() {
        let (meta, mut spec) = pod(&[(INJECT, "disabled")]);
        spec.containers.push(Container {
            name: PROXY_CONTAINER.into(),
            ..Default::default()
        });
        assert_eq!(decide(&meta, &spec, None), Decision::AlreadyInjected);
    }
}
