//! The local mesh's sample workloads, run inside a pod: an echo server (the bytes
//! back, then a half-close) and an HTTP app that says hello, on dual-stack listeners.

use std::net::{Ipv6Addr, SocketAddr};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use super::netns::Task;
use super::pod::Pod;

/// How long a server may take to bind.
const BIND_TIMEOUT: Duration = Duration::from_secs(10);

/// A listener on `[::]:port` that also takes IPv4 (v6only off), with a deep backlog.
pub fn bind_dual_stack(port: u16) -> Result<TcpListener> {
    let socket = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_only_v6(false)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port).into())?;
    socket.listen(4096)?;
    Ok(TcpListener::from_std(socket.into())?)
}

/// Binds `[::]:port` (dual stack) in `pod`, then runs `serve` on the listener in the
/// background; returns once bound (or with why `what` could not bind).
pub fn spawn_listener<F, Fut>(pod: &Pod, port: u16, what: &str, serve: F) -> Result<Task<()>>
where
    F: FnOnce(TcpListener) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let (tx, rx) = mpsc::channel::<Result<()>>();
    let task = pod.background(move || async move {
        match bind_dual_stack(port) {
            Ok(listener) => {
                let _ = tx.send(Ok(()));
                serve(listener).await;
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        }
    })?;
    rx.recv_timeout(BIND_TIMEOUT)
        .map_err(|_| anyhow!("{what} in pod {} did not bind", pod.name()))?
        .with_context(|| format!("{what} on port {port} in pod {}", pod.name()))?;
    Ok(task)
}

/// An echo server on `port` in `pod`.
pub fn spawn_echo(pod: &Pod, port: u16) -> Result<Task<()>> {
    spawn_listener(pod, port, "the echo app", |listener| async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(echo(stream));
        }
    })
}

async fn echo(stream: TcpStream) {
    let (mut r, mut w) = stream.into_split();
    if tokio::io::copy(&mut r, &mut w).await.is_ok() {
        let _ = w.shutdown().await;
    }
}

/// An HTTP/1.1 app on `port` in `pod` answering `hello from the server pod`.
pub fn spawn_hello(pod: &Pod, port: u16) -> Result<Task<()>> {
    spawn_listener(pod, port, "the HTTP app", |listener| async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from_static(
                            b"hello from the server pod\n",
                        )),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}
