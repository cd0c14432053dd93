//! Whole proxies in this process: [`start`] binds one on loopback with a fixed
//! redirect record (or none), optionally with mesh TLS over a certificate store
//! and views the test publishes, and runs it until [`Running::stop`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pillion_api::view::View;
use pillion_identity::CertStore;
use pillion_proxy::{
    Direction, DirectionMetrics, DrainReport, Mesh, MeshMetrics, MeshTls, Proxy, ProxyConfig,
    Settings, StaticOrigDst, Views,
};
use prometheus_client::registry::Registry;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running proxy and the handle that stops it.
pub struct Running {
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
    /// Its views (published to only when it has a mesh).
    pub views: Views,
    /// TCP metrics: (outbound, inbound).
    pub proxy_metrics: (DirectionMetrics, DirectionMetrics),
    /// Mesh TLS, passthrough and refusal counters.
    pub metrics: MeshMetrics,
    pub registry: Arc<Registry>,
    pub stop: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<DrainReport>,
}

impl Running {
    /// Starts the drain and waits for it.
    pub async fn stop(mut self) -> DrainReport {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.await.unwrap()
    }

    /// Publishes `view` and waits (at most 10 s) until the proxy serves it.
    pub async fn install(&self, view: View) {
        pillion_testkit::wait::within(
            Duration::from_secs(10),
            "the view compiles",
            self.views.install(view),
        )
        .await;
    }
}

/// What a proxy starts with besides its config.
#[derive(Default)]
pub struct Options {
    /// The redirect record of every connection; `None` means "not redirected".
    pub orig_dst: Option<SocketAddr>,
    /// Mesh TLS over this store (the proxy then serves HTTP and policy).
    pub store: Option<Arc<CertStore>>,
    /// The data path's settings.
    pub settings: Settings,
}

/// Binds `config` with `options` and runs the proxy.
pub async fn start(config: ProxyConfig, options: Options) -> Running {
    let views = Views::new();
    let mut builder = Proxy::builder(config).settings(options.settings);
    if let Some(dst) = options.orig_dst {
        builder = builder.orig_dst(StaticOrigDst(dst));
    }
    if let Some(store) = options.store {
        builder = builder.mesh(Mesh {
            tls: MeshTls::new(store).unwrap(),
            views: views.clone(),
            resolver: None,
        });
    }
    let proxy = builder.bind().await.unwrap();
    let running_views = views;
    let outbound = proxy.outbound_addrs()[0];
    let inbound = proxy.inbound_addrs()[0];
    let admin = proxy.admin_addr();
    let proxy_metrics = (
        proxy.metrics(Direction::Outbound),
        proxy.metrics(Direction::Inbound),
    );
    let metrics = proxy.mesh_metrics().clone();
    let registry = Arc::clone(proxy.registry());
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(proxy.run(async move {
        let _ = rx.await;
    }));
    Running {
        outbound,
        inbound,
        admin,
        views: running_views,
        proxy_metrics,
        metrics,
        registry,
        stop: Some(tx),
        task,
    }
}

/// A meshed proxy with the default config whose connections are all aimed at
/// `orig_dst`.
pub async fn meshed(store: Arc<CertStore>, orig_dst: SocketAddr) -> Running {
    let options = Options {
        orig_dst: Some(orig_dst),
        store: Some(store),
        ..Options::default()
    };
    start(ProxyConfig::loopback_ephemeral(), options).await
}
