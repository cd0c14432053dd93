//! The test kit's OTLP collector in a world: started in a pod (the way a cluster's
//! collector is a pod), and a bridge that makes a collector outside the world
//! reachable from inside it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::TcpListener;

pub use pillion_testkit::otlp::{Collected, OtlpReceiver, ReceivedSpan, ThreadTask, Transport};

use crate::pod::Pod;

/// Starts a collector in `pod` on its standard ports (4317 gRPC, 4318 HTTP).
pub fn start_in(pod: &Pod) -> Result<OtlpReceiver> {
    start_in_on(pod, 4317, 4318)
}

/// Starts a collector in `pod` on the given ports.
pub fn start_in_on(pod: &Pod, grpc_port: u16, http_port: u16) -> Result<OtlpReceiver> {
    let in_pod = pod.clone();
    let spawner: pillion_testkit::otlp::Spawner = Arc::new(move |body| {
        let task = in_pod.background(body)?;
        Ok(Box::new(task) as Box<dyn std::any::Any + Send>)
    });
    OtlpReceiver::start_with(spawner, pod.addr_v4(grpc_port), pod.addr_v4(http_port))
}

/// A TCP bridge that makes a collector outside the world (e.g. Jaeger on the host's
/// loopback) reachable from inside it at the bridge address `198.18.0.1:<port>`.
/// The listening socket is made in the node namespace and the connections out in
/// this process's own namespace; neither namespace's interfaces, routes or firewall
/// are touched. Dropping it stops it.
#[derive(Debug)]
pub struct CollectorBridge {
    inside: SocketAddr,
    _task: ThreadTask,
}

impl CollectorBridge {
    /// Listens at `198.18.0.1:port` in `world`'s node and forwards every connection
    /// to `outside` (resolved and connected from this process's namespace).
    pub fn start(world: &crate::World, port: u16, outside: String) -> Result<CollectorBridge> {
        let inside = SocketAddr::new(IpAddr::V4(crate::addr::BRIDGE_V4), port);
        let listener = world
            .run_in_node(move || async move { std::net::TcpListener::bind(inside) })?
            .with_context(|| format!("binding the collector bridge at {inside} in the node"))?;
        listener.set_nonblocking(true)?;
        let task = ThreadTask::spawn("collector-bridge", move || async move {
            let Ok(listener) = TcpListener::from_std(listener) else {
                return;
            };
            while let Ok((mut inner, _)) = listener.accept().await {
                let outside = outside.clone();
                tokio::spawn(async move {
                    if let Ok(mut outer) = tokio::net::TcpStream::connect(outside).await {
                        let _ = tokio::io::copy_bidirectional(&mut inner, &mut outer).await;
                    }
                });
            }
        })?;
        Ok(CollectorBridge {
            inside,
            _task: task,
        })
    }

    /// The address proxies in the world export to.
    pub fn inside(&self) -> SocketAddr {
        self.inside
    }
}
