//! The test kit's OTLP collector in a world, started in a pod (the way a cluster's
//! collector is a pod); and the local mesh's bridge to a collector outside it.

use std::sync::Arc;

use anyhow::Result;

pub use pillion::local::bridge::CollectorBridge;
pub use pillion_testkit::otlp::{Collected, OtlpReceiver, ReceivedSpan, Transport};

use pillion::local::Pod;

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
