//! Who emits the spans: the OTLP resource (`service.name`, `k8s.pod.name`,
//! `k8s.namespace.name`), fixed for the proxy's life and attached once per export
//! request rather than to every span.

use pillion_api::defaults::telemetry::SERVICE_NAME;

/// The resource attributes of every span this proxy exports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resource {
    /// `service.name`: the workload's name.
    pub service_name: String,
    /// `k8s.pod.name`, when known.
    pub pod_name: Option<String>,
    /// `k8s.namespace.name`, when known.
    pub namespace: Option<String>,
}

impl Resource {
    /// The resource of a workload. `service.name` is its service account, the name
    /// its mesh identity (and so every peer-identity metric) already uses; when the
    /// account is absent or the shared `default`, the pod name stands in; with
    /// neither, `pillion-proxy`.
    pub fn for_workload(
        service_account: Option<&str>,
        pod_name: Option<&str>,
        namespace: Option<&str>,
    ) -> Resource {
        let nonempty = |s: Option<&str>| s.filter(|s| !s.is_empty()).map(str::to_owned);
        let service_name = nonempty(service_account)
            .filter(|sa| sa != "default")
            .or_else(|| nonempty(pod_name))
            .unwrap_or_else(|| SERVICE_NAME.to_owned());
        Resource {
            service_name,
            pod_name: nonempty(pod_name),
            namespace: nonempty(namespace),
        }
    }
}

impl Default for Resource {
    fn default() -> Resource {
        Resource::for_workload(None, None, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_name_prefers_the_service_account() {
        let r = Resource::for_workload(Some("web"), Some("web-7d9f-x2"), Some("demo"));
        assert_eq!(r.service_name, "web");
        assert_eq!(r.pod_name.as_deref(), Some("web-7d9f-x2"));
        assert_eq!(r.namespace.as_deref(), Some("demo"));
        let r = Resource::for_workload(Some("default"), Some("web-7d9f-x2"), None);
        assert_eq!(r.service_name, "web-7d9f-x2");
        let r = Resource::for_workload(Some(""), None, Some(""));
        assert_eq!(
            (r.service_name.as_str(), r.namespace),
            ("pillion-proxy", None)
        );
    }
}
