//! A stand-in for the Kubernetes API server on loopback: real HTTPS (a certificate
//! for `kubernetes.default.svc` from a test CA), real JSON wire formats (lists, watch
//! events, TokenReview, Status, server-side apply), and a record of every request,
//! so the agent's kube client can be tested without a cluster.

use bytes::Bytes;
use futures::StreamExt;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use pillion_identity::{Ca, SpiffeId};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// The name the fake's certificate carries and the client verifies.
pub const API_SERVER_NAME: &str = "kubernetes.default.svc";
/// The agent's own ServiceAccount token, as the fake expects it.
pub const AGENT_TOKEN: &str = "agent-sa-token-for-tests";

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    /// Path and query.
    pub uri: String,
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    pub body: Bytes,
}

impl Seen {
    pub fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or("")
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// What the fake answers.
pub enum Reply {
    Json(StatusCode, Value),
    /// A watch: these events (`{"type": ..., "object": ...}`), then silence.
    Watch(Vec<Value>),
}

pub type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

pub struct FakeApiServer {
    pub addr: SocketAddr,
    pub ca_pem: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeApiServer {
    pub async fn start(handler: Handler) -> Self {
        let ca = Ca::generate("cluster.local").unwrap();
        let id = SpiffeId::new("cluster.local", "default", "kubernetes").unwrap();
        let (issued, key) = ca
            .issue_with_dns_names(&id, &[API_SERVER_NAME], Duration::from_secs(3600))
            .unwrap();
        let tls = pillion_identity::tls::agent_server_config(&issued.chain_pem, &key).unwrap();
        let acceptor = TlsAcceptor::from(tls);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let handler = handler.clone();
                let seen = seen2.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |req| {
                        let handler = handler.clone();
                        let seen = seen.clone();
                        async move { Ok::<_, Infallible>(answer(req, &handler, &seen).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            ca_pem: ca.trust_bundle_pem(),
            seen,
        }
    }

    /// A kube client configuration for this server: URL, root, name and a token.
    pub fn kube_config(&self) -> kube::Config {
        let mut config = kube::Config::new(format!("https://{}", self.addr).parse().unwrap());
        let roots: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(self.ca_pem.as_bytes())
            .map(|c| c.unwrap().to_vec())
            .collect();
        config.root_cert = Some(roots);
        config.tls_server_name = Some(API_SERVER_NAME.to_string());
        config.auth_info.token = Some(secrecy::SecretString::from(AGENT_TOKEN));
        config.connect_timeout = Some(Duration::from_secs(5));
        config
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until a request matching `pred` was seen.
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&Seen) -> bool) -> Seen {
        for _ in 0..200 {
            if let Some(s) = self.seen().into_iter().find(|s| pred(s)) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "the fake API server never saw {what}; saw {:#?}",
            self.seen()
        );
    }
}

type Body = BoxBody<Bytes, Infallible>;

async fn answer(
    req: Request<Incoming>,
    handler: &Handler,
    seen: &Mutex<Vec<Seen>>,
) -> Response<Body> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let method = req.method().clone();
    let uri = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let authorization = header("authorization");
    let content_type = header("content-type");
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let s = Seen {
        method,
        uri,
        authorization,
        content_type,
        body,
    };
    seen.lock().unwrap().push(s.clone());
    match handler(&s) {
        Reply::Json(status, value) => {
            let mut resp =
                Response::new(Full::new(Bytes::from(serde_json::to_vec(&value).unwrap())).boxed());
            *resp.status_mut() = status;
            resp.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            resp
        }
        Reply::Watch(events) => {
            let lines = events.into_iter().map(|e| {
                let mut line = serde_json::to_vec(&e).unwrap();
                line.push(b'\n');
                Ok::<_, Infallible>(Frame::data(Bytes::from(line)))
            });
            let stream = futures::stream::iter(lines).chain(futures::stream::pending());
            let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
            resp.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            resp
        }
    }
}

/// A Kubernetes `Status` error body.
pub fn status(code: u16, reason: &str, message: &str) -> Reply {
    Reply::Json(
        StatusCode::from_u16(code).unwrap(),
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code}),
    )
}

/// A TokenReview answer as the API server writes it.
pub fn token_review(spec: &Value, status: Value) -> Reply {
    Reply::Json(
        StatusCode::CREATED,
        json!({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
               "metadata": {"creationTimestamp": null}, "spec": spec, "status": status}),
    )
}

/// An authenticated ServiceAccount token for `ns`/`sa`, audience `pillion`.
pub fn service_account_status(ns: &str, sa: &str) -> Value {
    json!({
        "authenticated": true,
        "user": {
            "username": format!("system:serviceaccount:{ns}:{sa}"),
            "uid": "7c3a9b2e-0000-4000-8000-000000000001",
            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{ns}"), "system:authenticated"],
            "extra": {
                "authentication.kubernetes.io/credential-id": ["JTI=4f1c1c1c-1111-2222-3333-444444444444"],
                "authentication.kubernetes.io/pod-name": [format!("{sa}-6d5f9-abcde")],
                "authentication.kubernetes.io/pod-uid": ["0f0f0f0f-aaaa-bbbb-cccc-dddddddddddd"]
            }
        },
        "audiences": ["pillion"]
    })
}

/// The TokenReview cases every test understands, by token.
pub fn review_by_token(spec: &Value) -> Reply {
    let token = spec["token"].as_str().unwrap_or("");
    match token {
        "web-token" => token_review(spec, service_account_status("shop", "web")),
        "echo-token" => token_review(spec, service_account_status("shop", "echo")),
        "expired-token" => token_review(
            spec,
            json!({"user": {}, "error": "[invalid bearer token, service account token has expired]"}),
        ),
        "other-audience-token" => {
            let mut s = service_account_status("shop", "web");
            s["audiences"] = json!(["https://kubernetes.default.svc.cluster.local"]);
            token_review(spec, s)
        }
        "admin-token" => token_review(
            spec,
            json!({"authenticated": true, "audiences": ["pillion"],
                   "user": {"username": "kubernetes-admin", "groups": ["system:masters", "system:authenticated"]}}),
        ),
        "node-token" => token_review(
            spec,
            json!({"authenticated": true, "audiences": ["pillion"],
                   "user": {"username": "system:node:node-a", "groups": ["system:nodes"]}}),
        ),
        "boom-token" => status(
            500,
            "InternalError",
            "Internal error occurred: authenticator unavailable",
        ),
        _ => token_review(spec, json!({"user": {}, "error": "invalid bearer token"})),
    }
}

/// A whole small cluster: lists for every watched kind (items by plural), watches
/// that stay silent (or send `watch_events` for a plural), TokenReviews, the webhook
/// configuration and ConfigMap applies.
pub fn cluster(
    items: BTreeMap<&'static str, Vec<Value>>,
    watch_events: BTreeMap<&'static str, Vec<Value>>,
) -> Handler {
    cluster_sharing(items, watch_events, Leases::default())
}

/// [`cluster`] keeping its Leases in `leases`, for tests that look at them.
pub fn cluster_sharing(
    items: BTreeMap<&'static str, Vec<Value>>,
    watch_events: BTreeMap<&'static str, Vec<Value>>,
    leases: Leases,
) -> Handler {
    Arc::new(move |s: &Seen| {
        let path = s.path();
        if let Some(reply) = leases.answer(s) {
            return reply;
        }
        if s.method == Method::POST && path == "/apis/authentication.k8s.io/v1/tokenreviews" {
            return review_by_token(&s.json()["spec"]);
        }
        let webhook_path =
            "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/pillion-injector";
        if path == webhook_path {
            return match s.method {
                Method::GET => Reply::Json(StatusCode::OK, webhook_configuration("")),
                Method::PATCH => Reply::Json(StatusCode::OK, webhook_configuration("patched")),
                _ => status(405, "MethodNotAllowed", "no"),
            };
        }
        if s.method == Method::PATCH && path.ends_with("/configmaps/pillion-trust-anchors") {
            return Reply::Json(StatusCode::OK, s.json());
        }
        if s.method == Method::GET {
            let plural = path.rsplit('/').next().unwrap_or("");
            if s.uri.contains("watch=true") || s.uri.contains("watch=1") {
                return Reply::Watch(watch_events.get(plural).cloned().unwrap_or_default());
            }
            if let Some(list) = items.get(plural) {
                return Reply::Json(
                    StatusCode::OK,
                    json!({"kind": "List", "apiVersion": "v1",
                           "metadata": {"resourceVersion": "1000"}, "items": list}),
                );
            }
        }
        status(
            404,
            "NotFound",
            &format!("the server could not find {}", s.uri),
        )
    })
}

/// Every watched kind with no objects, plus `extra`.
pub fn empty_lists() -> BTreeMap<&'static str, Vec<Value>> {
    [
        "services",
        "endpointslices",
        "pods",
        "namespaces",
        "routes",
        "retrypolicies",
        "ratelimitpolicies",
        "authorizationpolicies",
        "authenticationpolicies",
    ]
    .into_iter()
    .map(|p| (p, Vec::new()))
    .collect()
}

/// `deploy/agent/webhook.yaml` as the API server returns it.
pub fn webhook_configuration(version: &str) -> Value {
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "pillion-injector", "resourceVersion": format!("77{version}"),
                     "uid": "1e1e1e1e-2222-4333-8444-555555555555", "generation": 1},
        "webhooks": [{
            "name": "inject.pillion.io",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Ignore",
            "matchPolicy": "Equivalent",
            "reinvocationPolicy": "Never",
            "timeoutSeconds": 5,
            "clientConfig": {"service": {"name": "pillion-agent", "namespace": "pillion",
                                          "path": "/v1/inject", "port": 15012}},
            "namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name",
                                  "operator": "NotIn", "values": ["pillion", "kube-system"]}]},
            "objectSelector": {},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                       "resources": ["pods"], "scope": "Namespaced"}]
        }]
    })
}

/// Leases (`coordination.k8s.io/v1`) as the API server keeps them: create, get,
/// strategic-merge patches, and server-side apply with field ownership of
/// `spec.holderIdentity`: an apply that would take it from another field manager is
/// a 409 Conflict unless forced, which is what makes the election safe.
/// Each Lease by `namespace/name`, with the field manager owning its holder.
type LeaseStore = BTreeMap<String, (Value, Option<String>)>;

#[derive(Clone, Default)]
pub struct Leases {
    state: Arc<Mutex<LeaseStore>>,
    /// Field managers whose Lease writes fail (500): a replica cut off from them.
    blocked: Arc<Mutex<Vec<String>>>,
}

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/";

impl Leases {
    /// The holder of the Lease `name` in `namespace`, if any.
    pub fn holder(&self, namespace: &str, name: &str) -> Option<String> {
        let key = format!("{namespace}/{name}");
        let state = self.state.lock().unwrap();
        let (lease, _) = state.get(&key)?;
        lease["spec"]["holderIdentity"].as_str().map(str::to_string)
    }

    /// Makes every Lease write of `field_manager` fail from now on.
    pub fn block(&self, field_manager: &str) {
        self.blocked.lock().unwrap().push(field_manager.to_string());
    }

    fn answer(&self, s: &Seen) -> Option<Reply> {
        let rest = s.path().strip_prefix(LEASES)?;
        let (namespace, rest) = rest.split_once('/')?;
        let name = rest
            .strip_prefix("leases")
            .map(|n| n.trim_start_matches('/'))?;
        let query = s.uri.split_once('?').map_or("", |(_, q)| q);
        let param = |key: &str| {
            query
                .split('&')
                .find_map(|p| p.strip_prefix(&format!("{key}=")))
                .map(str::to_string)
        };
        let mut state = self.state.lock().unwrap();
        let body = s.json();
        let name = if name.is_empty() {
            body["metadata"]["name"].as_str().unwrap_or("").to_string()
        } else {
            name.to_string()
        };
        let key = format!("{namespace}/{name}");
        let bump = |lease: &mut Value| {
            let rv = lease["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            lease["metadata"]["resourceVersion"] = json!((rv + 1).to_string());
        };
        Some(match s.method {
            Method::GET => match state.get(&key) {
                Some((lease, _)) => Reply::Json(StatusCode::OK, lease.clone()),
                None => status(404, "NotFound", &format!("leases \"{name}\" not found")),
            },
            Method::POST => {
                if state.contains_key(&key) {
                    return Some(status(409, "AlreadyExists", "leases already exists"));
                }
                let mut lease = body;
                lease["metadata"]["namespace"] = json!(namespace);
                lease["metadata"]["uid"] = json!(format!("lease-{name}"));
                bump(&mut lease);
                let owner = lease["spec"]["holderIdentity"]
                    .as_str()
                    .and(param("fieldManager"));
                state.insert(key, (lease.clone(), owner));
                Reply::Json(StatusCode::CREATED, lease)
            }
            Method::PATCH => {
                let manager = param("fieldManager");
                if manager
                    .as_ref()
                    .is_some_and(|m| self.blocked.lock().unwrap().contains(m))
                {
                    return Some(status(500, "InternalError", "etcd is unavailable"));
                }
                let Some((lease, owner)) = state.get_mut(&key) else {
                    return Some(status(404, "NotFound", "no such lease"));
                };
                let apply = s
                    .content_type
                    .as_deref()
                    .is_some_and(|c| c.contains("apply-patch"));
                let force = param("force").as_deref() == Some("true");
                let wanted = &body["spec"]["holderIdentity"];
                if apply
                    && !force
                    && wanted.is_string()
                    && owner.is_some()
                    && *owner != manager
                    && lease["spec"]["holderIdentity"] != *wanted
                {
                    return Some(status(
                        409,
                        "Conflict",
                        "Apply failed with 1 conflict: conflict with another manager: .spec.holderIdentity",
                    ));
                }
                if let Some(fields) = body["spec"].as_object() {
                    for (field, value) in fields {
                        if value.is_null() {
                            if let Some(spec) = lease["spec"].as_object_mut() {
                                spec.remove(field);
                            }
                        } else {
                            lease["spec"][field] = value.clone();
                        }
                        if field == "holderIdentity" {
                            *owner = if value.is_null() {
                                None
                            } else {
                                manager.clone()
                            };
                        }
                    }
                }
                bump(lease);
                Reply::Json(StatusCode::OK, lease.clone())
            }
            _ => status(405, "MethodNotAllowed", "no"),
        })
    }
}
