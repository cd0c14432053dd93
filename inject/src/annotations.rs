//! The `pillion.io/*` annotations and how a pod's (or its namespace's) annotations
//! turn the cluster-wide [`InjectConfig`] into this pod's [`PodSettings`].
//!
//! A pod annotation wins over the same annotation on its namespace, which wins over
//! the injector's configuration. An invalid value never blocks the pod: that one
//! field keeps its default and the problem comes back as a warning, which the API
//! server shows to whoever created the pod (`kubectl` prints it).

use std::collections::BTreeMap;

use ipnet::IpNet;
use pillion_api::defaults;

use crate::config::{InjectConfig, ProxyResources};
use crate::values::{self, shorten, Quantity};

/// `enabled` on a namespace or pod asks for injection; `disabled` on a pod opts out.
pub const INJECT: &str = "pillion.io/inject";
/// Value of [`INJECT`] that asks for injection.
pub const ENABLED: &str = "enabled";
/// Value of [`INJECT`] that opts a pod out.
pub const DISABLED: &str = "disabled";
/// Marker the injector adds, holding its version.
pub const INJECTED: &str = "pillion.io/injected";
/// `"false"` runs the proxy as a regular container (clusters older than 1.29).
pub const NATIVE_SIDECAR: &str = "pillion.io/native-sidecar";
/// Extra inbound ports that reach the app without the proxy (the admin port always does).
pub const SKIP_INBOUND_PORTS: &str = "pillion.io/skip-inbound-ports";
/// Destination ports whose outbound connections bypass the proxy.
pub const SKIP_OUTBOUND_PORTS: &str = "pillion.io/skip-outbound-ports";
/// Destination networks that outbound connections reach directly.
pub const SKIP_OUTBOUND_CIDRS: &str = "pillion.io/skip-outbound-cidrs";
/// Inbound ports that skip protocol detection (replaces the default list).
pub const OPAQUE_PORTS: &str = "pillion.io/opaque-ports";
/// Inbound ports whose application listens on loopback only and is meant to be
/// reached from other pods (every other port reaches the pod's own address).
pub const INBOUND_LOOPBACK_PORTS: &str = "pillion.io/inbound-loopback-ports";
/// CPU request of the proxy.
pub const PROXY_CPU_REQUEST: &str = "pillion.io/proxy-cpu-request";
/// CPU limit of the proxy.
pub const PROXY_CPU_LIMIT: &str = "pillion.io/proxy-cpu-limit";
/// Memory request of the proxy.
pub const PROXY_MEMORY_REQUEST: &str = "pillion.io/proxy-memory-request";
/// Memory limit of the proxy.
pub const PROXY_MEMORY_LIMIT: &str = "pillion.io/proxy-memory-limit";
/// Log filter of the proxy.
pub const LOG_LEVEL: &str = "pillion.io/log-level";
/// Ratio of new traces the proxy samples, 0 to 1.
pub const TRACE_SAMPLING: &str = "pillion.io/trace-sampling";
/// Which container `kubectl logs/exec` pick when none is named.
pub const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";

/// What one pod gets: the configuration with its annotations applied and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct PodSettings {
    /// Inbound ports that bypass the proxy; always includes the defaults (admin port).
    pub skip_inbound_ports: Vec<u16>,
    /// Outbound destination ports that bypass the proxy.
    pub skip_outbound_ports: Vec<u16>,
    /// Outbound destination networks that bypass the proxy.
    pub skip_outbound_cidrs: Vec<IpNet>,
    /// Inbound ports that skip protocol detection.
    pub opaque_ports: Vec<u16>,
    /// Inbound ports forwarded to the application on loopback (none by default).
    pub inbound_loopback_ports: Vec<u16>,
    /// The proxy container's resources.
    pub resources: ProxyResources,
    /// The proxy's log filter.
    pub log_level: String,
    /// The proxy's trace sampling ratio.
    pub trace_sampling: f64,
    /// Whether the proxy runs as a native sidecar.
    pub native_sidecar: bool,
}

/// Looks annotations up on the pod first, then on its namespace, and collects a
/// warning for every value that had to be ignored.
struct Lookup<'a> {
    pod: &'a BTreeMap<String, String>,
    namespace: &'a BTreeMap<String, String>,
    warnings: Vec<String>,
}

impl Lookup<'_> {
    /// Parses the annotation `key` with `parse`; `None` when absent or invalid (then a
    /// warning names the key, where it was found, the problem and the default kept).
    fn get<T>(
        &mut self,
        key: &str,
        default: &dyn std::fmt::Display,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Option<T> {
        let (text, place) = match (self.pod.get(key), self.namespace.get(key)) {
            (Some(text), _) => (text, "pod"),
            (None, Some(text)) => (text, "namespace"),
            (None, None) => return None,
        };
        match parse(text) {
            Ok(value) => Some(value),
            Err(problem) => {
                self.warnings.push(format!(
                    "pillion: ignoring {place} annotation {key}={:?}: {problem}; using {default}",
                    shorten(text)
                ));
                None
            }
        }
    }
}

/// Comma-joins a list for messages and flags.
pub(crate) fn join<T: ToString>(items: &[T]) -> String {
    items.iter().map(T::to_string).collect::<Vec<_>>().join(",")
}

/// Applies a pod's and its namespace's annotations to the configuration.
/// Returns the pod's settings and the warnings for values that were ignored.
pub fn pod_settings(
    pod: &BTreeMap<String, String>,
    namespace: &BTreeMap<String, String>,
    config: &InjectConfig,
) -> (PodSettings, Vec<String>) {
    let mut l = Lookup {
        pod,
        namespace,
        warnings: Vec::new(),
    };
    let none = "none";

    let mut skip_inbound_ports = defaults::SKIP_INBOUND_PORTS.to_vec();
    let default_skip = join(&skip_inbound_ports);
    for port in l
        .get(SKIP_INBOUND_PORTS, &default_skip, values::parse_skip_ports)
        .unwrap_or_default()
    {
        if !skip_inbound_ports.contains(&port) {
            skip_inbound_ports.push(port);
        }
    }
    let skip_outbound_ports = l
        .get(SKIP_OUTBOUND_PORTS, &none, values::parse_skip_ports)
        .unwrap_or_default();
    let skip_outbound_cidrs = l
        .get(SKIP_OUTBOUND_CIDRS, &none, values::parse_cidrs)
        .unwrap_or_default();
    let opaque_ports = l
        .get(
            OPAQUE_PORTS,
            &join(&config.opaque_ports),
            values::parse_ports,
        )
        .unwrap_or_else(|| config.opaque_ports.clone());
    let inbound_loopback_ports = l
        .get(INBOUND_LOOPBACK_PORTS, &none, values::parse_ports)
        .unwrap_or_default();

    let base = &config.resources;
    let mut quantity = |key: &str, default: &Quantity| {
        l.get(key, &default.text, values::parse_quantity)
            .unwrap_or_else(|| default.clone())
    };
    let mut resources = ProxyResources {
        cpu_request: quantity(PROXY_CPU_REQUEST, &base.cpu_request),
        cpu_limit: quantity(PROXY_CPU_LIMIT, &base.cpu_limit),
        memory_request: quantity(PROXY_MEMORY_REQUEST, &base.memory_request),
        memory_limit: quantity(PROXY_MEMORY_LIMIT, &base.memory_limit),
    };
    for (what, request, limit) in [
        ("CPU", &mut resources.cpu_request, &resources.cpu_limit),
        (
            "memory",
            &mut resources.memory_request,
            &resources.memory_limit,
        ),
    ] {
        // The API server rejects a request above its limit, which would block the pod;
        // lower the request to the limit, as Kubernetes does when only a limit is set.
        if request.value > limit.value {
            l.warnings.push(format!(
                "pillion: the proxy's {what} request {} is above its limit {}; requesting {}",
                request.text, limit.text, limit.text
            ));
            *request = limit.clone();
        }
    }

    let log_level = l
        .get(LOG_LEVEL, &config.log_level, values::parse_log_level)
        .unwrap_or_else(|| config.log_level.clone());
    let trace_sampling = l
        .get(
            TRACE_SAMPLING,
            &config.trace_sampling,
            values::parse_sampling,
        )
        .unwrap_or(config.trace_sampling);
    let native_sidecar = l
        .get(NATIVE_SIDECAR, &config.native_sidecars, values::parse_bool)
        .unwrap_or(config.native_sidecars);

    let settings = PodSettings {
        skip_inbound_ports,
        skip_outbound_ports,
        skip_outbound_cidrs,
        opaque_ports,
        inbound_loopback_ports,
        resources,
        log_level,
        trace_sampling,
        native_sidecar,
    };
    (settings, l.warnings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pillion_testkit::strings::map;

    #[test]
    fn no_annotations_give_the_config() {
        let config = InjectConfig::default();
        let (s, warnings) = pod_settings(&map(&[]), &map(&[]), &config);
        assert!(warnings.is_empty());
        assert_eq!(s.skip_inbound_ports, defaults::SKIP_INBOUND_PORTS);
        assert!(s.skip_outbound_ports.is_empty() && s.skip_outbound_cidrs.is_empty());
        assert_eq!(s.opaque_ports, config.opaque_ports);
        assert!(s.inbound_loopback_ports.is_empty());
        assert_eq!(s.resources, config.resources);
        assert_eq!(s.log_level, config.log_level);
        assert_eq!(s.trace_sampling, config.trace_sampling);
        assert!(s.native_sidecar);
    }

    #[test]
    fn pod_wins_over_namespace() {
        let pod = map(&[(LOG_LEVEL, "debug"), (SKIP_INBOUND_PORTS, "22, 15020")]);
        let ns = map(&[
            (LOG_LEVEL, "warn"),
            (TRACE_SAMPLING, "1"),
            (INBOUND_LOOPBACK_PORTS, "9090,9091"),
        ]);
        let (s, warnings) = pod_settings(&pod, &ns, &InjectConfig::default());
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(s.log_level, "debug");
        assert_eq!(s.trace_sampling, 1.0);
        assert_eq!(s.skip_inbound_ports, vec![defaults::ADMIN_PORT, 22]);
        assert_eq!(s.inbound_loopback_ports, [9090, 9091]);
    }

    #[test]
    fn invalid_values_keep_defaults_and_warn() {
        let pod = map(&[
            (SKIP_OUTBOUND_PORTS, "443,https"),
            (SKIP_OUTBOUND_CIDRS, "10.0.0.1/8"),
            (OPAQUE_PORTS, "99999"),
            (INBOUND_LOOPBACK_PORTS, "ssh"),
            (PROXY_CPU_LIMIT, "lots"),
            (TRACE_SAMPLING, "2"),
            (NATIVE_SIDECAR, "perhaps"),
            (LOG_LEVEL, "loud=yes"),
        ]);
        let config = InjectConfig::default();
        let (s, warnings) = pod_settings(&pod, &map(&[]), &config);
        assert_eq!(warnings.len(), 8, "{warnings:#?}");
        assert!(warnings
            .iter()
            .all(|w| w.starts_with("pillion: ignoring pod annotation")));
        assert!(warnings
            .iter()
            .any(|w| w.contains(PROXY_CPU_LIMIT) && w.contains("using 1")));
        assert!(s.skip_outbound_ports.is_empty());
        assert_eq!(s, pod_settings(&map(&[]), &map(&[]), &config).0);
    }

    #[test]
    fn request_above_limit_is_lowered() {
        let pod = map(&[(PROXY_MEMORY_LIMIT, "16Mi"), (PROXY_CPU_REQUEST, "2")]);
        let (s, warnings) = pod_settings(&pod, &map(&[]), &InjectConfig::default());
        assert_eq!(warnings.len(), 2, "{warnings:#?}");
        assert_eq!(s.resources.memory_request.text, "16Mi");
        assert_eq!(s.resources.cpu_request.text, "1");
    }

    #[test]
    fn native_sidecar_can_be_turned_off_per_pod() {
        let (s, _) = pod_settings(
            &map(&[(NATIVE_SIDECAR, "false")]),
            &map(&[]),
            &InjectConfig::default(),
        );
        assert!(!s.native_sidecar);
    }
}
