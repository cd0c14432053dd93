//! Every default of the mesh, in one place, so the init rules, the proxy's listeners
//! and the injected manifests can never disagree.

use std::time::Duration;

/// Port the outbound listener binds on loopback; nat OUTPUT redirects here.
pub const OUTBOUND_PORT: u16 = 15001;
/// Port the inbound listener binds on all addresses; nat PREROUTING redirects here.
pub const INBOUND_PORT: u16 = 15006;
/// Port of the admin server (probes, metrics, config, shutdown).
pub const ADMIN_PORT: u16 = 15020;
/// Port of the agent's HTTPS API.
pub const AGENT_PORT: u16 = 15012;
/// User id the proxy runs as; init exempts its traffic from redirection.
pub const PROXY_UID: u32 = 2580;
/// Group id the proxy runs as.
pub const PROXY_GID: u32 = 2580;
/// Inbound ports that bypass the proxy unless told otherwise (the admin port, so
/// kubelet probes reach it directly).
pub const SKIP_INBOUND_PORTS: &[u16] = &[ADMIN_PORT];
/// Trust domain of workload identities.
pub const TRUST_DOMAIN: &str = "cluster.local";
/// ALPN protocol id spoken between two Pillion proxies inside mesh TLS: the server
/// side detects what the bytes inside are (HTTP or opaque).
pub const MESH_ALPN: &[u8] = b"pillion/1";
/// ALPN protocol id of a mesh connection whose client side already decided that its
/// bytes are opaque: the server side relays them without detecting again, so a
/// server that speaks first is not kept waiting. Offered before [`MESH_ALPN`], which
/// a proxy that does not know it picks instead.
pub const MESH_ALPN_OPAQUE: &[u8] = b"pillion/1.opaque";
/// Ports whose protocols speak first from the server, so detection is skipped.
pub const OPAQUE_PORTS: &[u16] = &[25, 587, 3306, 4444, 5432, 6379, 9300, 11211];
/// Time a connection may take to send enough bytes for protocol detection.
pub const DETECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Silence from a new client on a port nobody declared after which the proxy
/// connects upstream to hear whether the server speaks first.
pub const SERVER_FIRST_AFTER: Duration = Duration::from_millis(250);
/// Time to establish an upstream TCP connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long in-flight connections may drain after SIGTERM.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
/// How long browsers keep to HTTPS for a gateway's hosts (`Strict-Transport-Security`
/// `max-age`): a year, the common preload minimum.
pub const GATEWAY_HSTS: Duration = Duration::from_secs(365 * 24 * 3600);
/// Bytes of answers one proxy keeps for the routes with a `cache:`, all together.
pub const RESPONSE_CACHE_BYTES: u64 = 64 << 20;
/// How long a proxy with on-demand discovery keeps a destination nobody uses.
pub const DISCOVERY_IDLE: Duration = Duration::from_secs(300);
/// Lifetime of a leaf certificate.
pub const LEAF_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Share of a certificate's lifetime after which it is renewed.
pub const RENEW_AT_FRACTION: f64 = 0.7;
/// Prefix of every environment variable a Pillion binary reads.
pub const ENV_PREFIX: &str = "PILLION_";

/// Address the outbound listener binds, IPv4.
pub const OUTBOUND_ADDR_V4: &str = "127.0.0.1:15001";
/// Address the outbound listener binds, IPv6.
pub const OUTBOUND_ADDR_V6: &str = "[::1]:15001";
/// Address the inbound listener binds, IPv4.
pub const INBOUND_ADDR_V4: &str = "0.0.0.0:15006";
/// Address the inbound listener binds, IPv6.
pub const INBOUND_ADDR_V6: &str = "[::]:15006";
/// Address the admin server binds.
pub const ADMIN_ADDR: &str = "0.0.0.0:15020";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_agree_with_ports() {
        assert!(OUTBOUND_ADDR_V4.ends_with(&format!(":{OUTBOUND_PORT}")));
        assert!(OUTBOUND_ADDR_V6.ends_with(&format!(":{OUTBOUND_PORT}")));
        assert!(INBOUND_ADDR_V4.ends_with(&format!(":{INBOUND_PORT}")));
        assert!(INBOUND_ADDR_V6.ends_with(&format!(":{INBOUND_PORT}")));
        assert!(ADMIN_ADDR.ends_with(&format!(":{ADMIN_PORT}")));
        assert!(SKIP_INBOUND_PORTS.contains(&ADMIN_PORT));
    }
}

/// Environment variable names the proxy reads; the Kubernetes injector sets exactly
/// these, so the two can never drift apart.
pub mod env {
    /// Address (host:port) of the agent's API.
    pub const AGENT_ADDR: &str = "PILLION_AGENT_ADDR";
    /// SPIFFE id the agent's certificate must carry.
    pub const AGENT_IDENTITY: &str = "PILLION_AGENT_IDENTITY";
    /// Path of the PEM trust anchors that verify the agent (and seed the mesh bundle).
    pub const TRUST_ANCHORS: &str = "PILLION_TRUST_ANCHORS";
    /// Path of the credential (a projected ServiceAccount token, or a local token).
    pub const TOKEN_FILE: &str = "PILLION_TOKEN_FILE";
    /// Trust domain of the workload's identity.
    pub const TRUST_DOMAIN: &str = "PILLION_TRUST_DOMAIN";
    /// Namespace of the workload (from the downward API).
    pub const NAMESPACE: &str = "PILLION_NAMESPACE";
    /// ServiceAccount of the workload (from the downward API).
    pub const SERVICE_ACCOUNT: &str = "PILLION_SERVICE_ACCOUNT";
    /// Pod name (from the downward API), for telemetry.
    pub const POD_NAME: &str = "PILLION_POD_NAME";
    /// Log filter, e.g. `info` or `pillion_proxy=debug`.
    pub const LOG_LEVEL: &str = "PILLION_LOG_LEVEL";
    /// `text` or `json`.
    pub const LOG_FORMAT: &str = "PILLION_LOG_FORMAT";
    /// Admin listener address.
    pub const ADMIN_ADDR: &str = "PILLION_ADMIN_ADDR";
    /// Comma list of inbound ports that skip protocol detection.
    pub const OPAQUE_PORTS: &str = "PILLION_OPAQUE_PORTS";
    /// Comma list of inbound ports whose application listens on loopback only and
    /// is meant to be reached from other pods.
    pub const INBOUND_LOOPBACK_PORTS: &str = "PILLION_INBOUND_LOOPBACK_PORTS";
    /// Ratio of new traces to sample, 0.0 to 1.0.
    pub const TRACE_SAMPLING: &str = "PILLION_TRACE_SAMPLING";
    /// OTLP collector URL, e.g. `http://198.18.0.1:4317`; unset means no tracing.
    pub const OTLP_ENDPOINT: &str = "PILLION_OTLP_ENDPOINT";
    /// OTLP transport: `grpc` or `http` (HTTP/protobuf).
    pub const OTLP_PROTOCOL: &str = "PILLION_OTLP_PROTOCOL";
    /// Access log target: `off`, `stderr` or a file path.
    pub const ACCESS_LOG: &str = "PILLION_ACCESS_LOG";
}

/// Telemetry defaults: tracing, OTLP export and access logs. Every queue is bounded so
/// telemetry can only ever drop data, never slow traffic.
pub mod telemetry {
    use std::time::Duration;

    /// Share of new traces sampled when none is configured. Tracing is off until an
    /// OTLP endpoint is set, so "everything" is the useful default once it is.
    pub const TRACE_SAMPLING: f64 = 1.0;
    /// Port of an OTLP/gRPC collector.
    pub const OTLP_GRPC_PORT: u16 = 4317;
    /// Port of an OTLP HTTP/protobuf collector.
    pub const OTLP_HTTP_PORT: u16 = 4318;
    /// Path of the OTLP HTTP/protobuf trace endpoint.
    pub const OTLP_HTTP_TRACES_PATH: &str = "/v1/traces";
    /// Finished spans waiting for export; more are dropped and counted.
    pub const SPAN_QUEUE: usize = 2048;
    /// Spans sent in one export request at most.
    pub const SPAN_BATCH: usize = 512;
    /// Longest a finished span waits before its batch is sent.
    pub const SPAN_BATCH_DELAY: Duration = Duration::from_secs(1);
    /// Time one export request may take.
    pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
    /// First retry delay of a failed export; doubles up to [`EXPORT_BACKOFF_MAX`].
    pub const EXPORT_BACKOFF_MIN: Duration = Duration::from_millis(100);
    /// Longest retry delay of a failed export.
    pub const EXPORT_BACKOFF_MAX: Duration = Duration::from_secs(5);
    /// Attempts of one batch before it is dropped (and counted).
    pub const EXPORT_ATTEMPTS: u32 = 5;
    /// Access log lines waiting for the writer; more are dropped and counted.
    pub const ACCESS_LOG_QUEUE: usize = 4096;
    /// `service.name` when neither a service account nor a pod name is known.
    pub const SERVICE_NAME: &str = "pillion-proxy";
}

/// Default SPIFFE id path of the agent: `spiffe://<trust-domain>/ns/pillion/sa/agent`.
pub const AGENT_NAMESPACE: &str = "pillion";
/// Service account of the agent.
pub const AGENT_SERVICE_ACCOUNT: &str = "agent";
