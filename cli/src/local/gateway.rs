//! The edge of `pillion up`: a gateway pod (the proxy in its gateway role, no
//! interception) with a certificate for [`HOST`] from a CA made for this run, a
//! demo token issuer whose keys are made for this run too, and a visitor pod outside
//! the mesh that calls the gateway over HTTPS (HTTP/2 by ALPN) once a second: a
//! public path, a private path with a token that carries the needed scope, and the
//! private path without one, which must be refused.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http_body_util::{BodyExt, Empty};
use rustls::pki_types::{CertificateDer, ServerName};

use crate::local::pod::Pod;
use crate::local::process::Process;
use crate::local::sidecar::SidecarOpts;

/// The name the gateway serves.
pub const HOST: &str = "echo.pillion.test";
/// Its HTTPS port.
pub const HTTPS_PORT: u16 = 8443;
/// Its plaintext port (a redirect to HTTPS).
pub const HTTP_PORT: u16 = 8081;
/// The demo issuer's `iss`.
const ISSUER: &str = "https://issuer.pillion.test";
/// The proxy user, owner of the gateway's key file.
const PROXY_UID: u32 = pillion_api::defaults::PROXY_UID;

/// The demo's edge credentials, made for one run.
pub struct EdgeDemo {
    /// The CA the visitor trusts (DER).
    ca: CertificateDer<'static>,
    /// A token with scope `echo.read`, signed by the demo issuer.
    token: String,
    /// The agent source part that makes workload `edge/gateway` the gateway.
    pub source_part: String,
}

impl EdgeDemo {
    /// Makes the CA, the gateway's certificate (written to `dir/tls`, key 0600 owned
    /// by the proxy user) and the issuer.
    pub fn create(dir: &Path) -> Result<EdgeDemo> {
        use std::os::unix::fs::{chown, PermissionsExt};
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "pillion up demo edge CA");
        let ca = ca_params.self_signed(&ca_key)?;
        let key = rcgen::KeyPair::generate()?;
        let leaf =
            rcgen::CertificateParams::new(vec![HOST.to_string()])?.signed_by(&key, &ca, &ca_key)?;
        let tls = dir.join("tls");
        std::fs::create_dir_all(&tls)?;
        std::fs::write(tls.join("tls.crt"), leaf.pem())?;
        std::fs::write(tls.join("tls.key"), key.serialize_pem())?;
        std::fs::set_permissions(tls.join("tls.key"), std::fs::Permissions::from_mode(0o600))?;
        for path in [tls.clone(), tls.join("tls.crt"), tls.join("tls.key")] {
            chown(&path, Some(PROXY_UID), Some(PROXY_UID))
                .with_context(|| format!("giving {} to the proxy user", path.display()))?;
        }

        let signer = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let point = signer.public_key_raw();
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        let jwks = format!(
            r#"{{"keys": [{{"kty": "EC", "crv": "P-256", "kid": "demo", "use": "sig", "x": "{}", "y": "{}"}}]}}"#,
            b64(point.get(1..33).context("a P-256 point")?),
            b64(point.get(33..65).context("a P-256 point")?),
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        let claims = serde_json::json!({"iss": ISSUER, "aud": "echo", "sub": "visitor",
            "scope": "echo.read", "iat": now, "exp": now + 24 * 3600});
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("demo".into());
        let key = jsonwebtoken::EncodingKey::from_ec_der(&signer.serialize_der());
        let token = jsonwebtoken::encode(&header, &claims, &key)?;
        Ok(EdgeDemo {
            ca: ca.der().clone(),
            token,
            source_part: source_part(&jwks),
        })
    }

    /// Starts the gateway's proxy in `pod`: `base` (agent, anchors, token, identity
    /// `edge/gateway`) plus the gateway's listeners and certificate.
    pub fn start_gateway(&self, pod: &Pod, base: &SidecarOpts, dir: &Path) -> Result<Process> {
        let opts = base.clone().proxy_args([
            "--gateway-https".to_string(),
            format!("0.0.0.0:{HTTPS_PORT}"),
            "--gateway-http".into(),
            format!("0.0.0.0:{HTTP_PORT}"),
            "--gateway-redirect-port".into(),
            HTTPS_PORT.to_string(),
            "--gateway-certs".into(),
            dir.join("tls").display().to_string(),
        ]);
        pod.spawn(opts.proxy_cmd()).context("starting the gateway")
    }

    /// What one visitor round needs, to move into the visitor's task.
    pub fn visitor(&self, gateway: std::net::SocketAddr) -> Visitor {
        Visitor {
            gateway,
            ca: self.ca.clone(),
            token: self.token.clone(),
        }
    }
}

/// The agent source part of the demo gateway: `echo.pillion.test` sends everything
/// to `demo/echo:8080`; `/private` needs a token with scope `echo.read`.
fn source_part(jwks: &str) -> String {
    format!(
        r#"workloads:
  - name: gateway
    namespace: edge
    token: demo-gateway-token
    gateway:
      hosts:
        - hostnames: [{HOST}]
          jwt:
            required: false
            providers:
              - issuer: {ISSUER}
                audiences: [echo]
                jwks: '{jwks}'
                claim_headers: {{sub: x-user}}
          server_routes:
            - name: private
              matches: [{{path: {{prefix: /private}}}}]
              claims: {{scope: [echo.read]}}
          routes:
            - name: echo
              matches: [{{path: {{prefix: /}}}}]
              backends: [{{service: demo/echo, port: 8080}}]
"#
    )
}

/// Counts of the visitor's rounds.
#[derive(Debug, Default)]
pub struct EdgeTally {
    /// Rounds where every answer was the expected one.
    pub ok: AtomicU64,
    /// Rounds where one was not.
    pub failed: AtomicU64,
}

/// A client outside the mesh that knows the gateway's CA and holds a token.
pub struct Visitor {
    gateway: std::net::SocketAddr,
    ca: CertificateDer<'static>,
    token: String,
}

impl Visitor {
    /// One round a second until dropped: public 200, private with token 200,
    /// private without 401.
    pub async fn run(self, tally: Arc<EdgeTally>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        for n in 1u64.. {
            tick.tick().await;
            let cases = [
                (format!("/hello/{n}"), None, 200),
                (format!("/private/{n}"), Some(self.token.as_str()), 200),
                (format!("/private/{n}"), None, 401),
            ];
            let mut seen = Vec::new();
            for (path, token, want) in &cases {
                let got =
                    tokio::time::timeout(Duration::from_secs(5), self.get(path, *token)).await;
                let got = match got {
                    Ok(Ok(status)) => status.to_string(),
                    Ok(Err(e)) => format!("{e:#}"),
                    Err(_) => "timed out".into(),
                };
                seen.push((path.clone(), token.is_some(), *want, got));
            }
            let all = seen
                .iter()
                .all(|(_, _, want, got)| *got == want.to_string());
            let counter = if all { &tally.ok } else { &tally.failed };
            counter.fetch_add(1, Ordering::Relaxed);
            let line: Vec<String> = (seen.iter())
                .map(|(p, t, _, got)| format!("{p}{}: {got}", if *t { " (token)" } else { "" }))
                .collect();
            println!(
                "visitor → https://{HOST}:{HTTPS_PORT} over HTTP/2: {}",
                line.join(", ")
            );
        }
    }

    /// One HTTPS GET over a new connection; the status.
    async fn get(&self, path: &str, token: Option<&str>) -> Result<u16> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone())?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = tokio::net::TcpStream::connect(self.gateway).await?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from(HOST)?, tcp)
            .await
            .context("TLS with the gateway")?;
        let (mut sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tls),
        )
        .await?;
        tokio::spawn(conn);
        let mut req = hyper::Request::get(format!("https://{HOST}:{HTTPS_PORT}{path}"));
        if let Some(token) = token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let resp = sender
            .send_request(req.body(Empty::<bytes::Bytes>::new())?)
            .await?;
        let status = resp.status().as_u16();
        let _ = resp.into_body().collect().await;
        Ok(status)
    }
}
