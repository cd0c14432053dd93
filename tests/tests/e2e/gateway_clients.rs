//! The gateway at the edge against real clients, each from a pod outside the mesh,
//! the gateway serving a web PKI chain (a root the clients trust, an intermediate
//! it must send, its leaf): what `gateway.rs` asks with single curl calls, asked here
//! the way the clients people run would.
//!
//! - A real gRPC client: tonic's generated OTLP `TraceServiceClient` over tonic's
//!   own rustls channel (chain verified against the root, SNI, ALPN h2 required)
//!   exports a span through the gateway to a real gRPC server, the test kit's OTLP
//!   collector, in a meshed pod whose sidecar takes mesh TLS only; the collector
//!   receives the span. Then what such a client gets when the gateway refuses it
//!   (no token on a token host, no route for the method): a gRPC status tonic
//!   reports as such (UNAUTHENTICATED, UNIMPLEMENTED), sent trailers-only, with the
//!   gateway's reason and challenge. The collector is not reachable from outside
//!   except through the gateway.
//! - A browser-like client: curl with a cookie jar, `-L`, the root as its only CA,
//!   HTTP/2 by ALPN, a browser's headers. It types `http://`, follows the `308` to
//!   HTTPS with path and query kept (a form's `POST` and its body too), signs in by a
//!   `session` cookie the gateway reads as the end-user token (`from: [{cookie:
//!   session}]`) and takes out before the application (`forward_token: false`, the
//!   other cookies kept, HTTP/2's split cookie fields joined), keeps the cookies the
//!   site sets, and gets `401` with `WWW-Authenticate` for an expired or tampered
//!   session. HTTPS answers carry HSTS, the redirect does not. A browser without the
//!   root refuses the site.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::Algorithm::ES256;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, ResourceSpans, ScopeSpans, Span};
use pillion::local::{Pod, Process};
use pillion_testkit::jwt::{now, tampered, Issuer};
use pillion_tests::curl::Seen;
use pillion_tests::http_mesh::{source_yaml, HttpPods, HttpWorld};
use pillion_tests::mesh::mesh_sidecar_opts;
use pillion_tests::otlp::{self, OtlpReceiver, Transport};
use serde_json::{json, Value};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use tonic::Code;

use crate::common::{gateway_cert_dir, sidecar_opts, testbin, ALL_ROUTES};

const HTTPS_PORT: u16 = 8443;
const HTTP_PORT: u16 = 8081;
const ISS: &str = "https://issuer.test";
/// The gateway's mesh identity, what every server behind it sees.
const GATEWAY_ID: &str = "spiffe://cluster.local/ns/edge/sa/edge";
/// The OTLP trace export method, as a gRPC path.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// A web PKI chain as a public site has one: a root the clients trust, an
/// intermediate that signs the leaf, and the leaf for `names`.
struct WebChain {
    /// The root certificate, the clients' only trust anchor.
    root_pem: String,
    /// The leaf, then the intermediate: what the gateway must send.
    chain_pem: String,
    /// The leaf's key.
    key_pem: String,
}

fn web_chain(names: &[&str]) -> WebChain {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let ca = |name: &str, constraints: BasicConstraints| {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(constraints);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params
    };
    let root_key = KeyPair::generate().expect("root key");
    let root = ca("Pillion Test Root CA", BasicConstraints::Unconstrained)
        .self_signed(&root_key)
        .expect("root");
    let issuing_key = KeyPair::generate().expect("intermediate key");
    let issuing = ca("Pillion Test Issuing CA", BasicConstraints::Constrained(0))
        .signed_by(&issuing_key, &root, &root_key)
        .expect("intermediate");
    let key = KeyPair::generate().expect("leaf key");
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut leaf = CertificateParams::new(names.clone()).expect("leaf params");
    leaf.distinguished_name.push(DnType::CommonName, &names[0]);
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = leaf.signed_by(&key, &issuing, &issuing_key).expect("leaf");
    WebChain {
        root_pem: root.pem(),
        chain_pem: format!("{}{}", leaf.pem(), issuing.pem()),
        key_pem: key.serialize_pem(),
    }
}

/// Writes the gateway's certificate directory (`tls.crt`, `tls.key` 0600), owned by
/// the proxy user, as `gateway.rs` does.
fn cert_dir(root: &Path, chain: &WebChain) -> PathBuf {
    gateway_cert_dir(root, "edge-tls", &chain.chain_pem, &chain.key_pem)
}

/// Starts the gateway (workload `edge/edge`) in a pod `gw` of its own: HTTPS on
/// [`HTTPS_PORT`] with the certificates in `certs`, and, with `plaintext`, the
/// redirect listener on [`HTTP_PORT`].
fn start_gateway(w: &HttpWorld, certs: &Path, plaintext: bool) -> (Pod, Process) {
    let pod = w.world.pod("gw").unwrap();
    let token = w.dir.write("gw.token", "edge-token-http").unwrap();
    let mut args = vec![
        "--gateway-https".to_string(),
        format!("0.0.0.0:{HTTPS_PORT}"),
        "--gateway-certs".into(),
        certs.display().to_string(),
        "--detect-timeout".into(),
        "1s".into(),
    ];
    if plaintext {
        args.extend([
            "--gateway-http".to_string(),
            format!("0.0.0.0:{HTTP_PORT}"),
            "--gateway-redirect-port".into(),
            HTTPS_PORT.to_string(),
        ]);
    }
    let opts = mesh_sidecar_opts(
        sidecar_opts(),
        w.agent.addr(),
        w.agent.anchors(),
        &token,
        "edge",
        "edge",
    )
    .proxy_args(args);
    let gateway = pod.spawn(opts.proxy_cmd()).expect("the gateway starts");
    (pod, gateway)
}

/// The agent's source: the HTTP world's (servers strict), the gateway workload
/// `gateway` put first, and `more_services` after the world's services.
fn source_with_gateway(pods: &HttpPods, gateway: &str, more_services: &str) -> String {
    source_yaml(pods, ALL_ROUTES, "mode: strict\n")
        // Every port of the servers takes mesh TLS only, not just the web app's.
        .replacen("default_mode: permissive", "default_mode: strict", 1)
        .replacen("workloads:\n", &format!("workloads:\n{gateway}"), 1)
        + more_services
}

// ---------------------------------------------------------------------------
// gRPC

const OTLP_HOST: &str = "otlp.pillion.test";
const AUTH_HOST: &str = "auth-otlp.pillion.test";
const METRICS_HOST: &str = "metrics.pillion.test";
const OTLP_PORT: u16 = 4317;

/// Three gRPC hosts: `otlp.` open, `auth-otlp.` with a token required, and
/// `metrics.` whose one route is for another service's methods.
fn grpc_gateway(jwks: &str) -> String {
    format!(
        r#"  - name: edge
    namespace: edge
    token: edge-token-http
    gateway:
      hosts:
        - hostnames: [{OTLP_HOST}]
          routes:
            - name: traces
              matches: [{{path: {{prefix: /opentelemetry.proto.collector.trace.v1.TraceService/}}}}]
              backends: [{{service: demo/otlp, port: {OTLP_PORT}}}]
        - hostnames: [{AUTH_HOST}]
          jwt:
            required: true
            providers:
              - issuer: {ISS}
                audiences: [telemetry]
                jwks: '{jwks}'
          routes:
            - name: traces
              matches: [{{path: {{prefix: /opentelemetry.proto.collector.trace.v1.TraceService/}}}}]
              backends: [{{service: demo/otlp, port: {OTLP_PORT}}}]
        - hostnames: [{METRICS_HOST}]
          routes:
            - name: metrics
              matches: [{{path: {{prefix: /opentelemetry.proto.collector.metrics.v1.MetricsService/}}}}]
              backends: [{{service: demo/otlp, port: {OTLP_PORT}}}]
"#
    )
}

/// The collector's service: `demo/otlp`, served by pod `b2` (workload `server`).
fn otlp_service(b2: std::net::IpAddr) -> String {
    format!(
        "  - name: otlp
    namespace: demo
    addresses: [198.18.1.102]
    ports:
      - port: {OTLP_PORT}
    endpoints:
      - workload: server
        addresses: [{b2}]
"
    )
}

/// One export request: a CLIENT span named `checkout` whose attribute `test.call`
/// is `call` (its trace id derived from `call`).
fn export_request(call: &str) -> ExportTraceServiceRequest {
    let digest = ring::digest::digest(&ring::digest::SHA256, call.as_bytes());
    let id = digest.as_ref();
    let text = |key: &str, value: &str| KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
        ..Default::default()
    };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![text("service.name", "gateway-clients-test")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    trace_id: id[..16].to_vec(),
                    span_id: id[16..24].to_vec(),
                    name: "checkout".into(),
                    kind: SpanKind::Client as i32,
                    start_time_unix_nano: nanos - 1_000_000,
                    end_time_unix_nano: nanos,
                    attributes: vec![text("test.call", call)],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Exports `call`'s span from `pod` with tonic's generated client: a channel to
/// `origin` (an `https://` URL, the name its TLS asks for and its requests carry)
/// reaching the address `to`, verified against `ca_pem` alone; `token` as
/// `authorization: Bearer` metadata. The call's status as the client reports it.
fn export(
    pod: &Pod,
    to: String,
    origin: String,
    ca_pem: Option<&str>,
    token: Option<&str>,
    call: &str,
) -> Result<(), tonic::Status> {
    let ca_pem = ca_pem.map(str::to_string);
    let token = token.map(|t| format!("Bearer {t}"));
    let request = export_request(call);
    pod.run(move || async move {
        let origin: http::Uri = origin.parse().expect("an origin");
        let mut endpoint = Endpoint::from_shared(to)
            .expect("an endpoint")
            .origin(origin.clone())
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10));
        if let Some(ca) = ca_pem {
            let tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca))
                .domain_name(origin.host().expect("a host"));
            endpoint = endpoint.tls_config(tls).expect("the TLS config");
        }
        let mut client = TraceServiceClient::new(endpoint.connect_lazy());
        let mut request = tonic::Request::new(request);
        if let Some(value) = token {
            let value = value.parse().expect("a metadata value");
            request.metadata_mut().insert("authorization", value);
        }
        let answer = client.export(request).await?.into_inner();
        assert_eq!(answer.partial_success, None, "everything accepted");
        Ok(())
    })
    .expect("the gRPC client ran")
}

#[test]
fn a_grpc_client_exports_through_the_gateway_to_a_strict_grpc_server() {
    let issuer = Issuer::new(ISS, "gwc", &[ES256]).unwrap();
    let jwks = issuer.jwks();
    let mut collector: Option<OtlpReceiver> = None;
    let w = HttpWorld::start_custom(
        "gw_grpc",
        &testbin(),
        |pods| {
            // A real gRPC server (tonic's generated TraceService) in a meshed pod.
            collector = Some(otlp::start_in_on(&pods.b2, OTLP_PORT, 4318)?);
            Ok(sidecar_opts())
        },
        |pods| source_with_gateway(pods, &grpc_gateway(&jwks), &otlp_service(pods.b2.ipv4())),
        &[],
    )
    .expect("world");
    let collector = collector.expect("the collector started");
    let chain = web_chain(&[OTLP_HOST, AUTH_HOST, METRICS_HOST]);
    let certs = cert_dir(w.dir.path(), &chain);
    let (gw_pod, gateway) = start_gateway(&w, &certs, false);
    let dump = || format!("--- gateway\n{}\n{}", gateway.logs(), w.dump());
    let client = w.pods.c.clone(); // no sidecar: a client outside the mesh
    let to = format!("https://{}", gw_pod.addr_v4(HTTPS_PORT));
    let origin = |host: &str| format!("https://{host}:{HTTPS_PORT}");
    let root = Some(chain.root_pem.as_str());
    let grpc_requests = || collector.collected().requests(Transport::Grpc);

    // Ready once the gateway's view arrived: the first export that goes through.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut tries = 0;
    let first = loop {
        tries += 1;
        let call = format!("ready-{tries}");
        let result = export(&client, to.clone(), origin(OTLP_HOST), root, None, &call);
        if result.is_ok() || Instant::now() > deadline {
            break result;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(first.is_ok(), "{first:?}\n{}", dump());

    // One unary export: OK to the client, and the server got the span as sent.
    let before = grpc_requests();
    let sent = export(&client, to.clone(), origin(OTLP_HOST), root, None, "open-1");
    assert!(sent.is_ok(), "{sent:?}\n{}", dump());
    let spans = collector
        .collected()
        .wait_for("the exported span", Duration::from_secs(10), |spans| {
            spans
                .iter()
                .any(|s| s.str_attr("test.call") == Some("open-1"))
        })
        .unwrap();
    let span = spans
        .iter()
        .find(|s| s.str_attr("test.call") == Some("open-1"))
        .unwrap();
    assert_eq!(span.span.name, "checkout");
    assert!(span.is_client(), "{span:?}");
    assert_eq!(span.transport, Transport::Grpc);
    assert_eq!(span.trace_id(), {
        let d = ring::digest::digest(&ring::digest::SHA256, b"open-1");
        d.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    });
    assert_eq!(
        span.resource_attr("service.name"),
        Some("gateway-clients-test")
    );
    assert_eq!(grpc_requests(), before + 1, "exactly one export arrived");

    // A token host: with the end user's token in the call's metadata it goes
    // through; without one the gateway refuses it and the server never hears of it.
    let token = issuer
        .sign(ES256, &issuer.claims("telemetry", json!({})))
        .unwrap();
    let authed = export(
        &client,
        to.clone(),
        origin(AUTH_HOST),
        root,
        Some(&token),
        "auth-1",
    );
    assert!(authed.is_ok(), "{authed:?}\n{}", dump());
    collector
        .collected()
        .wait_for("the authenticated export", Duration::from_secs(10), |s| {
            s.iter().any(|s| s.str_attr("test.call") == Some("auth-1"))
        })
        .unwrap();
    let before = grpc_requests();
    let refused = export(
        &client,
        to.clone(),
        origin(AUTH_HOST),
        root,
        None,
        "no-token",
    )
    .expect_err("no token, no export");
    println!("gRPC client, no token: {refused:?}");
    // The gateway answers a gRPC call it refuses as gRPC does: trailers-only, the
    // 401 as UNAUTHENTICATED, its reason as the message.
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert_eq!(
        refused.message(),
        "pillion: this route needs a bearer token",
        "{refused:?}"
    );
    let meta = |status: &tonic::Status, name: &str| {
        (status.metadata().get(name))
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(meta(&refused, "pillion-error"), "unauthenticated");
    assert_eq!(
        meta(&refused, "www-authenticate"),
        "Bearer realm=\"pillion\""
    );
    // (tonic takes grpc-status out of the metadata: the wire check below sees it.)
    let forged = tampered(&token, &issuer.claims("telemetry", json!({"sub": "root"})));
    let bad = export(
        &client,
        to.clone(),
        origin(AUTH_HOST),
        root,
        Some(&forged),
        "forged",
    )
    .expect_err("a tampered token, no export");
    assert_eq!(
        (
            bad.code(),
            bad.message().contains("invalid") || bad.message().contains("key")
        ),
        (Code::Unauthenticated, true),
        "{bad:?}"
    );

    // A method no route of the host serves: UNIMPLEMENTED (404) from the gateway,
    // sent nowhere.
    let unrouted = export(
        &client,
        to.clone(),
        origin(METRICS_HOST),
        root,
        None,
        "none",
    )
    .expect_err("no route, no export");
    println!("gRPC client, no route: {unrouted:?}");
    assert_eq!(
        (unrouted.code(), unrouted.message().contains("no route")),
        (Code::Unimplemented, true),
        "{unrouted:?}"
    );
    assert_eq!(meta(&unrouted, "pillion-error"), "not-found");

    // The answer behind those statuses, as the wire has it: HTTP/2 200 trailers-only
    // with the gRPC status, the Bearer challenge and pillion-error kept.
    let ca_file = w.dir.write("root.pem", &chain.root_pem).unwrap();
    let gw = gw_pod.ipv4();
    let out = client
        .exec([
            "curl".to_string(),
            "-sS".into(),
            "-i".into(),
            "--max-time".into(),
            "10".into(),
            "--cacert".into(),
            ca_file.display().to_string(),
            "--resolve".into(),
            format!("{AUTH_HOST}:{HTTPS_PORT}:{gw}"),
            "--http2".into(),
            "-H".into(),
            "content-type: application/grpc".into(),
            "-H".into(),
            "te: trailers".into(),
            "--data-binary".into(),
            "@/dev/null".into(),
            format!("https://{AUTH_HOST}:{HTTPS_PORT}{EXPORT_PATH}"),
        ])
        .expect("curl runs");
    let wire = Seen::of(&out);
    assert_eq!(
        (wire.version.as_str(), wire.status),
        ("HTTP/2", 200),
        "{wire:?}"
    );
    assert_eq!(wire.header("pillion-error"), "unauthenticated", "{wire:?}");
    assert!(
        wire.header("www-authenticate").starts_with("Bearer"),
        "{wire:?}"
    );
    assert_eq!(wire.header("content-type"), "application/grpc", "{wire:?}");
    assert_eq!(wire.header("grpc-status"), "16", "{wire:?}");
    assert!(wire.body.is_empty(), "trailers-only: {wire:?}");
    assert_eq!(
        grpc_requests(),
        before,
        "no refused call reached the server"
    );

    // The server is reachable only through the mesh: the same client going straight
    // to it in plaintext gets nothing from its strict sidecar.
    let direct = export(
        &client,
        format!("http://{}", w.pods.b2.addr_v4(OTLP_PORT)),
        format!("http://{}", w.pods.b2.addr_v4(OTLP_PORT)),
        None,
        None,
        "direct",
    );
    println!("gRPC client, straight to the strict server: {direct:?}");
    assert!(direct.is_err(), "{direct:?}");
    assert_eq!(grpc_requests(), before, "nothing arrived around the mesh");
    let calls: Vec<_> = collector
        .collected()
        .spans()
        .iter()
        .filter_map(|s| s.str_attr("test.call").map(str::to_string))
        .filter(|c| !c.starts_with("ready-"))
        .collect();
    assert_eq!(
        calls,
        ["open-1", "auth-1"],
        "only the calls that went through"
    );

    // Every client channel was a connection of the gateway's own direction.
    let metrics = pillion::local::metrics::scrape(&gw_pod, 15020).expect("gateway metrics");
    let opened = metrics.value(
        "pillion_tcp_connections_opened_total",
        &[("direction", "gateway")],
    );
    assert!(opened >= 6.0, "one connection per client channel: {opened}");
}

// ---------------------------------------------------------------------------
// A browser

const APP_HOST: &str = "app.pillion.test";
const BETA_HOST: &str = "beta.pillion.test";

/// Two sites behind one certificate: `app.` reads the end-user token from the
/// `session` cookie and keeps it from the application; `beta.` forwards it.
fn browser_gateway(jwks: &str) -> String {
    let host = |name: &str, forward: bool| {
        format!(
            r#"        - hostnames: [{name}]
          jwt:
            required: true
            providers:
              - issuer: {ISS}
                audiences: [web]
                jwks: '{jwks}'
                from: [{{cookie: session}}]
                claim_headers: {{sub: x-user}}
                forward_token: {forward}
          routes:
            - name: search
              matches: [{{path: {{prefix: /search}}}}]
              rewrite: {{prefix: /request}}
              response_headers:
                add: {{set-cookie: "last_search=mesh; Path=/; Secure; HttpOnly; SameSite=Lax"}}
              backends: [{{service: demo/web, port: 80}}]
            - name: account
              matches: [{{path: {{prefix: /account}}}}]
              rewrite: {{prefix: /headers}}
              backends: [{{service: demo/web, port: 80}}]
            - name: cart
              matches: [{{path: {{prefix: /cart}}}}]
              rewrite: {{prefix: /big}}
              backends: [{{service: demo/web, port: 80}}]
"#
        )
    };
    format!(
        "  - name: edge
    namespace: edge
    token: edge-token-http
    gateway:
      hosts:
{}{}",
        host(APP_HOST, false),
        host(BETA_HOST, true)
    )
}

/// What a browser sends on a top-level navigation (Firefox's headers).
const NAVIGATE: &[&str] = &[
    "-A",
    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "-H",
    "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "-H",
    "Accept-Language: en-US,en;q=0.5",
    "-H",
    "Accept-Encoding: gzip, deflate, br",
    "--compressed",
    "-H",
    "Upgrade-Insecure-Requests: 1",
    "-H",
    "Sec-Fetch-Dest: document",
    "-H",
    "Sec-Fetch-Mode: navigate",
    "-H",
    "Sec-Fetch-Site: none",
    "-H",
    "Sec-Fetch-User: ?1",
];

/// One visit as the browser lived it: every answer in order (redirects first; only
/// the last has a body), and curl's exit code.
#[derive(Debug)]
struct Visit {
    answers: Vec<Seen>,
    exit: i32,
    stderr: String,
}

impl Visit {
    /// The answer the user sees.
    fn last(&self) -> &Seen {
        (self.answers.last())
            .unwrap_or_else(|| panic!("no answer: curl exit {}: {}", self.exit, self.stderr))
    }

    /// The status the user sees; 0 when no answer came (a failed handshake).
    fn status(&self) -> u16 {
        self.answers.last().map_or(0, |a| a.status)
    }

    /// Reads what `curl -i -L` wrote: head after head, the last one's body.
    fn of(out: &std::process::Output) -> Visit {
        let exit = out.status.code().unwrap_or(-1);
        let mut rest = String::from_utf8_lossy(&out.stdout).to_string();
        let mut answers = Vec::new();
        while rest.starts_with("HTTP/") {
            let (head, tail) = rest.split_once("\r\n\r\n").unwrap_or((&rest, ""));
            let mut lines = head.lines();
            let first: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
            let headers: HashMap<String, String> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            answers.push(Seen {
                exit,
                version: first.first().copied().unwrap_or_default().to_string(),
                status: first.get(1).and_then(|s| s.parse().ok()).unwrap_or(0),
                headers,
                body: String::new(),
            });
            rest = tail.to_string();
        }
        if let Some(last) = answers.last_mut() {
            last.body = rest;
        }
        Visit {
            answers,
            exit,
            stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        }
    }
}

/// A Netscape cookie file line for the sites: a `Secure`, `HttpOnly` session cookie.
fn jar_line(host: &str, name: &str, value: &str) -> String {
    format!("#HttpOnly_{host}\tFALSE\t/\tTRUE\t0\t{name}\t{value}\n")
}

/// The `name=value` lines of the application's `/headers` answer, by name (values of
/// repeated names joined with `|`).
fn header_lines(body: &str) -> HashMap<String, String> {
    let mut seen: HashMap<String, String> = HashMap::new();
    for (name, value) in body.lines().filter_map(|l| l.split_once('=')) {
        seen.entry(name.to_string())
            .and_modify(|v| {
                v.push('|');
                v.push_str(value);
            })
            .or_insert_with(|| value.to_string());
    }
    seen
}

#[test]
fn a_browser_follows_the_redirect_signs_in_by_cookie_and_keeps_its_jar() {
    let issuer = Issuer::new(ISS, "gwb", &[ES256]).unwrap();
    let jwks = issuer.jwks();
    let w = HttpWorld::start_with_source(
        "gw_browser",
        &testbin(),
        &sidecar_opts(),
        |pods| source_with_gateway(pods, &browser_gateway(&jwks), ""),
        &[],
    )
    .expect("world");
    let chain = web_chain(&[APP_HOST, BETA_HOST]);
    let certs = cert_dir(w.dir.path(), &chain);
    let (gw_pod, gateway) = start_gateway(&w, &certs, true);
    let dump = || format!("--- gateway\n{}\n{}", gateway.logs(), w.dump());
    let root = w.dir.write("root.pem", &chain.root_pem).unwrap();
    let gw = gw_pod.ipv4();
    let browser = w.pods.c.clone(); // no sidecar: a visitor outside the mesh

    // The user's session: a token for audience `web` in a Secure, HttpOnly cookie,
    // next to a cookie of the site's own.
    let session = issuer
        .sign(ES256, &issuer.claims("web", json!({})))
        .unwrap();
    let jar = w
        .dir
        .write(
            "jar.txt",
            &format!(
                "# Netscape HTTP Cookie File\n{}{}{}",
                jar_line(APP_HOST, "session", &session),
                jar_line(APP_HOST, "theme", "dark"),
                jar_line(BETA_HOST, "session", &session),
            ),
        )
        .unwrap();
    let jar = jar.display().to_string();
    // `curl -i -L` with the root as its only CA, this jar (read and written back) or
    // none, a browser's headers, and `flags`.
    let visit = |url: &str, jar: Option<&str>, flags: &[&str]| {
        let mut args: Vec<String> = ["curl", "-sS", "-i", "-L", "--max-time", "10"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(["--cacert".to_string(), root.display().to_string()]);
        for name in [APP_HOST, BETA_HOST] {
            for port in [HTTPS_PORT, HTTP_PORT] {
                args.extend(["--resolve".to_string(), format!("{name}:{port}:{gw}")]);
            }
        }
        if let Some(jar) = jar {
            args.extend(["-b", jar, "-c", jar].map(String::from));
        }
        args.extend(NAVIGATE.iter().map(|s| s.to_string()));
        args.extend(flags.iter().map(|s| s.to_string()));
        args.push(url.to_string());
        Visit::of(&browser.exec(&args).expect("curl runs"))
    };
    let app = |path: &str| format!("https://{APP_HOST}:{HTTPS_PORT}{path}");

    // Ready once the gateway's view arrived.
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        let v = visit(&app("/account/ready"), Some(&jar), &[]);
        if v.status() == 200 || Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(first.status(), 200, "{first:?}\n{}", dump());

    // The user types the plaintext address: a 308 to the same path and query over
    // HTTPS, then the page over HTTP/2 from the application behind the mesh, as the
    // signed-in user.
    let typed = format!("http://{APP_HOST}:{HTTP_PORT}/search/results?q=rust+mesh&page=2");
    let nav = visit(&typed, Some(&jar), &[]);
    assert_eq!(nav.exit, 0, "{}", nav.stderr);
    let statuses: Vec<u16> = nav.answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [308, 200], "{nav:?}");
    let redirect = &nav.answers[0];
    assert_eq!(
        redirect.header("location"),
        format!("https://{APP_HOST}:{HTTPS_PORT}/search/results?q=rust+mesh&page=2"),
        "{nav:?}"
    );
    let page = nav.last();
    assert_eq!(page.version, "HTTP/2", "h2 by ALPN: {page:?}");
    assert!(
        ["b1", "b2"].contains(&page.header("x-app")),
        "from the application: {page:?}"
    );
    let seen: Value = serde_json::from_str(&page.body).unwrap_or_else(|e| panic!("{e}: {page:?}"));
    assert_eq!(seen["query"], "q=rust+mesh&page=2", "{seen}");
    assert_eq!(seen["host"], format!("{APP_HOST}:{HTTPS_PORT}"), "{seen}");
    assert_eq!(
        seen["peer"], GATEWAY_ID,
        "over mesh TLS as the gateway: {seen}"
    );
    assert_eq!(seen["user"], "alice", "the session's claim: {seen}");
    assert_eq!(
        seen["accept"],
        "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
    );
    assert_eq!(seen["accept_encoding"], "gzip, deflate, br");
    // The site's cookie went into the jar, Secure and HttpOnly as it was set.
    let kept = std::fs::read_to_string(&jar).unwrap();
    assert!(
        kept.lines().any(|l| l.starts_with(&format!(
            "#HttpOnly_{APP_HOST}\tFALSE\t/\tTRUE\t0\tlast_search\tmesh"
        ))),
        "{kept}"
    );
    // HSTS: the HTTPS answer tells the browser to keep to HTTPS (the default year);
    // the plaintext redirect never does (RFC 6797 §7.2).
    assert_eq!(
        page.header("strict-transport-security"),
        "max-age=31536000",
        "{page:?}"
    );
    assert_eq!(
        redirect.header("strict-transport-security"),
        "",
        "{redirect:?}"
    );

    // The next page: the jar's cookies go with it, the application sees the user's
    // claim and every cookie but the session, and no token at all.
    let account = visit(&app("/account/profile"), Some(&jar), &[]);
    let page = account.last();
    assert_eq!(
        (page.version.as_str(), page.status),
        ("HTTP/2", 200),
        "{account:?}"
    );
    let headers = header_lines(&page.body);
    assert_eq!(headers.get("x-user").map(String::as_str), Some("alice"));
    let cookie = headers.get("cookie").cloned().unwrap_or_default();
    let mut cookies: Vec<&str> = cookie.split("; ").collect();
    cookies.sort();
    assert_eq!(
        cookies,
        ["last_search=mesh", "theme=dark"],
        "the session cookie never reaches the application: {}",
        page.body
    );
    assert!(!page.body.contains(&session), "{}", page.body);
    assert!(!headers.contains_key("authorization"), "{}", page.body);
    for (name, value) in [
        ("sec-fetch-mode", "navigate"),
        ("sec-fetch-dest", "document"),
        ("upgrade-insecure-requests", "1"),
        ("accept-language", "en-US,en;q=0.5"),
        ("x-forwarded-proto", "https"),
        ("pillion-peer-identity", GATEWAY_ID),
    ] {
        assert_eq!(
            headers.get(name).map(String::as_str),
            Some(value),
            "{name}: {}",
            page.body
        );
    }
    assert!(
        headers
            .get("user-agent")
            .is_some_and(|ua| ua.starts_with("Mozilla/5.0")),
        "{}",
        page.body
    );

    // A browser on HTTP/2 may send its cookies as separate fields: the token is found
    // in any of them, and the application gets the rest as one field.
    let split = visit(
        &app("/account/split"),
        None,
        &[
            "-H",
            "cookie: theme=light",
            "-H",
            &format!("cookie: session={session}"),
            "-H",
            "cookie: consent=yes",
        ],
    );
    assert_eq!(split.last().status, 200, "{split:?}");
    let headers = header_lines(&split.last().body);
    assert_eq!(headers.get("x-user").map(String::as_str), Some("alice"));
    assert_eq!(
        headers.get("cookie").map(String::as_str),
        Some("theme=light; consent=yes"),
        "{split:?}"
    );

    // Where the host says so, the token cookie goes on to the application.
    let beta = visit(
        &format!("https://{BETA_HOST}:{HTTPS_PORT}/account/x"),
        Some(&jar),
        &[],
    );
    assert_eq!(beta.last().status, 200, "{beta:?}");
    let headers = header_lines(&beta.last().body);
    assert_eq!(
        headers.get("cookie").map(String::as_str),
        Some(format!("session={session}").as_str()),
        "{beta:?}"
    );
    assert_eq!(headers.get("x-user").map(String::as_str), Some("alice"));

    // A form posted to the plaintext address: 308 keeps the method and the body.
    let post = visit(
        &format!("http://{APP_HOST}:{HTTP_PORT}/cart/add"),
        Some(&jar),
        &[
            "-H",
            "Origin: http://app.pillion.test:8081",
            "-H",
            "Content-Type: application/x-www-form-urlencoded",
            "--data-binary",
            "item=42&qty=1",
        ],
    );
    let statuses: Vec<u16> = post.answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [308, 200], "{post:?}");
    assert_eq!(post.last().body, "item=42&qty=1", "{post:?}");

    // A session that is over, or was tampered with: 401 and a Bearer challenge,
    // nothing from the application; no session at all likewise.
    let expired_token = issuer
        .sign(
            ES256,
            &issuer.claims("web", json!({"iat": now() - 7200, "exp": now() - 3600})),
        )
        .unwrap();
    let forged = tampered(&session, &issuer.claims("web", json!({"sub": "mallory"})));
    for (what, token) in [("expired", &expired_token), ("tampered", &forged)] {
        let jar = w
            .dir
            .write(
                &format!("jar-{what}.txt"),
                &jar_line(APP_HOST, "session", token),
            )
            .unwrap();
        let v = visit(
            &app("/account/profile"),
            Some(&jar.display().to_string()),
            &[],
        );
        let page = v.last();
        assert_eq!(
            (page.status, page.header("pillion-error")),
            (401, "invalid-token"),
            "{what}: {v:?}"
        );
        assert!(
            page.header("www-authenticate")
                .starts_with("Bearer realm=\"pillion\", error=\"invalid_token\""),
            "{what}: {v:?}"
        );
        assert!(page.header("x-app").is_empty(), "{what}: {v:?}");
    }
    let anonymous = visit(&typed, None, &[]);
    let statuses: Vec<u16> = anonymous.answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [308, 401], "{anonymous:?}");
    let page = anonymous.last();
    assert_eq!(page.header("pillion-error"), "unauthenticated");
    assert_eq!(page.header("www-authenticate"), "Bearer realm=\"pillion\"");

    // A browser that does not trust the root refuses the site: the chain is verified.
    let mut args: Vec<String> = ["curl", "-sS", "-o", "/dev/null", "--max-time", "10"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend([
        "--resolve".to_string(),
        format!("{APP_HOST}:{HTTPS_PORT}:{gw}"),
        app("/account/x"),
    ]);
    let untrusted = browser.exec(&args).expect("curl runs");
    assert_eq!(
        untrusted.status.code(),
        Some(60),
        "curl: the peer's certificate cannot be verified: {}",
        String::from_utf8_lossy(&untrusted.stderr)
    );
}
