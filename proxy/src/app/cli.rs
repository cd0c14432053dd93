//! The `pillion-proxy` binary: flags and env vars, logging, the tokio runtime,
//! signals, and exit codes. Everything else lives in the library.

use std::ffi::OsString;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use pillion_api::defaults;
use prometheus_client::registry::Registry;
use tokio::signal::unix::{signal, SignalKind};

use crate::admin::readiness::Readiness;
use crate::app::config::{ProxyConfig, DEFAULT_BACKLOG};
use crate::app::logging::{self, LogFormat};
use crate::app::proxy::Proxy;
use crate::app::rlimit;
use crate::control::config::{ControlConfig, ControlFlags, DiscoveryMode};
use crate::control::ControlPlane;
use crate::telemetry::{Resource, Telemetry, TelemetryArgs, TelemetryConfig};
use pillion_api::duration::HumaneDuration;

/// Exit code for a configuration the operator must fix (same as clap's usage errors).
const EXIT_USAGE: u8 = 2;

/// How long queued spans may take to reach the collector after the drain.
const TELEMETRY_FLUSH_GRACE: Duration = Duration::from_secs(2);

/// How long the runtime waits for stray tasks after the drain has finished.
const RUNTIME_SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// The transparent sidecar proxy of the Pillion mesh.
///
/// Every flag can also be set through its `PILLION_*` environment variable.
#[derive(Debug, Parser)]
#[command(name = "pillion-proxy", version, about, long_about = None)]
pub(crate) struct Args {
    /// Addresses of the outbound listener (nat OUTPUT redirects here), comma-separated.
    #[arg(
        long,
        env = "PILLION_OUTBOUND_ADDRS",
        value_delimiter = ',',
        default_values = [defaults::OUTBOUND_ADDR_V4, defaults::OUTBOUND_ADDR_V6],
    )]
    pub outbound_addrs: Vec<SocketAddr>,

    /// Addresses of the inbound listener (nat PREROUTING redirects here), comma-separated.
    #[arg(
        long,
        env = "PILLION_INBOUND_ADDRS",
        value_delimiter = ',',
        default_values = [defaults::INBOUND_ADDR_V4, defaults::INBOUND_ADDR_V6],
    )]
    pub inbound_addrs: Vec<SocketAddr>,

    /// Address of the admin server (/live, /ready, /metrics, /shutdown).
    #[arg(long, env = defaults::env::ADMIN_ADDR, default_value = defaults::ADMIN_ADDR)]
    pub admin_addr: SocketAddr,

    /// Time allowed to connect upstream, e.g. 500ms, 5s, 2m.
    #[arg(long, env = "PILLION_CONNECT_TIMEOUT", default_value_t = HumaneDuration(defaults::CONNECT_TIMEOUT))]
    pub connect_timeout: HumaneDuration,

    /// Time open connections may take to finish after SIGTERM, e.g. 30s, 2m.
    #[arg(long, env = "PILLION_DRAIN_TIMEOUT", default_value_t = HumaneDuration(defaults::DRAIN_TIMEOUT))]
    pub drain_timeout: HumaneDuration,

    /// Log line format.
    #[arg(long, env = defaults::env::LOG_FORMAT, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter in RUST_LOG syntax, e.g. info or pillion_proxy=debug,warn.
    #[arg(long, env = defaults::env::LOG_LEVEL, default_value = "info")]
    pub log_level: String,

    /// Listen backlog of the outbound and inbound listeners.
    #[arg(long, env = "PILLION_BACKLOG", default_value_t = DEFAULT_BACKLOG)]
    pub backlog: u32,

    /// Address (host:port) of the agent's API, or several replicas' separated by
    /// commas (tried in order; a lost one moves to the next); without it the proxy
    /// runs without a control plane (plain L4, no mesh TLS).
    #[arg(long, env = defaults::env::AGENT_ADDR, value_name = "HOST:PORT")]
    pub agent_addr: Option<String>,

    /// SPIFFE id the agent must prove [default: spiffe://<trust-domain>/ns/pillion/sa/agent].
    #[arg(long, env = defaults::env::AGENT_IDENTITY, value_name = "SPIFFE_ID")]
    pub agent_identity: Option<String>,

    /// PEM file of the root certificate(s) that verify the agent (required with --agent-addr).
    #[arg(long, env = defaults::env::TRUST_ANCHORS, value_name = "PATH")]
    pub trust_anchors: Option<PathBuf>,

    /// File holding the token that proves the workload's identity, re-read for every
    /// request (required with --agent-addr).
    #[arg(long, env = defaults::env::TOKEN_FILE, value_name = "PATH")]
    pub token_file: Option<PathBuf>,

    /// Trust domain of the workload's identity.
    #[arg(long, env = defaults::env::TRUST_DOMAIN, default_value = defaults::TRUST_DOMAIN)]
    pub trust_domain: String,

    /// Namespace of the workload (required with --agent-addr).
    #[arg(long, env = defaults::env::NAMESPACE)]
    pub namespace: Option<String>,

    /// Service account of the workload (required with --agent-addr).
    #[arg(long, env = defaults::env::SERVICE_ACCOUNT)]
    pub service_account: Option<String>,

    /// Name of the pod, for logs and telemetry.
    #[arg(long, env = defaults::env::POD_NAME)]
    pub pod_name: Option<String>,

    /// How the proxy learns services: on-demand resolves each destination the
    /// workload uses when it is first used; full holds every service of the mesh.
    #[arg(long, env = "PILLION_DISCOVERY", value_enum, default_value_t = DiscoveryMode::OnDemand)]
    pub discovery: DiscoveryMode,

    /// With on-demand discovery, how long a destination nobody used is kept before
    /// it is forgotten (and asked for again on its next use), e.g. 30s, 5m.
    #[arg(long, env = "PILLION_DISCOVERY_IDLE", default_value_t = HumaneDuration(defaults::DISCOVERY_IDLE))]
    pub discovery_idle: HumaneDuration,

    /// Protocol detection, load balancing and outlier detection.
    #[command(flatten)]
    pub http: super::flags::DataPathArgs,

    /// The gateway role: HTTPS listeners for traffic from outside the mesh,
    /// comma-separated (e.g. 0.0.0.0:8443); needs --gateway-certs.
    #[arg(
        long,
        env = "PILLION_GATEWAY_HTTPS",
        value_delimiter = ',',
        value_name = "ADDR,…"
    )]
    pub gateway_https: Vec<SocketAddr>,

    /// Plaintext gateway listeners that redirect every request to HTTPS.
    #[arg(
        long,
        env = "PILLION_GATEWAY_HTTP",
        value_delimiter = ',',
        value_name = "ADDR,…"
    )]
    pub gateway_http: Vec<SocketAddr>,

    /// The HTTPS port those redirects name: the public one (e.g. a Service's 443),
    /// which may differ from the port --gateway-https binds.
    #[arg(long, env = "PILLION_GATEWAY_REDIRECT_PORT", default_value_t = 443,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub gateway_redirect_port: u16,

    /// How long browsers must keep to HTTPS for the gateway's hosts: sent as
    /// `Strict-Transport-Security: max-age=…` on every HTTPS answer that has none
    /// (never on a plaintext one); 0s sends none.
    #[arg(long, env = "PILLION_GATEWAY_HSTS", default_value_t = HumaneDuration(defaults::GATEWAY_HSTS))]
    pub gateway_hsts: HumaneDuration,

    /// The gateway's server certificates: directories each holding tls.crt (the
    /// chain, leaf first) and tls.key, as a mounted Kubernetes TLS Secret; the name a
    /// client asks for (SNI) picks one, and changed files are picked up while running.
    #[arg(
        long,
        env = "PILLION_GATEWAY_CERTS",
        value_delimiter = ',',
        value_name = "DIR,…"
    )]
    pub gateway_certs: Vec<PathBuf>,

    /// Tracing (OTLP export, sampling) and the access log.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

impl Args {
    /// The library configuration these flags describe (not yet validated).
    pub(crate) fn to_config(&self) -> ProxyConfig {
        ProxyConfig {
            outbound_addrs: self.outbound_addrs.clone(),
            inbound_addrs: self.inbound_addrs.clone(),
            admin_addr: self.admin_addr,
            connect_timeout: self.connect_timeout.get(),
            drain_timeout: self.drain_timeout.get(),
            backlog: self.backlog,
            gateway: super::config::GatewayConfig {
                https_addrs: self.gateway_https.clone(),
                http_addrs: self.gateway_http.clone(),
                redirect_port: self.gateway_redirect_port,
                hsts: self.gateway_hsts.get(),
                cert_dirs: self.gateway_certs.clone(),
            },
        }
    }

    /// The telemetry configuration: `service.name` and the `k8s.*` attributes come
    /// from the workload flags (see [`Resource::for_workload`]).
    pub(crate) fn to_telemetry_config(&self) -> TelemetryConfig {
        self.telemetry.to_config(Resource::for_workload(
            self.service_account.as_deref(),
            self.pod_name.as_deref(),
            self.namespace.as_deref(),
        ))
    }

    /// The control-plane flags (not yet checked).
    pub(crate) fn to_control_flags(&self) -> ControlFlags {
        ControlFlags {
            agent_addr: self.agent_addr.clone(),
            agent_identity: self.agent_identity.clone(),
            trust_anchors: self.trust_anchors.clone(),
            token_file: self.token_file.clone(),
            trust_domain: self.trust_domain.clone(),
            namespace: self.namespace.clone(),
            service_account: self.service_account.clone(),
            pod_name: self.pod_name.clone(),
            discovery: self.discovery,
            discovery_idle: self.discovery_idle.get(),
        }
    }
}

/// The whole `pillion-proxy` binary: parses `args` (including the program
/// name), runs until the SIGTERM/SIGINT drain completes, and returns the exit code.
pub fn main_with_args(args: Vec<OsString>) -> ExitCode {
    let args = match Args::try_parse_from(args) {
        Ok(args) => args,
        Err(err) => {
            // Prints help and version to stdout, usage errors to stderr.
            let _ = err.print();
            return ExitCode::from(u8::try_from(err.exit_code()).unwrap_or(1));
        }
    };
    let filter = match logging::filter(&args.log_level) {
        Ok(filter) => filter,
        Err(err) => return fail(EXIT_USAGE, &err),
    };
    let config = args.to_config();
    if let Err(err) = config.validate() {
        return fail(EXIT_USAGE, &err);
    }
    if let Err(err) = args.to_telemetry_config().validate() {
        return fail(EXIT_USAGE, &err);
    }
    let control = match args.to_control_flags().resolve() {
        Ok(control) => control,
        Err(err) => return fail(EXIT_USAGE, &err),
    };
    if let Err(err) = logging::init(args.log_format, &args.log_level, filter) {
        return fail(1, &err);
    }
    match rlimit::raise_nofile() {
        Ok(limit) if limit.after > limit.before => {
            tracing::info!(
                from = limit.before,
                to = limit.after,
                "raised the open-files limit"
            );
        }
        Ok(_) => {}
        Err(err) => tracing::warn!(error = %err, "cannot raise the open-files limit"),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("pillion-proxy")
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return fail(1, &format!("cannot start the tokio runtime: {err}")),
    };
    let settings = args.http.to_settings(config.connect_timeout);
    let telemetry = args.to_telemetry_config();
    let result = runtime.block_on(serve(config, control, settings, telemetry));
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN_GRACE);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(1, &format!("{err:#}")),
    }
}

/// Starts the control plane (if configured), binds, serves and drains.
async fn serve(
    config: ProxyConfig,
    control: Option<ControlConfig>,
    mut settings: super::settings::Settings,
    telemetry: TelemetryConfig,
) -> anyhow::Result<()> {
    let shutdown = shutdown_signal().context("cannot install the SIGTERM/SIGINT handlers")?;
    let mut registry = Registry::default();
    let readiness = Readiness::new();
    let telemetry =
        Telemetry::start(&telemetry, &mut registry).context("cannot start telemetry")?;
    settings.recorders = telemetry.recorders();
    let mut builder = Proxy::builder(config).settings(settings);
    let control = match control {
        Some(control) => {
            let plane = ControlPlane::start(&control, &mut registry, &readiness)
                .context("cannot start the control plane")?;
            builder = builder.mesh(
                plane
                    .mesh()
                    .context("cannot build the mesh TLS configuration")?,
            );
            Some(plane)
        }
        None => {
            tracing::info!(
                "no --agent-addr: running without a control plane (plain TCP, no mesh TLS)"
            );
            None
        }
    };
    let proxy = builder
        .registry(registry)
        .readiness(readiness)
        .bind()
        .await?;
    tracing::info!(
        outbound = ?proxy.outbound_addrs(),
        inbound = ?proxy.inbound_addrs(),
        admin = %proxy.admin_addr(),
        "pillion-proxy listening"
    );
    let report = proxy.run(shutdown).await;
    if let Some(plane) = control {
        plane.stop().await;
    }
    telemetry.shutdown(TELEMETRY_FLUSH_GRACE).await;
    tracing::info!(forced = report.forced, "pillion-proxy stopped");
    Ok(())
}

/// Resolves on the first SIGTERM or SIGINT. Handlers are installed now, so a
/// signal that arrives while binding is not lost.
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "received shutdown signal");
    })
}

/// Reports a fatal startup error on stderr and returns its exit code.
fn fail(code: u8, err: &dyn std::fmt::Display) -> ExitCode {
    tracing::error!(error = %err, "pillion-proxy cannot run");
    eprintln!("pillion-proxy: error: {err}");
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("pillion-proxy").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_come_from_the_shared_defaults() {
        let args = parse(&[]).unwrap();
        assert_eq!(args.to_config(), ProxyConfig::default());
        assert_eq!(args.log_format, LogFormat::Text);
        assert_eq!(args.log_level, "info");
    }

    #[test]
    fn parses_lists_and_humane_durations() {
        let args = parse(&[
            "--outbound-addrs",
            "127.0.0.1:1,[::1]:2",
            "--connect-timeout",
            "500ms",
            "--drain-timeout",
            "2m",
            "--log-format",
            "json",
            "--backlog",
            "10",
        ])
        .unwrap();
        let c = args.to_config();
        assert_eq!(c.outbound_addrs.len(), 2);
        assert_eq!(c.connect_timeout, Duration::from_millis(500));
        assert_eq!(c.drain_timeout, Duration::from_secs(120));
        assert_eq!(c.backlog, 10);
        assert_eq!(args.log_format, LogFormat::Json);
    }

    #[test]
    fn zero_connect_timeout_fails_validation() {
        let args = parse(&["--connect-timeout", "0s"]).unwrap();
        let err = args.to_config().validate().unwrap_err();
        assert_eq!(err.to_string(), "--connect-timeout must be > 0, got 0s");
    }

    #[test]
    fn bad_values_and_unknown_flags_are_clap_errors() {
        assert!(parse(&["--connect-timeout", "5"]).is_err());
        assert!(parse(&["--outbound-addrs", "nowhere"]).is_err());
        assert!(parse(&["--log-format", "xml"]).is_err());
        let err = parse(&["--bogus"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::UnknownArgument);
    }

    #[test]
    fn every_flag_has_a_pillion_env_var() {
        let cmd = Args::command();
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            let env = arg
                .get_env()
                .unwrap_or_else(|| panic!("--{id} has no env var"));
            let want = format!("{}{}", defaults::ENV_PREFIX, id.to_uppercase());
            assert_eq!(env.to_str().unwrap(), want);
        }
        cmd.debug_assert();
    }

    #[test]
    fn exits_non_zero_on_invalid_input() {
        let code = |args: &[&str]| {
            main_with_args(
                std::iter::once("pillion-proxy")
                    .chain(args.iter().copied())
                    .map(OsString::from)
                    .collect(),
            )
        };
        assert_eq!(code(&["--bogus"]), ExitCode::from(2));
        assert_eq!(
            code(&["--connect-timeout", "0s"]),
            ExitCode::from(EXIT_USAGE)
        );
        assert_eq!(code(&["--log-level", "x=loud"]), ExitCode::from(EXIT_USAGE));
        assert_eq!(
            code(&["--agent-addr", "198.18.0.1:15012"]),
            ExitCode::from(EXIT_USAGE)
        );
        assert_eq!(code(&["--token-file", "/t"]), ExitCode::from(EXIT_USAGE));
    }

    #[test]
    fn telemetry_flags_map_through() {
        let args = parse(&[
            "--otlp-endpoint",
            "http://198.18.0.1:4317",
            "--trace-sampling",
            "0.5",
            "--service-account",
            "web",
            "--pod-name",
            "web-0",
            "--namespace",
            "shop",
        ])
        .unwrap();
        let t = args.to_telemetry_config();
        assert!(t.otlp.is_some());
        assert_eq!(t.sampling, 0.5);
        assert_eq!(t.resource.service_name, "web");
        assert_eq!(t.resource.pod_name.as_deref(), Some("web-0"));
        assert_eq!(t.resource.namespace.as_deref(), Some("shop"));
        assert!(parse(&[]).unwrap().to_telemetry_config().otlp.is_none());
        let code = main_with_args(
            [
                "pillion-proxy",
                "--otlp-endpoint",
                "http://c:4317/v1/traces",
            ]
            .into_iter()
            .map(OsString::from)
            .collect(),
        );
        assert_eq!(code, ExitCode::from(EXIT_USAGE));
    }

    #[test]
    fn control_flags_map_through() {
        let args = parse(&[
            "--agent-addr",
            "198.18.0.1:15012",
            "--namespace",
            "demo",
            "--service-account",
            "client",
            "--pod-name",
            "a",
        ])
        .unwrap();
        let f = args.to_control_flags();
        assert_eq!(f.agent_addr.as_deref(), Some("198.18.0.1:15012"));
        assert_eq!(f.trust_domain, defaults::TRUST_DOMAIN);
        assert_eq!(f.pod_name.as_deref(), Some("a"));
        let err = f.resolve().unwrap_err().to_string();
        assert!(err.starts_with("--trust-anchors is required"), "{err}");
    }
}
