//! The telemetry flags of the proxy binary, as one clap group the CLI flattens in;
//! each has its `PILLION_*` variable from [`pillion_api::defaults::env`].

use pillion_api::defaults::{env, telemetry as d};

use super::access_log::AccessLogTarget;
use super::export::{Endpoint, OtlpConfig, OtlpProtocol};
use super::resource::Resource;
use super::TelemetryConfig;

/// Tracing and access log flags.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct TelemetryArgs {
    /// OTLP collector for spans, e.g. http://198.18.0.1:4317 (gRPC) or
    /// http://198.18.0.1:4318 (HTTP); without it, no tracing.
    #[arg(long, env = env::OTLP_ENDPOINT, value_name = "URL")]
    pub otlp_endpoint: Option<Endpoint>,

    /// OTLP transport: grpc, or http for HTTP/protobuf (POST /v1/traces).
    #[arg(long, env = env::OTLP_PROTOCOL, value_enum, default_value_t = OtlpProtocol::Grpc)]
    pub otlp_protocol: OtlpProtocol,

    /// Share of new traces to record, 0.0 to 1.0; incoming sampled flags are obeyed;
    /// 0 records nothing at all.
    #[arg(long, env = env::TRACE_SAMPLING, value_name = "RATIO",
          default_value_t = d::TRACE_SAMPLING, value_parser = parse_ratio)]
    pub trace_sampling: f64,

    /// JSON access log: off, stderr, or a file path to append to.
    #[arg(long, env = env::ACCESS_LOG, value_name = "off|stderr|PATH", default_value = "off")]
    pub access_log: AccessLogTarget,
}

fn parse_ratio(text: &str) -> Result<f64, String> {
    let ratio: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number; use 0.0 to 1.0"))?;
    if (0.0..=1.0).contains(&ratio) {
        Ok(ratio)
    } else {
        Err(format!("{text} is out of range; use 0.0 to 1.0"))
    }
}

impl TelemetryArgs {
    /// The telemetry configuration these flags describe, for the workload `resource`.
    pub fn to_config(&self, resource: Resource) -> TelemetryConfig {
        TelemetryConfig {
            otlp: self
                .otlp_endpoint
                .clone()
                .map(|endpoint| OtlpConfig::new(endpoint, self.otlp_protocol)),
            sampling: self.trace_sampling,
            access_log: self.access_log.clone(),
            resource,
            ..TelemetryConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        telemetry: TelemetryArgs,
    }

    fn parse(args: &[&str]) -> Result<TelemetryArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("p").chain(args.iter().copied())).map(|c| c.telemetry)
    }

    #[test]
    fn defaults_and_values() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.otlp_endpoint, None);
        assert_eq!(a.otlp_protocol, OtlpProtocol::Grpc);
        assert_eq!(a.trace_sampling, 1.0);
        assert_eq!(a.access_log, AccessLogTarget::Off);
        assert_eq!(a.to_config(Resource::default()).otlp, None);

        let a = parse(&[
            "--otlp-endpoint",
            "http://198.18.0.1:4318",
            "--otlp-protocol",
            "http",
            "--trace-sampling",
            "0.25",
            "--access-log",
            "stderr",
        ])
        .unwrap();
        let c = a.to_config(Resource::for_workload(Some("web"), None, None));
        let otlp = c.otlp.unwrap();
        assert_eq!(
            otlp.export_uri().to_string(),
            "http://198.18.0.1:4318/v1/traces"
        );
        assert_eq!((c.sampling, c.access_log), (0.25, AccessLogTarget::Stderr));
        assert_eq!(c.resource.service_name, "web");
    }

    #[test]
    fn bad_values_are_usage_errors() {
        assert!(parse(&["--trace-sampling", "1.5"]).is_err());
        assert!(parse(&["--trace-sampling", "lots"]).is_err());
        assert!(parse(&["--otlp-endpoint", "https://c:4317"]).is_err());
        assert!(parse(&["--otlp-protocol", "thrift"]).is_err());
    }

    #[test]
    fn every_flag_has_its_env_var() {
        let cmd = Cli::command();
        for arg in cmd.get_arguments().filter(|a| a.get_id() != "help") {
            let want = format!("PILLION_{}", arg.get_id().as_str().to_uppercase());
            assert_eq!(arg.get_env().and_then(|e| e.to_str()), Some(want.as_str()));
        }
    }
}
