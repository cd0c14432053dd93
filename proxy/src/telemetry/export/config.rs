//! Where and how spans are exported: the collector's URL, the transport, and the
//! bounds (queue, batch, timeout, retries) that keep export from ever costing traffic.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use http::uri::{PathAndQuery, Scheme};
use http::Uri;
use pillion_api::defaults::telemetry as d;

use super::transport::GRPC_EXPORT_PATH;

/// The OTLP transport.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OtlpProtocol {
    /// OTLP/gRPC, usually port 4317.
    #[default]
    Grpc,
    /// OTLP HTTP/protobuf (`POST /v1/traces`), usually port 4318.
    Http,
}

impl fmt::Display for OtlpProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OtlpProtocol::Grpc => "grpc",
            OtlpProtocol::Http => "http",
        })
    }
}

/// An `--otlp-endpoint` the proxy cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// Not a URL at all.
    #[error("--otlp-endpoint {0:?} is not a URL; expected e.g. http://198.18.0.1:4317")]
    Invalid(String),
    /// A scheme other than `http` (TLS to the collector is not supported: run a
    /// collector next to the proxy).
    #[error("--otlp-endpoint {0:?}: only http:// collectors are supported")]
    Scheme(String),
    /// No host.
    #[error("--otlp-endpoint {0:?} has no host")]
    NoHost(String),
    /// A gRPC endpoint with a path (gRPC uses its own).
    #[error("--otlp-endpoint {0:?}: a gRPC endpoint takes no path")]
    GrpcPath(String),
}

/// A collector endpoint: `http://host[:port][/path]`, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint(Uri);

impl FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(s: &str) -> Result<Endpoint, EndpointError> {
        let uri: Uri = s
            .parse()
            .map_err(|_| EndpointError::Invalid(s.to_owned()))?;
        if uri.scheme() != Some(&Scheme::HTTP) {
            return Err(EndpointError::Scheme(s.to_owned()));
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(EndpointError::NoHost(s.to_owned()));
        }
        Ok(Endpoint(uri))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Endpoint {
    /// The URL as given.
    pub fn uri(&self) -> &Uri {
        &self.0
    }
}

/// Everything the exporter needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpConfig {
    /// The collector.
    pub endpoint: Endpoint,
    /// The transport.
    pub protocol: OtlpProtocol,
    /// Finished spans that may wait for export; more are dropped and counted.
    pub queue: usize,
    /// Spans per export request at most.
    pub batch: usize,
    /// Longest a span waits for its batch to fill.
    pub batch_delay: Duration,
    /// Time one export request may take (connect included).
    pub timeout: Duration,
    /// First retry delay; doubles per attempt up to `backoff_max`.
    pub backoff_min: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// Attempts per batch before it is dropped and counted.
    pub attempts: u32,
}

impl OtlpConfig {
    /// Exports to `endpoint` over `protocol` with the mesh's default bounds.
    pub fn new(endpoint: Endpoint, protocol: OtlpProtocol) -> OtlpConfig {
        OtlpConfig {
            endpoint,
            protocol,
            queue: d::SPAN_QUEUE,
            batch: d::SPAN_BATCH,
            batch_delay: d::SPAN_BATCH_DELAY,
            timeout: d::EXPORT_TIMEOUT,
            backoff_min: d::EXPORT_BACKOFF_MIN,
            backoff_max: d::EXPORT_BACKOFF_MAX,
            attempts: d::EXPORT_ATTEMPTS,
        }
    }

    /// Checks what the URL alone cannot: a gRPC endpoint has no path of its own.
    pub fn validate(&self) -> Result<(), EndpointError> {
        let path = self.endpoint.0.path();
        if self.protocol == OtlpProtocol::Grpc && !(path.is_empty() || path == "/") {
            return Err(EndpointError::GrpcPath(self.endpoint.to_string()));
        }
        Ok(())
    }

    /// The URL requests go to: the gRPC method path, or for HTTP the endpoint's own
    /// path, `/v1/traces` when it has none (as the OTLP exporter spec says).
    pub fn export_uri(&self) -> Uri {
        let given = &self.endpoint.0;
        let path = match self.protocol {
            OtlpProtocol::Grpc => GRPC_EXPORT_PATH,
            OtlpProtocol::Http => match given.path() {
                "" | "/" => d::OTLP_HTTP_TRACES_PATH,
                path => path,
            },
        };
        let mut parts = given.clone().into_parts();
        parts.path_and_query =
            Some(PathAndQuery::try_from(path).unwrap_or_else(|_| PathAndQuery::from_static("/")));
        Uri::from_parts(parts).unwrap_or_else(|_| given.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str, protocol: OtlpProtocol) -> OtlpConfig {
        OtlpConfig::new(url.parse().unwrap(), protocol)
    }

    #[test]
    fn export_uris() {
        let c = config("http://198.18.0.1:4317", OtlpProtocol::Grpc);
        c.validate().unwrap();
        assert_eq!(
            c.export_uri().to_string(),
            "http://198.18.0.1:4317/opentelemetry.proto.collector.trace.v1.TraceService/Export"
        );
        let c = config("http://collector:4318", OtlpProtocol::Http);
        assert_eq!(
            c.export_uri().to_string(),
            "http://collector:4318/v1/traces"
        );
        let c = config("http://collector:4318/custom/traces", OtlpProtocol::Http);
        assert_eq!(
            c.export_uri().to_string(),
            "http://collector:4318/custom/traces"
        );
        assert_eq!(c.queue, 2048);
        assert_eq!(c.batch, 512);
    }

    #[test]
    fn bad_endpoints() {
        assert!(matches!(
            "https://c:4317".parse::<Endpoint>(),
            Err(EndpointError::Scheme(_))
        ));
        assert!(matches!(
            "c:4317".parse::<Endpoint>(),
            Err(EndpointError::Scheme(_))
        ));
        assert!(matches!(
            "http://".parse::<Endpoint>(),
            Err(EndpointError::Invalid(_) | EndpointError::NoHost(_))
        ));
        assert!(matches!(
            "not a url".parse::<Endpoint>(),
            Err(EndpointError::Invalid(_))
        ));
        let err = config("http://c:4317/v1/traces", OtlpProtocol::Grpc)
            .validate()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "--otlp-endpoint \"http://c:4317/v1/traces\": a gRPC endpoint takes no path"
        );
    }
}
