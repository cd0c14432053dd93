//! The HTTP data path through a loopback mesh of whole proxies: applications (from
//! the test kit) behind inbound proxies that terminate real mesh TLS (one loopback
//! address each, the same port), and outbound proxies whose every connection counts
//! as aimed at one original destination (a service VIP, or one endpoint). Each
//! module tests one concern.

mod basics;
mod load;
mod policy;
mod routes;
mod streams;
mod telemetry;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use pillion_api::view::View;
use pillion_identity::CertStore;
use pillion_proxy::{DrainReport, ProxyConfig, Settings, Views};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::support::Options;

pub use pillion_testkit::http::{
    h1_client, h2_client, handler, named, read, text, App, AppBody, Handler,
};
pub use pillion_testkit::net::{common_port, lo};
pub use pillion_testkit::pki::Pki;

/// The client workload's identity.
pub const CLIENT_ID: &str = "spiffe://cluster.local/ns/demo/sa/client";
/// Another client workload's identity.
pub const OTHER_ID: &str = "spiffe://cluster.local/ns/other/sa/intruder";
/// The server workload's identity.
pub const SERVER_ID: &str = "spiffe://cluster.local/ns/demo/sa/server";
/// The VIP:port the outbound proxy pretends every connection was aimed at.
pub const VIP: &str = "198.18.0.100:80";

/// Starts an application on `addr`.
pub async fn app(addr: SocketAddr, handler: Handler) -> App {
    App::start(addr, handler).await
}

/// A GET to the outbound proxy at `addr`.
pub fn get(addr: SocketAddr, path: &str) -> Request<Full<Bytes>> {
    pillion_testkit::http::get(addr, path, &[])
}

/// One running proxy, fed views through `views`; stops when dropped.
pub struct Running {
    /// The outbound listener (for an outbound proxy) or the inbound one.
    pub addr: SocketAddr,
    /// Where its views come from.
    pub views: Views,
    /// Dropping it would start the drain.
    _stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<DrainReport>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A running outbound proxy.
pub type Outbound = Running;
/// A running inbound proxy.
pub type Inbound = Running;

/// What a client-side (outbound) proxy starts with.
pub struct Client {
    store: Arc<CertStore>,
    view: View,
    settings: Settings,
}

/// A client proxy with `store`'s identity (a fresh empty one when `None`), `view` and
/// `settings`.
pub fn client(store: Option<&Arc<CertStore>>, view: &View, settings: Settings) -> Client {
    let store = store
        .cloned()
        .unwrap_or_else(|| Pki::new().empty_store(CLIENT_ID));
    Client {
        store,
        view: view.clone(),
        settings,
    }
}

/// Starts a meshed proxy (its inbound listener at `listen`, everything else on free
/// loopback ports) whose connections all carry the redirect record `orig_dst`, and
/// installs `view`; answers (outbound, inbound) listener and the proxy.
async fn start(
    listen: Option<SocketAddr>,
    orig_dst: SocketAddr,
    store: Arc<CertStore>,
    view: &View,
    settings: Settings,
) -> (SocketAddr, Running) {
    let mut config = ProxyConfig::loopback_ephemeral();
    if let Some(listen) = listen {
        config.inbound_addrs = vec![listen];
    }
    let options = Options {
        orig_dst: Some(orig_dst),
        store: Some(store),
        settings,
    };
    let running = crate::support::start(config, options).await;
    running.install(view.clone()).await;
    let (outbound, inbound) = (running.outbound, running.inbound);
    let crate::support::Running {
        views, stop, task, ..
    } = running;
    let proxy = Running {
        addr: inbound,
        views,
        _stop: stop,
        task,
    };
    (outbound, proxy)
}

/// An inbound proxy on `listen` in front of the application at `app`: mesh TLS (a
/// certificate when `store` is given; plaintext callers are served on permissive
/// ports either way), then protocol detection and the HTTP layer.
pub async fn inbound(
    listen: SocketAddr,
    app: SocketAddr,
    store: Option<Arc<CertStore>>,
    view: &View,
) -> Inbound {
    inbound_with(listen, app, store, view, Settings::default()).await
}

/// [`inbound`] with its own settings (e.g. telemetry recorders).
pub async fn inbound_with(
    listen: SocketAddr,
    app: SocketAddr,
    store: Option<Arc<CertStore>>,
    view: &View,
    settings: Settings,
) -> Inbound {
    let store = store.unwrap_or_else(|| Pki::new().empty_store(SERVER_ID));
    start(Some(listen), app, store, view, settings).await.1
}

/// An outbound proxy on loopback; every connection counts as aimed at [`VIP`].
pub async fn outbound(client: Client) -> Outbound {
    outbound_to(client, VIP.parse().unwrap()).await
}

/// An outbound proxy on loopback; every connection counts as aimed at `vip`.
pub async fn outbound_to(client: Client, vip: SocketAddr) -> Outbound {
    let (addr, mut proxy) = start(None, vip, client.store, &client.view, client.settings).await;
    proxy.addr = addr;
    proxy
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
    pub outbound: Outbound,
    pub endpoints: Vec<(SocketAddr, String)>,
    _inbounds: Vec<Inbound>,
    client_store: Arc<CertStore>,
    settings: Settings,
    first_view: View,
}

impl Fleet {
    /// Endpoints `handlers[i]` labelled `version: versions[i]`, routes and inbound
    /// policy as JSON, outbound settings.
    pub async fn start(
        handlers: Vec<(Handler, &str)>,
        routes: serde_json::Value,
        inbound_policy: serde_json::Value,
        settings: Settings,
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
        let outbound = outbound(client(Some(&client_store), &v, settings.clone())).await;
        Fleet {
            apps,
            outbound,
            endpoints,
            _inbounds: inbounds,
            client_store,
            settings,
            first_view: v,
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

    /// Another client proxy like the fleet's, whose connections are all aimed at
    /// `dst` (e.g. one endpoint), over the view the fleet started with.
    pub async fn outbound_to(&self, dst: SocketAddr) -> Outbound {
        let c = client(
            Some(&self.client_store),
            &self.first_view,
            self.settings.clone(),
        );
        outbound_to(c, dst).await
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
    pillion_testkit::http::load(addr, n, concurrency, path, &[])
        .await
        .into_iter()
        .map(|a| (a.status, a.app))
        .collect()
}
