//! The agent in Kubernetes mode against a loopback API server: the admission webhook
//! over real HTTPS (HTTP/2 and HTTP/1.1) verified the way the API server verifies it
//! (by the Service DNS name, against the caBundle the agent patched in), namespace
//! annotations from the watch, the trust anchors ConfigMap, probes, and a watch event
//! reaching the served view.

use crate::common::Client;
use crate::kubernetes_fake::*;
use base64::Engine;
use http::StatusCode;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::Pod;
use pillion_agent::kubernetes::{ClientSpec, KubernetesSpec};
use pillion_agent::{Agent, AgentConfig, RunningAgent, SourceSpec};
use pillion_inject::admission::AdmissionReview;
use pillion_inject::sidecar::PROXY_CONTAINER;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The name the API server dials for `service: {name: pillion-agent, namespace: pillion}`.
const WEBHOOK_HOST: &str = "pillion-agent.pillion.svc";

fn namespace(name: &str, annotations: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": name, "resourceVersion": "10",
                        "labels": {"kubernetes.io/metadata.name": name},
                        "annotations": annotations},
           "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})
}

async fn start() -> (FakeApiServer, RunningAgent) {
    start_with(pillion_agent::ca::CaSpec::InMemory).await
}

async fn start_with(ca: pillion_agent::ca::CaSpec) -> (FakeApiServer, RunningAgent) {
    let mut lists = empty_lists();
    lists.insert(
        "namespaces",
        vec![
            namespace("shop", json!({"pillion.io/inject": "enabled"})),
            namespace("plain", json!({})),
        ],
    );
    let late = json!({"type": "ADDED", "object": {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "late", "namespace": "shop", "resourceVersion": "1001"},
        "spec": {"clusterIP": "198.18.100.99", "clusterIPs": ["198.18.100.99"],
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}}});
    let watches = BTreeMap::from([("services", vec![late])]);
    let fake = FakeApiServer::start(cluster(lists, watches)).await;
    let mut config = AgentConfig::new(SourceSpec::Embedded);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.kubernetes = Some(KubernetesSpec::new(ClientSpec::Config(Box::new(
        fake.kube_config(),
    ))));
    config.ca = ca;
    config.reload_interval = Duration::from_millis(50);
    let agent = Agent::start(config).await.unwrap();
    (fake, agent)
}

/// Connects like the API server: WebPKI verification of `pillion-agent.pillion.svc`
/// against the agent's trust bundle.
async fn connect_as_api_server(agent: &RunningAgent, http1: bool) -> Client {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(agent.trust_anchor_pem().as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = if http1 {
        vec![b"http/1.1".to_vec()]
    } else {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    };
    let tcp = TcpStream::connect(agent.local_addr()).await.unwrap();
    let name = ServerName::try_from(WEBHOOK_HOST).unwrap();
    let tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("the serving certificate verifies for pillion-agent.pillion.svc");
    let io = TokioIo::new(tls);
    if http1 {
        let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        Client::H1(send)
    } else {
        let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        Client::H2(send)
    }
}

async fn wait_ready(client: &mut Client) {
    for _ in 0..200 {
        let resp = client.send("GET", "/ready", None, Vec::new()).await;
        if resp.status() == StatusCode::OK {
            return;
        }
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the agent never became ready");
}

fn review_in(namespace: &str) -> Value {
    let path = format!(
        "{}/../inject/tests/fixtures/deployment-pod.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut review: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    review["request"]["namespace"] = json!(namespace);
    review["request"]["object"]["metadata"]["namespace"] = json!(namespace);
    review
}

async fn post_review(client: &mut Client, review: &Value) -> AdmissionReview {
    let resp = client
        .send(
            "POST",
            "/v1/inject",
            None,
            serde_json::to_vec(review).unwrap(),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test]
async fn the_webhook_injects_pods_of_annotated_namespaces_over_h2_and_h1() {
    let (_fake, agent) = start().await;
    for http1 in [false, true] {
        let mut client = connect_as_api_server(&agent, http1).await;
        wait_ready(&mut client).await;

        let request = review_in("shop");
        let answer = post_review(&mut client, &request).await;
        let response = answer.response.unwrap();
        assert_eq!(response.uid, request["request"]["uid"].as_str().unwrap());
        assert!(response.allowed);
        assert_eq!(response.patch_type.as_deref(), Some("JSONPatch"));
        let patch = base64::engine::general_purpose::STANDARD
            .decode(response.patch.unwrap())
            .unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
        let mut object = request["request"]["object"].clone();
        json_patch::patch(&mut object, &patch).unwrap();
        let pod: Pod = serde_json::from_value(object).unwrap();
        let spec = pod.spec.unwrap();
        let proxy = spec
            .init_containers
            .iter()
            .flatten()
            .find(|c| c.name == PROXY_CONTAINER)
            .expect("the proxy as a native sidecar");
        assert_eq!(proxy.restart_policy.as_deref(), Some("Always"));
        let env: BTreeMap<_, _> = proxy
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e.value.clone().unwrap_or_default()))
            .collect();
        assert_eq!(
            env.get("PILLION_AGENT_IDENTITY").map(String::as_str),
            Some(agent.agent_identity().as_str())
        );
        assert!(pod
            .metadata
            .annotations
            .unwrap()
            .contains_key("pillion.io/injected"));

        // A namespace without the annotation: allowed, untouched.
        let answer = post_review(&mut client, &review_in("plain")).await;
        let response = answer.response.unwrap();
        assert!(response.allowed && response.patch.is_none());
    }
    agent.shutdown().await;
}

#[tokio::test]
async fn bad_bodies_probes_and_methods() {
    let (_fake, agent) = start().await;
    let mut client = connect_as_api_server(&agent, false).await;
    wait_ready(&mut client).await;

    let resp = client
        .send("POST", "/v1/inject", None, b"{not json".to_vec())
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = client
        .send("POST", "/v1/inject", None, vec![b' '; 4 * 1024 * 1024 + 1])
        .await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let resp = client.send("GET", "/v1/inject", None, Vec::new()).await;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    for path in ["/live", "/ready", "/healthz"] {
        let resp = client.send("GET", path, None, Vec::new()).await;
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
    }
    agent.shutdown().await;
}

#[tokio::test]
async fn the_agent_publishes_its_ca_to_the_webhook_and_injected_namespaces() {
    let (fake, agent) = start().await;
    let anchor = agent.trust_anchor_pem().to_string();

    let patch = fake
        .wait_for("the webhook caBundle patch", |s| {
            s.method == http::Method::PATCH && s.path().ends_with("/pillion-injector")
        })
        .await;
    assert_eq!(
        patch.content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    let body = patch.json();
    assert_eq!(body["metadata"]["resourceVersion"], "77");
    let bundle = body["webhooks"][0]["clientConfig"]["caBundle"]
        .as_str()
        .unwrap();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(bundle)
        .unwrap();
    assert_eq!(String::from_utf8(decoded).unwrap(), anchor);
    assert_eq!(
        body["webhooks"][0]["clientConfig"]["service"]["path"], "/v1/inject",
        "the rest of the webhook is kept"
    );

    let apply = fake
        .wait_for("the trust anchors ConfigMap in shop", |s| {
            s.method == http::Method::PATCH
                && s.path() == "/api/v1/namespaces/shop/configmaps/pillion-trust-anchors"
        })
        .await;
    assert!(
        apply.uri.contains("fieldManager=pillion-agent"),
        "{}",
        apply.uri
    );
    assert!(apply.uri.contains("force=true"), "{}", apply.uri);
    assert_eq!(
        apply.content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
    let cm = apply.json();
    assert_eq!(cm["apiVersion"], "v1");
    assert_eq!(cm["kind"], "ConfigMap");
    assert_eq!(cm["data"]["ca.pem"], anchor.as_str());
    assert!(
        !fake
            .seen()
            .iter()
            .any(|s| s.path().contains("/namespaces/plain/")),
        "no ConfigMap where nothing is injected"
    );
    agent.shutdown().await;
}

#[tokio::test]
async fn a_watch_event_reaches_the_served_view() {
    let (_fake, agent) = start().await;
    for _ in 0..200 {
        let snapshot = agent.snapshot();
        if let Some(late) = snapshot.catalog.services().find(|s| s.name == "late") {
            assert_eq!(late.namespace, "shop");
            assert_eq!(
                late.addresses,
                ["198.18.100.99".parse::<std::net::IpAddr>().unwrap()]
            );
            assert_eq!(late.ports[0].target_port, Some(8080));
            assert!(snapshot.version >= 1);
            agent.shutdown().await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the ADDED Service never reached the catalog");
}

#[tokio::test]
async fn outside_kubernetes_only_pods_that_ask_are_injected() {
    let agent = crate::common::start_default().await;
    let mut client = crate::common::connect(&agent).await;
    // No namespace watch: a namespace's annotation cannot be seen.
    let answer = post_review(&mut client, &review_in("shop")).await;
    let response = answer.response.unwrap();
    assert!(response.allowed && response.patch.is_none());
    assert!(response.warnings.is_empty(), "{:?}", response.warnings);

    let mut request = review_in("shop");
    request["request"]["object"]["metadata"]["annotations"]["pillion.io/inject"] = json!("enabled");
    let answer = post_review(&mut client, &request).await;
    assert!(answer.response.unwrap().patch.is_some());
    agent.shutdown().await;
}

#[tokio::test]
async fn a_new_trust_bundle_is_published_again_to_the_webhook_and_namespaces() {
    let dir = crate::common::TempDir::new("kube-rotate");
    let issuer_dir = dir.join("identity");
    pillion_identity::ca::init_issuer_dir(&issuer_dir, "cluster.local", Duration::from_secs(3600))
        .unwrap();
    let (fake, agent) = start_with(pillion_agent::ca::CaSpec::IssuerDir(issuer_dir.clone())).await;
    let webhook_patch =
        |s: &Seen| s.method == http::Method::PATCH && s.path().ends_with("/pillion-injector");
    let shop_apply = |s: &Seen| {
        s.method == http::Method::PATCH
            && s.path() == "/api/v1/namespaces/shop/configmaps/pillion-trust-anchors"
    };
    fake.wait_for("the first caBundle patch", webhook_patch)
        .await;
    fake.wait_for("the first ConfigMap", shop_apply).await;

    // A second root joins the Secret's bundle: both are published again.
    let r2 = pillion_identity::Ca::generate("cluster.local").unwrap();
    let (r1_pem, r2_pem) = (agent.trust_anchor_pem().to_string(), r2.trust_bundle_pem());
    let both = format!("{r1_pem}{r2_pem}");
    // The agent hands out a bundle in its own (canonical) order: compare as a set.
    let both_roots = move |text: &str| {
        text.len() == r1_pem.len() + r2_pem.len()
            && text.contains(&r1_pem)
            && text.contains(&r2_pem)
    };
    let tmp = issuer_dir.join(".ca.crt.tmp");
    std::fs::write(&tmp, &both).unwrap();
    std::fs::rename(&tmp, issuer_dir.join("ca.crt")).unwrap();
    let patched = fake
        .wait_for("a caBundle patch with both roots", |s| {
            webhook_patch(s)
                && s.json()["webhooks"][0]["clientConfig"]["caBundle"]
                    .as_str()
                    .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                    .and_then(|b| String::from_utf8(b).ok())
                    .is_some_and(|b| both_roots(&b))
        })
        .await;
    assert_eq!(patched.json()["metadata"]["resourceVersion"], "77");
    fake.wait_for("the ConfigMap with both roots", |s| {
        shop_apply(s) && s.json()["data"]["ca.pem"].as_str().is_some_and(&both_roots)
    })
    .await;
    agent.shutdown().await;
}
