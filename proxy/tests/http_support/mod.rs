//! A loopback mesh for the HTTP layer's tests: a CA and proxy certificates, test
//! applications (hyper, HTTP/1 and HTTP/2), inbound proxies that terminate real mesh
//! TLS in front of them (one loopback address each, the same port), and an outbound
//! proxy that treats every connection as aimed at a service VIP.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use pillion_api::view::View;
use pillion_identity::{csr, Ca, CertStore, SpiffeId};
use pillion_proxy::detect::{self, Protocol};
use pillion_proxy::http::{outbound, HttpMetrics, HttpSettings, HttpTables, InboundHttp, Peer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// The client workload's identity.
pub const CLIENT_ID: &str = "spiffe://cluster.local/ns/demo/sa/client";
/// Another client workload's identity.
pub const OTHER_ID: &str = "spiffe://cluster.local/ns/other/sa/intruder";
/// The server workload's identity.
pub const SERVER_ID: &str = "spiffe://cluster.local/ns/demo/sa/server";
/// The VIP:port the outbound proxy pretends every connection was aimed at.
pub const VIP: &str = "198.18.0.100:80";

/// The body every test application answers with.
pub type AppBody = BoxBody<Bytes, Infallible>;
/// A test application's request handler.
pub type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<AppBody>> + Send>>
        + Send
        + Sync,
>;

/// Makes a handler from an async closure.
pub fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<AppBody>> + Send + 'static,
{
    Arc::new(move |req| Box::pin(f(req)))
}

/// A response with a text body.
pub fn text(status: u16, body: impl Into<Bytes>) -> Response<AppBody> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
    r
}

/// The test CA and a store per identity.
pub struct Pki {
    ca: Ca,
}

impl Pki {
    pub fn new() -> Pki {
        Pki {
            ca: Ca::generate("cluster.local").unwrap(),
        }
    }

    pub fn store(&self, id: &str) -> Arc<CertStore> {
        let id: SpiffeId = id.parse().unwrap();
        let store = Arc::new(CertStore::new(id.clone()));
        let (key, csr_pem) = csr::generate(&id).unwrap();
        let issued = self
            .ca
            .sign_csr(&csr_pem, &id, Duration::from_secs(3600))
            .unwrap();
        store.set_leaf(&issued.chain_pem, &key).unwrap();
        store.set_trust_bundle(&self.ca.trust_bundle_pem()).unwrap();
        store
    }
}

/// A running test application.
pub struct App {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub requests: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl App {
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Starts an application on `addr` (HTTP/1.1 and HTTP/2, with upgrades).
pub async fn app(addr: SocketAddr, handler: Handler) -> App {
    let listener = TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let (c, r) = (Arc::clone(&connections), Arc::clone(&requests));
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            c.fetch_add(1, Ordering::SeqCst);
            let handler = Arc::clone(&handler);
            let r = Arc::clone(&r);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    r.fetch_add(1, Ordering::SeqCst);
                    let fut = handler(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    App {
        addr,
        connections,
        requests,
        task,
    }
}

/// A free port that `127.0.0.<k>` addresses can all bind.
pub async fn common_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

/// `127.0.0.<k>:<port>`.
pub fn lo(k: u8, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, k)), port)
}

/// Tables with short outlier times for tests, over `view`.
pub fn tables(
    store: Option<&Arc<CertStore>>,
    view: &View,
    settings: HttpSettings,
) -> Arc<HttpTables> {
    let mut settings = settings;
    if let Some(store) = store {
        settings.mesh_client =
            Some(pillion_identity::tls::client_config(Arc::clone(store)).unwrap());
    }
    let mut registry = prometheus_client::registry::Registry::default();
    let tables = HttpTables::new(settings, HttpMetrics::register(&mut registry));
    tables.install(view);
    tables
}

/// A running inbound proxy.
pub struct Inbound {
    pub addr: SocketAddr,
    pub tables: Arc<HttpTables>,
    task: JoinHandle<()>,
}

impl Drop for Inbound {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An inbound proxy on `listen` in front of the application at `app`: mesh TLS
/// (when `store` is given) terminated, then protocol detection and the HTTP layer.
pub async fn inbound(
    listen: SocketAddr,
    app: SocketAddr,
    store: Option<Arc<CertStore>>,
    view: &View,
) -> Inbound {
    let listener = TcpListener::bind(listen).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tables = tables(None, view, HttpSettings::default());
    let http = InboundHttp::new(Arc::clone(&tables));
    let acceptor =
        store.map(|s| TlsAcceptor::from(pillion_identity::tls::server_config(s).unwrap()));
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let http = Arc::clone(&http);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                match acceptor {
                    Some(acceptor) => {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let peer = pillion_identity::tls::peer_identity(tls.get_ref().1)
                            .and_then(|id| Peer::verified(&id.to_string()));
                        serve_inbound(&http, tls, app, peer).await;
                    }
                    None => serve_inbound(&http, tcp, app, None).await,
                }
            });
        }
    });
    Inbound { addr, tables, task }
}

async fn serve_inbound<IO>(http: &Arc<InboundHttp>, io: IO, app: SocketAddr, peer: Option<Peer>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (protocol, _, io) = detect::detect(io, Duration::from_secs(10)).await;
    match protocol {
        Protocol::Opaque => {
            if let Ok(mut upstream) = TcpStream::connect(app).await {
                let mut io = io;
                let _ = tokio::io::copy_bidirectional(&mut io, &mut upstream).await;
            }
        }
        p => http.serve(io, p, app, peer, std::future::pending()).await,
    }
}

/// A running outbound proxy.
pub struct Outbound {
    pub addr: SocketAddr,
    pub tables: Arc<HttpTables>,
    task: JoinHandle<()>,
}

impl Drop for Outbound {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An outbound proxy on loopback; every connection counts as aimed at [`VIP`].
pub async fn outbound(tables: Arc<HttpTables>) -> Outbound {
    outbound_to(tables, VIP.parse().unwrap()).await
}

/// An outbound proxy on loopback; every connection counts as aimed at `vip`.
pub async fn outbound_to(tables: Arc<HttpTables>, vip: SocketAddr) -> Outbound {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let t = Arc::clone(&tables);
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let tables = Arc::clone(&t);
            tokio::spawn(async move {
                let (protocol, _, io) = detect::detect(tcp, Duration::from_secs(10)).await;
                if protocol != Protocol::Opaque {
                    outbound::serve(tables, io, protocol, vip, std::future::pending()).await;
                }
            });
        }
    });
    Outbound { addr, tables, task }
}

/// An HTTP/1.1 client.
pub fn h1_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 (prior knowledge) client.
pub fn h2_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// A GET to the outbound proxy at `addr`.
pub fn get(addr: SocketAddr, path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// Reads a response's status and body.
pub async fn read(resp: Response<Incoming>) -> (u16, Bytes) {
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, body)
}

/// The view of the loopback mesh: service `demo/echo` at [`VIP`] with `endpoints`
/// (address, labels) on `port`, the server identity when `meshed`, plus `routes`
/// (JSON) on the service port and `inbound` (JSON) as the inbound policy.
pub fn view(
    version: u64,
    endpoints: &[(SocketAddr, &str)],
    meshed: bool,
    routes: serde_json::Value,
    inbound: serde_json::Value,
) -> View {
    let eps: Vec<serde_json::Value> = endpoints
        .iter()
        .map(|(addr, version)| {
            let mut e = serde_json::json!({
                "address": addr.ip().to_string(), "port": addr.port(),
                "labels": {"version": version}
            });
            if meshed {
                e["identity"] = serde_json::json!(SERVER_ID);
            }
            e
        })
        .collect();
    let target_port = endpoints.first().map_or(80, |(a, _)| a.port());
    serde_json::from_value(serde_json::json!({
        "version": version,
        "identity": CLIENT_ID,
        "services": [{
            "name": "echo", "namespace": "demo",
            "addresses": ["198.18.0.100"],
            "ports": [{"port": 80, "target_port": target_port, "routes": routes}],
            "endpoints": eps
        }],
        "inbound": inbound
    }))
    .unwrap()
}

/// A loopback service: applications behind meshed inbound proxies, and an outbound
/// proxy for the client identity.
pub struct Fleet {
    pub apps: Vec<App>,
    pub inbounds: Vec<Inbound>,
    pub outbound: Outbound,
    pub pki: Pki,
    pub endpoints: Vec<(SocketAddr, String)>,
}

impl Fleet {
    /// Endpoints `handlers[i]` labelled `version: versions[i]`, routes and inbound
    /// policy as JSON, outbound settings.
    pub async fn start(
        handlers: Vec<(Handler, &str)>,
        routes: serde_json::Value,
        inbound_policy: serde_json::Value,
        settings: HttpSettings,
    ) -> Fleet {
        let pki = Pki::new();
        let port = common_port().await;
        let mut apps = Vec::new();
        let mut inbounds = Vec::new();
        let mut endpoints = Vec::new();
        for (i, (h, version)) in handlers.into_iter().enumerate() {
            apps.push(app(lo(1, 0), h).await);
            endpoints.push((lo(30 + i as u8, port), version.to_string()));
        }
        let eps: Vec<(SocketAddr, &str)> =
            endpoints.iter().map(|(a, v)| (*a, v.as_str())).collect();
        let v = view(1, &eps, true, routes, inbound_policy);
        for (i, app) in apps.iter().enumerate() {
            inbounds.push(inbound(endpoints[i].0, app.addr, Some(pki.store(SERVER_ID)), &v).await);
        }
        let client_store = pki.store(CLIENT_ID);
        let outbound = outbound(tables(Some(&client_store), &v, settings)).await;
        Fleet {
            apps,
            inbounds,
            outbound,
            pki,
            endpoints,
        }
    }

    /// The view with new routes (and version), for updates.
    pub fn view(
        &self,
        version: u64,
        routes: serde_json::Value,
        inbound_policy: serde_json::Value,
    ) -> View {
        let eps: Vec<(SocketAddr, &str)> = self
            .endpoints
            .iter()
            .map(|(a, v)| (*a, v.as_str()))
            .collect();
        view(version, &eps, true, routes, inbound_policy)
    }

    /// Another outbound proxy for identity `id`, over the same view.
    pub async fn outbound_as(&self, id: &str, routes: serde_json::Value) -> Outbound {
        let store = self.pki.store(id);
        let v = self.view(1, routes, serde_json::json!({}));
        outbound(tables(Some(&store), &v, HttpSettings::default())).await
    }
}

/// Sends `n` GETs to `addr` from `concurrency` tasks; returns the statuses in order
/// of completion (with the `x-app` header of each response, if any).
pub async fn load(
    addr: SocketAddr,
    n: usize,
    concurrency: usize,
    path: &str,
) -> Vec<(u16, String)> {
    let client = h1_client();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let client = client.clone();
        let next = Arc::clone(&next);
        let path = path.to_string();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            while next.fetch_add(1, Ordering::SeqCst) < n {
                match client.request(get(addr, &path)).await {
                    Ok(resp) => {
                        let app = resp
                            .headers()
                            .get("x-app")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        let status = resp.status().as_u16();
                        let _ = resp.into_body().collect().await;
                        out.push((status, app));
                    }
                    Err(_) => out.push((0, String::new())),
                }
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// An application that answers 200 with `x-app: <name>` after `delay`.
pub fn named(name: &'static str, delay: Duration) -> Handler {
    handler(move |_req| async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut r = text(200, name);
        r.headers_mut()
            .insert("x-app", http::HeaderValue::from_static(name));
        r
    })
}
