//! A TCP bridge that makes a collector outside the local mesh's world (e.g. Jaeger on
//! the host's loopback) reachable from inside it at `198.18.0.1:<port>`. The listening
//! socket is made in the node namespace and the connections out in this process's own
//! namespace; neither namespace's interfaces, routes or firewall are touched.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, Result};
use tokio::net::TcpListener;

use super::addr::BRIDGE_V4;
use super::world::World;

/// A running bridge; dropping it stops it (its runtime, with every connection).
#[derive(Debug)]
pub struct CollectorBridge {
    inside: SocketAddr,
    _runtime: tokio::runtime::Runtime,
}

impl CollectorBridge {
    /// Listens at `198.18.0.1:port` in `world`'s node and forwards every connection
    /// to `outside` (resolved and connected from this process's namespace).
    pub fn start(world: &World, port: u16, outside: String) -> Result<CollectorBridge> {
        let inside = SocketAddr::new(IpAddr::V4(BRIDGE_V4), port);
        let listener = world
            .run_in_node(move || async move { std::net::TcpListener::bind(inside) })?
            .with_context(|| format!("binding the collector bridge at {inside} in the node"))?;
        listener.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("collector-bridge")
            .enable_all()
            .build()
            .context("starting the bridge's runtime")?;
        let listener = {
            let _entered = runtime.enter();
            TcpListener::from_std(listener)?
        };
        runtime.spawn(async move {
            while let Ok((mut inner, _)) = listener.accept().await {
                let outside = outside.clone();
                tokio::spawn(async move {
                    if let Ok(mut outer) = tokio::net::TcpStream::connect(outside).await {
                        let _ = tokio::io::copy_bidirectional(&mut inner, &mut outer).await;
                    }
                });
            }
        });
        Ok(CollectorBridge {
            inside,
            _runtime: runtime,
        })
    }

    /// The address proxies in the world export to.
    pub fn inside(&self) -> SocketAddr {
        self.inside
    }
}
