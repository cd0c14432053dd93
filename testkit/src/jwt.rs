//! A token issuer made in the test: fresh keys of every accepted algorithm, their
//! JWK Set, and tokens signed with them (or tampered, or signed by a stranger).
//!
//! EC and Ed25519 keys come from rcgen (ring); ring cannot make RSA keys, so the RSA
//! key comes from the `openssl` command, which the tests' machines have.

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// One signing key with its public JWK.
pub struct SigningKey {
    /// Its `kid`.
    pub kid: String,
    /// The algorithm it signs with.
    pub alg: Algorithm,
    key: EncodingKey,
    /// The public half as a JWK.
    pub jwk: Value,
}

/// An issuer: a name and its keys.
pub struct Issuer {
    /// The `iss` of its tokens.
    pub name: String,
    /// Its keys, one per algorithm asked for.
    pub keys: Vec<SigningKey>,
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Issuer {
    /// An issuer with one fresh key for each of `algs` (kids `"<prefix>-<alg>"`).
    pub fn new(name: &str, prefix: &str, algs: &[Algorithm]) -> Result<Issuer> {
        let keys = algs
            .iter()
            .map(|alg| SigningKey::generate(*alg, &format!("{prefix}-{alg:?}")))
            .collect::<Result<_>>()?;
        Ok(Issuer {
            name: name.to_string(),
            keys,
        })
    }

    /// The JWK Set of every key, as JSON text.
    pub fn jwks(&self) -> String {
        json!({"keys": self.keys.iter().map(|k| &k.jwk).collect::<Vec<_>>()}).to_string()
    }

    /// The key for `alg`.
    pub fn key(&self, alg: Algorithm) -> &SigningKey {
        self.keys
            .iter()
            .find(|k| k.alg == alg)
            .unwrap_or_else(|| panic!("issuer {} has no {alg:?} key", self.name))
    }

    /// Claims that verify: this issuer, `aud`, valid for an hour, plus `extra`.
    pub fn claims(&self, aud: &str, extra: Value) -> Value {
        let mut claims = json!({
            "iss": self.name, "aud": aud, "sub": "alice",
            "iat": now(), "exp": now() + 3600,
        });
        if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                c.insert(k.clone(), v.clone());
            }
        }
        claims
    }

    /// A token of `claims` signed with this issuer's `alg` key.
    pub fn sign(&self, alg: Algorithm, claims: &Value) -> Result<String> {
        self.key(alg).sign(claims)
    }
}

impl SigningKey {
    /// A fresh key for `alg`.
    pub fn generate(alg: Algorithm, kid: &str) -> Result<SigningKey> {
        let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        let (key, jwk) = match alg {
            Algorithm::ES256 | Algorithm::ES384 => {
                let (curve, alg_id, len) = if alg == Algorithm::ES256 {
                    ("P-256", &rcgen::PKCS_ECDSA_P256_SHA256, 32)
                } else {
                    ("P-384", &rcgen::PKCS_ECDSA_P384_SHA384, 48)
                };
                let pair = rcgen::KeyPair::generate_for(alg_id)?;
                let point = pair.public_key_raw();
                if point.len() != 1 + 2 * len {
                    bail!("unexpected EC point of {} bytes", point.len());
                }
                let jwk = json!({"kty": "EC", "crv": curve, "x": b64(&point[1..=len]),
                    "y": b64(&point[1 + len..]), "kid": kid, "use": "sig"});
                (EncodingKey::from_ec_der(&pair.serialize_der()), jwk)
            }
            Algorithm::EdDSA => {
                let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
                let jwk = json!({"kty": "OKP", "crv": "Ed25519",
                    "x": b64(pair.public_key_raw()), "kid": kid});
                (EncodingKey::from_ed_der(&pair.serialize_der()), jwk)
            }
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => {
                let (der, modulus) = openssl_rsa()?;
                let jwk = json!({"kty": "RSA", "n": b64(&modulus), "e": "AQAB",
                    "kid": kid, "alg": format!("{alg:?}")});
                (EncodingKey::from_rsa_der(&der), jwk)
            }
            other => bail!("no test keys for {other:?}"),
        };
        Ok(SigningKey {
            kid: kid.to_string(),
            alg,
            key,
            jwk,
        })
    }

    /// A token of `claims` signed with this key, its `kid` in the header.
    pub fn sign(&self, claims: &Value) -> Result<String> {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        Ok(encode(&header, claims, &self.key)?)
    }
}

/// A token with an arbitrary header and payload and a made-up signature: `alg:
/// none`, HMAC claims and the like, which no issuer here would sign.
pub fn forged(header: &Value, claims: &Value, signature: &[u8]) -> String {
    let part = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.{}",
        part(header),
        part(claims),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

/// `token` with its payload replaced by `claims` and its signature kept.
pub fn tampered(token: &str, claims: &Value) -> String {
    let mut parts = token.splitn(3, '.');
    let (head, _, sig) = (
        parts.next().unwrap_or_default(),
        parts.next(),
        parts.next().unwrap_or_default(),
    );
    format!(
        "{head}.{}.{sig}",
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// A 2048-bit RSA key from `openssl`: its PKCS#1 DER and its modulus.
fn openssl_rsa() -> Result<(Vec<u8>, Vec<u8>)> {
    let dir =
        std::env::temp_dir().join(format!("pillion-jwt-rsa-{}-{}", std::process::id(), now()));
    std::fs::create_dir_all(&dir)?;
    let pem = dir.join("key.pem");
    let run = |args: &[&str]| -> Result<Vec<u8>> {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .context("running openssl (needed to make RSA test keys)")?;
        if !out.status.success() {
            bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(out.stdout)
    };
    let pem_path = pem.to_string_lossy().to_string();
    let result = (|| {
        run(&["genrsa", "-out", &pem_path, "2048"])?;
        let der = run(&["rsa", "-in", &pem_path, "-traditional", "-outform", "DER"])?;
        let modulus = run(&["rsa", "-in", &pem_path, "-noout", "-modulus"])?;
        let hex = String::from_utf8(modulus)?;
        let hex = hex
            .trim()
            .strip_prefix("Modulus=")
            .context("openssl printed no modulus")?;
        let modulus = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()?;
        Ok((der, modulus))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The CA and server certificate of a [`JwksServer`], made before it starts so the
/// agent can be told to trust the CA first.
pub struct JwksTls {
    /// The CA certificate (PEM).
    pub ca_pem: String,
    cert: rustls::pki_types::CertificateDer<'static>,
    key: Vec<u8>,
}

impl JwksTls {
    /// A fresh CA and a server certificate for `names` (DNS names or IP addresses).
    pub fn new(names: &[&str]) -> Result<JwksTls> {
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "jwks test CA");
        let ca = ca_params.self_signed(&ca_key)?;
        let key = rcgen::KeyPair::generate()?;
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = rcgen::CertificateParams::new(names)?.signed_by(&key, &ca, &ca_key)?;
        Ok(JwksTls {
            ca_pem: ca.pem(),
            cert: cert.der().clone(),
            key: key.serialize_der(),
        })
    }
}

/// What a test holds of a running [`JwksServer`]: where it is and what it answers.
#[derive(Clone)]
pub struct JwksControl {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    answer: std::sync::Arc<std::sync::Mutex<(u16, String)>>,
    /// Requests served so far.
    pub fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl JwksControl {
    /// From now on answer `status` with `body`.
    pub fn answer(&self, status: u16, body: String) {
        if let Ok(mut a) = self.answer.lock() {
            *a = (status, body);
        }
    }

    /// The `https://` URI of its key set at `host` (a name its certificate carries).
    pub fn uri(&self, host: &str) -> String {
        format!("https://{host}:{}/.well-known/jwks.json", self.addr.port())
    }

    /// Requests served so far.
    pub fn fetched(&self) -> usize {
        self.fetches.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A JWK Set served over HTTPS (HTTP/1.1) with a [`JwksTls`] certificate, whose
/// answer the test changes while it runs (new keys, an error status); stops when
/// dropped.
pub struct JwksServer {
    /// The handle a test keeps.
    pub control: JwksControl,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    /// Listens on `addr` (port 0 picks one), answering `200 body` until told
    /// otherwise.
    pub async fn start(
        addr: std::net::SocketAddr,
        tls: &JwksTls,
        body: String,
    ) -> Result<JwksServer> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![tls.cert.clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(tls.key.clone().into()),
            )?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let control = JwksControl {
            addr: listener.local_addr()?,
            answer: Arc::new(Mutex::new((200u16, body))),
            fetches: Arc::new(AtomicUsize::new(0)),
        };
        let shared = control.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, shared) = (acceptor.clone(), shared.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |_req| {
                        shared.fetches.fetch_add(1, Ordering::SeqCst);
                        let (status, body) = shared
                            .answer
                            .lock()
                            .map(|a| a.clone())
                            .unwrap_or((500, String::new()));
                        async move { Ok::<_, std::convert::Infallible>(crate::http::text(status, body)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Ok(JwksServer { control, task })
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
